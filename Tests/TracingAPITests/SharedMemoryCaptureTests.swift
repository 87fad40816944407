// Real shared-memory chunks captured from Perfetto's SDK producer (../shared/interop/smb), put
// back into our service's shared memory and committed as the producer committed them, must come
// out exactly as the real `traced` wrote them into the consumer's trace file, trusted fields
// and all.

import Foundation
import IPCInProcess
import IPCProtocol
import Testing

@testable import TracingAPI

@Suite("Captured shared memory", .serialized)
struct SharedMemoryCaptureTests {
    private func fixture(_ name: String) throws -> URL {
        try #require(Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: nil))
    }

    /// Producer packets of a captured trace (everything not on the service's sequence).
    private func producerPackets(ofTrace name: String) throws -> [TracePacketData] {
        let packets = try TraceFile.decodePackets([UInt8](Data(contentsOf: fixture(name))))
        return try packets.filter { try $0.decode().trustedPacketSequenceID != 1 }
    }

    private func replay(chunks name: String, trace: String, producerProvided: Bool) throws {
        let expected = try producerPackets(ofTrace: trace)
        #expect(!expected.isEmpty)
        let first = try expected[0].decode()
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        var options = ProducerConnectionOptions(name: "pf_producer")
        if producerProvided {
            options.producerProvidedSharedMemory = try SharedMemoryBuffer.create(size: 262_144, pageSize: 4096)
        }
        let producer = RecordingProducer(
            service: service, name: "pf_producer", uid: UInt32(bitPattern: first.trustedUid), pid: first.trustedPid,
            dataSources: [TracingConfigs.descriptor("pf.peer", willNotifyOnStop: true)], options: options)
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(dataSources: [("pf.peer", 0)]), outputFile: nil)
        drive(loop, until: { producer.started.count == 1 })
        #expect(producer.endpoint.isSharedMemoryProvidedByProducer == producerProvided)
        let memory = try #require(producer.endpoint.sharedMemory)
        let targetBuffer = producer.started[0].config.targetBuffer

        // Put every chunk where the SDK had it, page header included, and commit as it did.
        let capture = try SharedMemoryCapture(jsonLines: String(contentsOf: fixture(name), encoding: .utf8))
        #expect(!capture.commits.isEmpty)
        try capture.replay(into: producer.endpoint, targetBuffer: BufferID(targetBuffer))
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })
        consumer.read(on: loop)

        let ours = consumer.packets.filter { (try? $0.decode().trustedPacketSequenceID) != 1 }
        #expect(ours.count == expected.count)
        #expect(ours == expected, "byte for byte what traced wrote")
        // The service freed every chunk it moved.
        for chunk in capture.commits.flatMap(\.chunks) { #expect(memory.headerBitmap(page: chunk.page) == 0) }
    }

    @Test func sDKProducerChunksYieldExactlyTheTracedPackets() throws {
        try replay(chunks: "chunks.jsonl", trace: "consumer_session.pftrace", producerProvided: false)
    }

    @Test func startupTracingChunksInProducerProvidedMemoryYieldExactlyTheTracedPackets() throws {
        try replay(chunks: "startup_chunks.jsonl", trace: "startup_consumer_session.pftrace", producerProvided: true)
    }

    @Test func malformedCapturesAreRefusedWithAReason() throws {
        #expect(throws: TracingError.self) { try SharedMemoryCapture(jsonLines: "not json") }
        #expect(throws: TracingError.self) { try SharedMemoryCapture(jsonLines: #"{"kind": "chunk", "page": 0}"#) }
        #expect(throws: TracingError.self) { try SharedMemoryCapture(jsonLines: #"{"kind": "mystery"}"#) }
        let outside = #"{"kind": "chunk", "commit_seq": 1, "page": 0, "chunk": -3, "page_header_bitmap": "0x10000003", "#
            + #""chunk_offset_in_smb": 8, "hex": "0000000001000000"}"#
        let capture = try SharedMemoryCapture(jsonLines: outside)
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producer.started.count == 1 })
        #expect(throws: TracingError.self) { try capture.replay(into: producer.endpoint, targetBuffer: 1) }
    }

    @Test func capturedTraceFilesDecode() throws {
        for name in ["consumer_session.pftrace", "startup_consumer_session.pftrace", "write_into_file.pftrace"] {
            let bytes = [UInt8](try Data(contentsOf: fixture(name)))
            let packets = try TraceFile.decodePackets(bytes)
            #expect(!packets.isEmpty)
            #expect(TraceFile.encode(packets) == bytes, "\(name) re-encodes identically")
            let trace = try Perfetto_Protos_Trace(serializedBytes: bytes)
            #expect(trace.packet.count == packets.count)
        }
    }
}
