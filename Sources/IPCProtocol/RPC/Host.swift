// The host side of Perfetto IPC: exposes services to the clients that connect to it.
//
// Written only against IPCTransport / IPCConnection (and, for the direct short circuit, an
// IPCDirectRegistry), so it runs unchanged on every backend. Loop-bound: create it, expose
// services and close it on its loop; every service method and every reply happens there too.

import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Exposes ``IPCService``s to clients.
///
/// ```swift
/// let host = try IPCHost(backend: .unixSocket("/run/echo.sock", loop: loop))
/// host.expose(MyEchoService())
/// ```
public final class IPCHost: IPCListenerDelegate {
    /// The transport, for hosts that serve frames (nil for a direct host).
    public let transport: (any IPCTransport)?
    /// The loop the host lives on.
    public let eventLoop: any IPCEventLoop
    /// Where diagnostics are logged.
    public let logger: Logger
    /// Receive buffer size per client, header included (default 128 KiB).
    public let receiveCapacity: Int
    /// How long a client's frame may stay incomplete before the client is dropped (a peer
    /// that sends half a frame and stalls). Default 10 s. Loop-only.
    public var partialFrameTimeout: Duration = .seconds(10)
    /// The most clients one uid may have connected at once; a newcomer past it is closed as it
    /// connects (and logged, the first time and every thousandth). Without a limit, one uid
    /// opening connections until the process ran out of descriptors locked every other client
    /// out. Nil (the default): no limit. Loop-only.
    public var maxClientsPerUID: Int?
    /// Uids never limited by ``maxClientsPerUID`` (root, by default). Peers without a uid
    /// (TCP) are not limited either. Loop-only.
    public var clientLimitExemptUIDs: Set<UInt32> = [0]
    /// Newcomers closed by ``maxClientsPerUID`` so far.
    public private(set) var clientsRefusedForTheirUID = 0
    private var clientCountByUID: [UInt32: Int] = [:]

    private var listener: (any IPCListener)?
    private var services: [any IPCService] = []
    private var clients: [UInt64: HostClient] = [:]
    private var nextClientID: UInt64 = 1
    private var directRegistration: (registry: any IPCDirectRegistry, name: String)?
    /// Direct clients until they end (held strongly: a weak reference would slow every call).
    private var directBindings: [DirectServiceBinding] = []

    /// Creates a host serving at `backend`'s address. Loop-only (the backend's loop).
    ///
    /// - Throws: ``IPCError`` if the address cannot be listened on (or the name is taken).
    public init(
        backend: IPCBackend, receiveCapacity: Int = WireLimits.defaultReceiveCapacity,
        logger: Logger = Logger(label: "perfetto.ipc.host")
    ) throws(IPCError) {
        eventLoop = backend.eventLoop
        self.receiveCapacity = receiveCapacity
        self.logger = logger
        eventLoop.preconditionInEventLoop()
        switch backend.kind {
        case .transport(let transport, let address):
            self.transport = transport
            listener = try transport.listen(at: address, options: backend.options, delegate: self)
        case .direct(let registry, let name, _):
            transport = nil
            try registry.registerDirectHost(self, name: name)
            directRegistration = (registry, name)
        }
    }

    /// Creates a host that listens at `address` on `transport`. Loop-only.
    public convenience init(
        transport: any IPCTransport, listeningAt address: String, options: ConnectionOptions = .default,
        receiveCapacity: Int = WireLimits.defaultReceiveCapacity, logger: Logger = Logger(label: "perfetto.ipc.host")
    ) throws(IPCError) {
        try self.init(
            backend: .transport(transport, address: address, options: options), receiveCapacity: receiveCapacity,
            logger: logger)
    }

    /// Creates a host with no listener: give it connections with ``adopt(_:)``. Loop-only.
    public init(
        transport: any IPCTransport, receiveCapacity: Int = WireLimits.defaultReceiveCapacity,
        logger: Logger = Logger(label: "perfetto.ipc.host")
    ) {
        self.transport = transport
        eventLoop = transport.eventLoop
        self.receiveCapacity = receiveCapacity
        self.logger = logger
    }

    deinit {
        listener?.close()
        for client in clients.values { client.connection.close() }
        if let (registry, name) = directRegistration { registry.unregisterDirectHost(self, name: name) }
        // Direct clients learn of it like of a closed socket: on a later loop turn.
        let bindings = directBindings
        for binding in bindings { binding.hostIsGone = true }
        if !bindings.isEmpty {
            let box = UncheckedSendableBox(bindings)
            eventLoop.execute {
                for binding in box.value { binding.end(IPCError(.disconnected, "the host is gone"), notifyProxy: true) }
            }
        }
    }

