// Shared memory is written by another process and must be treated as hostile: garbage chunks,
// lying headers, CommitData indexes that point anywhere, patches past the end. The service drops
// and counts what is bad, never traps, never reads outside the mapping, and keeps working.

import CPerfettoIPCLinux
import IPCInProcess
import IPCProtocol
import Foundation
import Testing

@testable import TracingAPI

@Suite("Hostile shared memory", .serialized)
final class HostileSharedMemoryTests {
    var loop: ManualEventLoop!
    var service: TracingServiceCore!
    var producer: RecordingProducer!
    var consumer: RecordingConsumer!
    var memory: SharedMemoryBuffer!
    var targetBuffer: UInt32 = 0

    init() {
        loop = ManualEventLoop()
        service = TracingServiceCore(eventLoop: loop)
        producer = RecordingProducer(
            service: service, name: "hostile", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { self.producer.started.count == 1 })
        memory = producer.endpoint.sharedMemory
        targetBuffer = producer.started[0].config.targetBuffer
    }


    /// Writes `bytes` as chunk `index` of `page` (layout `layout`) and marks it complete.
    private func place(_ bytes: [UInt8], page: Int, chunk index: Int = 0, layout: PageLayout = .divideBy1) {
        let pageStart = memory.base + page * memory.pageSize
        let bitmap = (layout.rawValue << 28) | (3 << (UInt32(index) * 2))
        CPerfettoIPC_atomicStore32(pageStart.assumingMemoryBound(to: UInt32.self), bitmap)
        let size = SharedMemoryABI.chunkSize(pageSize: memory.pageSize, layout: layout)
        let start = pageStart + SharedMemoryABI.pageHeaderSize + index * size
        memset(start, 0, size)
        bytes.prefix(size).withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    private func move(page: Int, chunk: Int = 0, buffer: UInt32? = nil) -> CommitDataRequest.ChunksToMove {
        var move = CommitDataRequest.ChunksToMove()
        move.page = UInt32(truncatingIfNeeded: page)
        move.chunk = UInt32(truncatingIfNeeded: chunk)
        move.targetBuffer = buffer ?? targetBuffer
        return move
    }

    private func commit(_ moves: [CommitDataRequest.ChunksToMove], patches: [CommitDataRequest.ChunkToPatch] = []) {
        var request = CommitDataRequest()
        request.chunksToMove = moves
        request.chunksToPatch = patches
        producer.endpoint.commitData(request, completion: nil)
        loop.runUntilIdle()
    }

    /// A chunk header followed by records given as (size field, payload).
    private func chunk(writer: UInt16, id: UInt32, count: UInt16, flags: ChunkFlags = [], records: [[UInt8]]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 8)
        bytes.withUnsafeMutableBytes {
            ChunkHeader(chunkID: id, writerID: writer, packetCount: count, flags: flags).write(to: $0.baseAddress!)
        }
        for record in records { bytes += record }
        return bytes
    }

    /// A well-formed record holding a for_testing packet with `text`.
    private func record(_ text: String) -> [UInt8] {
        var packet: [UInt8] = []
        var testEvent: [UInt8] = []
        ProtoEncoding.appendTag(1, .lengthDelimited, to: &testEvent)
        ProtoEncoding.appendVarint(UInt64(text.utf8.count), to: &testEvent)
        testEvent += Array(text.utf8)
        ProtoEncoding.appendTag(900, .lengthDelimited, to: &packet)
        ProtoEncoding.appendVarint(UInt64(testEvent.count), to: &packet)
        packet += testEvent
        return SharedMemoryABI.paddedVarint(UInt32(packet.count)) + packet
    }

    /// The service still works: a packet written the normal way comes through.
    private func assertServiceStillWorks(
        strict: Bool = true, sourceLocation: SourceLocation = #_sourceLocation
    ) -> TraceStats {
        producer.writers.values.first!.writeTestPacket(timestamp: 1, "still alive")
        producer.writers.values.first!.flush()
        consumer.endpoint.disableTracing()
        drive(loop, until: { self.consumer.disabledErrors == [""] }, sourceLocation: sourceLocation)
        consumer.read(on: loop, sourceLocation: sourceLocation)
        #expect(consumer.producerPackets(strict: strict).contains { $0.forTesting.str == "still alive" }, sourceLocation: sourceLocation)
        return consumer.decodedPackets(strict: strict).last!.traceStats
    }

