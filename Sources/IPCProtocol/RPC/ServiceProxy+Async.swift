// async/await over the callback core. Nothing here is a second implementation: each call hops
// onto the proxy's loop with `execute`, makes the callback call there, and resumes the caller
// from the callback. Cancelling the awaiting task forgets the pending call on the loop, so its
// callback is released and a late reply is ignored.

import Synchronization
import SwiftProtobuf

/// A reply together with the file descriptor that came with it.
public struct IPCResponse<Message: Sendable>: Sendable {
    /// The reply message.
    public var message: Message
    /// The descriptor attached to the reply, if any; closed when released unless taken.
    public var fileDescriptor: ScopedFD?
}

extension ServiceProxy {
    /// Calls `method` and waits for its reply. Callable from any thread or task.
    ///
    /// `fd` is attached to the request; it must stay open until this returns.
    /// - Throws: ``IPCError``: `.disconnected`, `.methodNotFound`, `.remoteFailure`,
    ///   `.cancelled` if the task is cancelled, `.protocolViolation` for an undecodable reply.
    public func call<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        _ method: String, _ request: Request, fd: Int32? = nil, replyType: Reply.Type = Reply.self
    ) async throws(IPCError) -> IPCResponse<Reply> {
        guard let loop = eventLoop else {
            throw IPCError(.disconnected, "\(descriptor.name) is not bound to a client")
        }
        let call = PendingAsyncCall<IPCResponse<Reply>>()
        let proxy = UncheckedSendableBox(self)
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    guard call.start(continuation) else { return }
                    loop.execute {
                        let requestID = proxy.value.send(methodAt: proxy.value.methodIndex(named: method), request, fd: fd) { (result: AsyncResult<Reply>) in
                            if let message = result.message {
                                call.finish(.success(IPCResponse(message: message, fileDescriptor: result.fileDescriptor)))
                            } else {
                                call.finish(.failure(result.error ?? IPCError(.remoteFailure, "the call was rejected")))
                            }
                        }
                        if let requestID, !call.record(requestID: requestID) {
                            proxy.value.cancelRequest(requestID)  // cancelled meanwhile
                        }
                    }
                }
            } onCancel: {
                guard let requestID = call.cancel() else { return }
                loop.execute { proxy.value.cancelRequest(requestID) }
            }
        } catch let error as IPCError {
            throw error
        } catch {
            throw IPCError(.cancelled, "\(error)")
        }
    }

    /// Calls a streaming `method`; iterate the result for every reply until the last.
    /// Stopping the iteration (or cancelling its task) forgets the call on the loop.
    public func stream<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        _ method: String, _ request: Request, fd: Int32? = nil, replyType: Reply.Type = Reply.self
    ) -> IPCReplyStream<Reply> {
        let (stream, continuation) = AsyncThrowingStream<Reply, any Error>.makeStream()
        guard let loop = eventLoop else {
            continuation.finish(throwing: IPCError(.disconnected, "\(descriptor.name) is not bound to a client"))
            return IPCReplyStream(stream)
        }
        let call = PendingAsyncCall<Void>()
        let proxy = UncheckedSendableBox(self)
        continuation.onTermination = { termination in
            guard case .cancelled = termination, let requestID = call.cancel() else { return }
            loop.execute { proxy.value.cancelRequest(requestID) }
        }
        loop.execute {
            let requestID = proxy.value.send(methodAt: proxy.value.methodIndex(named: method), request, fd: fd) { (result: AsyncResult<Reply>) in
                guard let message = result.message else {
                    continuation.finish(throwing: result.error ?? IPCError(.remoteFailure, "the call was rejected"))
                    return
                }
                continuation.yield(message)
                if !result.hasMore { continuation.finish() }
            }
            if let requestID, !call.record(requestID: requestID) {
                proxy.value.cancelRequest(requestID)
            }
        }
        return IPCReplyStream(stream)
    }

    /// Waits until the proxy is bound. Callable from any thread or task, once
    /// `IPCClient.bind(_:)` has been called (on the loop) for this proxy.
    /// - Throws: the ``IPCError`` that failed the binding.
    public func waitUntilBound() async throws(IPCError) {
        guard let loop = eventLoop else { throw IPCError(.disconnected, "\(descriptor.name) was never bound") }
        let proxy = UncheckedSendableBox(self)
        let result: Result<Void, IPCError> = await withCheckedContinuation { continuation in
            loop.execute { proxy.value.whenBound { continuation.resume(returning: $0) } }
        }
        try result.get()
    }
}

/// The replies of a streaming call, as an `AsyncSequence` that throws ``IPCError``.
public struct IPCReplyStream<Reply: Sendable>: AsyncSequence, Sendable {
    public typealias Element = Reply
    public typealias Failure = IPCError
    private let base: AsyncThrowingStream<Reply, any Error>

    init(_ base: AsyncThrowingStream<Reply, any Error>) { self.base = base }

    public func makeAsyncIterator() -> Iterator { Iterator(base: base.makeAsyncIterator()) }

    public struct Iterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<Reply, any Error>.Iterator

        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws(IPCError) -> Reply? {
            do {
                return try await base.next(isolation: actor)
            } catch let error as IPCError {
                throw error
            } catch {
                throw IPCError(.cancelled, "\(error)")
            }
        }

        public mutating func next() async throws(IPCError) -> Reply? {
            try await next(isolation: nil)
        }
    }
}

/// The cross-thread state of one async call: resumed exactly once, by the reply or by
/// cancellation, whichever comes first.
final class PendingAsyncCall<Value: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Value, any Error>?
        var requestID: UInt64?
        var cancelled = false
        var finished = false
    }
    private let state = ThreadLock(State())

    /// Stores the continuation; false (and the continuation resumed) if already cancelled.
    func start(_ continuation: CheckedContinuation<Value, any Error>) -> Bool {
        let cancelled = state.withLock { state in
            if state.cancelled { state.finished = true; return true }
            state.continuation = continuation
            return false
        }
        if cancelled { continuation.resume(throwing: IPCError(.cancelled, "the task was cancelled")) }
        return !cancelled
    }

    /// Remembers the request id; false if the call was cancelled meanwhile.
    func record(requestID: UInt64) -> Bool {
        state.withLock { state in
            state.requestID = requestID
            return !state.cancelled
        }
    }

    func finish(_ result: Result<Value, IPCError>) {
        let continuation = state.withLock { state -> CheckedContinuation<Value, any Error>? in
            guard !state.finished else { return nil }
            state.finished = true
            defer { state.continuation = nil }
            return state.continuation
        }
        continuation?.resume(with: result.mapError { $0 as any Error })
    }

    /// Marks cancelled and resumes the waiter; returns the request id to forget, if sent.
    func cancel() -> UInt64? {
        let (continuation, requestID) = state.withLock { state -> (CheckedContinuation<Value, any Error>?, UInt64?) in
            state.cancelled = true
            guard !state.finished else { return (nil, state.requestID) }
            state.finished = true
            defer { state.continuation = nil }
            return (state.continuation, state.requestID)
        }
        continuation?.resume(throwing: IPCError(.cancelled, "the task was cancelled"))
        return requestID
    }
}
