// The direct short circuit: a proxy bound to a service in the same process and on the same
// loop calls the implementation with the request value itself. No encoding, no frames; every
// promise kept:
// * the call runs after the caller returns to the loop, never inside the caller's own `invoke`
//   (a call made outside a reply runs on a later loop turn);
// * a Deferred released unresolved rejects the call; a reply is delivered exactly once
//   (streams until has_more is false);
// * closing the host (or the client) rejects every outstanding call and tells the proxy;
// * a released proxy or client is never called back;
// * a file descriptor sent with a call is duplicated for the service, as SCM_RIGHTS would.
//
// What a call costs: the Deferred the service receives, which carries the caller's callback
// (so the reply goes straight to it) and holds the request until the call runs (`DirectCall`;
// the request stays with it as long as the service keeps the Deferred), and the thunk that
// stores the caller's concretely typed callback where the generic Deferred keeps it: two
// allocations. Calls queued in one turn share one posted task, and calls made by the callbacks
// of those calls run in the same task after them (up to 16 rounds). The hot path is
// `@inlinable`, so generated proxies run it specialized for their message types.

import SwiftProtobuf

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One proxy's direct connection to one service of a host. Loop-bound.
@usableFromInline
final class DirectServiceBinding {
    /// Weak without side tables for the host and the proxy (Weak.swift).
    private let hostReference: Weak<IPCHost>
    private var host: IPCHost? { hostReference.object }
    /// Told when the binding ends; never read per call.
    private let proxyReference: Weak<ServiceProxy>
    private var proxy: ServiceProxy? { proxyReference.object }
    @usableFromInline let service: any IPCService
    let clientInfo: IPCClientInfo
    @usableFromInline let loop: any IPCEventLoop
    /// The context every call of this binding runs with (built once).
    @usableFromInline let context: IPCCallContext
    private let receivedFD = ReceivedFDSlot()
    /// The proxy's method index -> the service's method index (-1: the service lacks it).
    @usableFromInline let methodMap: [Int]
    /// Calls waiting for a final reply, by request id. Unretained: each removes itself when it
    /// is resolved or released, and the binding detaches the rest before it goes.
    ///
    /// This and the other per-call state below skip dynamic exclusivity checks: it is
    /// loop-confined and never accessed across a call into user code (Threading.md, "Costs").
    @exclusivity(unchecked) private var pending = PendingRequests<TrackedReply>()
    @exclusivity(unchecked) @usableFromInline var nextRequestID: UInt64 = 1
    @exclusivity(unchecked) @usableFromInline private(set) var ended = false
    /// Set by the host's deinit, before the posted `end` runs: no call may reach the service.
    var hostIsGone = false
    /// Calls made since the last drain round, run in order by the next one.
    @exclusivity(unchecked) private var queue: [any QueuedDirectCall] = []
    @exclusivity(unchecked) private var running: [any QueuedDirectCall] = []
    @exclusivity(unchecked) private var drainScheduled = false
    /// Posted to run the queue; made once so that a call allocates no task of its own. It
    /// holds the binding strongly (a weak reference would give the binding a side table and
    /// slow every retain of it); ending the binding releases it, which breaks the cycle.
    private var drainTask: (@Sendable () -> Void)?
    /// The proxy's identity, for the client's table.
    let proxyID: ObjectIdentifier

    private struct TrackedReply {
        unowned(unsafe) let reply: any DirectlyTrackedReply
    }

    init(host: IPCHost, service: any IPCService, proxy: ServiceProxy, clientInfo: IPCClientInfo) {
        hostReference = Weak(host)
        proxyReference = Weak(proxy)
        proxyID = ObjectIdentifier(proxy)
        self.service = service
        self.clientInfo = clientInfo
        loop = host.eventLoop
        context = IPCCallContext(client: clientInfo, eventLoop: loop, fileDescriptorSlot: receivedFD)
        let indexes = Dictionary(
            service.serviceDescriptor.methods.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
        methodMap = proxy.descriptor.methods.map { indexes[$0.name] ?? -1 }
        let unchecked = UncheckedSendableBox(self)
        drainTask = { unchecked.value.drain() }
    }

    deinit {
        // Nothing may keep pointing at a binding that is gone.
        for tracked in pending.values { tracked.reply.detachFromBinding(rejecting: nil) }
    }

    /// Calls the proxy's method `proxyIndex` with `request`; `reply` nil means nobody wants
    /// the reply. Returns the request id (for cancellation), or nil if the call could not be
    /// made (`reply` is then rejected on a later turn).
    @inlinable
    func call<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodAt proxyIndex: Int, _ request: Request, fd: Int32?, reply: ((AsyncResult<Reply>) -> Void)?,
        from proxy: ServiceProxy
    ) -> UInt64? {
        guard !ended else {
            proxy.rejectLater(reply, IPCError(.disconnected, "the host is gone"))
            return nil
        }
        guard proxyIndex >= 0, proxyIndex < methodMap.count, methodMap[proxyIndex] >= 0 else {
            proxy.rejectLater(reply, proxy.missingMethodError(at: proxyIndex))
            return nil
        }
        let methodIndex = methodMap[proxyIndex]
        let requestID = nextRequestID
        nextRequestID &+= 1
        let call = DirectCall(
            request, methodIndex: methodIndex, fileDescriptor: fd.flatMap(Self.duplicate), reply: reply,
            binding: Unmanaged.passUnretained(self), requestID: requestID)
        if reply != nil { track(call, requestID: requestID) }
        enqueue(call)
        return requestID
    }

    /// A close-on-exec duplicate of `fd` for the service, as SCM_RIGHTS would give it.
    @usableFromInline
    static func duplicate(_ fd: Int32) -> ScopedFD? {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? ScopedFD(copy) : nil
    }

