// Shared-memory scraping: what a producer wrote but did not commit reaches the trace on flush,
// stop and disconnect, each packet once, and never the packet its writer is still in.

import Foundation
import IPCInProcess
import IPCProtocol
import Testing

@testable import TracingAPI

@Suite("Shared-memory scraping", .serialized)
final class ScrapingTests {
    let loop = ManualEventLoop()
    let service: TracingServiceCore

    init() {
        service = TracingServiceCore(eventLoop: loop)
    }

    /// A producer in a started session, its writer registered with the service.
    private func startedSession() throws -> (RecordingProducer, RecordingConsumer, TraceWriter) {
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer.writers.count == 1 })
        loop.runUntilIdle()
        return (producer, consumer, try #require(producer.writers.values.first))
    }

    private func texts(_ consumer: RecordingConsumer) -> [String] {
        consumer.producerPackets().map(\.forTesting.str)
    }

    @Test func aProducerThatDisconnectsWithoutCommittingLosesNothingItFinished() throws {
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        producer.onStart = { _, writer in
            for index in 0..<3 { writer.writeTestPacket(timestamp: UInt64(index), "uncommitted \(index)") }
        }
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer.started.count == 1 })
        loop.runUntilIdle()  // the writer's registration reaches the service
        #expect(service.connectedProducers.first?.readableSharedMemory.map { $0.scrapeChunks().count } == 1)

        producer.endpoint.disconnect()
        loop.runUntilIdle()
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors.count == 1 })
        consumer.read(on: loop)
        // The writer is still in its chunk, but it counts one past its finished packets.
        #expect(texts(consumer) == ["uncommitted 0", "uncommitted 1", "uncommitted 2"])
    }

    @Test func aChunkWaitingForPatchesOfAGoneProducerIsReadWithoutThePacketItWaitedFor() throws {
        let (producer, consumer, writer) = try startedSession()
        for index in 0..<3 { writer.writeTestPacket(timestamp: UInt64(index), "before \(index)") }
        // Spans into the next chunk: its nested length becomes a patch the writer still holds,
        // and the returned chunk is flagged as waiting for it.
        writer.writeTestPacket(timestamp: 3, String(repeating: "x", count: 6000))
        writer.writeTestPacket(timestamp: 4, "after")
        let chunks = try #require(service.connectedProducers.first?.readableSharedMemory?.scrapeChunks())
        #expect(chunks.contains { $0.header.flags.contains(.needsPatching) })

        // The process dies before its commit and patches go out.
        producer.endpoint.disconnect()
        loop.runUntilIdle()
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors.count == 1 })
        consumer.read(on: loop)
        #expect(texts(consumer) == ["before 0", "before 1", "before 2", "after"])
        #expect(consumer.producerPackets().last?.previousPacketDropped == 1, "the lost packet is marked")
    }

    @Test func aFlushThatTimesOutScrapesAndTheLaterCommitAddsOnlyWhatIsNew() throws {
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        producer.acknowledgesFlushes = false
        let consumer = RecordingConsumer(service: service)
        var config = TracingConfigs.config()
        config.flushTimeoutMs = 100
        consumer.endpoint.enableTracing(config, outputFile: nil)
        drive(loop, until: { producer.writers.count == 1 })
        let writer = try #require(producer.writers.values.first)
        for index in 0..<3 { writer.writeTestPacket(timestamp: UInt64(index), "packet \(index)") }

        var flushed: Bool?
        consumer.endpoint.flush(timeoutMs: 100, flags: FlushFlags()) { flushed = $0 }
        loop.advanceTime(by: .milliseconds(100))
        drive(loop, until: { flushed != nil })
        #expect(flushed == false)
        consumer.read(on: loop)
        #expect(texts(consumer) == ["packet 0", "packet 1", "packet 2"], "scraped while the writer was still in the chunk")

        for index in 3..<5 { writer.writeTestPacket(timestamp: UInt64(index), "packet \(index)") }
        writer.flush()
        loop.runUntilIdle()
        consumer.read(on: loop)
        #expect(texts(consumer) == (0..<5).map { "packet \($0)" }, "the committed chunk adds only the rest")
    }

    @Test func aPacketStillBeingWrittenIsNeverScraped() throws {
        let (producer, consumer, writer) = try startedSession()
        defer { withExtendedLifetime(producer) {} }
        let endpoint = try #require(service.connectedProducers.first)
        for index in 0..<2 { writer.writeTestPacket(timestamp: UInt64(index), "finished \(index)") }
        var counted: [Int] = []
        writer.newTracePacket { packet in
            packet.appendVarint(8, 9)
            // Half written: what a scraper sees now.
            let chunks = endpoint.readableSharedMemory?.scrapeChunks() ?? []
            counted = chunks.map { Int($0.header.packetCount) }
            self.service.scrapeSharedMemory(of: endpoint)
            packet.appendNested(900) { $0.appendString(1, "in progress") }
        }
        #expect(counted == [3], "two finished records, counted one ahead: the reader takes two")
        consumer.read(on: loop)
        #expect(texts(consumer) == ["finished 0", "finished 1"])
    }

    @Test func aProducerThatAsksForNoScrapingIsNotScraped() throws {
        var options = ProducerConnectionOptions(name: "app")
        options.scrapesSharedMemory = false
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")], options: options)
        producer.onStart = { _, writer in
            for index in 0..<3 { writer.writeTestPacket(timestamp: UInt64(index), "uncommitted \(index)") }
        }
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer.started.count == 1 })
        loop.runUntilIdle()
        producer.endpoint.disconnect()
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors.count == 1 })
        consumer.read(on: loop)
        #expect(texts(consumer).isEmpty)
    }

    @Test func scrapingFollowsOnlyRegisteredWritersIntoTheirOwnBuffers() throws {
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        producer.onStart = { _, writer in
            for index in 0..<3 { writer.writeTestPacket(timestamp: UInt64(index), "registered \(index)") }
        }
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer.started.count == 1 })
        loop.runUntilIdle()
        // The service forgets the writer (as after UnregisterTraceWriter): its chunks are not taken.
        let endpoint = try #require(service.connectedProducers.first)
        endpoint.writers.removeAll()
        producer.endpoint.disconnect()
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors.count == 1 })
        consumer.read(on: loop)
        #expect(texts(consumer).isEmpty)
    }
}
