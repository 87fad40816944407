// A deterministic IPCEventLoop for tests (SwiftNIO's EmbeddedEventLoop idea): nothing runs
// until the test says so, and time is virtual.
//
// * `runUntilIdle()` runs posted tasks, and delayed tasks due at the current virtual time,
//   until none is left;
// * `advanceTime(by:)` moves virtual time forward, running each delayed task at its deadline,
//   in order, with the loop run to idle at every step;
// * `run(until:)` runs until a condition holds or the loop is idle.
// No thread is started and no wall-clock time passes, so tests neither sleep nor race.
// File-descriptor watches are supported for completeness, polled without waiting.

import CPerfettoIPCLinux
import IPCProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A single-threaded loop driven by hand, with virtual time.
public final class ManualEventLoop: IPCEventLoop, @unchecked Sendable {
    // @unchecked Sendable: `pending` is a ThreadLock; everything else is touched only on the owner
    // thread (checked by preconditionInEventLoop at the loop-only entry points).
    private let pending = ThreadLock<[PostedTask]>([])
    /// The batch being run; swapped with `pending` so neither array is reallocated.
    // Loop-confined state below: unchecked exclusivity (see Threading.md, "Costs").
    @exclusivity(unchecked) private var running: [PostedTask] = []
    private let owner: Int32
    @exclusivity(unchecked) private var timers = TimerQueue()
    private var now: UInt64 = 0
    @exclusivity(unchecked) private var watches: [UInt64: ManualWatch] = [:]
    private var nextWatchID: UInt64 = 1

    /// Creates a loop owned by the calling thread, at virtual time zero.
    public init() {
        owner = CPerfettoIPC_gettid()
    }

    /// Virtual time since the loop was created.
    public var virtualTime: Duration { .nanoseconds(Int64(now)) }

    // MARK: IPCEventLoop

    public func execute(_ task: @escaping @Sendable () -> Void) {
        pending.withLock { $0.append(PostedTask(task)) }
    }

    public var inEventLoop: Bool { CPerfettoIPC_gettid() == owner }

    public func scheduleTask(after delay: Duration, _ task: @escaping () -> Void) -> any ScheduledTask {
        preconditionInEventLoop()
        return timers.schedule(deadline: now &+ nanoseconds(delay), task)
    }

    public func watch(
        _ fd: Int32, for events: FileDescriptorEvents, handler: @escaping (FileDescriptorEvents) -> Void
    ) throws(IPCError) -> any FileDescriptorWatch {
        preconditionInEventLoop()
        let watch = ManualWatch(
            id: nextWatchID, fd: fd, events: events, loop: self, handler: handler,
            applyEvents: { _, _ in },  // polled with the current events on every pass
            remove: { loop, watch in loop.remove(watch) })
        watches[nextWatchID] = watch
        nextWatchID += 1
        return watch
    }

    // MARK: Driving

    /// Runs posted tasks, due delayed tasks and ready fd watches until there is nothing left.
    /// Returns the number of units of work done.
    @discardableResult
    public func runUntilIdle() -> Int {
        preconditionInEventLoop()
        var work = 0
        while true {
            let done = runOnePass()
            if done == 0 { return work }
            work += done
        }
    }

    /// Runs until `condition` holds or the loop is idle; returns whether `condition` held.
    @discardableResult
    public func run(until condition: () -> Bool) -> Bool {
        preconditionInEventLoop()
        while !condition() {
            if runOnePass() == 0 { return condition() }
        }
        return true
    }

    /// Moves virtual time forward by `duration`, running each delayed task when its deadline
    /// is reached (and the loop to idle around it).
    public func advanceTime(by duration: Duration) {
        preconditionInEventLoop()
        let target = now &+ nanoseconds(duration)
        runUntilIdle()
        while let next = timers.nextDeadline(), next <= target {
            now = max(now, next)
            runUntilIdle()
        }
        now = target
        runUntilIdle()
    }

    /// One pass: the tasks posted so far, due timers, ready watches.
    private func runOnePass() -> Int {
        pending.withLock { swap(&$0, &running) }
        let taskCount = running.count
        for task in running { task.run() }
        running.removeAll(keepingCapacity: true)
        var timerCount = 0
        if !timers.isEmpty {
            let due = timers.popDue(now: now)
            for action in due { action() }
            timerCount = due.count
        }
        return taskCount + timerCount + pollWatches()
    }

    private func pollWatches() -> Int {
        guard !watches.isEmpty else { return 0 }
        var fired = 0
        for (id, watch) in watches.sorted(by: { $0.key < $1.key }) where watches[id] != nil {
            var poller = pollfd(fd: watch.fd, events: 0, revents: 0)
            if watch.events.contains(.readable) { poller.events |= Int16(POLLIN) }
            if watch.events.contains(.writable) { poller.events |= Int16(POLLOUT) }
            guard poll(&poller, 1, 0) > 0 else { continue }
            var ready: FileDescriptorEvents = []
            if poller.revents & Int16(POLLIN) != 0 { ready.insert(.readable) }
            if poller.revents & Int16(POLLOUT) != 0 { ready.insert(.writable) }
            if poller.revents & Int16(POLLHUP | POLLERR) != 0 { ready.formUnion([.hangup, .readable]) }
            guard !ready.intersection(watch.events.union(.hangup)).isEmpty else { continue }
            watch.fire(ready)
            fired += 1
        }
        return fired
    }

    private func remove(_ watch: ManualWatch) {
        watches[watch.id] = nil
    }
}

typealias ManualWatch = WatchRegistration<ManualEventLoop>
