// The host side of Perfetto IPC: exposes services to the clients that connect to it.
//
// Written only against IPCTransport / IPCConnection, so it runs unchanged on every backend.
// Loop-bound: create it, expose services and close it on its transport's loop; every service
// method and every reply happens there too.

import Logging

/// Exposes ``IPCService``s to clients over a transport.
///
/// ```swift
/// let host = try IPCHost(transport: transport, listeningAt: "/run/echo.sock")
/// host.expose(MyEchoService())
/// ```
public final class IPCHost: IPCListenerDelegate {
    /// The transport whose loop the host lives on.
    public let transport: any IPCTransport
    /// Where replies and diagnostics are logged.
    public let logger: Logger
    /// Receive buffer size per client, header included (default 128 KiB).
    public let receiveCapacity: Int

    private var listener: (any IPCListener)?
    private var services: [any IPCService] = []
    private var clients: [UInt64: HostClient] = [:]
    private var nextClientID: UInt64 = 1
    private let options: ConnectionOptions

    /// Creates a host that listens at `address`. Loop-only.
    ///
    /// - Throws: ``IPCError`` if the address cannot be listened on.
    public init(
        transport: any IPCTransport, listeningAt address: String, options: ConnectionOptions = .default,
        receiveCapacity: Int = WireLimits.defaultReceiveCapacity, logger: Logger = Logger(label: "perfetto.ipc.host")
    ) throws(IPCError) {
        self.transport = transport
        self.options = options
        self.receiveCapacity = receiveCapacity
        self.logger = logger
        transport.eventLoop.preconditionInEventLoop()
        listener = try transport.listen(at: address, options: options, delegate: self)
    }

    /// Creates a host with no listener: give it connections with ``adopt(_:)``. Loop-only.
    public init(
        transport: any IPCTransport, receiveCapacity: Int = WireLimits.defaultReceiveCapacity,
        logger: Logger = Logger(label: "perfetto.ipc.host")
    ) {
        self.transport = transport
        self.options = .default
        self.receiveCapacity = receiveCapacity
        self.logger = logger
    }

    deinit {
        listener?.close()
        for client in clients.values { client.connection.close() }
    }

    /// The address the host listens on (a TCP port 0 is resolved), if it listens.
    public var address: String? { listener?.address }

    /// Clients currently connected.
    public var clientCount: Int { clients.count }

    /// Exposes `service` under its unqualified name. Service ids are assigned in exposure order
    /// (1, 2, …). Returns `false` (and exposes nothing) if a service of that name is already
    /// exposed. Loop-only.
    @discardableResult
    public func expose(_ service: any IPCService) -> Bool {
        transport.eventLoop.preconditionInEventLoop()
        let name = service.serviceDescriptor.name
        guard !services.contains(where: { $0.serviceDescriptor.name == name }) else {
            logger.error("service \(name) is already exposed")
            return false
        }
        services.append(service)
        return true
    }

    /// Serves an already connected connection (e.g. one end of a socketpair). Loop-only.
    public func adopt(_ connection: any IPCConnection) {
        transport.eventLoop.preconditionInEventLoop()
        accept(connection)
    }

    /// Stops listening and drops every client; services are told each client went away.
    /// Loop-only; idempotent.
    public func close() {
        listener?.close()
        listener = nil
        for client in Array(clients.values) {
            client.connection.close()
            clientDidDisconnect(client, reason: nil)
        }
    }

    public func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
        accept(connection)
    }

    private func accept(_ connection: any IPCConnection) {
        let id = nextClientID
        nextClientID += 1
        do {
            let client = try HostClient(id: id, connection: connection, host: self)
            connection.delegate = client
            clients[id] = client
        } catch {
            logger.error("cannot serve new client: \(error)")
            connection.close()
        }
    }

    /// The exposed services, in service-id order (test hook).
    package var exposedServicesForTesting: [any IPCService] { services }

    // MARK: Package interface for HostClient and the dispatcher

    func clientDidDisconnect(_ client: HostClient, reason: IPCError?) {
        guard clients.removeValue(forKey: client.id) != nil else { return }
        for service in services { service.clientDidDisconnect(client.info) }
    }

    func service(withID id: UInt32) -> (any IPCService)? {
        guard id >= 1, Int(id) <= services.count else { return nil }
        return services[Int(id) - 1]
    }

    func serviceID(named name: String) -> UInt32? {
        services.firstIndex { $0.serviceDescriptor.name == name }.map { UInt32($0 + 1) }
    }

    func client(withID id: UInt64) -> HostClient? { clients[id] }

    var maxPayloadSize: Int { receiveCapacity - WireLimits.frameHeaderSize }
}
