// The client-side handle of one remote service. Generated proxies subclass it and add one
// typed method per RPC; everything stateful lives here.
//
// States: unbound -> binding -> bound -> disconnected, or binding -> failed.
// Calls are only sent while bound; method ids come from the bind reply, looked up by name, so
// a host whose .proto lists methods in another order still works.

import Synchronization
import SwiftProtobuf

/// Client-side proxy of a remote service.
///
/// Callback methods and properties are loop-only; the `async` methods and streams may be used
/// from any task (they hop onto the loop), which is why a proxy is `Sendable`.
open class ServiceProxy: @unchecked Sendable {
    // @unchecked Sendable: every mutable field is touched only on the loop (checked with
    // preconditionInEventLoop at the entry points) except `loop`, which is behind a ThreadLock.
    /// Where a proxy is in its life.
    public enum State: Sendable, Hashable {
        case unbound, binding, bound, failed, disconnected
    }

    /// The service this proxy talks to.
    public let descriptor: ServiceDescriptor
    /// Where the proxy is in its life.
    // Unchecked exclusivity (Threading.md, "Costs"): read on every call, loop-confined, never
    // accessed across a call into user code.
    @exclusivity(unchecked) public private(set) var state: State = .unbound
    /// The error that failed or ended the binding.
    public private(set) var lastError: IPCError?

    /// The service is bound: calls can be made.
    public var onConnect: (() -> Void)?
    /// The bind failed (unknown service, already bound, host unreachable).
    public var onConnectionFailed: ((IPCError) -> Void)?
    /// The connection ended after a successful bind. Outstanding calls were rejected first.
    public var onDisconnect: ((IPCError) -> Void)?

    /// Held weakly (Weak.swift: no side table for the client, whose every call passes here).
    var client: IPCClient? {
        get { ObjectAnchor.load(clientAnchor?.address) }
        set { clientAnchor = newValue.map { ObjectAnchor($0) } }
    }
    @exclusivity(unchecked) private var clientAnchor: ObjectAnchor?
    /// Set when bound through the direct short circuit instead of frames.
    @exclusivity(unchecked) @usableFromInline var directBinding: DirectServiceBinding?
    private let loop = ThreadLock<(any IPCEventLoop)?>(nil)
    /// The loop of the client this proxy was bound to, once bound. Thread-safe.
    public var eventLoop: (any IPCEventLoop)? { loop.withLock { $0 } }
    private var serviceID: UInt32 = 0
    /// The host's method id for each method of ``descriptor``, by index (0: the host lacks it).
    private var methodIDs: [UInt32] = []
    private var bindWaiters: [(Result<Void, IPCError>) -> Void] = []

    public init(descriptor: ServiceDescriptor) {
        self.descriptor = descriptor
    }

    deinit {
        guard let loop = eventLoop else { return }
        let box = UncheckedSendableBox((Weak(client), directBinding, ObjectIdentifier(self)))
        loop.runNowOrPost { Self.forget(box.value) }
    }

    /// Releases what the client or direct binding keeps for a proxy that is going away.
    private static func forget(_ parts: (Weak<IPCClient>, DirectServiceBinding?, ObjectIdentifier)) {
        parts.0.object?.forgetProxy(parts.2)
        parts.1?.abandon()
    }

    /// Whether calls can be made.
    public var isBound: Bool { state == .bound }

