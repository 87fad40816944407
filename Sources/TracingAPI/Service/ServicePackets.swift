// Packets the service writes itself, on its own sequence (trusted_packet_sequence_id 1): the
// trace config, clock snapshots, service events and trace stats.

#if canImport(Glibc)
import Glibc
#endif

enum ServicePackets {
    static func traceConfig(_ config: TraceConfig, uid: UInt32) -> TracePacketData {
        var packet = TracePacket()
        packet.traceConfig = config
        return encode(packet, uid: uid)
    }

    /// A snapshot of the clocks Perfetto's service reports, BOOTTIME as the trace clock.
    static func clockSnapshot(uid: UInt32) -> TracePacketData {
        var snapshot = Perfetto_Protos_ClockSnapshot()
        snapshot.clocks = ServiceClock.snapshot()
        snapshot.primaryTraceClock = .boottime
        var packet = TracePacket()
        packet.timestamp = snapshot.clocks.first { $0.clockID == UInt32(Perfetto_Protos_BuiltinClock.boottime.rawValue) }?.timestamp ?? 0
        packet.clockSnapshot = snapshot
        return encode(packet, uid: uid)
    }

    /// What a relay told about its machine (InitRelay), stamped with that machine's id.
    static func remoteSystemInfo(_ info: Perfetto_Protos_SystemInfo, machineID: UInt32, uid: UInt32) -> TracePacketData {
        var packet = TracePacket()
        packet.systemInfo = info
        packet.machineID = machineID
        return encode(packet, uid: uid, clockID: false)
    }

    /// The clock exchanges with a relay (SyncClock), from which a reader aligns that machine's
    /// timeline with this one's.
    static func remoteClockSync(
        _ exchanges: [Perfetto_Protos_RemoteClockSync.SyncedClocks], machineID: UInt32, uid: UInt32
    ) -> TracePacketData {
        var packet = TracePacket()
        packet.remoteClockSync.syncedClocks = exchanges
        packet.machineID = machineID
        return encode(packet, uid: uid, clockID: false)
    }

    /// A trigger a session took: its name, the producer's name for itself, the kernel's uid.
    static func trigger(_ received: ReceivedTrigger, uid: UInt32) -> TracePacketData {
        var packet = TracePacket()
        packet.timestamp = received.bootTimeNanoseconds
        packet.trigger.triggerName = received.name
        packet.trigger.producerName = received.producerName
        packet.trigger.trustedProducerUid = Int32(bitPattern: received.producerUID)
        packet.trigger.stopDelayMs = UInt64(received.stopDelayMs)
        return encode(packet, uid: uid)
    }

    static func serviceEvent(_ event: Perfetto_Protos_TracingServiceEvent, timestamp: UInt64, uid: UInt32) -> TracePacketData {
        var packet = TracePacket()
        packet.timestamp = timestamp
        packet.serviceEvent = event
        return encode(packet, uid: uid)
    }

    static func traceStats(_ stats: TraceStats, uid: UInt32) -> TracePacketData {
        var packet = TracePacket()
        packet.traceStats = stats
        packet.timestamp = ServiceClock.nanoseconds(CLOCK_BOOTTIME)
        return encode(packet, uid: uid)
    }

    private static func encode(_ packet: TracePacket, uid: UInt32, clockID: Bool = true) -> TracePacketData {
        var packet = packet
        packet.trustedUid = Int32(bitPattern: uid)
        packet.trustedPacketSequenceID = TracingSession.servicePacketSequenceID
        if clockID { packet.timestampClockID = UInt32(Perfetto_Protos_BuiltinClock.boottime.rawValue) }
        // Encoding a message we just built cannot fail.
        let bytes: [UInt8] = (try? packet.serializedBytes()) ?? []
        return TracePacketData(bytes: bytes)
    }
}

enum ServiceClock {
    /// The clocks Perfetto's service snapshots, BOOTTIME first, read back to back.
    static func snapshot() -> [Perfetto_Protos_ClockSnapshot.Clock] {
        let clocks: [(clockid_t, Perfetto_Protos_BuiltinClock)] = [
            (CLOCK_BOOTTIME, .boottime), (CLOCK_REALTIME_COARSE, .realtimeCoarse),
            (CLOCK_MONOTONIC_COARSE, .monotonicCoarse), (CLOCK_REALTIME, .realtime),
            (CLOCK_MONOTONIC, .monotonic), (CLOCK_MONOTONIC_RAW, .monotonicRaw),
        ]
        return clocks.map { clock, id in
            var entry = Perfetto_Protos_ClockSnapshot.Clock()
            entry.clockID = UInt32(id.rawValue)
            entry.timestamp = nanoseconds(clock)
            return entry
        }
    }

    static func nanoseconds(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    static func realtimeNanoseconds() -> UInt64 { nanoseconds(CLOCK_REALTIME) }
}
