// tracebox producer --continuous: a few threads that write test packets into every running
// instance of the test data source at once, until each instance stops. Each thread has one
// writer (one sequence) per instance; its packets carry seq_value 0, 1, 2, … and, when the
// instance stops, a last packet with is_last set and counter = how many came before it, so a
// reader of the trace can tell every packet delivered from every packet lost.
//
// The loop thread never waits for the writer threads: it hands them writers and asks them to
// flush or stop; they answer on the loop when they have. A writer thread waits only inside a
// write, for a free chunk, as long as its stall policy allows.

import IPCProtocol
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

final class ContinuousWriters: Sendable {
    struct Settings {
        var threads: Int
        var payload: Int
        var interval: Duration
        /// Test only: each thread writes this many packets into each instance, then the
        /// process stops itself (SIGSTOP) with nothing more committed.
        var stopAfter: Int?
    }

    /// What the writers did, for the summary a producer prints.
    struct Totals {
        /// Packets written into instances that ended with their last packet.
        var written: UInt64 = 0
        /// Of those, packets the writers dropped (no free chunk within the stall policy).
        var dropped: UInt64 = 0
        /// Instances ended with a last packet on each writer.
        var instances = 0
        /// Packets written into instances lost with the service (no last packet).
        var abandoned: UInt64 = 0
        /// The longest a single write took, in nanoseconds.
        var longestWrite: UInt64 = 0
        /// Packets written (as `written`), by tracing session id.
        var writtenPerSession: [UInt64: UInt64] = [:]
    }

    private struct Instance {
        /// The tracing session it belongs to (the service's id).
        var session: UInt64
        /// One writer per thread; each thread takes its own (by index) and owns it from then on.
        var writers: [TraceWriter?]
        var stopping = false
        var writeLastPacket = true
        var remaining: Int
        var onStopped: UncheckedSendableBox<() -> Void>?
        var threadsAtStopAfter = 0
    }

    private struct State {
        /// By a number of our own: a service that comes back after a loss numbers its instances
        /// from 1 again while the threads may still be closing the old ones.
        var instances: [Int: Instance] = [:]
        /// The instances the service can still stop, by its ids.
        var live: [DataSourceInstanceID: Int] = [:]
        var nextKey = 0
        var quit = false
        var flushGeneration: UInt64 = 0
        var flushedGeneration: [UInt64]
        var pendingFlushes: [(generation: UInt64, done: UncheckedSendableBox<() -> Void>)] = []
        var whenIdle: [UncheckedSendableBox<() -> Void>] = []
        var totals = Totals()
        var threadsRunning = 0
    }

    private let settings: Settings
    private let loop: any IPCEventLoop
    private let state: ThreadLock<State>
    private let threads = ThreadLock<[pthread_t]>([])

    init(settings: Settings, loop: any IPCEventLoop) {
        self.settings = settings
        self.loop = loop
        state = ThreadLock(State(flushedGeneration: Array(repeating: 0, count: settings.threads)))
    }

    /// Starts the writer threads (idle until an instance starts).
    func startThreads() {
        for index in 0..<settings.threads {
            state.withLock { $0.threadsRunning += 1 }
            let started = spawnThread { [self] in run(thread: index) }
            if let started {
                threads.withLock { $0.append(started) }
            } else {
                state.withLock { $0.threadsRunning -= 1 }
            }
        }
    }

    var totals: Totals { state.withLock { $0.totals } }

    /// Hands the threads their writers for a new instance. Loop-only.
    func start(_ id: DataSourceInstanceID, session: UInt64, writers: [TraceWriter]) {
        precondition(writers.count == settings.threads)
        state.withLock { state in
            state.nextKey += 1
            state.live[id] = state.nextKey
            state.instances[state.nextKey] = Instance(session: session, writers: writers, remaining: writers.count)
        }
    }

    /// Instances the service started and has not stopped.
    var liveInstances: Int { state.withLock { $0.live.count } }

    /// Asks the threads to write their last packets into `id`, flush and close their writers;
    /// `then` runs on the loop once they all have (at once if `id` has no writers).
    func stop(_ id: DataSourceInstanceID, then: @escaping () -> Void) {
        let known = state.withLock { state -> Bool in
            guard let key = state.live.removeValue(forKey: id), state.instances[key] != nil else { return false }
            state.instances[key]!.stopping = true
            state.instances[key]!.onStopped = UncheckedSendableBox(then)
            return true
        }
        if !known { then() }
    }

    /// Ends every instance (without last packets when the service is gone); `then` runs on the
    /// loop once no writer is left.
    func stopAll(writeLastPackets: Bool, then: @escaping () -> Void) {
        let idle = state.withLock { state -> Bool in
            state.live = [:]
            for id in state.instances.keys {
                state.instances[id]!.stopping = true
                state.instances[id]!.writeLastPacket = state.instances[id]!.writeLastPacket && writeLastPackets
            }
            guard !state.instances.isEmpty else { return true }
            state.whenIdle.append(UncheckedSendableBox(then))
            return false
        }
        if idle { then() }
    }

    /// Asks every thread to flush its writers; `then` runs on the loop once all have.
    func flush(then: @escaping () -> Void) {
        state.withLock { state in
            state.flushGeneration += 1
            state.pendingFlushes.append((state.flushGeneration, UncheckedSendableBox(then)))
        }
    }

