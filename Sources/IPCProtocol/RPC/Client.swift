// The client side of Perfetto IPC: one connection to a host, over which service proxies are
// bound and called.
//
// Contract:
// * request ids start at 1 and grow by one for every request, binds included;
// * binds asked for before the connection is up are queued and sent once it is;
// * a second proxy for a service name that is already bound fails (`alreadyBound`);
// * when the connection ends, every outstanding call is rejected (streaming ones too) and
//   every proxy is told; then nothing more is called;
// * destroying the client (even inside its own disconnect callback) or a proxy releases its
//   callbacks without calling them.
// Loop-bound: create, bind and call on the transport's loop.

import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A connection to an IPC host, carrying service proxies.
///
/// ```swift
/// let client = IPCClient(transport: transport, connectingTo: "/run/echo.sock")
/// let echo = Pfpeers_EchoServiceProxy()
/// client.bind(echo)
/// ```
public final class IPCClient: IPCConnectionDelegate {
    /// The loop the client lives on.
    public let eventLoop: any IPCEventLoop
    public let logger: Logger
    /// Called once the connection is up (before queued binds are answered).
    public var onConnect: (() -> Void)?
    /// Called once when the connection ends or fails, after proxies and calls were told.
    public var onDisconnect: ((IPCError?) -> Void)?
    /// What this client says about its machine to a host it reaches over TCP or vsock (the
    /// SetPeerIdentity frame sent first there): the hint the host derives the machine's id from
    /// (nil: this machine's boot id) and the machine's name (nil: ``machineName()``). Set it
    /// right after creating the client; the frame goes out when the connection comes up.
    public var announcedMachineIDHint: String?
    public var announcedMachineName: String?

    private var connection: (any IPCConnection)?
    /// Nil for a direct client (no frames) or if the receive buffer could not be mapped (the
    /// client then fails at once, through ``onDisconnect`` and its proxies).
    private let deserializer: FrameDeserializer?
    private let trimmer: IdleBufferTrimmer?
    private let maxPayloadSize: Int
    private let receivedFD = ReceivedFDSlot()
    // Per-call state: unchecked exclusivity (loop-confined; Threading.md, "Costs").
    @exclusivity(unchecked) private var nextRequestID: UInt64 = 1
    @exclusivity(unchecked) private var pending = PendingRequests<PendingRequest>()
    private var queuedBinds: [ServiceProxy] = []
    private var boundProxies: [ObjectIdentifier: Weak<ServiceProxy>] = [:]
    private var ended = false
    /// For a client made from a `.direct` backend: where to find the host.
    private var direct: (registry: any IPCDirectRegistry, name: String)?
    /// Direct bindings of this client's proxies, held strongly until their proxy goes.
    private var directBindings: [DirectServiceBinding] = []

    private enum PendingRequest {
        case bind(Weak<ServiceProxy>)
        /// `streaming`: the method streams replies; a unary call ends at its first reply,
        /// whatever has_more the host sent with it.
        case invoke(proxy: ObjectIdentifier, callback: (RawReply) -> Void, streaming: Bool)
    }

    /// Connects to the host at `backend`'s address (or, for `.direct`, finds it by name).
    /// Loop-only; the outcome arrives through proxies' callbacks, ``onConnect`` and
    /// ``onDisconnect``.
    public convenience init(
        backend: IPCBackend, receiveCapacity: Int = WireLimits.defaultReceiveCapacity,
        logger: Logger = Logger(label: "perfetto.ipc.client")
    ) {
        switch backend.kind {
        case .transport(let transport, let address):
            self.init(
                transport: transport, connectingTo: address, options: backend.options, receiveCapacity: receiveCapacity,
                logger: logger)
        case .direct(let registry, let name, let loop):
            self.init(directRegistry: registry, name: name, loop: loop, logger: logger)
        }
    }

    private init(directRegistry: any IPCDirectRegistry, name: String, loop: any IPCEventLoop, logger: Logger) {
        eventLoop = loop
        self.logger = logger
        loop.preconditionInEventLoop()
        deserializer = nil
        trimmer = nil
        maxPayloadSize = 0
        direct = (directRegistry, name)
        let box = UncheckedSendableBox(Weak(self))
        loop.execute {
            guard let client = box.value.object, !client.ended else { return }
            client.onConnect?()
        }
    }