    /// Sends a call of `method` (by name); `reply` nil means the host sends no reply
    /// (drop_reply). Without a binding, or for a method the host does not have, `reply` is
    /// rejected on a later loop turn. Loop-only.
    public func invoke<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        _ method: String, _ request: Request, fd: Int32? = nil, reply: ((AsyncResult<Reply>) -> Void)?
    ) {
        send(methodAt: methodIndex(named: method), request, fd: fd, reply: reply)
    }

    /// Sends a call of the method at `index` in ``descriptor`` (what generated proxies use:
    /// no name lookup per call). Otherwise like ``invoke(_:_:fd:reply:)``. Loop-only.
    @inlinable
    public final func invoke<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodAt index: Int, _ request: Request, fd: Int32? = nil, reply: ((AsyncResult<Reply>) -> Void)?
    ) {
        send(methodAt: index, request, fd: fd, reply: reply)
    }

    /// The core of the invoke methods; returns the request id when sent, for cancellation.
    @inlinable
    @discardableResult
    final func send<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodAt index: Int, _ request: Request, fd: Int32?, reply: ((AsyncResult<Reply>) -> Void)?
    ) -> UInt64? {
        if let binding = directBinding, state == .bound {
            binding.loop.preconditionInEventLoop()
            return binding.call(methodAt: index, request, fd: fd, reply: reply, from: self)
        }
        // Not `reply.map(Self.decoding)`: a closure through generic `map` costs two
        // reabstraction thunks, two allocations per call.
        var callback: ((RawReply) -> Void)?
        if let reply { callback = Self.decoding(reply) }
        return sendFrame(methodAt: index, request, fd: fd, callback: callback)
    }

    /// Sends a call over the client's connection; `callback` gets each reply still encoded
    /// (or the rejection, on a later turn, if the call cannot be sent).
    @inlinable
    final func sendFrame<Request: SwiftProtobuf.Message>(
        methodAt index: Int, _ request: Request, fd: Int32?, callback: ((RawReply) -> Void)?
    ) -> UInt64? {
        let client: IPCClient
        switch frameCallTarget(methodAt: index) {
        case .success(let target): client = target
        case .failure(let error):
            rejectLater(callback, error)
            return nil
        }
        let arguments: OutgoingFrame.Payload
        do {
            arguments = try request.serializedBytes()
        } catch {
            rejectLater(callback, IPCError(.invalidArgument, "cannot encode \(Request.protoMessageName): \(error)"))
            return nil
        }
        // `consume` all the way down: the frame is finished in the payload's own storage, which
        // must stay uniquely referenced (a copy here would cost a copy-on-write of the frame).
        return sendInvoke(on: client, methodAt: index, arguments: consume arguments, fd: fd, callback: callback)
    }

    /// Like ``invoke(methodAt:_:fd:reply:)``, but each reply reaches `reply` still encoded:
    /// the bytes of its `Reply` message, valid only during that call, or nil with the error
    /// when the call failed. For a caller that parses a bulky reply itself (ConsumerPort's
    /// trace data). Over a direct binding the reply messages are encoded for it. Loop-only.
    package final func invokeEncoded<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodAt index: Int, _ request: Request, replyType: Reply.Type,
        reply: @escaping (_ bytes: UnsafeRawBufferPointer?, _ hasMore: Bool, _ error: IPCError?) -> Void
    ) {
        if directBinding != nil, state == .bound {
            send(methodAt: index, request, fd: nil, reply: { (result: AsyncResult<Reply>) in
                guard let message = result.message, let bytes: [UInt8] = try? message.serializedBytes() else {
                    return reply(nil, false, result.error ?? IPCError(.remoteFailure, "the reply could not be encoded"))
                }
                bytes.withUnsafeBytes { reply($0, result.hasMore, nil) }
            })
            return
        }
        _ = sendFrame(methodAt: index, request, fd: nil) { result in
            reply(result.bytes, result.bytes != nil && result.hasMore, result.bytes == nil ? result.error : nil)
        }
    }

    /// The client to send a call over frames on, or why it cannot be sent now (the weak
    /// client is loaded once per call). Traps off the loop.
    @usableFromInline
    final func frameCallTarget(methodAt index: Int) -> Result<IPCClient, IPCError> {
        let client = self.client
        (directBinding?.loop ?? client?.eventLoop)?.preconditionInEventLoop()
        guard state == .bound else { return .failure(lastError ?? IPCError(.disconnected, "\(descriptor.name) is not bound")) }
        guard let client else { return .failure(IPCError(.disconnected, "the client of \(descriptor.name) is gone")) }
        guard index >= 0, index < methodIDs.count, methodIDs[index] != 0 else { return .failure(missingMethodError(at: index)) }
        return .success(client)
    }

    @usableFromInline
    final func sendInvoke(
        on client: IPCClient, methodAt index: Int, arguments: consuming OutgoingFrame.Payload, fd: Int32?,
        callback: ((RawReply) -> Void)?
    ) -> UInt64? {
        client.invoke(
            serviceID: serviceID, methodID: methodIDs[index], arguments: consume arguments, fd: fd, proxy: self,
            streaming: descriptor.methods[index].isServerStreaming, callback: callback)
    }

    /// The index in ``descriptor`` of the method called `name`, or -1.
    package final func methodIndex(named name: String) -> Int {
        descriptor.methods.firstIndex { $0.name == name } ?? -1
    }

    @usableFromInline
    final func missingMethodError(at index: Int) -> IPCError {
        let name = descriptor.methods.indices.contains(index) ? descriptor.methods[index].name : "#\(index)"
        return IPCError(.methodNotFound, "\(descriptor.name) on the host has no method \(name)")
    }

    /// Rejects a call that could not even be sent, on a later loop turn: never inside the
    /// caller's own `invoke`, so a callback that issues the next call cannot recurse without
    /// bound; and never once the proxy is gone.
    @usableFromInline
    func rejectLater<Reply>(_ reply: ((AsyncResult<Reply>) -> Void)?, _ error: IPCError) {
        guard let reply else { return }
        callLater { reply(.rejected(error)) }
    }

    /// ``rejectLater(_:_:)`` for a reply callback of the frame path.
    @usableFromInline
    func rejectLater(_ reply: ((RawReply) -> Void)?, _ error: IPCError) {
        guard let reply else { return }
        callLater { reply(RawReply(rejectedWith: error)) }
    }

    private func callLater(_ body: @escaping () -> Void) {
        guard let loop = directBinding?.loop ?? client?.eventLoop ?? eventLoop else {
            body()  // never bound to any loop: nothing to defer to
            return
        }
        let box = UncheckedSendableBox((Weak(self), body))
        loop.execute {
            guard box.value.0.object != nil else { return }
            box.value.1()
        }
    }

    /// Forgets a pending call: its callback is released and never called. Loop-only.
    func cancelRequest(_ requestID: UInt64) {
        if let directBinding {
            directBinding.cancel(requestID)
        } else {
            client?.cancelRequest(requestID)
        }
    }

    @inlinable
    static func decoding<Reply: SwiftProtobuf.Message>(
        _ reply: @escaping (AsyncResult<Reply>) -> Void
    ) -> (RawReply) -> Void {
        { raw in
            guard let bytes = raw.bytes else {
                reply(.rejected(raw.error ?? IPCError(.remoteFailure, "the call was rejected")))
                return
            }
            do {
                // Decoded straight from the client's receive buffer.
                let message = try Reply(serializedBytes: RawSpan(_unsafeBytes: bytes))
                reply(AsyncResult(message, hasMore: raw.hasMore, fileDescriptor: raw.fileDescriptor))
            } catch {
                reply(.rejected(IPCError(.protocolViolation, "undecodable \(Reply.protoMessageName) in reply: \(error)")))
            }
        }
    }

    // MARK: Binding (driven by IPCClient)

    func attach(to client: IPCClient) {
        self.client = client
        loop.withLock { $0 = client.eventLoop }
        state = .binding
    }

    func didBindDirectly(_ binding: DirectServiceBinding) {
        directBinding = binding
        state = .bound
        finishBindWaiters(.success(()))
        onConnect?()
    }

    func didBind(serviceID: UInt32, methods: [IPCFrame.BindServiceReply.MethodInfo]) {
        self.serviceID = serviceID
        let ids = Dictionary(methods.map { ($0.name, $0.id) }, uniquingKeysWith: { first, _ in first })
        methodIDs = descriptor.methods.map { ids[$0.name] ?? 0 }
        state = .bound
        finishBindWaiters(.success(()))
        onConnect?()
    }

    func bindingFailed(_ error: IPCError) {
        guard state == .binding || state == .unbound else { return }
        state = .failed
        lastError = error
        finishBindWaiters(.failure(error))
        onConnectionFailed?(error)
    }

    func connectionEnded(_ error: IPCError) {
        if state == .binding { return bindingFailed(error) }
        guard state == .bound else { return }
        state = .disconnected
        lastError = error
        onDisconnect?(error)
    }

    /// Calls `body` once binding has succeeded or failed (at once if it already has).
    func whenBound(_ body: @escaping (Result<Void, IPCError>) -> Void) {
        switch state {
        case .bound: body(.success(()))
        case .failed, .disconnected: body(.failure(lastError ?? IPCError(.disconnected, "not bound")))
        case .unbound, .binding: bindWaiters.append(body)
        }
    }

    private func finishBindWaiters(_ result: Result<Void, IPCError>) {
        let waiters = bindWaiters
        bindWaiters.removeAll()
        waiters.forEach { $0(result) }
    }
}

