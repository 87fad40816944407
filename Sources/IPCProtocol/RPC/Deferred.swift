// A reply that will be given later: Perfetto's Deferred<T>.
//
// Promises:
// * it is resolved at most once (or, when streaming, until a resolve with hasMore == false);
//   every later resolve or reject is ignored;
// * if the last reference to an unresolved, bound Deferred goes away, it rejects itself, so
//   the caller always hears back (the host then replies success = false);
// * it may be kept past the handler that received it and resolved later, on the same loop.
//
// Why it looks the way it does: a Deferred is made for every call, so it is the one object a
// call allocates on the service side. Hosts and direct bindings attach their bookkeeping as a
// route with its fields (no closure, no sink object, no generic protocol), the fields' layout
// does not depend on `Message` (so the unspecialized deinit needs no metadata), and the hot
// methods are `@inlinable` so that generated code, which knows `Message`, runs them
// specialized: no generic-metadata lookups per call.

import SwiftProtobuf

/// A reply to be sent later, resolved exactly once (or streamed until `hasMore` is false).
///
/// Loop-bound: use it on the loop of the host or client it came from.
///
/// Not `final`, though nothing outside this module can subclass it: a call through a direct
/// binding hands the service a private subclass that also holds the request, so compare types
/// with `is Deferred<M>`, never with `type(of:) ==`.
public class Deferred<Message> {
    // Not final, but every member is, and only this module can subclass it: a call through a
    // direct binding is a Deferred that also holds its request until it runs (`DirectCall`),
    // one allocation per call instead of two.
    // Where results go (`DeferredRoute`), with the fields each route uses. Fields whose layout
    // does not depend on `Message` (closures and class references) rather than one enum generic
    // in it: a Deferred is made and destroyed once per call, and destroying a field of a
    // `Message`-dependent type (or testing whether it is nil) looks its metadata up in the
    // runtime's cache, from the unspecialized deinit, every time. (For the same reason the
    // route's enum is not nested in the generic class.)
    // Unchecked exclusivity: read and cleared before any callback runs, never across one.
    @exclusivity(unchecked) @usableFromInline final var route: DeferredRoute = .none
    @exclusivity(unchecked) @usableFromInline final var callback: ((AsyncResult<Message>) -> Void)?
    @exclusivity(unchecked) @usableFromInline final var binding: Unmanaged<DirectServiceBinding>?
    @exclusivity(unchecked) @usableFromInline final var requestID: UInt64 = 0
    @exclusivity(unchecked) @usableFromInline final var sink: IPCReplySink?
    @exclusivity(unchecked) @usableFromInline final var encode: ((Message) throws -> OutgoingFrame.Payload)?

    /// An unbound Deferred: resolving it does nothing until ``bind(_:)``.
    public init() {}

    /// A Deferred whose outcome goes to `callback`.
    public init(_ callback: @escaping (AsyncResult<Message>) -> Void) {
        route = .callback
        self.callback = callback
    }

    /// A Deferred whose outcome goes to `callback` through a direct binding.
    @inlinable
    init(direct callback: @escaping (AsyncResult<Message>) -> Void, binding: Unmanaged<DirectServiceBinding>, requestID: UInt64) {
        route = .direct
        self.callback = callback
        self.binding = binding
        self.requestID = requestID
    }

    /// A Deferred whose outcome is encoded and sent through `sink`.
    @inlinable
    init(wire sink: IPCReplySink, encode: @escaping (Message) throws -> OutgoingFrame.Payload) {
        route = .wire
        self.sink = sink
        self.encode = encode
    }

    deinit {
        if route != .none { rejectDropped() }
    }

    /// Out of the deinit's line: a deinit that builds an `AsyncResult<Message>` looks its
    /// metadata up on entry, also when there is nothing to reject (the usual case).
    @inline(never)
    private final func rejectDropped() {
        deliver(.rejected(IPCError(.remoteFailure, "the reply was dropped without being resolved")))
    }

    /// Whether a callback is bound and still waiting for a final result.
    public final var isBound: Bool { route != .none }

    /// Replies already sent that the caller's connection has not taken yet: 0 unless the call
    /// came over a connection. A streaming service sends its next replies once this is low,
    /// so a long stream never passes the connection's send-queue bound.
    public final var queuedSendBytes: Int {
        guard route == .wire, let sink else { return 0 }
        return sink.queuedSendBytes
    }

