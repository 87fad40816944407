// Real shared-memory chunks captured from Perfetto's SDK producer (../shared/interop/smb), put
// back into our service's shared memory and committed as the producer committed them, must come
// out exactly as the real `traced` wrote them into the consumer's trace file, trusted fields
// and all.

import CPerfettoIPCLinux
import Foundation
import IPCInProcess
import IPCProtocol
import XCTest

@testable import TracingAPI

final class SharedMemoryCaptureTests: XCTestCase {
    private struct CapturedChunk {
        var commit: Int
        var page: Int
        var chunk: Int
        var bitmap: UInt32
        var offsetInBuffer: Int
        var bytes: [UInt8]
    }

    private func fixture(_ name: String) throws -> URL {
        try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: nil))
    }

    private func loadChunks(_ name: String) throws -> [CapturedChunk] {
        let text = try String(contentsOf: fixture(name), encoding: .utf8)
        var chunks: [CapturedChunk] = []
        for line in text.split(separator: "\n") {
            let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            guard record["kind"] as? String == "chunk" else {
                XCTFail("these captures hold only chunks; got \(record["kind"] ?? "?")")
                continue
            }
            let bitmapText = try XCTUnwrap(record["page_header_bitmap"] as? String).dropFirst(2)
            chunks.append(CapturedChunk(
                commit: try XCTUnwrap(record["commit_seq"] as? Int),
                page: try XCTUnwrap(record["page"] as? Int),
                chunk: try XCTUnwrap(record["chunk"] as? Int),
                bitmap: try XCTUnwrap(UInt32(bitmapText, radix: 16)),
                offsetInBuffer: try XCTUnwrap(record["chunk_offset_in_smb"] as? Int),
                bytes: [UInt8](hex: try XCTUnwrap(record["hex"] as? String))))
        }
        return chunks
    }

    /// Producer packets of a captured trace (everything not on the service's sequence).
    private func producerPackets(ofTrace name: String) throws -> [TracePacketData] {
        let packets = try TraceFile.decodePackets([UInt8](Data(contentsOf: fixture(name))))
        return try packets.filter { try $0.decode().trustedPacketSequenceID != 1 }
    }

    private func replay(chunks name: String, trace: String, producerProvided: Bool) throws {
        let expected = try producerPackets(ofTrace: trace)
        XCTAssertFalse(expected.isEmpty)
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
        XCTAssertEqual(producer.endpoint.isSharedMemoryProvidedByProducer, producerProvided)
        let memory = try XCTUnwrap(producer.endpoint.sharedMemory)
        let targetBuffer = producer.started[0].config.targetBuffer

        // Put every chunk where the SDK had it, page header included, and commit as it did.
        let chunks = try loadChunks(name)
        for commit in Set(chunks.map(\.commit)).sorted() {
            var request = CommitDataRequest()
            for chunk in chunks where chunk.commit == commit {
                let page = memory.base + chunk.page * memory.pageSize
                CPerfettoIPC_atomicStore32(page.assumingMemoryBound(to: UInt32.self), chunk.bitmap)
                chunk.bytes.withUnsafeBytes { (memory.base + chunk.offsetInBuffer).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                var move = CommitDataRequest.ChunksToMove()
                move.page = UInt32(chunk.page)
                move.chunk = UInt32(chunk.chunk)
                move.targetBuffer = targetBuffer
                request.chunksToMove.append(move)
            }
            producer.endpoint.commitData(request, completion: nil)
        }
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })
        consumer.read(on: loop)

        let ours = consumer.packets.filter { (try? $0.decode().trustedPacketSequenceID) != 1 }
        XCTAssertEqual(ours.count, expected.count)
        XCTAssertEqual(ours, expected, "byte for byte what traced wrote")
        // The service freed every chunk it moved.
        for chunk in chunks { XCTAssertEqual(memory.headerBitmap(page: chunk.page), 0) }
    }

    func testSDKProducerChunksYieldExactlyTheTracedPackets() throws {
        try replay(chunks: "chunks.jsonl", trace: "consumer_session.pftrace", producerProvided: false)
    }

    func testStartupTracingChunksInProducerProvidedMemoryYieldExactlyTheTracedPackets() throws {
        try replay(chunks: "startup_chunks.jsonl", trace: "startup_consumer_session.pftrace", producerProvided: true)
    }

    func testCapturedTraceFilesDecode() throws {
        for name in ["consumer_session.pftrace", "startup_consumer_session.pftrace", "write_into_file.pftrace"] {
            let bytes = [UInt8](try Data(contentsOf: fixture(name)))
            let packets = try TraceFile.decodePackets(bytes)
            XCTAssertFalse(packets.isEmpty)
            XCTAssertEqual(TraceFile.encode(packets), bytes, "\(name) re-encodes identically")
            let trace = try Perfetto_Protos_Trace(serializedBytes: bytes)
            XCTAssertEqual(trace.packet.count, packets.count)
        }
    }
}