    /// The fd sent with the call about to run: the service takes it from its context.
    @usableFromInline
    func receive(_ descriptor: ScopedFD) {
        receivedFD.store(descriptor)
    }

    @usableFromInline
    var rejectedRequestError: IPCError {
        IPCError(.remoteFailure, "\(service.serviceDescriptor.name) rejected the request")
    }

    @usableFromInline
    func track(_ reply: any DirectlyTrackedReply, requestID: UInt64) {
        pending.insert(TrackedReply(reply: reply), for: requestID)
    }

    @usableFromInline
    func enqueue(_ call: any QueuedDirectCall) {
        queue.append(call)
        guard !drainScheduled, let drainTask else { return }
        drainScheduled = true
        loop.execute(drainTask)
    }

    /// Runs the calls queued so far, then those their callbacks made meanwhile (each after the
    /// callback that made it has returned), for at most `maxDrainRounds` rounds; what is left
    /// waits for a later turn, so that a ping-pong of calls cannot keep the loop from its other
    /// work. Chaining saves a posted task per call (4 of the 21 retains and 4 of the 25
    /// releases of an echo chained this way). Calls left unrun when the binding ends reject
    /// themselves as they are released.
    private func drain() {
        // `drainScheduled` stays set while draining: calls made now join the next round.
        var rounds = 0
        while !queue.isEmpty, rounds < Self.maxDrainRounds, !ended, !hostIsGone {
            rounds += 1
            swap(&queue, &running)
            for call in running {
                guard !ended else { break }
                call.run(on: self)
            }
            running.removeAll(keepingCapacity: true)
        }
        drainScheduled = false
        guard !queue.isEmpty else { return }
        if ended || hostIsGone {
            queue.removeAll()
        } else if let drainTask {
            drainScheduled = true
            loop.execute(drainTask)
        }
    }

    /// Rounds of chained calls one drain runs before it lets the loop do other work.
    static let maxDrainRounds = 16

    /// A reply is about to reach the caller: forget the call if it is the last. Returns
    /// whether the caller may still be called back.
    @usableFromInline
    func admitReply(to requestID: UInt64, final: Bool) -> Bool {
        if final { pending.removeValue(for: requestID) }
        return !ended
    }

    /// The name of the bound service.
    var serviceName: String { service.serviceDescriptor.name }

    /// Forgets a call: its callback is released and never called.
    func cancel(_ requestID: UInt64) {
        pending.removeValue(for: requestID)?.reply.detachFromBinding(rejecting: nil)
    }

    /// The host or client went away: reject what is outstanding, once, and tell the proxy.
    func end(_ error: IPCError, notifyProxy: Bool) {
        guard !ended else { return }
        ended = true
        let outstanding = pending.values
        pending.removeAll()
        receivedFD.take()?.close()
        for tracked in outstanding { tracked.reply.detachFromBinding(rejecting: error) }
        queue.removeAll()
        drainTask = nil
        if notifyProxy { proxy?.connectionEnded(error) }
    }

    /// The client or proxy was destroyed: release callbacks without calling them, and let
    /// the host tell its services.
    func abandon() {
        guard !ended else { return }
        ended = true
        let outstanding = pending.values
        pending.removeAll()
        for tracked in outstanding { tracked.reply.detachFromBinding(rejecting: nil) }
        queue.removeAll()
        drainTask = nil
        receivedFD.take()?.close()
        host?.directBindingEnded(self)
    }

    /// The client side closed: reject what is outstanding, tell the proxy, and let the
    /// host tell its services that this client went away.
    func closeFromClient(_ error: IPCError) {
        guard !ended else { return }
        end(error, notifyProxy: true)
        host?.directBindingEnded(self)
    }
}

/// A call queued on a direct binding, run by its next drain round.
@usableFromInline
protocol QueuedDirectCall: AnyObject {
    func run(on binding: DirectServiceBinding)
}

/// One call through a direct binding: the Deferred the service resolves, holding the request
/// (and a duplicate of the fd sent with it) until the call runs. The request stays with it as
/// long as the service keeps the Deferred (a stream's): a field of the request's own type, not
/// an Optional of it, so that destroying it needs no metadata lookup.
@usableFromInline
final class DirectCall<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>: Deferred<Reply>, QueuedDirectCall {
    @usableFromInline let request: Request
    @usableFromInline let methodIndex: Int
    @usableFromInline var fileDescriptor: ScopedFD?

    /// With `reply` nil, nobody wants the reply (the Deferred is unbound).
    @inlinable
    init(
        _ request: Request, methodIndex: Int, fileDescriptor: ScopedFD?, reply: ((AsyncResult<Reply>) -> Void)?,
        binding: Unmanaged<DirectServiceBinding>, requestID: UInt64
    ) {
        self.request = request
        self.methodIndex = methodIndex
        self.fileDescriptor = fileDescriptor
        if let reply {
            super.init(direct: reply, binding: binding, requestID: requestID)
        } else {
            super.init()
        }
    }

    @usableFromInline
    func run(on binding: DirectServiceBinding) {
        if let fileDescriptor {
            self.fileDescriptor = nil
            binding.receive(fileDescriptor)
        }
        if !binding.service.invoke(methodIndex: methodIndex, request: request, context: binding.context, reply: self as Deferred<Reply>) {
            rejectUnserved(binding)
        }
    }

    /// Out of `run`'s line, which is unspecialized: a rejection builds an
    /// `AsyncResult<Reply>`, whose metadata would otherwise be looked up on every call.
    @inline(never)
    private func rejectUnserved(_ binding: DirectServiceBinding) {
        reject(binding.rejectedRequestError)
    }
}
