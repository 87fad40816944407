// An IPCEventLoop on libuv, so Host and Client can live inside an application's uv loop.
//
//   posting       uv_async_t (uv_async_send is libuv's one thread-safe call) from other
//                 threads; from the loop's own thread a uv_idle_t, which runs the queue on the
//                 loop's next turn without a system call to wake it (and tasks those tasks
//                 post run in the same turn, up to a bound)
//   delayed tasks one uv_timer_t, armed for the earliest task of a TimerQueue
//   fd watches    one uv_poll_t per watched descriptor
//
// Two ways to use it:
// * `LibuvEventLoop.startOnNewThread()`: the package owns a uv loop and runs it on its thread;
// * `LibuvEventLoop(adopting: appLoop)`: the application owns and runs its loop. Create the
//   LibuvEventLoop on the thread that runs `uv_run` on that loop, and call everything loop-only
//   from there (libuv itself is not thread-safe); other threads use `execute`.
//
// Handles are closed with uv_close and freed only in their close callbacks; a watch cancelled
// or a loop shut down never calls back into Swift again.

import CLibuv
import CPerfettoIPCLinux
import IPCProtocol
import Synchronization

/// An event loop on a `uv_loop_t`: its own, or the host application's.
public final class LibuvEventLoop: IPCEventLoop, @unchecked Sendable {
    // @unchecked Sendable: `pending` is a ThreadLock and `owner` an Atomic; the handles and
    // everything else are touched only on the loop's thread (checked at loop-only entries).
    public let uvLoop: UnsafeMutablePointer<uv_loop_t>
    private let ownsLoop: Bool
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    /// Started when the loop's own thread posts: the next turn runs the queue, polling with a
    /// zero timeout instead of being woken.
    private let idle: UnsafeMutablePointer<uv_idle_t>
    private var idleStarted = false
    private let timer: UnsafeMutablePointer<uv_timer_t>
    /// Posted tasks, and whether the wake-up handle still accepts sends (false once closed:
    /// a task posted after shutdown is dropped instead of poking a freed handle).
    private let pending = ThreadLock<(tasks: [PostedTask], open: Bool)>(([], true))
    // Unchecked exclusivity: loop-confined (see Threading.md, "Costs").
    @exclusivity(unchecked) private var running: [PostedTask] = []
    private let owner: Atomic<Int32>
    private let thread = ThreadLock<pthread_t?>(nil)
    private var timers = TimerQueue()
    private var closed = false

    /// Creates a loop of its own, owned by the calling thread; run it with ``run(until:timeout:)``
    /// or use ``startOnNewThread(name:)``.
    public convenience init() throws(IPCError) {
        let loop = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        let rc = uv_loop_init(loop)
        guard rc == 0 else {
            loop.deallocate()
            throw IPCError(.systemCallFailed, "uv_loop_init failed: \(Self.describe(rc))", errno: -rc)
        }
        try self.init(loop: loop, owns: true)
    }

    /// Lives inside `loop`, which the application keeps running itself. Call this on the
    /// thread that runs `uv_run(loop, …)`; that thread is this event loop's thread.
    public convenience init(adopting loop: UnsafeMutablePointer<uv_loop_t>) throws(IPCError) {
        try self.init(loop: loop, owns: false)
    }

    private init(loop: UnsafeMutablePointer<uv_loop_t>, owns: Bool) throws(IPCError) {
        uvLoop = loop
        ownsLoop = owns
        owner = Atomic(CPerfettoIPC_gettid())
        wakeup = .allocate(capacity: 1)
        idle = .allocate(capacity: 1)
        timer = .allocate(capacity: 1)
        let asyncRC = uv_async_init(loop, wakeup) { handle in
            LibuvEventLoop.from(handle?.pointee.data)?.runPendingTasks()
        }
        guard asyncRC == 0 else {
            wakeup.deallocate()
            idle.deallocate()
            timer.deallocate()
            throw IPCError(.systemCallFailed, "uv_async_init failed: \(Self.describe(asyncRC))", errno: -asyncRC)
        }
        uv_timer_init(loop, timer)
        uv_idle_init(loop, idle)
        let me = Unmanaged.passUnretained(self).toOpaque()
        wakeup.pointee.data = me
        idle.pointee.data = me
        timer.pointee.data = me
        // Our handles must not keep an application's loop alive on their own.
        if !owns {
            uv_unref(Self.handle(wakeup))
            uv_unref(Self.handle(timer))
            uv_unref(Self.handle(idle))
        }
    }