    /// Connects to the host at `address`. Loop-only; the outcome arrives through proxies'
    /// callbacks, ``onConnect`` and ``onDisconnect``.
    public init(
        transport: any IPCTransport, connectingTo address: String, options: ConnectionOptions = .default,
        receiveCapacity: Int = WireLimits.defaultReceiveCapacity, logger: Logger = Logger(label: "perfetto.ipc.client")
    ) {
        eventLoop = transport.eventLoop
        self.logger = logger
        eventLoop.preconditionInEventLoop()
        maxPayloadSize = receiveCapacity - WireLimits.frameHeaderSize
        do {
            let frames = try FrameDeserializer(capacity: receiveCapacity)
            deserializer = frames
            trimmer = IdleBufferTrimmer(deserializer: frames, loop: eventLoop)
        } catch {
            deserializer = nil
            trimmer = nil
            failLater(error)
            return
        }
        connection = transport.connect(to: address, options: options, delegate: self)
    }

    /// Uses a connection that is already connected (e.g. adopted from a socketpair). Loop-only.
    public init(
        connection: any IPCConnection, eventLoop: any IPCEventLoop,
        receiveCapacity: Int = WireLimits.defaultReceiveCapacity, logger: Logger = Logger(label: "perfetto.ipc.client")
    ) {
        self.eventLoop = eventLoop
        self.logger = logger
        eventLoop.preconditionInEventLoop()
        maxPayloadSize = receiveCapacity - WireLimits.frameHeaderSize
        do {
            let frames = try FrameDeserializer(capacity: receiveCapacity)
            deserializer = frames
            trimmer = IdleBufferTrimmer(deserializer: frames, loop: eventLoop)
        } catch {
            deserializer = nil
            trimmer = nil
            connection.close()
            failLater(error)
            return
        }
        self.connection = connection
        connection.delegate = self
        if connection.state == .connected {
            let box = UncheckedSendableBox((client: self, connection: connection))
            eventLoop.execute { box.value.client.connectionDidConnect(box.value.connection) }
        }
    }

    /// Reports a failure to set up on the next loop turn, like a failed connect.
    private func failLater(_ error: IPCError) {
        let box = UncheckedSendableBox(Weak(self))
        eventLoop.execute { box.value.object?.end(error) }
    }

    deinit {
        // The last reference may go on another thread (a task, a test's main thread): the
        // connection is then closed on its loop, where everything about it happens.
        if let connection {
            let box = UncheckedSendableBox(connection)
            eventLoop.runNowOrPost { box.value.close() }
        }
        let bindings = directBindings
        if !bindings.isEmpty {
            let box = UncheckedSendableBox(bindings)
            eventLoop.runNowOrPost { box.value.forEach { $0.abandon() } }
        }
    }

    /// Whether the connection is up (a direct client is connected until closed).
    public var isConnected: Bool { !ended && (direct != nil || connection?.state == .connected) }

    /// The host's identity (uid/pid on unix sockets).
    public var peer: PeerIdentity? { connection?.peer }

    /// Binds `proxy` to its service on the host; queued until the connection is up. The
    /// proxy's `onConnect` or `onConnectionFailed` tells the outcome. Loop-only.
    public func bind(_ proxy: ServiceProxy) {
        eventLoop.preconditionInEventLoop()
        precondition(proxy.client == nil || proxy.client === self, "a proxy binds to one client")
        proxy.attach(to: self)
        if direct != nil {
            let box = UncheckedSendableBox((self, proxy))
            eventLoop.execute { box.value.0.bindDirectly(box.value.1) }
        } else if ended {
            proxy.bindingFailed(IPCError(.disconnected, "the client is disconnected"))
        } else if isConnected {
            sendBind(proxy)
        } else {
            queuedBinds.append(proxy)
        }
    }

