// Resources a user would notice leaking: shared-memory fds and mappings, endpoints released
// without disconnecting, and the packets the TraceRecorder helper hands back.

import IPCInProcess
import IPCProtocol
import TestSupport
import Foundation
import Testing

@testable import TracingAPI

@Suite("Tracing resources", .serialized)
struct ResourceTests {
    @Test func sessionsLeaveNoFileDescriptorsBehind() {
        let loop = ManualEventLoop()
        let baseline = FileDescriptors.openDescriptors()
        do {
            let service = TracingServiceCore(eventLoop: loop)
            for _ in 0..<20 {
                let producer = RecordingProducer(
                    service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
                producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 1, "x") }
                let consumer = RecordingConsumer(service: service)
                consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
                drive(loop, until: { producer.writers.count == 1 })
                #expect(FileDescriptors.openDescriptors().count > baseline.count, "the shared memory is open")
                consumer.endpoint.disableTracing()
                drive(loop, until: { consumer.disabledErrors == [""] })
                consumer.read(on: loop)
                producer.writers = [:]
                producer.endpoint.disconnect()
                consumer.endpoint.disconnect()
                loop.runUntilIdle()
            }
            loop.runUntilIdle()
        }
        loop.runUntilIdle()
        #expect(FileDescriptors.openDescriptors() == baseline)
    }

    @Test func releasingEndpointsDisconnectsThem() {
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        var producer: RecordingProducer? = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        var consumer: RecordingConsumer? = RecordingConsumer(service: service)
        consumer!.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer!.started.count == 1 })
        #expect(service.sessions.count == 1)
        weak let weakProducerEndpoint = producer!.endpoint as AnyObject
        producer!.writers = [:]
        producer = nil
        consumer = nil
        loop.runUntilIdle()
        #expect(weakProducerEndpoint == nil, "no cycle keeps the endpoint (and its shared memory) alive")
        #expect(service.sessions.isEmpty, "the consumer's session went with it")
        #expect(service.connectedProducers.count == 0)
    }

    @Test func releasingAProducerCompletesItsPendingFlushAndStop() {
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        var producer: RecordingProducer? = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer!.acknowledgesFlushes = false
        producer!.notifiesStops = false
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer!.started.count == 1 })
        var flushResults: [Bool] = []
        consumer.endpoint.flush(timeoutMs: 10_000, flags: FlushFlags()) { flushResults.append($0) }
        loop.runUntilIdle()
        #expect(flushResults == [], "waiting for the producer")
        producer!.writers = [:]
        producer = nil  // released, not disconnected
        // Answered at once, and failed: the producer is gone with what it had not committed.
        drive(loop, until: { flushResults == [false] }, "the flush waited for a producer that is gone")
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })
        #expect(loop.virtualTime == .zero, "nothing waited for a timeout")
    }

    @Test func traceRecorderCollectsASession() throws {
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 9, "recorded") }
        let recorder = TraceRecorder(service: service)
        recorder.start(TracingConfigs.config())
        drive(loop, until: { producer.started.count == 1 })
        var result: Result<[TracePacketData], TracingError>?
        recorder.stop { result = $0 }
        drive(loop, until: { result != nil })
        let packets = try #require(result).get()
        let file = recorder.traceFile
        let trace = try Perfetto_Protos_Trace(serializedBytes: file)
        #expect(trace.packet.count == packets.count)
        #expect((trace.packet.filter { $0.trustedPacketSequenceID == 2 }.map(\.forTesting.str)) == ["recorded"])
    }

    @Test func traceRecorderReportsAFailedSession() {
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        let recorder = TraceRecorder(service: service)
        recorder.start(TraceConfig())  // no buffers
        var result: Result<[TracePacketData], TracingError>?
        recorder.stop { result = $0 }
        drive(loop, until: { result != nil })
        guard case .failure(let error) = result else {
            Issue.record("expected a failure, got \(String(describing: result))")
            return
        }
        #expect(error.code == .invalidState)
        #expect(error.message.contains("no buffers"))
    }
}