    /// The address the host listens on (a TCP port 0 is resolved), or its direct name.
    public var address: String? { listener?.address ?? directRegistration?.name }

    /// Clients currently connected (direct bindings included).
    public var clientCount: Int { clients.count + directBindings.filter { !$0.ended }.count }

    /// Exposes `service` under its unqualified name. Service ids are assigned in exposure order
    /// (1, 2, …). Returns `false` (and exposes nothing) if a service of that name is already
    /// exposed. Loop-only.
    @discardableResult
    public func expose(_ service: any IPCService) -> Bool {
        eventLoop.preconditionInEventLoop()
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
        eventLoop.preconditionInEventLoop()
        accept(connection)
    }

    /// Stops listening and drops every client; services are told each client went away, and
    /// direct clients' outstanding calls are rejected. Loop-only; idempotent.
    public func close() {
        eventLoop.preconditionInEventLoop()
        listener?.close()
        listener = nil
        if let (registry, name) = directRegistration {
            registry.unregisterDirectHost(self, name: name)
            directRegistration = nil
        }
        for client in Array(clients.values) {
            client.connection.close()
            clientDidDisconnect(client, reason: nil)
        }
        let bindings = directBindings
        directBindings.removeAll()
        for binding in bindings where !binding.ended {
            binding.end(IPCError(.disconnected, "the host was closed"), notifyProxy: true)
            for service in services { service.clientDidDisconnect(binding.clientInfo) }
        }
    }

    public func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
        accept(connection)
    }

    /// Logged: new clients wait until descriptors are free again (other clients are served).
    public func listener(_ listener: any IPCListener, didFailToAccept error: IPCError) {
        logger.warning("cannot accept new clients on \(listener.address), they wait until this succeeds again: \(error.message)")
    }

    private func accept(_ connection: any IPCConnection) {
        let uid = connection.peer.uid
        if let uid, let limit = maxClientsPerUID, !clientLimitExemptUIDs.contains(uid), clientCountByUID[uid, default: 0] >= limit {
            clientsRefusedForTheirUID += 1
            if clientsRefusedForTheirUID % 1000 == 1 {
                logger.warning("uid \(uid) has \(limit) clients connected, the most one uid may have: its newcomers are closed (\(clientsRefusedForTheirUID) so far)")
            }
            connection.close()
            return
        }
        let id = takeClientID()
        do {
            let client = try HostClient(id: id, connection: connection, host: self)
            connection.delegate = client
            clients[id] = client
            if let uid { clientCountByUID[uid, default: 0] += 1 }
        } catch {
            logger.error("cannot serve new client: \(error)")
            connection.close()
        }
    }

    private func takeClientID() -> UInt64 {
        defer { nextClientID += 1 }
        return nextClientID
    }

    /// The receive buffers of the connected clients, in client-id order (test hook).
    package var receiveBuffersForTesting: [FrameDeserializer] {
        clients.sorted { $0.key < $1.key }.map(\.value.deserializer)
    }

    /// The exposed services, in service-id order (test hook).
    package var exposedServicesForTesting: [any IPCService] { services }

    /// Clients connected over the transport (test hook).
    package var connectedClientCountForTesting: Int { clients.count }

    // MARK: Package interface for HostClient, the dispatcher and direct clients

    func clientDidDisconnect(_ client: HostClient, reason: IPCError?) {
        guard clients.removeValue(forKey: client.id) != nil else { return }
        if let uid = client.connection.peer.uid, let count = clientCountByUID[uid] {
            clientCountByUID[uid] = count > 1 ? count - 1 : nil
        }
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

    /// Binds `proxy` directly to the service of its name, as a new client of this host.
    func makeDirectBinding(for proxy: ServiceProxy) throws(IPCError) -> DirectServiceBinding {
        guard directRegistration != nil else { throw IPCError(.disconnected, "the host is closed") }
        guard let id = serviceID(named: proxy.descriptor.name), let service = service(withID: id) else {
            throw IPCError(.serviceNotFound, "the host does not expose \(proxy.descriptor.name)")
        }
        let info = IPCClientInfo(clientID: takeClientID(), uid: getuid(), pid: getpid(), machineID: 0)
        let binding = DirectServiceBinding(host: self, service: service, proxy: proxy, clientInfo: info)
        directBindings.append(binding)
        return binding
    }

    /// A direct client let go of `binding`: tell the services, as for a disconnect.
    func directBindingEnded(_ binding: DirectServiceBinding) {
        directBindings.removeAll { $0 === binding }
        for service in services { service.clientDidDisconnect(binding.clientInfo) }
    }
}

