// RelayPort, the daemon side (Perfetto's RelayIPCService): a relay on another machine (ours,
// `tracebox relay`, or Perfetto's traced_relay) describes its machine and keeps its clock in
// step with the service's. Exposed beside ProducerPort on producer addresses when the service
// is asked to (`tracebox traced --enable-relay-endpoint`).
//
// Contract, as traced keeps it:
// * InitRelay{system_info}: kept for the machine the connection belongs to (its id comes from
//   SetPeerIdentity); every session's trace carries it once, stamped with that machine's id;
// * SyncClock{phase, clocks}: the service reads its own clocks as the request arrives and
//   keeps the pair (the last 5 per relay); the reply is empty and immediate, so the relay can
//   bound the round trip. Traces carry the pairs as RemoteClockSync;
// * a relay that disconnects is forgotten.

import IPCProtocol

/// Serves `RelayPort` for a ``TracingServiceCore``: expose it on producer addresses that relays
/// reach (usually TCP or vsock). Loop-bound: the service's loop must be the host's.
public final class RelayPortService: Perfetto_Protos_RelayPortHandler {
    /// The service the relays report to.
    public let service: TracingServiceCore

    /// A port in front of `service`.
    public init(service: TracingServiceCore) {
        self.service = service
    }

    /// Relays connected now through this port.
    public var connectedRelayCount: Int { service.relays.keys.filter { $0.port == ObjectIdentifier(self) }.count }

    private func key(_ client: IPCClientInfo) -> RelayKey {
        RelayKey(port: ObjectIdentifier(self), clientID: client.clientID)
    }

    public func initRelay(
        _ request: Perfetto_Protos_InitRelayRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_InitRelayResponse>
    ) {
        reply.resolve(.init())
        service.relay(key(context.client), machineID: context.client.machineID, describedItself: request.systemInfo)
    }

    public func syncClock(
        _ request: Perfetto_Protos_SyncClockRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_SyncClockResponse>
    ) {
        // The service's clocks first: as close as we can get to the relay's reading.
        let hostClocks = ServiceClock.snapshot()
        reply.resolve(.init())
        let clientClocks = request.clocks.prefix(Self.maxClocks).map { clock in
            var entry = Perfetto_Protos_ClockSnapshot.Clock()
            entry.clockID = clock.clockID
            entry.timestamp = clock.timestamp
            return entry
        }
        service.relay(
            key(context.client), machineID: context.client.machineID, syncedClocks: clientClocks,
            hostClocks: hostClocks)
    }

    /// Clocks kept from one SyncClock request (Perfetto's snapshot has 6; a peer gets no more room).
    static let maxClocks = 16

    public func clientDidDisconnect(_ client: IPCClientInfo) {
        service.relayDisconnected(key(client))
    }
}
