// Pacing a stream of replies (ReadBuffers, QueryServiceState): the next reply goes to the
// connection only while the connection has little queued, so a stream of any length never
// passes the connection's send-queue bound. When it has too much queued, the stream goes on
// once the connection has handed its queue to the kernel (the consumer took the replies
// before), or shortly, on a transport that cannot say when that happens. A consumer that never
// reads is dropped by the connection's send timeout meanwhile.

import IPCProtocol

enum ReplyPacing {
    /// How many reply bytes may wait in the connection before the next replies are held
    /// back. With one more reply (at most a frame, 128 KiB) it stays under any sensible
    /// send-queue bound (16 MiB by default), and it is several socket buffers' worth, so the
    /// consumer never waits for the service.
    static let bytesInFlight = 512 * 1024
    /// How often a held-back stream looks again whether the consumer has taken the replies
    /// before, on a transport that cannot say when its queue drained.
    static let retryInterval: Duration = .milliseconds(1)

    /// Whether `reply`'s connection may take another reply now.
    static func hasRoom<Message>(_ reply: Deferred<Message>) -> Bool {
        reply.queuedSendBytes < bytesInFlight
    }

    /// Calls `goOn` once, on `loop`, when `reply`'s connection has handed what it queued to
    /// the kernel (or after ``retryInterval``), unless the returned wait is cancelled first.
    @discardableResult
    static func wait<Message>(
        for reply: Deferred<Message>, on loop: any IPCEventLoop, then goOn: @escaping () -> Void
    ) -> Wait {
        let wait = Wait()
        let resume = {
            guard !wait.isOver else { return }
            wait.isOver = true
            goOn()
        }
        if !reply.whenSendQueueDrains(resume) {
            _ = loop.scheduleTask(after: retryInterval, resume)
        }
        return wait
    }

    /// A held-back stream waiting to go on. Loop-bound.
    final class Wait {
        /// Whether the stream went on, or will not (cancelled).
        fileprivate(set) var isOver = false

        /// The stream will not go on from this wait (a new read replaced it, or the consumer
        /// left).
        func cancel() { isOver = true }
    }
}
