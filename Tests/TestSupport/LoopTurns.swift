// A task that posts itself again until it has run `total` times: driving a loop until it is
// done lets everything queued before it, and what that causes a few turns later, happen
// (posted tasks run in order on every loop), and gives socket loops as many polls.

import IPCProtocol

/// Posts itself again until it has run ``total`` times (loop-confined, hence unchecked).
public final class LoopTurns: @unchecked Sendable {
    public static let total = 20
    public let loop: any IPCEventLoop
    public private(set) var count = 0

    public init(loop: any IPCEventLoop) { self.loop = loop }

    /// Posts the first turn.
    public func start() { loop.execute { self.turn() } }

    private func turn() {
        count += 1
        if count < Self.total { loop.execute { self.turn() } }
    }
}