    /// Closes the connection. Outstanding calls are rejected and proxies told, as for a
    /// disconnect; ``onDisconnect`` is called. Loop-only; idempotent.
    public func close() {
        eventLoop.preconditionInEventLoop()
        connection?.close()
        let error = IPCError(.disconnected, "the client was closed")
        let bindings = directBindings
        directBindings.removeAll()
        for binding in bindings { binding.closeFromClient(error) }
        end(error)
    }

    /// The connection's receive buffer (test hook).
    package var receiveBufferForTesting: FrameDeserializer? { deserializer }

    /// Calls waiting for a reply (test hook).
    package var pendingRequestCountForTesting: Int { pending.count }

    /// Binds `proxy` to the service of its name on the direct host, as a new client of it.
    private func bindDirectly(_ proxy: ServiceProxy) {
        guard let direct, !ended else {
            proxy.bindingFailed(IPCError(.disconnected, "the client is closed"))
            return
        }
        let name = proxy.descriptor.name
        directBindings.removeAll { $0.ended }
        if directBindings.contains(where: { $0.serviceName == name }) {
            proxy.bindingFailed(IPCError(.alreadyBound, "service \(name) is already bound on this client"))
            return
        }
        guard let host = direct.registry.directHost(named: direct.name) else {
            proxy.bindingFailed(IPCError(.connectionFailed, "no direct host named \"\(direct.name)\"", address: direct.name))
            return
        }
        guard host.eventLoop === eventLoop else {
            proxy.bindingFailed(IPCError(.connectionFailed, "the direct host \"\(direct.name)\" lives on another loop", address: direct.name))
            return
        }
        do {
            let binding = try host.makeDirectBinding(for: proxy)
            directBindings.append(binding)
            proxy.didBindDirectly(binding)
        } catch {
            proxy.bindingFailed(error)
        }
    }

    // MARK: Requests (for ServiceProxy)

    /// Sends InvokeMethod; `callback` nil means drop_reply. Returns the request id, or nil if
    /// the request could not be sent (the callback was then rejected).
    @discardableResult
    func invoke(
        serviceID: UInt32, methodID: UInt32, arguments: consuming OutgoingFrame.Payload, fd: Int32?, proxy: ServiceProxy,
        streaming: Bool, callback: ((RawReply) -> Void)?
    ) -> UInt64? {
        guard isConnected, let connection else {
            proxy.rejectLater(callback, IPCError(.disconnected, "not connected"))
            return nil
        }
        let requestID = takeRequestID()
        let frame = OutgoingFrame.invokeMethod(
            requestID: requestID, serviceID: serviceID, methodID: methodID, arguments: consume arguments,
            dropReply: callback == nil)
        guard frame.payloadSize <= maxPayloadSize else {
            proxy.rejectLater(
                callback,
                IPCError(.frameTooLarge, "request of \(frame.payloadSize) bytes exceeds the frame limit of \(maxPayloadSize)"))
            return nil
        }
        if let callback {
            pending.insert(.invoke(proxy: ObjectIdentifier(proxy), callback: callback, streaming: streaming), for: requestID)
        }
        guard frame.send(on: connection, fd: fd) else {
            if let callback, pending.removeValue(for: requestID) != nil {
                proxy.rejectLater(callback, IPCError(.disconnected, "the request could not be sent"))
            }
            return nil
        }
        return requestID
    }

    /// Forgets a pending call: its callback is released and never called.
    func cancelRequest(_ requestID: UInt64) {
        pending.removeValue(for: requestID)
    }

    /// A proxy is going away: release its callbacks and let its name be bound again.
    func forgetProxy(_ id: ObjectIdentifier) {
        directBindings.removeAll { $0.proxyID == id }
        boundProxies[id] = nil
        queuedBinds.removeAll { ObjectIdentifier($0) == id }
        pending.removeAll { request in
            if case .invoke(let proxy, _, _) = request { return proxy == id }
            return false
        }
    }

    // MARK: IPCConnectionDelegate

    public func connectionDidConnect(_ connection: any IPCConnection) {
        guard !ended else { return }
        if !connection.peer.isLocal { sendPeerIdentity() }
        onConnect?()
        let binds = queuedBinds
        queuedBinds.removeAll()
        for proxy in binds where !ended { sendBind(proxy) }
    }

