// The direct short circuit: a proxy bound to a service in the same process and on the same
// loop calls the implementation with the request value itself. No encoding, no frames; every
// promise kept:
// * the call runs on a later loop turn, never inside the caller's own `invoke`;
// * a Deferred released unresolved rejects the call; a reply is delivered exactly once
//   (streams until has_more is false);
// * closing the host (or the client) rejects every outstanding call and tells the proxy;
// * a released proxy or client is never called back;
// * a file descriptor sent with a call is duplicated for the service, as SCM_RIGHTS would.

import SwiftProtobuf

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One proxy's direct connection to one service of a host. Loop-bound.
final class DirectServiceBinding {
    private weak var host: IPCHost?
    private weak var proxy: ServiceProxy?
    private let service: any IPCService
    let clientInfo: IPCClientInfo
    let loop: any IPCEventLoop
    private let receivedFD = ReceivedFDSlot()
    /// Method name -> index in the service's descriptor, looked up once per binding.
    private let methodIndexes: [String: Int]
    private var pending: [UInt64: any DirectCallProtocol] = [:]
    private var nextRequestID: UInt64 = 1
    private(set) var ended = false

    init(host: IPCHost, service: any IPCService, proxy: ServiceProxy, clientInfo: IPCClientInfo) {
        self.host = host
        self.service = service
        self.proxy = proxy
        self.clientInfo = clientInfo
        loop = host.eventLoop
        methodIndexes = Dictionary(
            service.serviceDescriptor.methods.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// Calls method `methodIndex` with `request`; `reply` nil means nobody wants the reply.
    /// Returns the request id (for cancellation), or nil if the call could not be made.
    func invoke<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodIndex: Int, request: Request, fd: Int32?, reply: ((AsyncResult<Reply>) -> Void)?
    ) -> UInt64? {
        guard !ended else {
            proxy?.rejectLater(reply, IPCError(.disconnected, "the host is gone"))
            return nil
        }
        let requestID = nextRequestID
        nextRequestID += 1
        let call = DirectCall<Reply>(binding: self, requestID: requestID, callback: reply)
        if reply != nil { pending[requestID] = call }
        var duplicate: ScopedFD?
        if let fd {
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            if copy >= 0 { duplicate = ScopedFD(copy) }
        }
        let box = UncheckedSendableBox((call, request, duplicate))
        loop.execute {
            // Member access, not `let (a, b, c) = box.value`: see UncheckedSendableBox.
            let call = box.value.0
            call.binding?.dispatch(methodIndex: methodIndex, request: box.value.1, fd: box.value.2, call: call)
        }
        return requestID
    }

    private func dispatch<Reply>(methodIndex: Int, request: some SwiftProtobuf.Message, fd: ScopedFD?, call: DirectCall<Reply>) {
        guard !ended, host != nil else {
            call.fail(IPCError(.disconnected, "the host is gone"))
            return
        }
        if let fd { receivedFD.store(fd) }
        let context = IPCCallContext(client: clientInfo, eventLoop: loop, fileDescriptorSlot: receivedFD)
        if !service.invoke(methodIndex: methodIndex, request: request, context: context, reply: call) {
            call.fail(IPCError(.remoteFailure, "\(service.serviceDescriptor.name) rejected the request"))
        }
    }

    /// A call is over: forget it. Returns whether it was still pending (and its proxy alive).
    fileprivate func finish(_ requestID: UInt64, final: Bool) -> Bool {
        let known = final ? pending.removeValue(forKey: requestID) != nil : pending[requestID] != nil
        return known && proxy != nil  // a gone proxy is never called back
    }

    /// The name of the bound service.
    var serviceName: String { service.serviceDescriptor.name }

    /// The index of the method called `name` in the service, if it has one.
    func methodIndex(named name: String) -> Int? {
        methodIndexes[name]
    }

    /// Forgets a call: its callback is released and never called.
    func cancel(_ requestID: UInt64) {
        pending[requestID] = nil
    }

    /// The host or client went away: reject what is outstanding, once, and tell the proxy.
    func end(_ error: IPCError, notifyProxy: Bool) {
        guard !ended else { return }
        ended = true
        let outstanding = pending.sorted { $0.key < $1.key }.map(\.value)
        pending.removeAll()
        receivedFD.take()?.close()
        for call in outstanding { call.reject(error) }
        if notifyProxy { proxy?.connectionEnded(error) }
    }

    /// The client side closed: reject what is outstanding, tell the proxy, and let the
    /// host tell its services that this client went away.
    func closeFromClient(_ error: IPCError) {
        guard !ended else { return }
        end(error, notifyProxy: true)
        host?.directBindingEnded(self)
    }

    /// The client or proxy was destroyed: release callbacks without calling them, and let
    /// the host tell its services.
    func abandon() {
        guard !ended else { return }
        ended = true
        pending.removeAll()
        receivedFD.take()?.close()
        host?.directBindingEnded(self)
    }
}

/// A call of a direct binding, typed by its reply: it is both the caller's pending entry and
/// the service's reply sink, so a reply goes from the service's Deferred to the caller's
/// callback with no encoding, no boxing and no dynamic cast.
final class DirectCall<Reply>: IPCReplySink, DeferredSink, DirectCallProtocol {
    fileprivate weak var binding: DirectServiceBinding?
    private let requestID: UInt64
    private var callback: ((AsyncResult<Reply>) -> Void)?

    init(binding: DirectServiceBinding, requestID: UInt64, callback: ((AsyncResult<Reply>) -> Void)?) {
        self.binding = binding
        self.requestID = requestID
        self.callback = callback
    }

    /// From a `Deferred<Reply>` made with `Deferred(replyingTo:)`.
    func receive(_ result: AsyncResult<Reply>) {
        guard let callback else { return }
        let final = !result.hasMore || !result.isSuccess
        if final { self.callback = nil }
        guard binding?.finish(requestID, final: final) ?? false else { return }
        callback(result)
    }

    /// The generated handlers' Deferred: delivers straight to ``receive(_:)``.
    func makeDeferred<Message: SwiftProtobuf.Message>(of type: Message.Type) -> Deferred<Message> {
        guard Message.self == Reply.self else { return Deferred { [self] in send($0) } }
        return unsafeDowncast(Deferred<Reply>(sink: self), to: Deferred<Message>.self)
    }

    /// From a Deferred of another shape (hand-written services): same type, or a mismatch.
    func send<Message: SwiftProtobuf.Message>(_ result: AsyncResult<Message>) {
        if Message.self == Reply.self {
            receive(unsafeBitCast(result, to: AsyncResult<Reply>.self))
        } else {
            fail(IPCError(.protocolViolation, "the service replied with \(Message.self), expected \(Reply.self)"))
        }
    }

    func fail(_ error: IPCError) { receive(.rejected(error)) }

    /// Rejected by the binding itself (host gone): the callback runs without bookkeeping.
    func reject(_ error: IPCError) {
        guard let callback else { return }
        self.callback = nil
        callback(.rejected(error))
    }
}

protocol DirectCallProtocol: AnyObject {
    func reject(_ error: IPCError)
}
