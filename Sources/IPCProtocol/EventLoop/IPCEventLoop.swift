// The task runner that Host, Client and transports are written against.
//
// Contract (the same for every backend):
// * `execute` is the only thread-safe call. The task runs on the loop's thread, later, never
//   inline, and tasks run in the order they were posted.
// * Everything else (`scheduleTask`, `watch`, and every call on transports, listeners and
//   connections bound to the loop) must be made on the loop: check with `inEventLoop`.
// * A loop is a `SerialExecutor`, so an actor can run on it:
//
//       actor Session { nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() } }

/// A single-threaded event loop: posted tasks, delayed tasks and file-descriptor readiness.
///
/// Backends provide it: `EpollEventLoop` (IPCUnixSocket), `LibuvEventLoop` (IPCLibuv) and
/// `ManualEventLoop` (IPCInProcess, deterministic, for tests).
public protocol IPCEventLoop: SerialExecutor, AnyObject, Sendable {
    /// Runs `task` on the loop, after the current task returns. Thread-safe.
    func execute(_ task: @escaping @Sendable () -> Void)

    /// Whether the calling thread is the loop's thread.
    var inEventLoop: Bool { get }

    /// Runs `task` on the loop once `delay` has passed, unless cancelled first. Loop-only.
    func scheduleTask(after delay: Duration, _ task: @escaping () -> Void) -> any ScheduledTask

    /// Calls `handler` on the loop whenever `fd` is ready for any of `events`. Loop-only.
    ///
    /// The loop does not own `fd`: cancel the watch before closing it.
    /// - Throws: ``IPCError`` if the backend cannot watch this descriptor.
    func watch(
        _ fd: Int32, for events: FileDescriptorEvents, handler: @escaping (FileDescriptorEvents) -> Void
    ) throws(IPCError) -> any FileDescriptorWatch

    /// Whether ``watch(_:for:handler:)`` honours ``FileDescriptorEvents/edgeTriggered``.
    /// Ask before requesting it: a loop that does not honour it reports level-triggered.
    var supportsEdgeTriggeredWatches: Bool { get }
}

/// A delayed task that may still be cancelled.
public protocol ScheduledTask: AnyObject {
    /// Prevents the task from running if it has not run yet. Loop-only; idempotent.
    func cancel()
}

/// A registration of a file descriptor with a loop.
public protocol FileDescriptorWatch: AnyObject {
    /// Changes the events of interest. Loop-only.
    func setEvents(_ events: FileDescriptorEvents)
    /// Stops watching; the handler is never called again. Loop-only; idempotent.
    func cancel()
}

/// Readiness of a file descriptor.
public struct FileDescriptorEvents: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Data (or end of stream, or an error) can be read.
    public static let readable = FileDescriptorEvents(rawValue: 1 << 0)
    /// Bytes can be written.
    public static let writable = FileDescriptorEvents(rawValue: 1 << 1)
    /// The peer hung up or the descriptor is in error. Always reported, never requested.
    public static let hangup = FileDescriptorEvents(rawValue: 1 << 2)
    /// Requested with the others: report each change of readiness once (epoll's `EPOLLET`)
    /// instead of for as long as it lasts. Only where the loop supports it.
    public static let edgeTriggered = FileDescriptorEvents(rawValue: 1 << 3)
}

extension IPCEventLoop {
    /// Level-triggered only, unless a loop says otherwise.
    public var supportsEdgeTriggeredWatches: Bool { false }

    /// Runs jobs of actors isolated to this loop, on the loop.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        execute { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func checkIsolated() {
        precondition(inEventLoop, "expected to run on the event loop's thread")
    }

    /// Runs `task` now when called on the loop, else posts it. For the library's own
    /// bookkeeping that must be in place before the caller's next step (a deinit's cleanup, a
    /// writer's registration); never for a user's callback, which always runs on a later turn.
    package func runNowOrPost(_ task: @escaping @Sendable () -> Void) {
        if inEventLoop { task() } else { execute(task) }
    }

    /// Traps unless called on the loop. Use at the entry of loop-only API.
    @inlinable
    public func preconditionInEventLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inEventLoop, "called off the event loop's thread", file: file, line: line)
    }
}
