// The service on a real epoll loop thread, driven from async code: the async endpoint forms hop
// onto the loop, writers on the test's thread write into shared memory, and the trace arrives.

import IPCProtocol
import IPCUnixSocket
import Foundation
import Testing

@testable import TracingAPI

@Suite("Tracing service on a loop thread", .serialized)
struct ThreadedServiceTests {
    @Test func asyncConsumerDrivesASessionOnALoopThread() async throws {
        let loop = try EpollEventLoop.startOnNewThread(name: "tracing-test")
        defer { loop.shutdown() }
        let service = TracingServiceCore(eventLoop: loop)
        let started = ThreadLock(false)  // set on the loop, polled here
        let pair = await onLoop(loop) { () -> (RecordingProducer, TraceRecorder) in
            let producer = RecordingProducer(
                service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
            producer.onStart = { _, _ in started.withLock { $0 = true } }
            let recorder = TraceRecorder(service: service)
            recorder.start(TracingConfigs.config())
            return (producer, recorder)
        }
        let producer = UncheckedSendableBox(pair.value.0)
        let recorder = pair.value.1
        let deadline = ContinuousClock.now + .seconds(30)
        while !started.withLock({ $0 }), ContinuousClock.now < deadline { await Task.yield() }
        #expect(started.withLock { $0 })

        // A writer used off the loop, as application threads use them.
        let writer = await onLoop(loop) { producer.value.writers.values.first! }
        for index in 0..<100 { writer.value.writeTestPacket(timestamp: UInt64(index), "from a task \(index)") }
        writer.value.flush()

        let flushed = await recorder.endpoint.flush(timeoutMs: 5_000)
        #expect(flushed)
        let capabilities = await recorder.endpoint.queryCapabilities()
        #expect(capabilities.hasQueryCapabilities_p)
        let state = await recorder.endpoint.queryServiceState()
        #expect(state.producers.map { $0.name } == ["app"])

        let packets: [TracePacketData] = try await withCheckedThrowingContinuation { continuation in
            let box = UncheckedSendableBox(recorder)
            loop.execute { box.value.stop { continuation.resume(with: $0) } }
        }
        let texts = try packets.map { try $0.decode() }.filter { $0.trustedPacketSequenceID == 2 }.map(\.forTesting.str)
        #expect(texts == ((0..<100).map { "from a task \($0)" }))
        _ = await onLoop(loop) { producer.value.writers = [:] }
    }

    /// Runs `body` on the loop and returns its result (boxed: loop-bound values are not Sendable).
    private func onLoop<Result>(_ loop: EpollEventLoop, _ body: @escaping () -> Result) async -> UncheckedSendableBox<Result> {
        let work = UncheckedSendableBox(body)
        return await withCheckedContinuation { continuation in
            loop.execute { continuation.resume(returning: UncheckedSendableBox(work.value())) }
        }
    }
}
