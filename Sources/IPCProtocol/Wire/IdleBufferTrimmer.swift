// Gives a connection's receive buffer back to the OS once the connection has been quiet for
// `WireLimits.idleReceiveBufferReleaseDelay`, so an idle connection holds one resident page
// while a busy one keeps its pages instead of faulting them in again for every large frame.
//
// At most one timer per connection is pending; it is armed when a read leaves pages past the
// first touched, and re-armed while a partial frame is still buffered.

/// Releases a deserializer's idle pages on its loop. Loop-bound.
final class IdleBufferTrimmer {
    private let deserializer: FrameDeserializer
    private let loop: any IPCEventLoop
    private var timer: (any ScheduledTask)?

    init(deserializer: FrameDeserializer, loop: any IPCEventLoop) {
        self.deserializer = deserializer
        self.loop = loop
    }

    deinit { timer?.cancel() }

    /// Bytes were received: arm the timer if the buffer now holds pages to give back.
    func bytesReceived() {
        guard timer == nil, deserializer.holdsReleasablePages else { return }
        timer = loop.scheduleTask(after: WireLimits.idleReceiveBufferReleaseDelay) { [weak self] in self?.fire() }
    }

    /// The connection is gone: no timer may outlive it.
    func cancel() {
        timer?.cancel()
        timer = nil
    }

    private func fire() {
        timer = nil
        deserializer.releaseIdlePages()
        bytesReceived()  // a frame still buffered: try again later
    }
}
