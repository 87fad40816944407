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
// target case (no closure, no sink object, no generic protocol), and the hot methods are
// `@inlinable` so that generated code, which knows `Message`, runs them specialized: no
// generic-metadata lookups per call.

import SwiftProtobuf

/// A reply to be sent later, resolved exactly once (or streamed until `hasMore` is false).
///
/// Loop-bound: use it on the loop of the host or client it came from.
public final class Deferred<Message> {
    /// Where results go.
    @usableFromInline
    enum Target {
        /// A callback bound by the user (or the async façade).
        case callback((AsyncResult<Message>) -> Void)
        /// The caller's callback, through a direct binding that keeps the call's bookkeeping.
        /// Unmanaged: the binding detaches every Deferred it tracks before it goes away.
        case direct((AsyncResult<Message>) -> Void, Unmanaged<DirectServiceBinding>, requestID: UInt64)
        /// An IPC host's reply channel: results are encoded and sent as InvokeMethodReply.
        case wire(IPCReplySink, encode: (Message) throws -> OutgoingFrame.Payload)
    }
    /// Unchecked exclusivity: read and cleared before any callback runs, never across one.
    @exclusivity(unchecked) @usableFromInline var target: Target?

    /// An unbound Deferred: resolving it does nothing until ``bind(_:)``.
    public init() {}

    /// A Deferred whose outcome goes to `callback`.
    public init(_ callback: @escaping (AsyncResult<Message>) -> Void) {
        target = .callback(callback)
    }

    @inlinable
    init(target: Target?) {
        self.target = target
    }

    deinit {
        if target != nil {
            deliver(.rejected(IPCError(.remoteFailure, "the reply was dropped without being resolved")))
        }
    }

    /// Whether a callback is bound and still waiting for a final result.
    public var isBound: Bool { target != nil }

    /// Replies already sent that the caller's connection has not taken yet: 0 unless the call
    /// came over a connection. A streaming service sends its next replies once this is low,
    /// so a long stream never passes the connection's send-queue bound.
    public var queuedSendBytes: Int {
        guard case .wire(let sink, _) = target else { return 0 }
        return sink.queuedSendBytes
    }

    /// Calls `callback` once, on the loop, when the caller's connection has handed every queued
    /// byte to the kernel, so a streaming service can send its next replies at once instead of
    /// looking again later. Returns false when that cannot be known (no connection, or a
    /// transport that does not tell): look at ``queuedSendBytes`` again later then.
    public func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool {
        guard case .wire(let sink, _) = target else { return false }
        return sink.whenSendQueueDrains(callback)
    }

    /// Binds `callback`. A callback already bound is rejected first.
    public func bind(_ callback: @escaping (AsyncResult<Message>) -> Void) {
        reject(IPCError(.cancelled, "the reply was rebound"))
        target = .callback(callback)
    }

    /// Resolves with `message`. With `hasMore`, the Deferred stays open for more replies.
    @inlinable
    public func resolve(_ message: Message, hasMore: Bool = false, fileDescriptor: ScopedFD? = nil) {
        deliver(AsyncResult(message, hasMore: hasMore, fileDescriptor: fileDescriptor))
    }

    /// Delivers `result` (a reply or a rejection).
    @inlinable
    public func resolve(_ result: AsyncResult<Message>) {
        deliver(result)
    }

    /// Rejects: the caller sees a failure. Ends a stream.
    @inlinable
    public func reject(_ error: IPCError = IPCError(.remoteFailure, "the call was rejected")) {
        deliver(.rejected(error))
    }

    @inlinable
    func deliver(_ result: AsyncResult<Message>) {
        guard let target else { return }
        let final = !result.hasMore || !result.isSuccess
        if final { self.target = nil }
        switch target {
        case .callback(let callback):
            callback(result)
        case .direct(let callback, let binding, let requestID):
            guard binding.takeUnretainedValue().admitReply(to: requestID, final: final) else { return }
            callback(result)
        case .wire(let sink, let encode):
            sink.send(result, encode: encode)
        }
    }

    /// A direct binding lets go of this call: with `error`, the caller is told; without, the
    /// callback is released uncalled.
    @usableFromInline
    func detachFromBinding(rejecting error: IPCError?) {
        guard case .direct(let callback, _, _) = target else { return }
        target = nil
        if let error { callback(.rejected(error)) }
    }
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
    package func resolve(serializedSize size: Int, hasMore: Bool, write: (UnsafeMutableRawBufferPointer) -> Void) {
        if case .wire(let sink, _)? = target, !sink.isForwarding {
            if !hasMore { target = nil }
            return sink.sendSerialized(size: size, hasMore: hasMore, write: write)
        }
        guard target != nil else { return }
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
