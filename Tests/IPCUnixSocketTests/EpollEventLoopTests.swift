// The epoll loop's contract: tasks never run inline, run in order, delayed tasks fire after
// their delay and can be cancelled, fd watches report readiness, and the loop is an executor.

import Glibc
import IPCProtocol
import IPCUnixSocket
import Synchronization
import Testing
import TestSupport

@Suite("EpollEventLoop")
struct EpollEventLoopTests {
    @Test func postedTasksRunLaterAndInOrder() throws {
        let loop = try EpollEventLoop()
        let order = Mutex<[Int]>([])
        for index in 0..<100 { loop.execute { order.withLock { $0.append(index) } } }
        #expect(order.withLock { $0.isEmpty }, "execute must never run the task inline")
        #expect(loop.run(until: { order.withLock { $0.count == 100 } }, timeout: .seconds(5)))
        #expect(order.withLock { $0 } == Array(0..<100))
    }

    @Test func tasksPostedFromOtherThreadsWakeTheLoop() throws {
        let loop = try EpollEventLoop.startOnNewThread(name: "test-loop")
        defer { loop.shutdown() }
        let ranOnLoop = Atomic<Int>(0)
        let done = Atomic<Int>(0)
        for _ in 0..<1000 {
            loop.execute {
                if loop.inEventLoop { ranOnLoop.add(1, ordering: .relaxed) }
                done.add(1, ordering: .relaxed)
            }
        }
        #expect(!loop.inEventLoop)
        let deadline = ContinuousClock.now + .seconds(5)
        while done.load(ordering: .relaxed) < 1000, ContinuousClock.now < deadline { sched_yield() }
        #expect(ranOnLoop.load(ordering: .relaxed) == 1000)
    }

    @Test func delayedTasksFireInDeadlineOrderAndCanBeCancelled() throws {
        let loop = try EpollEventLoop()
        var fired: [String] = []
        let start = ContinuousClock.now
        _ = loop.scheduleTask(after: .milliseconds(30)) { fired.append("30ms") }
        _ = loop.scheduleTask(after: .milliseconds(10)) { fired.append("10ms") }
        let cancelled = loop.scheduleTask(after: .milliseconds(20)) { fired.append("cancelled") }
        cancelled.cancel()
        #expect(loop.run(until: { fired.count == 2 }, timeout: .seconds(5)))
        #expect(fired == ["10ms", "30ms"])
        #expect(ContinuousClock.now - start >= .milliseconds(30))
    }

    @Test func watchReportsReadabilityUntilCancelled() throws {
        let loop = try EpollEventLoop()
        let (reader, writer) = FileDescriptors.socketPair()
        let fds = [reader.rawValue, writer.rawValue]
        var readable = 0
        var watch: (any FileDescriptorWatch)?
        watch = try loop.watch(fds[0], for: .readable) { events in
            #expect(events.contains(.readable))
            readable += 1
            var byte: UInt8 = 0
            _ = read(fds[0], &byte, 1)
            watch?.cancel()
        }
        var byte: UInt8 = 1
        #expect(write(fds[1], &byte, 1) == 1)
        #expect(write(fds[1], &byte, 1) == 1)
        #expect(loop.run(until: { readable == 1 }, timeout: .seconds(5)))
        // Cancelled inside its own handler: the second byte is never reported.
        loop.run(until: { false }, timeout: .milliseconds(20))
        #expect(readable == 1)
    }

    @Test func runUntilReturnsFalseAtTheDeadline() throws {
        let loop = try EpollEventLoop()
        let start = ContinuousClock.now
        #expect(!loop.run(until: { false }, timeout: .milliseconds(15)))
        #expect(ContinuousClock.now - start >= .milliseconds(15))
    }

    @Test func actorsCanRunOnTheLoop() async throws {
        let loop = try EpollEventLoop.startOnNewThread(name: "actor-loop")
        defer { loop.shutdown() }
        let counter = LoopIsolatedCounter(loop: loop)
        for _ in 0..<10 { await counter.increment() }
        #expect(await counter.value == 10)
        #expect(await counter.ranOnLoop)
    }
}

actor LoopIsolatedCounter {
    let loop: EpollEventLoop
    var value = 0
    var ranOnLoop = true
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    init(loop: EpollEventLoop) { self.loop = loop }

    func increment() {
        if !loop.inEventLoop { ranOnLoop = false }
        value += 1
    }
}
