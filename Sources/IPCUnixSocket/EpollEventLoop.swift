// An IPCEventLoop on Linux epoll.
//
// One epoll set watches: an eventfd that wakes the loop when another thread posts a task, and
// every fd registered through `watch`. A task posted from the loop's own thread needs no
// wake-up: the loop runs queued tasks before it waits again, and tasks those tasks post run in
// the same turn (up to a bound that keeps descriptors and timers served), so calls between a
// client and a host on one loop make no system call. Delayed tasks live in a TimerQueue; the epoll_wait
// timeout is the time to the earliest one. The loop runs either on a thread it starts itself
// (`EpollEventLoop.startOnNewThread()`) or on the caller's thread (`run()`,
// `run(until:timeout:)`, the latter being how tests drive it without sleeping).
//
// Thread rule: the loop's thread is the one running it or, while it is not running, the one
// that created or last ran it. Loop-only API checks it.

import CPerfettoIPCLinux
import Glibc
import IPCProtocol
import Synchronization

/// An event loop on epoll, eventfd wake-ups and a monotonic timer queue.
public final class EpollEventLoop: IPCEventLoop, @unchecked Sendable {
    // @unchecked Sendable: the fields below the marker are touched only on the loop's thread
    // (checked by `preconditionInEventLoop` at every loop-only entry point); the rest are
    // immutable, atomics or ThreadLocks.
    private let epollFD: Int32
    private let wakeFD: Int32
    /// Tasks posted from other threads.
    private let pendingTasks = ThreadLock<[PostedTask]>([])
    /// Whether `pendingTasks` may hold tasks: lets a turn skip the lock when nothing came from
    /// another thread. Set under the lock, cleared under it.
    private let hasRemoteTasks = Atomic<Bool>(false)
    private let ownerThread: Atomic<Int32>
    private let stopRequested = Atomic<Bool>(false)
    private let isRunning = Atomic<Bool>(false)
    private let thread = ThreadLock<pthread_t?>(nil)

    // -- loop-confined --
    // Unchecked exclusivity: loop-confined, never accessed across a call into user code
    // (see Threading.md, "Costs").
    @exclusivity(unchecked) private var timers = TimerQueue()
    @exclusivity(unchecked) private var watches: [UInt64: EpollWatch] = [:]
    private var nextWatchID: UInt64 = 1
    @exclusivity(unchecked) private var events = [epoll_event](repeating: epoll_event(), count: 64)
    /// The batch of posted tasks being run; swapped with `pendingTasks` so neither array is
    /// reallocated per batch.
    @exclusivity(unchecked) private var runningTasks: [PostedTask] = []
    /// Tasks posted from the loop's own thread: no lock, no wake-up (a call between a client
    /// and a host on one loop posts two per round trip).
    @exclusivity(unchecked) private var localTasks: [PostedTask] = []
    private static let wakeWatchID: UInt64 = 0

    /// How long the loop keeps polling (without sleeping) before it waits in `epoll_wait` for
    /// the next event. Zero by default. A short spin (10-50 µs) saves the cost of waking a
    /// sleeping thread when replies come back quickly, at the price of CPU time while idle:
    /// up to this long per wait. Loop-only.
    public var spinBeforeSleeping: Duration = .zero

