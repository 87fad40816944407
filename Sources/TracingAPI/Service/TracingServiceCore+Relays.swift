// Relays (Perfetto's traced_relay) of other machines: what each said about its machine
// (InitRelay) and the clock exchanges it made with the service (SyncClock). Sessions carry one
// SystemInfo and one RemoteClockSync packet per machine, stamped with its machine id, so a
// reader can name the machines and align their timelines with this one's.

/// A relay's connection: client ids are per host, and each host has its own RelayPort.
struct RelayKey: Hashable {
    let port: ObjectIdentifier
    let clientID: UInt64
}

/// One relay connection: its machine, its system info, its last clock exchanges.
struct RelayRecord {
    /// How many clock exchanges are kept per relay (the most recent ones, as in Perfetto).
    static let keptClockExchanges = 5

    let machineID: UInt32
    var systemInfo: Perfetto_Protos_SystemInfo?
    var clockExchanges: [Perfetto_Protos_RemoteClockSync.SyncedClocks] = []
}

extension TracingServiceCore {
    /// A relay of machine `machineID` (connection `clientID`) described its machine.
    func relay(_ key: RelayKey, machineID: UInt32, describedItself info: Perfetto_Protos_SystemInfo) {
        eventLoop.preconditionInEventLoop()
        relays[key, default: RelayRecord(machineID: machineID)].systemInfo = info
    }

    /// A relay sent its clocks (`client`), read against the service's clocks (`host`) as the
    /// request arrived.
    func relay(
        _ key: RelayKey, machineID: UInt32, syncedClocks client: [Perfetto_Protos_ClockSnapshot.Clock],
        hostClocks host: [Perfetto_Protos_ClockSnapshot.Clock]
    ) {
        eventLoop.preconditionInEventLoop()
        var exchange = Perfetto_Protos_RemoteClockSync.SyncedClocks()
        exchange.clientClocks.clocks = client
        exchange.hostClocks.clocks = host
        var record = relays[key] ?? RelayRecord(machineID: machineID)
        record.clockExchanges.append(exchange)
        if record.clockExchanges.count > RelayRecord.keptClockExchanges {
            record.clockExchanges.removeFirst(record.clockExchanges.count - RelayRecord.keptClockExchanges)
        }
        relays[key] = record
    }

    /// A relay's connection ended.
    func relayDisconnected(_ key: RelayKey) {
        eventLoop.preconditionInEventLoop()
        relays[key] = nil
    }

    /// The relays' packets `session` has not carried yet: each machine's system info and
    /// clock exchanges, once per machine (the first relay of a machine speaks for it).
    func relayPackets(for session: TracingSession, uid: UInt32) -> [TracePacketData] {
        guard !relays.isEmpty else { return [] }
        var packets: [TracePacketData] = []
        // In connection order (by machine for relays of one connection id on two addresses).
        let ordered = relays.sorted { ($0.key.clientID, $0.value.machineID) < ($1.key.clientID, $1.value.machineID) }
        for (_, record) in ordered {
            let machine = record.machineID
            if let info = record.systemInfo,
               session.machinesWithSystemInfo.insert(machine).inserted {
                packets.append(ServicePackets.remoteSystemInfo(info, machineID: machine, uid: uid))
            }
            if !record.clockExchanges.isEmpty, !session.config.builtinDataSources.disableClockSnapshotting,
               session.machinesWithClockSync.insert(machine).inserted {
                packets.append(ServicePackets.remoteClockSync(record.clockExchanges, machineID: machine, uid: uid))
            }
        }
        return packets
    }
}