    @Test func randomChunkBytesNeverCrashTheService() {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<300 {
            var bytes = (0..<4088).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if round % 3 == 0 {
                // A plausible header over random records: walks deeper into the parser.
                bytes.replaceSubrange(0..<8, with: chunk(writer: 7, id: UInt32(round), count: UInt16.random(in: 0...1023), records: []))
            }
            // Garbage may claim any writer but our real one (id 1): a producer that scribbles
            // over its own sequence only hurts itself, which the last check would then see.
            if bytes[4] == 1 && bytes[5] == 0 { bytes[4] = 2 }
            let page = round % memory.pageCount
            let layout = PageLayout.allCases.dropFirst().randomElement(using: &generator)!
            let index = Int.random(in: 0..<layout.chunkCount, using: &generator)
            place(bytes, page: page, chunk: index, layout: layout)
            commit([move(page: page, chunk: index)])
            if round % 50 == 0 { consumer.read(on: loop) }
        }
        let stats = assertServiceStillWorks(strict: false)
        #expect((stats.bufferStats[0].abiViolations + stats.invalidPackets + stats.chunksDiscarded) > 0)
    }

    @Test func lyingCommitIndexesAreDiscardedAndCounted() {
        place(chunk(writer: 3, id: 0, count: 1, records: [record("never committed")]), page: 0)
        commit([
            move(page: 9_999), move(page: -1), move(page: 0, chunk: 20), move(page: 0, chunk: 1),  // out of range
            move(page: 1),  // a free chunk
            move(page: 0, buffer: 999), move(page: 0, buffer: 70_000),  // buffers this producer may not use
        ])
        // The last two moved chunk 0 out (freed) and dropped it: a second attempt finds it free.
        commit([move(page: 0)])
        // A reserved layout value in the page header.
        let pageStart = memory.base + 2 * memory.pageSize
        CPerfettoIPC_atomicStore32(pageStart.assumingMemoryBound(to: UInt32.self), (6 << 28) | 3)
        commit([move(page: 2)])
        let stats = assertServiceStillWorks()
        #expect(stats.chunksDiscarded == 9)
        #expect(!(consumer.producerPackets().contains { $0.forTesting.str == "never committed" }))
    }

    @Test func badChunkHeadersAreDroppedAndCounted() {
        place(chunk(writer: 0, id: 0, count: 1, records: [record("writer zero")]), page: 0)
        // 1023 records announced, one present: the walk stops at the zero padding... the
        // chunk's tail of zeros reads as zero-size records, which are skipped.
        place(chunk(writer: 5, id: 0, count: 1023, records: [record("counted high")]), page: 1)
        // A size that runs past the end of the chunk.
        place(chunk(writer: 6, id: 0, count: 2, records: [record("before the lie"), SharedMemoryABI.paddedVarint(5000)]), page: 2)
        // A size varint that never ends.
        place(chunk(writer: 8, id: 0, count: 1, records: [[UInt8](repeating: 0xFF, count: 4088 - 8)]), page: 3)
        // Writer ids past Perfetto's largest (32,767).
        place(chunk(writer: 0x8000, id: 0, count: 1, records: [record("writer 0x8000")]), page: 4)
        place(chunk(writer: 0xFFFF, id: 0, count: 1, records: [record("writer 0xFFFF")]), page: 5)
        commit([move(page: 0), move(page: 1), move(page: 2), move(page: 3), move(page: 4), move(page: 5)])
        let stats = assertServiceStillWorks()
        #expect(stats.chunksDiscarded == 3, "writer ids 0, 0x8000 and 0xFFFF")
        #expect(stats.bufferStats[0].abiViolations == 2, "the size past the end and the endless varint")
        let texts = consumer.producerPackets().map(\.forTesting.str)
        #expect(texts.contains("counted high"))
        #expect(texts.contains("before the lie"), "records before the lie are kept")
        #expect(!texts.contains("writer zero") && !texts.contains("writer 0x8000") && !texts.contains("writer 0xFFFF"))
    }