    /// Creates a loop owned by the calling thread. Run it with ``run()`` or
    /// ``run(until:timeout:)``, or use ``startOnNewThread(name:)`` instead.
    ///
    /// - Throws: `IPCError` if epoll or eventfd cannot be created.
    public init() throws(IPCError) {
        epollFD = try Syscall.retrying("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        do {
            wakeFD = try Syscall.retrying("eventfd") {
                eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
            }
        } catch {
            Syscall.close(epollFD)
            throw error
        }
        ownerThread = Atomic(CPerfettoIPC_gettid())
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = Self.wakeWatchID
        guard epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event) == 0 else {
            let error = errno
            Syscall.close(wakeFD)
            Syscall.close(epollFD)
            throw IPCError.systemCall("epoll_ctl(ADD eventfd)", errno: error)
        }
    }

    /// Creates a loop and runs it on a new thread until ``shutdown()``.
    public static func startOnNewThread(name: String = "perfetto-ipc") throws(IPCError) -> EpollEventLoop {
        let loop = try EpollEventLoop()
        try loop.startThread(name: name)
        return loop
    }

    deinit {
        Syscall.close(wakeFD)
        Syscall.close(epollFD)
    }

    // MARK: IPCEventLoop

    public func execute(_ task: @escaping @Sendable () -> Void) {
        // The loop's own thread looks at its queue before it waits again: no lock, no wake-up.
        if inEventLoop {
            localTasks.append(PostedTask(task))
            return
        }
        let wasEmpty = pendingTasks.withLock { tasks in
            tasks.append(PostedTask(task))
            hasRemoteTasks.store(true, ordering: .relaxed)
            return tasks.count == 1
        }
        if wasEmpty { wake() }
    }

    public var inEventLoop: Bool {
        ownerThread.load(ordering: .relaxed) == CPerfettoIPC_gettid()
    }

    public func scheduleTask(after delay: Duration, _ task: @escaping () -> Void) -> any ScheduledTask {
        preconditionInEventLoop()
        return timers.schedule(deadline: monotonicNanoseconds() &+ nanoseconds(delay), task)
    }

    /// epoll honours `FileDescriptorEvents.edgeTriggered` (`EPOLLET`).
    public var supportsEdgeTriggeredWatches: Bool { true }

    public func watch(
        _ fd: Int32, for events: FileDescriptorEvents, handler: @escaping (FileDescriptorEvents) -> Void
    ) throws(IPCError) -> any FileDescriptorWatch {
        preconditionInEventLoop()
        let id = nextWatchID
        nextWatchID += 1
        var event = epoll_event()
        event.events = Self.epollMask(events)
        event.data.u64 = id
        _ = try Syscall.retrying("epoll_ctl(ADD \(fd))") { epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) }
        let watch = EpollWatch(
            id: id, fd: fd, events: events, loop: self, handler: handler,
            applyEvents: { loop, watch in loop.modify(watch) }, remove: { loop, watch in loop.remove(watch) })
        watches[id] = watch
        return watch
    }

    // MARK: Running

    /// Runs the loop on the calling thread until ``stop()`` is called.
    public func run() {
        _ = run(until: { false }, timeout: nil)
    }

    /// Runs the loop on the calling thread until `condition` holds, ``stop()`` is called, or
    /// `timeout` passes. Returns whether `condition` held. This is how tests wait for an
    /// event: no sleeping, a deadline instead.
    @discardableResult
    public func run(until condition: () -> Bool, timeout: Duration?) -> Bool {
        precondition(!isRunning.exchange(true, ordering: .acquiringAndReleasing), "loop is already running")
        ownerThread.store(CPerfettoIPC_gettid(), ordering: .releasing)
        defer { isRunning.store(false, ordering: .releasing) }
        let deadline = timeout.map { monotonicNanoseconds() &+ nanoseconds($0) }
        while !condition() {
            if stopRequested.exchange(false, ordering: .acquiringAndReleasing) { return false }
            let now = monotonicNanoseconds()
            if let deadline, now >= deadline { return condition() }
            var waitUntil = timers.nextDeadline()
            if let deadline { waitUntil = min(waitUntil ?? deadline, deadline) }
            // Tasks already queued (posted from this thread) mean no waiting.
            let timeout = hasPendingTasks ? 0 : waitUntil.map { Self.milliseconds(from: now, to: $0) } ?? -1
            runOnce(timeoutMilliseconds: timeout)
        }
        return true
    }

    private var hasPendingTasks: Bool { !localTasks.isEmpty || hasRemoteTasks.load(ordering: .acquiring) }

    /// Rounds of posted tasks one turn runs before it looks at descriptors and timers again.
    static let maxTaskRoundsPerTurn = 64

    /// Asks the loop to return from ``run()``. Thread-safe.
    public func stop() {
        stopRequested.store(true, ordering: .releasing)
        wake()
    }

    /// Stops a loop started with ``startOnNewThread(name:)`` and waits for its thread to end.
    /// Tasks still queued are dropped. Must not be called on the loop's own thread.
    public func shutdown() {
        stop()
        if let thread = self.thread.withLock({ thread in defer { thread = nil }; return thread }) {
            precondition(!inEventLoop, "shutdown() called on the loop's own thread")
            pthread_join(thread, nil)
        }
    }

    private func runOnce(timeoutMilliseconds: Int32) {
        var count: Int32 = 0
        if timeoutMilliseconds != 0, spinBeforeSleeping > .zero {
            // Opt-in: poll until something is ready or the spin ends, then sleep as usual.
            let spinEnd = monotonicNanoseconds() &+ nanoseconds(spinBeforeSleeping)
            repeat {
                count = poll(timeoutMilliseconds: 0)
            } while count == 0 && monotonicNanoseconds() < spinEnd && !hasPendingTasks
        }
        if count == 0 { count = poll(timeoutMilliseconds: timeoutMilliseconds) }
        dispatch(count)
    }

    private func poll(timeoutMilliseconds: Int32) -> Int32 {
        events.withUnsafeMutableBufferPointer { buffer in
            epoll_wait(epollFD, buffer.baseAddress, Int32(buffer.count), timeoutMilliseconds)
        }
    }

    private func dispatch(_ count: Int32) {
        if count > 0 {
            for index in 0..<Int(count) {
                let event = events[index]
                let id = event.data.u64
                if id == Self.wakeWatchID {
                    drainWakeups()
                } else if let watch = watches[id] {
                    watch.fire(Self.readiness(event.events))
                }
            }
        }
        let now = monotonicNanoseconds()
        for action in timers.popDue(now: now) { action() }
        runPendingTasks()
    }

    /// Runs the queued tasks, then those they queued, and so on, for a bounded number of rounds.
    private func runPendingTasks() {
        for _ in 0..<Self.maxTaskRoundsPerTurn {
            if hasRemoteTasks.load(ordering: .acquiring) {
                pendingTasks.withLock { tasks in
                    swap(&tasks, &runningTasks)
                    hasRemoteTasks.store(false, ordering: .relaxed)
                }
            }
            // Then this thread's own, in the order they were posted.
            if runningTasks.isEmpty {
                swap(&localTasks, &runningTasks)
            } else if !localTasks.isEmpty {
                runningTasks.append(contentsOf: localTasks)
                localTasks.removeAll(keepingCapacity: true)
            }
            if runningTasks.isEmpty { return }
            for task in runningTasks { task.run() }
            runningTasks.removeAll(keepingCapacity: true)
        }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(wakeFD, $0.baseAddress, 8) }
    }

    private func drainWakeups() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(wakeFD, $0.baseAddress, 8) }
    }

    private func startThread(name: String) throws(IPCError) {
        let handle = try startLoopThread(name: name) { [self] ready in
            ownerThread.store(CPerfettoIPC_gettid(), ordering: .releasing)
            ready()
            run()
        }
        thread.withLock { $0 = handle }
    }

    private func modify(_ watch: EpollWatch) {
        var event = epoll_event()
        event.events = Self.epollMask(watch.events)
        event.data.u64 = watch.id
        _ = epoll_ctl(epollFD, EPOLL_CTL_MOD, watch.fd, &event)
    }

    private func remove(_ watch: EpollWatch) {
        var event = epoll_event()
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, watch.fd, &event)
        watches[watch.id] = nil
    }

    private static func epollMask(_ events: FileDescriptorEvents) -> UInt32 {
        var mask: UInt32 = EPOLLRDHUP.rawValue
        if events.contains(.readable) { mask |= EPOLLIN.rawValue }
        if events.contains(.writable) { mask |= EPOLLOUT.rawValue }
        if events.contains(.edgeTriggered) { mask |= EPOLLET.rawValue }
        return mask
    }

    private static func readiness(_ mask: UInt32) -> FileDescriptorEvents {
        var events: FileDescriptorEvents = []
        if mask & EPOLLIN.rawValue != 0 { events.insert(.readable) }
        // The peer shut down writing: what it sent, then end of stream, is to be read.
        if mask & EPOLLRDHUP.rawValue != 0 { events.formUnion([.readable, .hangup]) }
        if mask & EPOLLOUT.rawValue != 0 { events.insert(.writable) }
        if mask & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { events.formUnion([.hangup, .readable]) }
        return events
    }

    private static func milliseconds(from now: UInt64, to deadline: UInt64) -> Int32 {
        guard deadline > now else { return 0 }
        let ms = (deadline - now + 999_999) / 1_000_000
        return Int32(min(ms, UInt64(Int32.max)))
    }
}

typealias EpollWatch = WatchRegistration<EpollEventLoop>
