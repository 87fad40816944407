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
    private var pending: [UInt64: (Any) -> Void] = [:]
    private var nextRequestID: UInt64 = 1
    private(set) var ended = false

    init(host: IPCHost, service: any IPCService, proxy: ServiceProxy, clientInfo: IPCClientInfo) {
        self.host = host
        self.service = service
        self.proxy = proxy
        self.clientInfo = clientInfo
        loop = host.transportLoop
    }

    /// Calls method `methodIndex` with `request`; `reply` nil means nobody wants the reply.
    /// Returns the request id (for cancellation), or nil if the call could not be made.
    func invoke<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodIndex: Int, request: Request, fd: Int32?, reply: ((AsyncResult<Reply>) -> Void)?
    ) -> UInt64? {
        guard !ended else {
            reply?(.rejected(IPCError(.disconnected, "the host is gone")))
            return nil
        }
        let requestID = nextRequestID
        nextRequestID += 1
        if let reply { pending[requestID] = Self.typed(reply) }
        var duplicate: ScopedFD?
        if let fd {
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            if copy >= 0 { duplicate = ScopedFD(copy) }
        }
        let box = UncheckedSendableBox((self, request, duplicate))
        loop.execute {
            let (binding, request, fd) = box.value
            binding.dispatch(methodIndex: methodIndex, request: request, fd: fd, requestID: requestID)
        }
        return requestID
    }

    private func dispatch(methodIndex: Int, request: any SwiftProtobuf.Message, fd: ScopedFD?, requestID: UInt64) {
        let sink = DirectReplySink(binding: self, requestID: requestID)
        guard !ended, host != nil else {
            sink.fail(IPCError(.disconnected, "the host is gone"))
            return
        }
        if let fd { receivedFD.store(fd) }
        let context = IPCCallContext(client: clientInfo, eventLoop: loop, fileDescriptorSlot: receivedFD)
        if !service.invoke(methodIndex: methodIndex, request: request, context: context, reply: sink) {
            sink.fail(IPCError(.remoteFailure, "\(service.serviceDescriptor.name) rejected the request"))
        }
    }

    /// A reply from the service for `requestID`.
    fileprivate func deliver(_ result: Any, requestID: UInt64, final: Bool) {
        guard let callback = final ? pending.removeValue(forKey: requestID) : pending[requestID] else { return }
        guard proxy != nil else { return }  // the proxy is gone: never called back
        callback(result)
    }

    /// The name of the bound service.
    var serviceName: String { service.serviceDescriptor.name }

    /// The index of the method called `name` in the service, if it has one.
    func methodIndex(named name: String) -> Int? {
        service.serviceDescriptor.methods.firstIndex { $0.name == name }
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
        for callback in outstanding { callback(RejectedResult(error: error)) }
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

/// A rejection to be turned into the caller's typed `AsyncResult`.
struct RejectedResult {
    let error: IPCError
}

extension DirectServiceBinding {
    /// Wraps `reply` so that it also understands `RejectedResult`.
    static func typed<Reply>(_ reply: @escaping (AsyncResult<Reply>) -> Void) -> (Any) -> Void {
        { result in
            if let typed = result as? AsyncResult<Reply> {
                reply(typed)
            } else if let rejected = result as? RejectedResult {
                reply(.rejected(rejected.error))
            }
        }
    }
}

/// Hands a service's replies straight to the binding, as values.
final class DirectReplySink: IPCReplySink {
    private weak var binding: DirectServiceBinding?
    private let requestID: UInt64
    private var finished = false

    init(binding: DirectServiceBinding, requestID: UInt64) {
        self.binding = binding
        self.requestID = requestID
    }

    func send<Message: SwiftProtobuf.Message>(_ result: AsyncResult<Message>) {
        guard !finished else { return }
        let final = !result.hasMore || !result.isSuccess
        if final { finished = true }
        binding?.deliver(result.isSuccess ? result : .rejected(result.error ?? IPCError(.remoteFailure, "the call was rejected")),
                         requestID: requestID, final: final)
    }

    func fail(_ error: IPCError) {
        guard !finished else { return }
        finished = true
        binding?.deliver(RejectedResult(error: error), requestID: requestID, final: true)
    }
}