    @Test func patchesOutsideTheChunkFail() {
        place(chunk(writer: 4, id: 0, count: 1, flags: [.needsPatching], records: [record("patched")]), page: 0)
        commit([move(page: 0)])
        func patch(offset: UInt32, data: [UInt8], chunkID: UInt32 = 0, writer: UInt32 = 4, buffer: UInt32? = nil,
                   more: Bool = true) -> CommitDataRequest.ChunkToPatch {
            var entry = CommitDataRequest.ChunkToPatch()
            entry.targetBuffer = buffer ?? targetBuffer
            entry.writerID = writer
            entry.chunkID = chunkID
            var patch = CommitDataRequest.ChunkToPatch.Patch()
            patch.offset = offset
            patch.data = Data(data)
            entry.patches = [patch]
            entry.hasMorePatches_p = more
            return entry
        }
        commit([], patches: [
            patch(offset: 4077, data: [0, 0, 0, 0]),  // one byte past the payload's end
            patch(offset: UInt32.max, data: [0, 0, 0, 0]),
            patch(offset: 0, data: [1, 2, 3]),  // not 4 bytes
            patch(offset: 0, data: [0, 0, 0, 0], chunkID: 77),  // no such chunk
            patch(offset: 0, data: [0, 0, 0, 0], writer: 0),
            patch(offset: 0, data: [0, 0, 0, 0], writer: 0x8000),
            patch(offset: 0, data: [0, 0, 0, 0], buffer: 999),
        ])
        // A legitimate patch rewriting the record's size with the same value releases the chunk.
        let rewritten = Array(record("patched").prefix(4))
        commit([], patches: [patch(offset: 0, data: rewritten, more: false)])
        let stats = assertServiceStillWorks()
        #expect(stats.bufferStats[0].patchesFailed == 4)
        #expect(stats.bufferStats[0].patchesSucceeded == 1)
        #expect(stats.patchesDiscarded == 3)
        #expect(consumer.producerPackets().contains { $0.forTesting.str == "patched" })
    }

    @Test func packetsForgingReservedFieldsAreRejected() {
        var forged: [UInt8] = []
        ProtoEncoding.appendVarintField(3, 0, to: &forged)  // trusted_uid = 0 (root)
        var malformed: [UInt8] = [0x0A, 0x7F]  // a length past the end
        malformed = SharedMemoryABI.paddedVarint(UInt32(malformed.count)) + malformed
        place(chunk(writer: 9, id: 0, count: 3, records: [
            SharedMemoryABI.paddedVarint(UInt32(forged.count)) + forged, malformed, record("honest"),
        ]), page: 0)
        commit([move(page: 0)])
        let stats = assertServiceStillWorks()
        #expect(stats.invalidPackets == 2)
        let packets = consumer.producerPackets()
        #expect(packets.contains { $0.forTesting.str == "honest" })
        #expect(!(packets.contains { $0.trustedUid == 0 }))
    }

    @Test func fragmentsWithoutTheirHeadAreDropped() {
        // Chunk 1 continues a packet from chunk 0, which never arrives; chunk 2 is whole.
        let continued = chunk(writer: 11, id: 1, count: 2, flags: [.firstPacketContinuesFromPreviousChunk],
                              records: [SharedMemoryABI.paddedVarint(3) + [1, 2, 3], record("after the gap")])
        place(continued, page: 0)
        place(chunk(writer: 11, id: 2, count: 1, records: [record("next chunk")]), page: 1)
        commit([move(page: 0), move(page: 1)])
        _ = assertServiceStillWorks()
        let sequence = consumer.producerPackets().filter { $0.forTesting.str != "still alive" }
        #expect(sequence.map(\.forTesting.str) == ["after the gap", "next chunk"])
        #expect(sequence.first?.previousPacketDropped == 1)
    }

    @Test func emulatedChunksOfBadSizeAreDiscarded() {
        var tooSmall = move(page: 0)
        tooSmall.data = Data([1, 2, 3])
        var tooLarge = move(page: 0)
        tooLarge.data = Data(count: 70_000)
        var good = move(page: 0)
        good.data = Data(chunk(writer: 12, id: 0, count: 1, records: [record("emulated")]))
        commit([tooSmall, tooLarge, good])
        let stats = assertServiceStillWorks()
        #expect(stats.chunksDiscarded == 2)
        #expect(consumer.producerPackets().contains { $0.forTesting.str == "emulated" })
    }
}