    public func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {
        end(error)
    }

    public func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {
        // Whatever ended it (orderly close, reset, send timeout), calls see `.disconnected`;
        // the cause stays in the message and errno.
        guard let error else { return end(IPCError(.disconnected, "the host closed the connection")) }
        end(IPCError(.disconnected, "connection lost: \(error.message)", errno: error.errno, address: error.address))
    }

    public func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer {
        deserializer?.receiveSpace ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
    }

    public func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        guard let deserializer else { return }  // never: connections exist only with one
        var framingError: IPCError?
        do {
            // Replies are handed over while they still lie in the receive buffer: the proxy
            // decodes them from there.
            try deserializer.endReceive(byteCount: byteCount, fileDescriptor: fileDescriptor) { frame, fd in
                guard !ended else { return false }
                if let fd { receivedFD.store(fd) }
                handle(frame)
                return true
            }
        } catch {
            framingError = error
        }
        if !ended { trimmer?.bytesReceived() }
        if let framingError, !ended {
            logger.warning("closing connection to host: \(framingError)")
            connection.close()
            end(framingError)
        }
    }

    // MARK: Internals

    private func takeRequestID() -> UInt64 {
        defer { nextRequestID += 1 }
        return nextRequestID
    }

    private func sendBind(_ proxy: ServiceProxy) {
        let name = proxy.descriptor.name
        let alreadyBound = boundProxies.values.contains { $0.object?.descriptor.name == name && $0.object !== proxy }
            || pending.contains { if case .bind(let other) = $0 { return other.object?.descriptor.name == name }; return false }
        if alreadyBound {
            let box = UncheckedSendableBox(proxy)
            eventLoop.execute {
                box.value.bindingFailed(IPCError(.alreadyBound, "service \(name) is already bound on this client"))
            }
            return
        }
        let requestID = takeRequestID()
        var frame = IPCFrame()
        frame.requestID = requestID
        frame.msgBindService.serviceName = name
        pending.insert(.bind(Weak(proxy)), for: requestID)
        boundProxies[ObjectIdentifier(proxy)] = Weak(proxy)
        connection?.sendFrame(frame, maxPayloadSize: maxPayloadSize, logger: logger)
    }

    private func sendPeerIdentity() {
        var frame = IPCFrame()
        frame.setPeerIdentity.pid = getpid()
        frame.setPeerIdentity.uid = Int32(bitPattern: getuid())
        if let hint = announcedMachineIDHint ?? Self.bootID() { frame.setPeerIdentity.machineIDHint = hint }
        frame.setPeerIdentity.machineName = announcedMachineName ?? Self.machineName()
        connection?.sendFrame(frame, maxPayloadSize: maxPayloadSize, logger: logger)
    }

    /// The name this machine goes by in traces of several machines, as Perfetto picks it:
    /// `PERFETTO_MACHINE_NAME`, else the kernel's name (`uname -s`).
    public static func machineName() -> String {
        if let name = getenv("PERFETTO_MACHINE_NAME") { return String(cString: name) }
        var names = utsname()
        guard uname(&names) == 0 else { return "" }
        return withUnsafeBytes(of: &names.sysname) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// This machine's boot id (`/proc/sys/kernel/random/boot_id`, without its newline), the
    /// hint a host derives a remote machine's id from.
    public static func bootID() -> String? {
        let fd = Glibc.open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc.close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let text = String(decoding: bytes[0..<count], as: UTF8.self)
        let trimmed = text.prefix { !$0.isWhitespace }
        return trimmed.isEmpty ? nil : String(trimmed)
    }

    private func handle(_ frame: ReceivedFrame) {
        switch frame {
        case .invokeMethodReply(let requestID, let success, let hasMore, let reply):
            handleReply(requestID: requestID, success: success, hasMore: hasMore, bytes: reply)
        case .invokeMethod(let requestID, _, _, _, _):
            logger.info("ignoring unexpected frame from host (request \(requestID))")
        case .other(let frame):
            handle(frame)
        }
    }

    /// An InvokeMethodReply; `bytes` (the reply) is valid only during the call.
    private func handleReply(requestID: UInt64, success: Bool, hasMore: Bool, bytes: UnsafeRawBufferPointer) {
        // Looked at before it is removed: a reply naming a bind's request id must leave the
        // bind waiting for its own reply (removed first, a hostile host's stray reply made the
        // bind wait for ever).
        guard case .invoke(let proxyID, let callback, let streaming)? = pending[requestID] else {
            logger.debug("reply for unknown or cancelled request \(requestID)")
            return
        }
        // A unary call's callback runs once: a host answering it with has_more is taken at its
        // first word, and its further replies find no request.
        let hasMore = success && hasMore && streaming
        if !hasMore { pending.removeValue(for: requestID) }
        guard boundProxies[proxyID]?.object != nil else { return }
        let fd = receivedFD.take()
        if success {
            callback(RawReply(bytes: bytes, hasMore: hasMore, fileDescriptor: fd))
        } else {
            callback(RawReply(rejectedWith: IPCError(.remoteFailure, "the host rejected the call")))
        }
    }

    private func handle(_ frame: IPCFrame) {
        switch frame.msg {
        case .msgBindServiceReply(let reply):
            guard case .bind(let weakProxy)? = pending[frame.requestID] else {
                logger.debug("bind reply for unknown request \(frame.requestID)")
                return
            }
            pending.removeValue(for: frame.requestID)
            guard let proxy = weakProxy.object else { return }
            if reply.success {
                proxy.didBind(serviceID: reply.serviceID, methods: reply.methods)
            } else {
                boundProxies[ObjectIdentifier(proxy)] = nil
                proxy.bindingFailed(IPCError(.serviceNotFound, "the host does not expose \(proxy.descriptor.name)"))
            }
        case .msgInvokeMethodReply(let reply):
            reply.replyProto.withUnsafeBytes { bytes in
                handleReply(requestID: frame.requestID, success: reply.success, hasMore: reply.hasMore, bytes: bytes)
            }
        case .msgRequestError(let error):
            switch pending.removeValue(for: frame.requestID) {
            case .bind(let weakProxy)?:
                weakProxy.object?.bindingFailed(IPCError(.protocolViolation, "host error: \(error.error)"))
            case .invoke(_, let callback, _)?:
                callback(RawReply(rejectedWith: IPCError(.protocolViolation, "host error: \(error.error)")))
            case nil:
                // Quoted and escaped: the host's words must not drive the terminal the log goes to.
                logger.info("host reported \(String(reflecting: error.error)) for request \(frame.requestID)")
            }
        default:
            logger.info("ignoring unexpected frame from host (request \(frame.requestID))")
        }
    }

    /// Rejects everything outstanding and tells proxies, once.
    private func end(_ error: IPCError) {
        guard !ended else { return }
        ended = true
        trimmer?.cancel()
        let outstanding = pending.values
        pending.removeAll()
        let queued = queuedBinds
        queuedBinds.removeAll()
        let bound = boundProxies.values.compactMap(\.object)
        boundProxies.removeAll()
        receivedFD.take()?.close()

        for request in outstanding {
            switch request {
            case .invoke(_, let callback, _): callback(RawReply(rejectedWith: error))
            case .bind: break  // its proxy is in `bound` and is told below
            }
        }
        for proxy in queued { proxy.bindingFailed(error) }
        for proxy in bound { proxy.connectionEnded(error) }
        onDisconnect?(error)
    }
}


/// Carries a loop-bound object through `execute`, which wants `@Sendable` closures. Sound
/// because the object is only used on the loop it belongs to, which is where `execute` runs.
///
/// Do not write `let (a, b) = box.value` for a tuple value: Swift 6.3.1 over-releases the tuple's
/// elements when one is destructured out of a generic struct (a closure element makes it
/// reliable; 10-line repro in the #9 notes). Read `box.value.0` / `.1`, or use one box each.
package struct UncheckedSendableBox<Value>: @unchecked Sendable {
    package let value: Value
    package init(_ value: Value) { self.value = value }
}