    /// Calls `callback` once, on the loop, when the caller's connection has handed every queued
    /// byte to the kernel, so a streaming service can send its next replies at once instead of
    /// looking again later. Returns false when that cannot be known (no connection, or a
    /// transport that does not tell): look at ``queuedSendBytes`` again later then.
    public final func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool {
        guard route == .wire, let sink else { return false }
        return sink.whenSendQueueDrains(callback)
    }

    /// Binds `callback`. A callback already bound is rejected first.
    public final func bind(_ callback: @escaping (AsyncResult<Message>) -> Void) {
        reject(IPCError(.cancelled, "the reply was rebound"))
        clearRoute()
        route = .callback
        self.callback = callback
    }

    /// Resolves with `message`. With `hasMore`, the Deferred stays open for more replies.
    @inlinable
    public final func resolve(_ message: Message, hasMore: Bool = false, fileDescriptor: ScopedFD? = nil) {
        deliver(AsyncResult(message, hasMore: hasMore, fileDescriptor: fileDescriptor))
    }

    /// Delivers `result` (a reply or a rejection).
    @inlinable
    public final func resolve(_ result: AsyncResult<Message>) {
        deliver(result)
    }

    /// Rejects: the caller sees a failure. Ends a stream.
    @inlinable
    public final func reject(_ error: IPCError = IPCError(.remoteFailure, "the call was rejected")) {
        deliver(.rejected(error))
    }

    @inlinable
    final func deliver(_ result: AsyncResult<Message>) {
        let final = !result.hasMore || !result.isSuccess
        switch route {
        case .none:
            return
        case .callback:
            guard let callback else { return }
            if final { clearRoute() }
            callback(result)
        case .direct:
            guard let callback, let binding else { return }
            if final { clearRoute() }
            guard binding.takeUnretainedValue().admitReply(to: requestID, final: final) else { return }
            callback(result)
        case .wire:
            guard let sink, let encode else { return }
            if final { clearRoute() }
            sink.send(result, encode: encode)
        }
    }

    /// Forgets where results go (after the final one, or before a new route is set).
    @inlinable
    final func clearRoute() {
        route = .none
        callback = nil
        binding = nil
        sink = nil
        encode = nil
    }

    /// A direct binding lets go of this call: with `error`, the caller is told; without, the
    /// callback is released uncalled.
    @usableFromInline
    final func detachFromBinding(rejecting error: IPCError?) {
        guard route == .direct, let callback else { return }
        clearRoute()
        if let error { callback(.rejected(error)) }
    }
}

/// Where a Deferred's results go.
@usableFromInline
enum DeferredRoute: UInt8 {
    /// Nothing is bound, or the final result went out.
    case none
    /// A callback bound by the user (or the async façade): `callback`.
    case callback
    /// The caller's callback (`callback`), through a direct binding that keeps the call's
    /// bookkeeping (`binding`, `requestID`). Unmanaged: the binding detaches every Deferred
    /// it tracks before it goes away.
    case direct
    /// An IPC host's reply channel (`sink`): results are encoded (`encode`) and sent as
    /// InvokeMethodReply.
    case wire
}

/// What a direct binding keeps of each call it tracks: the Deferred, unretained, so that a
/// service dropping it still rejects the call.
@usableFromInline
protocol DirectlyTrackedReply: AnyObject {
    func detachFromBinding(rejecting error: IPCError?)
}

extension Deferred: DirectlyTrackedReply {}

extension Deferred where Message: SwiftProtobuf.Message {
    /// Resolves with a reply the service serialized itself: `write` fills exactly `size` bytes
    /// with the encoding of a `Message`. Over a connection the bytes become the reply frame's
    /// message as they are, with no message built or encoded (how ConsumerPort sends trace data);
    /// to a caller in this process they are decoded into a `Message` first, and bytes that do not
    /// decode reject the call. With `hasMore`, the Deferred stays open for more replies.
    package final func resolve(serializedSize size: Int, hasMore: Bool, write: (UnsafeMutableRawBufferPointer) -> Void) {
        if route == .wire, let sink, !sink.isForwarding {
            if !hasMore { clearRoute() }
            return sink.sendSerialized(size: size, hasMore: hasMore, write: write)
        }
        guard route != .none else { return }
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            write(UnsafeMutableRawBufferPointer(buffer))
            initialized = size
        }
        guard let message = try? Message(serializedBytes: bytes) else {
            return reject(IPCError(.remoteFailure, "the service's serialized \(Message.protoMessageName) does not decode"))
        }
        resolve(message, hasMore: hasMore)
    }
}