    /// Creates a loop of its own and runs it on a new thread until ``shutdown()``.
    public static func startOnNewThread(name: String = "perfetto-ipc-uv") throws(IPCError) -> LibuvEventLoop {
        let loop = try LibuvEventLoop()
        let handle = try startLoopThread(name: name) { ready in
            loop.owner.store(CPerfettoIPC_gettid(), ordering: .releasing)
            ready()
            uv_run(loop.uvLoop, UV_RUN_DEFAULT)
        }
        loop.thread.withLock { $0 = handle }
        return loop
    }

    deinit {
        guard ownsLoop else { return }  // an adopted loop belongs to the application
        // Nothing references this loop any more, so nothing else runs it: close our handles,
        // let their close callbacks run, and release libuv's own allocations.
        closeHandles()
        for _ in 0..<64 {
            if uv_loop_close(uvLoop) == 0 {
                uvLoop.deallocate()
                return
            }
            uv_run(uvLoop, UV_RUN_NOWAIT)
        }
        // Still busy: a handle outside our control is open. Leaking the loop is safer than
        // freeing memory libuv may still touch.
    }

    // MARK: IPCEventLoop

    public func execute(_ task: @escaping @Sendable () -> Void) {
        let onLoop = inEventLoop
        let firstOnLoop = pending.withLock { state -> Bool in
            guard state.open else { return false }
            state.tasks.append(PostedTask(task))
            guard state.tasks.count == 1 else { return false }
            if onLoop { return true }
            // Sent under the lock so that closing the handle cannot slip in between.
            uv_async_send(wakeup)
            return false
        }
        if firstOnLoop { startIdle() }
    }

    /// Has the loop's next turn run the queue (loop-only).
    private func startIdle() {
        guard !idleStarted, !closed else { return }
        idleStarted = true
        uv_idle_start(idle) { handle in
            LibuvEventLoop.from(handle?.pointee.data)?.idleFired()
        }
    }

    private func idleFired() {
        runPendingTasks()
        // Still busy after the bounded rounds: stay started, so the next turn goes on.
        if pending.withLock({ $0.tasks.isEmpty }) {
            idleStarted = false
            uv_idle_stop(idle)
        }
    }

    public var inEventLoop: Bool { owner.load(ordering: .relaxed) == CPerfettoIPC_gettid() }

    public func scheduleTask(after delay: Duration, _ task: @escaping () -> Void) -> any ScheduledTask {
        preconditionInEventLoop()
        let scheduled = timers.schedule(deadline: monotonicNanoseconds() &+ nanoseconds(delay), task)
        armTimer()
        return scheduled
    }

    public func watch(
        _ fd: Int32, for events: FileDescriptorEvents, handler: @escaping (FileDescriptorEvents) -> Void
    ) throws(IPCError) -> any FileDescriptorWatch {
        preconditionInEventLoop()
        return try LibuvWatch(loop: self, fd: fd, events: events, handler: handler)
    }

    // MARK: Running (own loop)

    /// Runs the loop on the calling thread until `condition` holds or `timeout` passes;
    /// returns whether `condition` held. For a loop created with ``init()``; this is how tests
    /// drive it without sleeping.
    @discardableResult
    public func run(until condition: () -> Bool, timeout: Duration) -> Bool {
        precondition(ownsLoop, "run(until:timeout:) drives a loop created with init()")
        owner.store(CPerfettoIPC_gettid(), ordering: .releasing)
        let deadline = monotonicNanoseconds() &+ nanoseconds(timeout)
        // A no-op delayed task guarantees uv_run(ONCE) returns by the deadline.
        let wake = scheduleTask(after: timeout) {}
        defer { wake.cancel() }
        while !condition() {
            if monotonicNanoseconds() >= deadline { return condition() }
            uv_run(uvLoop, UV_RUN_ONCE)
        }
        return true
    }

    /// Closes this event loop's handles. For a loop started with ``startOnNewThread(name:)``
    /// also stops its thread and waits for it (not callable from that thread). For an adopted
    /// loop, call it on the loop's thread; the application's loop keeps running.
    public func shutdown() {
        if let thread = self.thread.withLock({ thread in defer { thread = nil }; return thread }) {
            precondition(!inEventLoop, "shutdown() called on the loop's own thread")
            let box = UncheckedSendableBox(self)
            execute { box.value.closeHandles() }
            pthread_join(thread, nil)
        } else if inEventLoop {
            closeHandles()
            if ownsLoop { uv_run(uvLoop, UV_RUN_NOWAIT) }  // let the close callbacks run
        }
    }

