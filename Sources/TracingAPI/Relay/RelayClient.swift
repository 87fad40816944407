// The relay's own line to the host service (Perfetto's RelayClient): binds RelayPort, sends
// InitRelay with this machine's system info, then keeps clocks in step with SyncClock — a PING
// exchange, then an UPDATE exchange right after it, every `clockSyncInterval` — and connects
// again, with a growing delay, when the host goes away. It says when it loses the host and when
// it finds it again, not at every attempt in between.

import IPCProtocol
import Logging

/// A relay's RelayPort connection to the host service. Loop-bound.
final class RelayClient {
    struct Configuration {
        var hostAddress: String
        var connectionOptions: ConnectionOptions
        var machineIDHint: String?
        var machineName: String?
        var clockSyncInterval: Duration
        var reconnectPolicy: ReconnectPolicy
        var serviceVersion: String
        var logger: Logger
    }

    let eventLoop: any IPCEventLoop
    private let transport: any IPCTransport
    private let configuration: Configuration
    private var client: IPCClient?
    private var port: Perfetto_Protos_RelayPortProxy?
    private var timer: (any ScheduledTask)?
    private var nextDelay: Duration
    private var closed = false
    /// A warning went out since the host was last reached: further failures are not repeated.
    private var toldUnreachable = false

    /// The RelayPort is bound and InitRelay went out.
    private(set) var isConnected = false
    /// Clock exchanges (PING or UPDATE) the host answered, over every connection.
    private(set) var clockSyncCount = 0
    /// Connections to the host that came up, the first included.
    private(set) var connectionCount = 0

    init(transport: any IPCTransport, configuration: Configuration) {
        self.transport = transport
        self.eventLoop = transport.eventLoop
        self.configuration = configuration
        self.nextDelay = configuration.reconnectPolicy.initialDelay
        eventLoop.preconditionInEventLoop()
        connect()
    }

    func close() {
        closed = true
        timer?.cancel()
        timer = nil
        client?.close()
        client = nil
        port = nil
        isConnected = false
    }

    private func connect() {
        let client = IPCClient(
            transport: transport, connectingTo: configuration.hostAddress, options: configuration.connectionOptions,
            logger: configuration.logger)
        client.announcedMachineIDHint = configuration.machineIDHint
        client.announcedMachineName = configuration.machineName
        let port = Perfetto_Protos_RelayPortProxy()
        self.client = client
        self.port = port
        port.onConnect = { [weak self, weak port] in
            guard let self, let port, port === self.port else { return }
            self.connected(port)
        }
        port.onConnectionFailed = { [weak self, weak port] error in
            guard let self, let port, port === self.port else { return }
            self.ended(error, wasConnected: false)
        }
        port.onDisconnect = { [weak self, weak port] error in
            guard let self, let port, port === self.port else { return }
            self.ended(error, wasConnected: true)
        }
        client.bind(port)
    }

    private func connected(_ port: Perfetto_Protos_RelayPortProxy) {
        isConnected = true
        connectionCount += 1
        if toldUnreachable {
            configuration.logger.notice("reached the host service at \(configuration.hostAddress) again")
            toldUnreachable = false
        }
        nextDelay = configuration.reconnectPolicy.initialDelay
        var request = Perfetto_Protos_InitRelayRequest()
        request.systemInfo = MachineSystemInfo.current(serviceVersion: configuration.serviceVersion)
        port.initRelay(request, reply: nil)
        syncClock(port, phase: .ping)
    }

    /// One exchange; a PING's answer starts the UPDATE at once, an UPDATE's answer schedules
    /// the next PING. Only a request's first answer counts: SyncClock is unary, and a host that
    /// answered one request several times (`has_more`) made every answer start an exchange of its
    /// own, each with its own timer, until the relay did nothing but synchronize clocks. (Over a
    /// connection `IPCClient` now ends a unary call at its first reply; the flag still guards a
    /// host in this process, reached through a direct binding.)
    private func syncClock(_ port: Perfetto_Protos_RelayPortProxy, phase: Perfetto_Protos_SyncClockRequest.Phase) {
        var request = Perfetto_Protos_SyncClockRequest()
        request.phase = phase
        request.clocks = ServiceClock.snapshot().map { clock in
            var entry = Perfetto_Protos_SyncClockRequest.Clock()
            entry.clockID = clock.clockID
            entry.timestamp = clock.timestamp
            return entry
        }
        var answered = false
        port.syncClock(request) { [weak self, weak port] result in
            guard !answered else { return }
            answered = true
            guard let self, let port, port === self.port, result.message != nil else { return }
            self.clockSyncCount += 1
            if phase == .ping {
                self.syncClock(port, phase: .update)
                return
            }
            self.timer?.cancel()
            self.timer = self.eventLoop.scheduleTask(after: self.configuration.clockSyncInterval) { [weak self, weak port] in
                guard let self, let port, port === self.port else { return }
                self.syncClock(port, phase: .ping)
            }
        }
    }

    private func ended(_ error: IPCError, wasConnected: Bool) {
        isConnected = false
        timer?.cancel()
        timer = nil
        client = nil
        port = nil
        guard !closed else { return }
        let retrying = configuration.reconnectPolicy.isEnabled
        if !toldUnreachable {
            toldUnreachable = true
            let what = wasConnected ? "lost" : "cannot reach"
            let next = retrying ? "; trying again until it answers" : ""
            configuration.logger.warning("\(what) the host service at \(configuration.hostAddress): \(error.message)\(next)")
        }
        guard retrying else { return }
        let delay = nextDelay
        nextDelay = min(nextDelay * 2, configuration.reconnectPolicy.maximumDelay)
        timer = eventLoop.scheduleTask(after: delay) { [weak self] in
            guard let self, !self.closed, self.client == nil else { return }
            self.connect()
        }
    }
}
