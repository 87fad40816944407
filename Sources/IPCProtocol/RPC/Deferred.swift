// A reply that will be given later: Perfetto's Deferred<T>.
//
// Promises:
// * it is resolved at most once (or, when streaming, until a resolve with hasMore == false);
//   every later resolve or reject is ignored;
// * if the last reference to an unresolved, bound Deferred goes away, it rejects itself, so
//   the caller always hears back (the host then replies success = false);
// * it may be kept past the handler that received it and resolved later, on the same loop.

/// A reply to be sent later, resolved exactly once (or streamed until `hasMore` is false).
///
/// Loop-bound: use it on the loop of the host or client it came from.
public final class Deferred<Message> {
    /// Where results go: a callback, or (for replies a host or direct binding sends, the hot
    /// path) a sink, which saves allocating a closure per call.
    private enum Target {
        case callback((AsyncResult<Message>) -> Void)
        case sink(any DeferredSink<Message>)
    }
    private var target: Target?

    /// An unbound Deferred: resolving it does nothing until ``bind(_:)``.
    public init() {}

    /// A Deferred whose outcome goes to `callback`.
    public init(_ callback: @escaping (AsyncResult<Message>) -> Void) {
        target = .callback(callback)
    }

    package init(sink: any DeferredSink<Message>) {
        target = .sink(sink)
    }

    deinit {
        if target != nil {
            deliver(.rejected(IPCError(.remoteFailure, "the reply was dropped without being resolved")))
        }
    }

    /// Whether a callback is bound and still waiting for a final result.
    public var isBound: Bool { target != nil }

    /// Binds `callback`. A callback already bound is rejected first.
    public func bind(_ callback: @escaping (AsyncResult<Message>) -> Void) {
        reject(IPCError(.cancelled, "the reply was rebound"))
        target = .callback(callback)
    }

    /// Resolves with `message`. With `hasMore`, the Deferred stays open for more replies.
    public func resolve(_ message: Message, hasMore: Bool = false, fileDescriptor: ScopedFD? = nil) {
        deliver(AsyncResult(message, hasMore: hasMore, fileDescriptor: fileDescriptor))
    }

    /// Delivers `result` (a reply or a rejection).
    public func resolve(_ result: AsyncResult<Message>) {
        deliver(result)
    }

    /// Rejects: the caller sees a failure. Ends a stream.
    public func reject(_ error: IPCError = IPCError(.remoteFailure, "the call was rejected")) {
        deliver(.rejected(error))
    }

    private func deliver(_ result: AsyncResult<Message>) {
        guard let target else { return }
        if !result.hasMore || !result.isSuccess { self.target = nil }
        switch target {
        case .callback(let callback): callback(result)
        case .sink(let sink): sink.receive(result)
        }
    }
}

/// A typed receiver of a Deferred's results (the host's and direct binding's reply paths).
package protocol DeferredSink<Message>: AnyObject {
    associatedtype Message
    func receive(_ result: AsyncResult<Message>)
}
