// The relay (Perfetto's traced_relay): on a machine without its own tracing service — a VM
// guest, a second machine — it listens where producers look for `traced` and carries each
// producer's connection to the host's service over TCP or vsock, where the host serves it as a
// producer of this machine: shared-memory emulation (no fd crosses), packets stamped with this
// machine's id. Beside those it keeps a RelayPort connection of its own to the host, to
// describe the machine (InitRelay) and keep clocks in step (SyncClock), and it connects again
// when the host goes away; producers reconnect through it on their own.
//
// Compatible both ways with Perfetto: our relay in front of the real traced, the real
// traced_relay in front of our service.

import IPCProtocol
import Logging

/// Carries this machine's producers to a tracing service on another machine.
///
/// ```swift
/// let relay = try TracingRelay(
///     transport: UnixSocketTransport(loop: loop),
///     producerAddresses: ["/tmp/perfetto-producer"], hostAddress: "10.0.2.2:20001")
/// ```
///
/// Loop-bound: create, use and close it on the transport's loop.
public final class TracingRelay: IPCListenerDelegate {
    /// How the relay presents its machine and keeps in touch with the host.
    public struct Options: Sendable {
        /// The hint the host derives this machine's id from (nil: the boot id, as Perfetto's
        /// relay sends it). Two relays with the same hint are one machine to the host.
        public var machineIDHint: String?
        /// This machine's name, matched by `machine_name_filter` (nil: `PERFETTO_MACHINE_NAME`,
        /// else the kernel's name, as Perfetto picks it).
        public var machineName: String?
        /// Time between clock exchanges with the host (Perfetto's: 30 s).
        public var clockSyncInterval: Duration = .seconds(30)
        /// When the RelayPort connection to the host is made again after it ends.
        public var reconnectPolicy: ReconnectPolicy = .default
        /// Tunables of the connections to the host.
        public var hostConnectionOptions = ConnectionOptions()
        /// Tunables of the listeners producers connect to (e.g. the socket file's mode).
        public var listenerOptions = ConnectionOptions()
        /// Where the relay says what goes wrong: producers it cannot accept (out of file
        /// descriptors), the host service lost and found again.
        public var logger = Logger(label: "perfetto.relay")

        public init() {}
    }

    public let eventLoop: any IPCEventLoop
    /// The host service's producer address (TCP `host:port`, `vsock://cid:port`, or any other).
    public let hostAddress: String
    private let transport: any IPCTransport
    private let options: Options
    private var listeners: [any IPCListener] = []
    private var carried: [ObjectIdentifier: RelayedConnection] = [:]
    private var relayClient: RelayClient?
    private let machineIDHint: String?
    private let machineName: String
    /// What goes wrong with new producers, said at most every ten seconds each: a relay short of
    /// descriptors accepts, cannot open the host side, drops that producer and accepts the next
    /// (so the listener reports its shortage again after every accept).
    private var acceptFailures = RepeatedWarning()
    private var hostSideFailures = RepeatedWarning()

    /// Listens at every producer address and connects to the host. Loop-only.
    ///
    /// - Throws: ``IPCError`` if an address cannot be listened on; nothing stays listening then.
    public init(
        transport: any IPCTransport, producerAddresses: [String], hostAddress: String, options: Options = Options()
    ) throws(IPCError) {
        self.transport = transport
        self.eventLoop = transport.eventLoop
        self.hostAddress = hostAddress
        self.options = options
        machineIDHint = options.machineIDHint ?? IPCClient.bootID()
        machineName = options.machineName ?? IPCClient.machineName()
        eventLoop.preconditionInEventLoop()
        do {
            for address in producerAddresses {
                listeners.append(try transport.listen(at: address, options: options.listenerOptions, delegate: self))
            }
        } catch {
            for listener in listeners { listener.close() }
            throw error
        }
        relayClient = RelayClient(
            transport: transport,
            configuration: RelayClient.Configuration(
                hostAddress: hostAddress, connectionOptions: options.hostConnectionOptions,
                machineIDHint: machineIDHint, machineName: machineName,
                clockSyncInterval: options.clockSyncInterval, reconnectPolicy: options.reconnectPolicy,
                serviceVersion: "swift-perfetto-ipc relay", logger: options.logger))
    }

    /// The addresses producers connect to (TCP port 0 resolved).
    public var producerAddresses: [String] { listeners.map(\.address) }
    /// Producer connections being carried now.
    public var carriedConnectionCount: Int { carried.count }
    /// Whether the relay's own RelayPort connection to the host is up.
    public var isConnectedToHost: Bool { relayClient?.isConnected ?? false }
    /// Clock exchanges the host answered so far.
    public var clockSyncCount: Int { relayClient?.clockSyncCount ?? 0 }
    /// Times the RelayPort connection to the host came up (more than 1: it reconnected).
    public var hostConnectionCount: Int { relayClient?.connectionCount ?? 0 }

    /// Stops listening, drops every carried connection and the RelayPort connection.
    /// Loop-only; idempotent.
    public func close() {
        for listener in listeners { listener.close() }
        listeners = []
        let connections = carried.values
        carried = [:]
        for connection in connections { connection.close() }
        relayClient?.close()
        relayClient = nil
    }

    // MARK: IPCListenerDelegate

    public func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
        var identity = IPCFrame()
        // The producer's kernel credentials: the host cannot check them across machines.
        identity.setPeerIdentity.pid = connection.peer.pid ?? -1
        identity.setPeerIdentity.uid = connection.peer.uid.map { Int32(bitPattern: $0) } ?? -1
        if let machineIDHint { identity.setPeerIdentity.machineIDHint = machineIDHint }
        identity.setPeerIdentity.machineName = machineName
        let relayed = RelayedConnection(
            local: connection, transport: transport, hostAddress: hostAddress, options: options.hostConnectionOptions,
            identity: identity,
            onHostUnreachable: { [weak self] error in self?.hostUnreachable(error) }
        ) { [weak self] closed in
            guard let self, let existing = self.carried[ObjectIdentifier(closed)], existing === closed else { return }
            self.carried[ObjectIdentifier(closed)] = nil
        }
        carried[ObjectIdentifier(relayed)] = relayed
    }

    /// Logged (at most every ten seconds): producers wait in the listen queue until descriptors
    /// are free (those already carried go on).
    public func listener(_ listener: any IPCListener, didFailToAccept error: IPCError) {
        guard let repeats = acceptFailures.occurred() else { return }
        options.logger.warning(
            "cannot accept new producers on \(listener.address), they wait until this succeeds again: \(error.message)\(repeats)")
    }

    private func hostUnreachable(_ error: IPCError) {
        guard let repeats = hostSideFailures.occurred() else { return }
        options.logger.warning(
            "cannot carry a producer to the host service at \(hostAddress), it was disconnected to try again: \(error.message)\(repeats)")
    }
}

/// A warning said once, then at most every `interval`, with how often it happened meanwhile.
struct RepeatedWarning {
    var interval: Duration = .seconds(10)
    private var lastSaid: ContinuousClock.Instant?
    private var unsaid = 0

    /// Nil: stay quiet. Otherwise say it, followed by the returned text (the repeats not said).
    mutating func occurred(now: ContinuousClock.Instant = .now) -> String? {
        if let lastSaid, now - lastSaid < interval {
            unsaid += 1
            return nil
        }
        defer { lastSaid = now; unsaid = 0 }
        return unsaid == 0 ? "" : " (and \(unsaid) times more since it was last said)"
    }
}