    private func closeHandles() {
        guard !closed else { return }
        closed = true
        // Dropped outside the lock: releasing a task runs whatever its captures' deinits do,
        // and that may post to this loop (which would take the lock again).
        var dropped = pending.withLock { pending in
            defer { pending = ([], false) }
            return pending.tasks
        }
        dropped.removeAll()
        wakeup.pointee.data = nil
        idle.pointee.data = nil
        timer.pointee.data = nil
        uv_timer_stop(timer)
        uv_idle_stop(idle)
        uv_close(Self.handle(wakeup)) { $0?.deallocate() }
        uv_close(Self.handle(idle)) { $0?.deallocate() }
        uv_close(Self.handle(timer)) { $0?.deallocate() }
    }

    // MARK: Internals

    /// Rounds of posted tasks one turn runs before descriptors and timers are looked at again.
    static let maxTaskRoundsPerTurn = 64

    /// Runs the queued tasks, then those they queued, and so on, for a bounded number of rounds.
    private func runPendingTasks() {
        for _ in 0..<Self.maxTaskRoundsPerTurn {
            pending.withLock { swap(&$0.tasks, &running) }
            if running.isEmpty { return }
            for task in running { task.run() }
            running.removeAll(keepingCapacity: true)
        }
        // More left: make sure a later turn runs them.
        if !pending.withLock({ $0.tasks.isEmpty }) { startIdle() }
    }

    private func timerFired() {
        for action in timers.popDue(now: monotonicNanoseconds()) { action() }
        armTimer()
    }

    private func armTimer() {
        guard !closed else { return }
        guard let next = timers.nextDeadline() else {
            uv_timer_stop(timer)
            return
        }
        let now = monotonicNanoseconds()
        let milliseconds = next > now ? (next - now + 999_999) / 1_000_000 : 0
        uv_timer_start(timer, { handle in
            LibuvEventLoop.from(handle?.pointee.data)?.timerFired()
        }, milliseconds, 0)
    }

    static func from(_ data: UnsafeMutableRawPointer?) -> LibuvEventLoop? {
        data.map { Unmanaged<LibuvEventLoop>.fromOpaque($0).takeUnretainedValue() }
    }

    static func handle<T>(_ pointer: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<uv_handle_t> {
        UnsafeMutableRawPointer(pointer).assumingMemoryBound(to: uv_handle_t.self)
    }

    static func describe(_ code: Int32) -> String {
        String(decoding: UnsafeRawBufferPointer(start: uv_strerror(code), count: strlen(uv_strerror(code))), as: UTF8.self)
    }
}

/// One `uv_poll_t` watching a descriptor.
final class LibuvWatch: FileDescriptorWatch {
    private let poll: UnsafeMutablePointer<uv_poll_t>
    private var handler: ((FileDescriptorEvents) -> Void)?
    private(set) var events: FileDescriptorEvents
    private let loop: LibuvEventLoop

    init(loop: LibuvEventLoop, fd: Int32, events: FileDescriptorEvents, handler: @escaping (FileDescriptorEvents) -> Void) throws(IPCError) {
        self.loop = loop
        self.handler = handler
        self.events = events
        poll = .allocate(capacity: 1)
        let rc = uv_poll_init(loop.uvLoop, poll, fd)
        guard rc == 0 else {
            poll.deallocate()
            throw IPCError(.systemCallFailed, "uv_poll_init(\(fd)) failed: \(LibuvEventLoop.describe(rc))", errno: -rc)
        }
        // Unretained: the handle never outlives this object (cancel or deinit closes it).
        poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        start()
    }

    deinit { cancel() }

    func setEvents(_ events: FileDescriptorEvents) {
        guard handler != nil, events != self.events else { return }
        self.events = events
        start()
    }

    func cancel() {
        guard handler != nil else { return }
        handler = nil
        poll.pointee.data = nil
        uv_poll_stop(poll)
        uv_close(LibuvEventLoop.handle(poll)) { $0?.deallocate() }
    }

    private func start() {
        var mask: Int32 = 0
        if events.contains(.readable) { mask |= Int32(UV_READABLE.rawValue) | Int32(UV_DISCONNECT.rawValue) }
        if events.contains(.writable) { mask |= Int32(UV_WRITABLE.rawValue) }
        guard mask != 0 else {
            uv_poll_stop(poll)
            return
        }
        uv_poll_start(poll, mask) { handle, status, events in
            guard let data = handle?.pointee.data else { return }
            let watch = Unmanaged<LibuvWatch>.fromOpaque(data).takeUnretainedValue()
            var ready: FileDescriptorEvents = []
            if status < 0 {
                ready = [.readable, .hangup]
            } else {
                if events & Int32(UV_READABLE.rawValue) != 0 { ready.insert(.readable) }
                if events & Int32(UV_WRITABLE.rawValue) != 0 { ready.insert(.writable) }
                if events & Int32(UV_DISCONNECT.rawValue) != 0 { ready.formUnion([.readable, .hangup]) }
            }
            watch.handler?(ready)
        }
    }
}