    /// Ends every instance with its last packets and waits for the threads to exit.
    func shutDown() {
        state.withLock { state in
            state.quit = true
            for id in state.instances.keys { state.instances[id]!.stopping = true }
        }
        for thread in threads.withLock({ $0 }) { pthread_join(thread, nil) }
        threads.withLock { $0 = [] }
    }

    // MARK: A writer thread

    private struct Owned {
        var writer: TraceWriter
        var next: UInt32 = 0
    }

    private func run(thread index: Int) {
        var owned: [Int: Owned] = [:]
        let padding = String(repeating: "x", count: settings.payload)
        while true {
            // Take new writers; see which of ours are to stop, and whether to flush.
            let (stopping, flushTo, quit) = state.withLock { state in
                var stopping: [Int: Bool] = [:]
                for (id, instance) in state.instances {
                    if let writer = instance.writers[index] {
                        owned[id] = Owned(writer: writer)
                        state.instances[id]!.writers[index] = nil
                    }
                    if instance.stopping && owned[id] != nil { stopping[id] = instance.writeLastPacket }
                }
                let flushTo = state.flushGeneration > state.flushedGeneration[index] ? state.flushGeneration : nil
                return (stopping, flushTo, state.quit)
            }
            for (id, writeLast) in stopping {
                guard let mine = owned.removeValue(forKey: id) else { continue }
                if writeLast { write(lastPacketOf: mine) }
                mine.writer.flush()
                mine.writer.close()
                finished(id, thread: index, written: UInt64(mine.next), dropped: mine.writer.packetsDropped, ended: writeLast)
            }
            if let flushTo {
                for mine in owned.values { mine.writer.flush() }
                flushed(thread: index, generation: flushTo)
            }
            if quit && owned.isEmpty { break }
            for id in owned.keys.sorted() {
                let sequence = owned[id]!.next
                if let stopAfter = settings.stopAfter, sequence >= stopAfter { continue }
                var packet = TracePacket()
                packet.timestamp = bootTimeNanoseconds()
                packet.forTesting.str = "t\(index) \(sequence) " + padding
                packet.forTesting.seqValue = sequence
                packet.forTesting.counter = UInt64(sequence)
                timed { try? owned[id]!.writer.writePacket(packet) }
                owned[id]!.next = sequence + 1
                if let stopAfter = settings.stopAfter, sequence + 1 == stopAfter { reachedStopAfter(id) }
            }
            sleep(for: owned.isEmpty ? .milliseconds(2) : settings.interval)
        }
        state.withLock { $0.threadsRunning -= 1 }
    }

    private func write(lastPacketOf mine: Owned) {
        var packet = TracePacket()
        packet.timestamp = bootTimeNanoseconds()
        packet.forTesting.str = "end \(mine.next) dropped \(mine.writer.packetsDropped)"
        packet.forTesting.seqValue = mine.next
        packet.forTesting.counter = UInt64(mine.next)
        packet.forTesting.isLast = true
        timed { try? mine.writer.writePacket(packet) }
    }

    private func timed(_ body: () -> Void) {
        let start = monotonicNanoseconds()
        body()
        let took = monotonicNanoseconds() - start
        state.withLock { $0.totals.longestWrite = max($0.totals.longestWrite, took) }
    }

    private func finished(_ id: Int, thread: Int, written: UInt64, dropped: UInt64, ended: Bool) {
        let callbacks = state.withLock { state -> [UncheckedSendableBox<() -> Void>] in
            guard var instance = state.instances[id] else { return [] }
            if ended {
                state.totals.written += written
                state.totals.dropped += dropped
                state.totals.writtenPerSession[instance.session, default: 0] += written
            } else {
                state.totals.abandoned += written
            }
            instance.remaining -= 1
            guard instance.remaining == 0 else {
                state.instances[id] = instance
                return []
            }
            state.instances[id] = nil
            if ended { state.totals.instances += 1 }
            var callbacks = instance.onStopped.map { [$0] } ?? []
            if state.instances.isEmpty {
                callbacks += state.whenIdle
                state.whenIdle = []
            }
            return callbacks
        }
        post(callbacks)
    }

    private func flushed(thread: Int, generation: UInt64) {
        let callbacks = state.withLock { state -> [UncheckedSendableBox<() -> Void>] in
            state.flushedGeneration[thread] = generation
            // Threads that have exited flush nothing more: they count as done.
            let done = state.threadsRunning < settings.threads ? generation : state.flushedGeneration.min() ?? generation
            let ready = state.pendingFlushes.filter { $0.generation <= done }
            state.pendingFlushes.removeAll { $0.generation <= done }
            return ready.map(\.done)
        }
        post(callbacks)
    }

    private func reachedStopAfter(_ id: Int) {
        let all = state.withLock { state -> Bool in
            guard state.instances[id] != nil else { return false }
            state.instances[id]!.threadsAtStopAfter += 1
            return state.instances[id]!.threadsAtStopAfter == settings.threads
        }
        guard all else { return }
        say("tracebox producer: \(settings.stopAfter ?? 0) packets written by each of \(settings.threads) threads; stopping")
        raise(SIGSTOP)
    }

    private func post(_ callbacks: [UncheckedSendableBox<() -> Void>]) {
        guard !callbacks.isEmpty else { return }
        let work = UncheckedSendableBox(callbacks)
        loop.execute { for callback in work.value { callback.value() } }
    }
}

private func sleep(for duration: Duration) {
    let nanoseconds = duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&time, &remaining) != 0 && errno == EINTR { time = remaining }
}

func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
