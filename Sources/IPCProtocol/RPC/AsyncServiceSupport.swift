// Runs `async` service methods (the generated `…AsyncHandler` protocols) on top of the
// Deferred core: the method runs in a task, and its outcome is handed back to the host's loop
// with `execute`, where the Deferred is resolved. Streaming replies are held back by one so
// that the last reply written is the one that carries has_more = false, as on Perfetto's wire.

import Synchronization
import SwiftProtobuf

/// What an `async` service method knows about its call. Sendable: usable from any task.
public struct IPCAsyncCallContext: Sendable {
    /// The caller.
    public let client: IPCClientInfo
    /// The file descriptor the client sent (taken from the connection for this call).
    public let receivedFileDescriptor: ScopedFD?
}

/// Glue between generated async handlers and ``Deferred``. Not meant to be called directly.
public enum IPCAsyncDispatch {
    /// Runs a unary async method and resolves `reply` with its result, or rejects it if the
    /// method throws.
    public static func unary<Reply: SwiftProtobuf.Message>(
        context: IPCCallContext, reply: Deferred<Reply>,
        _ body: @escaping @Sendable (IPCAsyncCallContext) async throws -> Reply
    ) {
        let loop = context.eventLoop
        let deferred = UncheckedSendableBox(reply)
        let asyncContext = context.makeAsyncContext()
        Task {
            let result: Result<Reply, IPCError>
            do {
                result = .success(try await body(asyncContext))
            } catch let error as IPCError {
                result = .failure(error)
            } catch {
                result = .failure(IPCError(.remoteFailure, "\(error)"))
            }
            loop.execute {
                switch result {
                case .success(let message): deferred.value.resolve(message)
                case .failure(let error): deferred.value.reject(error)
                }
            }
        }
    }

    /// Runs a streaming async method with a writer for its replies.
    public static func serverStreaming<Reply: SwiftProtobuf.Message>(
        context: IPCCallContext, reply: Deferred<Reply>,
        _ body: @escaping @Sendable (IPCAsyncCallContext, IPCReplyWriter<Reply>) async throws -> Void
    ) {
        let writer = IPCReplyWriter(loop: context.eventLoop, deferred: reply)
        let asyncContext = context.makeAsyncContext()
        Task {
            do {
                try await body(asyncContext, writer)
                writer.finish(nil)
            } catch let error as IPCError {
                writer.finish(error)
            } catch {
                writer.finish(IPCError(.remoteFailure, "\(error)"))
            }
        }
    }
}

/// Writes the replies of a streaming call from any task.
public final class IPCReplyWriter<Reply: SwiftProtobuf.Message>: Sendable {
    private let loop: any IPCEventLoop
    private let deferred: UncheckedSendableBox<Deferred<Reply>>
    private let held = ThreadLock<IPCResponse<Reply>?>(nil)

    init(loop: any IPCEventLoop, deferred: Deferred<Reply>) {
        self.loop = loop
        self.deferred = UncheckedSendableBox(deferred)
    }

    /// Queues one reply (with an optional file descriptor) for the caller.
    public func write(_ reply: Reply, fileDescriptor: ScopedFD? = nil) {
        let previous = held.withLock { held in
            defer { held = IPCResponse(message: reply, fileDescriptor: fileDescriptor) }
            return held
        }
        guard let previous else { return }
        let deferred = self.deferred
        loop.execute { deferred.value.resolve(previous.message, hasMore: true, fileDescriptor: previous.fileDescriptor) }
    }

    /// Ends the stream: the held reply goes out last, or the call is rejected with `error`.
    func finish(_ error: IPCError?) {
        let last = held.withLock { held in
            defer { held = nil }
            return held
        }
        let deferred = self.deferred
        loop.execute {
            if let error {
                if let last { deferred.value.resolve(last.message, hasMore: true, fileDescriptor: last.fileDescriptor) }
                deferred.value.reject(error)
            } else {
                deferred.value.resolve(last?.message ?? Reply(), hasMore: false, fileDescriptor: last?.fileDescriptor)
            }
        }
    }
}
