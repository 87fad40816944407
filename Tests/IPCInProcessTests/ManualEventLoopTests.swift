// The deterministic loop: nothing runs until driven, time is virtual.

import IPCInProcess
import IPCProtocol
import Testing

@Suite("ManualEventLoop")
struct ManualEventLoopTests {
    @Test func postedTasksWaitUntilTheLoopIsRun() {
        let loop = ManualEventLoop()
        var ran: [Int] = []
        let box = UncheckedSendableBox(Recorder())
        for index in 0..<3 { loop.execute { box.value.values.append(index) } }
        #expect(box.value.values.isEmpty)
        #expect(loop.runUntilIdle() == 3)
        #expect(box.value.values == [0, 1, 2])
        ran = box.value.values
        #expect(ran.count == 3)
    }

    @Test func tasksPostedWhileRunningRunBeforeIdle() {
        let loop = ManualEventLoop()
        let box = UncheckedSendableBox(Recorder())
        loop.execute {
            box.value.values.append(1)
            loop.execute { box.value.values.append(2) }
        }
        loop.runUntilIdle()
        #expect(box.value.values == [1, 2])
    }

    @Test func delayedTasksRunOnlyWhenVirtualTimeReachesThem() {
        let loop = ManualEventLoop()
        var fired: [String] = []
        _ = loop.scheduleTask(after: .milliseconds(20)) { fired.append("20") }
        _ = loop.scheduleTask(after: .milliseconds(10)) { fired.append("10") }
        let cancelled = loop.scheduleTask(after: .milliseconds(15)) { fired.append("15") }
        cancelled.cancel()
        loop.runUntilIdle()
        #expect(fired.isEmpty)
        loop.advanceTime(by: .milliseconds(10))
        #expect(fired == ["10"])
        loop.advanceTime(by: .seconds(1))
        #expect(fired == ["10", "20"])
        #expect(loop.virtualTime == .milliseconds(1010))
    }

    @Test func runUntilStopsWhenIdle() {
        let loop = ManualEventLoop()
        #expect(!loop.run(until: { false }))
    }
}

final class Recorder {
    var values: [Int] = []
}
