// What a TraceWriter puts in shared memory comes back out of the service byte for byte:
// packets fragmented over several chunks, nested lengths patched in later commits, many writers
// interleaved, full buffers, and the ring-buffer / discard policies.

import IPCInProcess
import IPCProtocol
import SwiftProtobuf
import Foundation
import Testing

@testable import TracingAPI

@Suite("TraceWriter", .serialized)
final class TraceWriterTests {
    var loop: ManualEventLoop!
    var service: TracingServiceCore!
    /// Producers must stay referenced: releasing one disconnects it.
    var keepAlive: [AnyObject] = []

    init() {
        loop = ManualEventLoop()
        service = TracingServiceCore(eventLoop: loop)
    }


    /// A started session with one producer; returns its writer.
    private func startSession(
        _ config: TraceConfig = TracingConfigs.config(), options: ProducerConnectionOptions? = nil
    ) -> (RecordingProducer, RecordingConsumer, TraceWriter) {
        let producer = RecordingProducer(
            service: service, name: "app", uid: 1000, pid: 4242,
            dataSources: [TracingConfigs.descriptor("test.source")], options: options)
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(config, outputFile: nil)
        drive(loop, until: { producer.writers.count == 1 })
        keepAlive.append(producer)
        return (producer, consumer, producer.writers.values.first!)
    }

    private func stopAndRead(_ consumer: RecordingConsumer) {
        consumer.endpoint.disableTracing()
        drive(loop, until: { !consumer.disabledErrors.isEmpty })
        consumer.read(on: loop)
    }

    /// The trusted fields the service appends for the first (or a later) packet of sequence 2.
    private func trustedSuffix(first: Bool) -> [UInt8] {
        // trusted_uid 1000, trusted_packet_sequence_id 2, trusted_pid 4242, previous_packet_dropped.
        [0x18, 0xE8, 0x07, 0x50, 0x02, 0xF8, 0x04, 0x92, 0x21] + (first ? [0xD0, 0x02, 0x01] : [])
    }

    private func producerPacketBytes(_ consumer: RecordingConsumer) -> [[UInt8]] {
        consumer.packets.filter { (try? $0.decode().trustedPacketSequenceID) == 2 }.map(\.bytes)
    }

    @Test func fieldsWrittenInPlaceComeBackByteIdentical() throws {
        let (_, consumer, writer) = startSession()
        writer.newTracePacket { packet in
            packet.appendVarint(8, 123_456)
            packet.appendNested(900) { testEvent in
                testEvent.appendString(1, "hi")
                testEvent.appendVarint(2, 7)
            }
        }
        writer.flush()
        stopAndRead(consumer)
        // timestamp, then for_testing with its length padded to 4 bytes as protozero writes it.
        let expected: [UInt8] = [0x40, 0xC0, 0xC4, 0x07, 0xA2, 0x38, 0x86, 0x80, 0x80, 0x00,
                                 0x0A, 0x02, 0x68, 0x69, 0x10, 0x07]
        #expect(producerPacketBytes(consumer) == ([expected + trustedSuffix(first: true)]))
        let decoded = try TracePacket(serializedBytes: expected)
        #expect(decoded.timestamp == 123_456)
        #expect(decoded.forTesting.str == "hi")
        #expect(decoded.forTesting.seqValue == 7)
    }

    @Test func aPacketFragmentedOverThreeOrMoreChunks() throws {
        let (_, consumer, writer) = startSession()
        var message = TracePacket()
        message.timestamp = 42
        message.forTesting.str = String(repeating: "0123456789abcdef", count: 800)  // 12.8 KB
        let encoded: [UInt8] = try message.serializedBytes()
        try writer.writePacket(message)
        writer.writeTestPacket(timestamp: 43, "after")
        writer.flush()
        stopAndRead(consumer)
        let packets = producerPacketBytes(consumer)
        #expect(packets.count == 2)
        #expect(packets.first == encoded + trustedSuffix(first: true), "the 12.8 KB packet came back changed")
        let stats = try #require(consumer.decodedPackets().last?.traceStats.bufferStats.first)
        #expect(stats.chunksWritten >= 4, "12.8 KB spans at least four 4 KiB chunks")
        #expect(try TracePacket(serializedBytes: packets[1]).forTesting.str == "after")
    }

    @Test func nestedLengthSpanningChunksIsPatchedInALaterCommit() throws {
        let (_, consumer, writer) = startSession()
        let text = String(repeating: "x", count: 9_000)
        writer.newTracePacket { packet in
            packet.appendVarint(8, 1)
            packet.appendNested(900) { testEvent in testEvent.appendString(1, text) }
        }
        // The chunks holding the start of the packet are committed now; the patch for the
        // for_testing length is still with the writer.
        loop.runUntilIdle()
        consumer.read(on: loop)
        #expect(producerPacketBytes(consumer) == [], "a chunk waiting for its patch blocks its sequence")
        #expect(consumer.decodedPackets().last?.traceStats.bufferStats.first?.chunksWritten == 2)

        writer.flush()  // returns the last chunk with the patch
        stopAndRead(consumer)
        let packets = producerPacketBytes(consumer)
        #expect(packets.count == 1, "\(consumer.decodedPackets().last!.traceStats)")
        guard packets.count == 1 else { return }
        let decoded = try TracePacket(serializedBytes: packets[0])
        #expect(decoded.forTesting.str == text)
        #expect(decoded.timestamp == 1)
        let stats = try #require(consumer.decodedPackets().last?.traceStats.bufferStats.first)
        #expect(stats.patchesSucceeded == 1)
        #expect(stats.patchesFailed == 0)
    }

    @Test func twoProducersWithThreeWritersEachKeepPerSequenceOrder() throws {
        let consumer = RecordingConsumer(service: service)
        var producers: [RecordingProducer] = []
        for index in 0..<2 {
            producers.append(RecordingProducer(
                service: service, name: "producer\(index)", uid: UInt32(2000 + index), pid: Int32(300 + index),
                dataSources: [TracingConfigs.descriptor("test.source")]))
        }
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        drive(loop, until: { producers.allSatisfy { $0.writers.count == 1 } })
        var writers: [(producer: Int, writer: TraceWriter)] = []
        for (index, producer) in producers.enumerated() {
            let buffer = BufferID(producer.started[0].config.targetBuffer)
            writers.append((index, producer.writers.values.first!))
            for _ in 0..<2 {
                writers.append((index, producer.endpoint.createTraceWriter(targetBuffer: buffer, policy: .drop)!))
            }
        }
        for round in 0..<200 {
            for (index, entry) in writers.enumerated() {
                entry.writer.writeTestPacket(timestamp: UInt64(round), "w\(index) #\(round)")
            }
            if round % 50 == 0 { loop.runUntilIdle() }  // commits interleave with writing
        }
        for entry in writers { entry.writer.flush() }
        stopAndRead(consumer)

        let packets = consumer.producerPackets()
        #expect(packets.count == (6 * 200))
        let bySequence = Dictionary(grouping: packets, by: \.trustedPacketSequenceID)
        #expect(bySequence.count == 6)
        for (_, sequence) in bySequence {
            let writerTag = sequence[0].forTesting.str.split(separator: " ")[0]
            #expect(sequence.map(\.forTesting.str) == ((0..<200).map { "\(writerTag) #\($0)" }))
            let writerIndex = Int(writerTag.dropFirst())!
            let producer = writers[writerIndex].producer
            #expect(sequence.allSatisfy { $0.trustedUid == Int32(2000 + producer) })
            #expect(sequence.allSatisfy { $0.trustedPid == Int32(300 + producer) })
        }
    }

    private func fillBuffer(policy: TraceConfig.BufferConfig.FillPolicy) -> (RecordingConsumer, Perfetto_Protos_TraceStats.BufferStats) {
        let (_, consumer, writer) = startSession(TracingConfigs.config(buffers: [(16, policy)]))
        let filler = String(repeating: "-", count: 900)
        for index in 0..<40 { writer.writeTestPacket(timestamp: UInt64(index), "\(index) \(filler)") }
        writer.flush()
        stopAndRead(consumer)
        let stats = consumer.decodedPackets().last!.traceStats.bufferStats[0]
        return (consumer, stats)
    }

    @Test func ringBufferKeepsTheNewestChunks() {
        let (consumer, stats) = fillBuffer(policy: .ringBuffer)
        let indexes = consumer.producerPackets().map { Int($0.forTesting.str.split(separator: " ")[0])! }
        #expect(!indexes.isEmpty)
        #expect(indexes.last == 39, "the newest packet survives")
        #expect(indexes == (Array(indexes.first!...39)), "a contiguous run of the newest packets")
        #expect(indexes.first! > 0, "the oldest were overwritten")
        #expect(stats.chunksOverwritten > 0)
        #expect(stats.chunksDiscarded == 0)
        #expect(consumer.producerPackets().first?.previousPacketDropped == 1)
    }

    @Test func discardKeepsTheOldestChunks() {
        let (consumer, stats) = fillBuffer(policy: .discard)
        let indexes = consumer.producerPackets().map { Int($0.forTesting.str.split(separator: " ")[0])! }
        #expect(indexes.first == 0, "the oldest packet survives")
        #expect(indexes == (Array(0...indexes.last!)))
        #expect(indexes.last! < 39, "the newest were discarded")
        #expect(stats.chunksDiscarded > 0)
        #expect(stats.chunksOverwritten == 0)
    }

    /// (size hint, page size hint) -> (size, page size), as traced sizes them.
    static let sharedMemoryHints: [(Int, Int, Int, Int)] = [
        (8192, 4096, 8192, 4096),
        (1 << 30, 4096, 32 << 20, 4096),  // a size past 32 MiB is lowered to it
        (1 << 20, 1 << 16, 1 << 20, 32 << 10),  // a page past 32 KiB, to that
        (4_294_967_295, 4_294_967_295, 32 << 20, 32 << 10),
        (10_000, 4096, 256 << 10, 4096),  // no multiple of the page: the defaults
        (1 << 20, 12 << 10, 256 << 10, 4096),  // three 4 KiB pages: the defaults
    ]

    @Test(arguments: sharedMemoryHints)
    func sharedMemoryHintsAreLoweredToTheLargestSizesOrReplacedWhenInvalid(_ hints: (Int, Int, Int, Int)) throws {
        let (sizeHint, pageSizeHint, size, pageSize) = hints
        let options = ProducerConnectionOptions(name: "app", sharedMemorySizeHint: sizeHint, sharedMemoryPageSizeHint: pageSizeHint)
        let (producer, _, _) = startSession(options: options)
        #expect(producer.endpoint.sharedMemory?.size == size)
        #expect(producer.endpoint.sharedMemory?.pageSize == pageSize)
    }

    @Test func fullSharedMemoryDropsPacketsAndMarksTheSequence() throws {
        // Two 4 KiB pages of shared memory: the third chunk finds no room until the service
        // has moved the first two.
        let options = ProducerConnectionOptions(name: "app", sharedMemorySizeHint: 8192, sharedMemoryPageSizeHint: 4096)
        let (producer, consumer, writer) = startSession(options: options)
        #expect(producer.endpoint.sharedMemory?.size == 8192)
        let filler = String(repeating: "=", count: 1500)
        for index in 0..<10 { writer.writeTestPacket(timestamp: UInt64(index), "\(index) \(filler)") }
        #expect(writer.packetsDropped > 0)
        loop.runUntilIdle()  // the service moves the complete chunks and frees them
        writer.writeTestPacket(timestamp: 100, "after the drop")
        writer.flush()
        stopAndRead(consumer)
        let packets = consumer.producerPackets()
        let last = try #require(packets.last)
        #expect(last.forTesting.str == "after the drop")
        #expect(last.previousPacketDropped == 1, "the drop marker reached the service")
        #expect(consumer.decodedPackets().last?.traceStats.bufferStats.first?.traceWriterPacketLoss == 1)
        #expect(packets.count == (10 - Int(writer.packetsDropped) + 1))
    }

    @Test func aLongSessionReadAsItGoesKeepsItsBookkeepingSmall() {
        // Reads remove chunks without touching the ring buffer's eviction order; its stale
        // entries must not pile up over a long session that is read as it goes.
        let buffer = TraceBuffer(capacity: 1 << 20, policy: .ringBuffer, pruneThreshold: 64)
        var packets = 0
        for chunkID in UInt32(0)..<2_000 {
            let record = SharedMemoryABI.paddedVarint(2) + [0x08, 0x01]  // timestamp = 1
            var chunk = [UInt8](repeating: 0, count: 8) + record
            let header = ChunkHeader(chunkID: chunkID, writerID: 1, packetCount: 1)
            chunk.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
            buffer.copyChunk(chunk, header: header, producer: 1, uid: 0, pid: 0)
            if chunkID % 10 == 9 { packets += buffer.readPackets().count }
            #expect(buffer.insertionOrderCount <= 64 + 10 + 1)
        }
        #expect(packets == 2_000)
    }

    @Test func theSequencesOfAProducerThatLeftAreForgottenOnceEmpty() {
        // A producer that reconnects again and again, each time with thousands of writers, grew
        // the buffer's per-writer state for as long as the session lasted (an outside tester:
        // 9 MB per connection of 32,767 writers into a 64 KiB buffer).
        let buffer = TraceBuffer(capacity: 64 * 1024, policy: .ringBuffer)
        func commit(producer: ProducerSerial, writers: ClosedRange<UInt16>) {
            for writer in writers {
                let record = SharedMemoryABI.paddedVarint(2) + [0x08, 0x01]
                var chunk = [UInt8](repeating: 0, count: 8) + record
                let header = ChunkHeader(chunkID: 0, writerID: writer, packetCount: 1)
                chunk.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
                buffer.copyChunk(chunk, header: header, producer: producer, uid: 0, pid: 0)
            }
        }
        // Read, then gone: forgotten at once.
        commit(producer: 1, writers: 1...100)
        #expect(buffer.readPackets().count == 100)
        #expect(buffer.sequenceCount == 100, "a producer still connected keeps its sequences")
        buffer.producerDisconnected(1)
        #expect(buffer.sequenceCount == 0)
        // Gone, then read: forgotten once read, and every packet still arrives.
        commit(producer: 2, writers: 1...100)
        buffer.producerDisconnected(2)
        #expect(buffer.sequenceCount == 100)
        #expect(buffer.readPackets().count == 100)
        #expect(buffer.sequenceCount == 0)
        // Gone, then overwritten by another producer's chunks: forgotten as they go.
        commit(producer: 3, writers: 1...100)
        buffer.producerDisconnected(3)
        for round in UInt32(1)...5_000 {
            let record = SharedMemoryABI.paddedVarint(2) + [0x08, 0x01]
            var chunk = [UInt8](repeating: 0, count: 8) + record
            let header = ChunkHeader(chunkID: round, writerID: 1, packetCount: 1)
            chunk.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
            buffer.copyChunk(chunk, header: header, producer: 4, uid: 0, pid: 0)
        }
        #expect(buffer.sequenceCount == 1, "only producer 4's writer is left")
    }

    @Test func chunkIDsThatWrapKeepTheirOrder() {
        // A writer's chunk ids go on from 0xFFFFFFFF to 0, with a packet cut across the wrap:
        // read after all arrived (the first read starts at the oldest, 0xFFFFFFFE, not at 0),
        // and read as they arrive (an id after the wrap is not "out of order").
        func chunk(_ id: UInt32, _ record: [UInt8], flags: ChunkFlags = []) -> ([UInt8], ChunkHeader) {
            let header = ChunkHeader(chunkID: id, writerID: 1, packetCount: 1, flags: flags)
            var bytes = [UInt8](repeating: 0, count: 8) + SharedMemoryABI.paddedVarint(UInt32(record.count)) + record
            bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
            return (bytes, header)
        }
        let chunks = [
            chunk(0xFFFF_FFFE, [0x08, 0x01]),
            chunk(0xFFFF_FFFF, [0x08], flags: [.lastPacketContinuesOnNextChunk]),
            chunk(0, [0x02], flags: [.firstPacketContinuesFromPreviousChunk]),
            chunk(1, [0x08, 0x03]),
        ]
        for readAsTheyArrive in [false, true] {
            let buffer = TraceBuffer(capacity: 64 * 1024, policy: .ringBuffer)
            var read: [BufferedPacket] = []
            for (bytes, header) in chunks {
                buffer.copyChunk(bytes, header: header, producer: 1, uid: 0, pid: 0)
                if readAsTheyArrive { read += buffer.readPackets() }
            }
            read += buffer.readPackets()
            #expect(read.map { Array($0.storage[$0.body]) } == [[0x08, 0x01], [0x08, 0x02], [0x08, 0x03]], "\(readAsTheyArrive)")
            #expect(buffer.stats.chunksCommittedOutOfOrder == 0)
            #expect(read.dropFirst().allSatisfy { !$0.previousPacketDropped }, "nothing lost")
        }
        #expect(ChunkOrder.isBefore(0xFFFF_FFFF, 0) && !ChunkOrder.isBefore(0, 0xFFFF_FFFF) && !ChunkOrder.isBefore(5, 5))
        #expect(ChunkOrder.next(after: 0xFFFF_FFF0, in: [3, 0xFFFF_FFF5, 0x7000_0000]) == 0xFFFF_FFF5)
    }

    @Test func aProducerIDGivenAgainStartsFreshSequences() throws {
        // Producer ids are 16 bits and go round after 65,535 connections. A newcomer given the
        // id of a producer whose chunks were still buffered continued its sequences (its chunk 0
        // replaced the other's, or was "out of order" behind it) and took its uid, pid and
        // trusted sequence id. Buffers now tell connections apart by their serial.
        let consumer = RecordingConsumer(service: service)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        func connect(_ name: String, uid: UInt32, pid: Int32) -> (RecordingProducer, ProducerID) {
            let producer = RecordingProducer(
                service: service, name: name, uid: uid, pid: pid, dataSources: [TracingConfigs.descriptor("test.source")])
            drive(loop, until: { producer.writers.count == 1 })
            return (producer, (producer.endpoint as! LocalProducerEndpoint).id)
        }
        func write(_ producer: RecordingProducer, _ text: String) {
            producer.writers.values.first!.writeTestPacket(timestamp: 1, text)
            producer.writers.values.first!.flush()
            loop.runUntilIdle()
        }
        let (first, firstID) = connect("first", uid: 1000, pid: 11)
        write(first, "from the first")
        first.endpoint.disconnect()
        loop.runUntilIdle()
        // Its chunk is still in the buffer when its id is given again: the same id, writer id
        // and chunk id, from another process.
        service.nextProducerID = firstID
        let (second, secondID) = connect("second", uid: 2000, pid: 22)
        #expect(secondID == firstID)
        write(second, "from the second")
        consumer.read(on: loop)
        let packets = consumer.producerPackets()
        let old = packets.first { $0.forTesting.str == "from the first" }
        let new = packets.first { $0.forTesting.str == "from the second" }
        #expect(old?.trustedUid == 1000 && old?.trustedPid == 11)
        #expect(new?.trustedUid == 2000 && new?.trustedPid == 22)
        #expect(old != nil && new != nil && old?.trustedPacketSequenceID != new?.trustedPacketSequenceID)
        withExtendedLifetime(second) {}
    }

    @Test func writerIDsStayWithinWhatTheServiceAccepts() throws {
        // Writers made and closed for ever go round 1...32,767 (Perfetto's kMaxWriterID); past
        // it the service drops a writer's chunks.
        let (producer, _, first) = startSession()
        var seen = Set([first.writerID])
        for _ in 0..<Int(SharedMemoryABI.maxWriterID) + 10 {
            let writer = try #require(producer.endpoint.createTraceWriter(targetBuffer: 0, policy: .drop))
            seen.insert(writer.writerID)
            writer.close()
        }
        loop.runUntilIdle()
        #expect(seen.count == Int(SharedMemoryABI.maxWriterID))
        #expect(seen.allSatisfy { (1...SharedMemoryABI.maxWriterID).contains($0) })
    }

    @Test func aPacketThatNeverEndsIsDroppedOnceLargerThanTheBuffer() {
        // A writer whose packet goes on from chunk to chunk, read as it goes: the fragments are
        // joined outside the buffer, so without a bound the service's memory grew for as long as
        // the session lasted. Past the buffer's size the packet is dropped and counted lost.
        let buffer = TraceBuffer(capacity: 64 * 1024, policy: .ringBuffer)
        let fragment = [UInt8](repeating: 0x41, count: 4_000)
        func commit(_ id: UInt32, _ body: [UInt8], flags: ChunkFlags) {
            let record = SharedMemoryABI.paddedVarint(UInt32(body.count)) + body
            var chunk = [UInt8](repeating: 0, count: 8) + record
            let header = ChunkHeader(chunkID: id, writerID: 1, packetCount: 1, flags: flags)
            chunk.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
            buffer.copyChunk(chunk, header: header, producer: 1, uid: 0, pid: 0)
        }
        commit(0, fragment, flags: [.lastPacketContinuesOnNextChunk])
        var read: [BufferedPacket] = []
        for id in UInt32(1)..<100 {  // ~400 KB of one packet
            commit(id, fragment, flags: [.firstPacketContinuesFromPreviousChunk, .lastPacketContinuesOnNextChunk])
            read += buffer.readPackets()
        }
        #expect(read.isEmpty)
        #expect(buffer.stats.traceWriterPacketLoss == 1)
        // Its last fragment is skipped; the next packet arrives, marked as following a loss.
        commit(100, fragment, flags: [.firstPacketContinuesFromPreviousChunk])
        commit(101, [0x08, 0x01], flags: [])
        read += buffer.readPackets()
        #expect(read.count == 1)
        #expect(read.first.map { $0.body.count } == 2)
        #expect(read.first.map { Array($0.storage[$0.body]) == [0x08, 0x01] } == true)
        #expect(read.first?.previousPacketDropped == true)
    }

    @Test func packetsBeingJoinedOnManySequencesShareOneBound() {
        // Ten writers, each with a packet that goes on: together they may hold at most the
        // buffer's size outside it (each alone stays under it).
        let buffer = TraceBuffer(capacity: 64 * 1024, policy: .ringBuffer)
        let fragment = [UInt8](repeating: 0x41, count: 4_000)
        for round in UInt32(0)..<4 {
            for writer in UInt16(1)...10 {
                let record = SharedMemoryABI.paddedVarint(UInt32(fragment.count)) + fragment
                var chunk = [UInt8](repeating: 0, count: 8) + record
                let flags: ChunkFlags = round == 0 ? [.lastPacketContinuesOnNextChunk]
                    : [.firstPacketContinuesFromPreviousChunk, .lastPacketContinuesOnNextChunk]
                let header = ChunkHeader(chunkID: round, writerID: writer, packetCount: 1, flags: flags)
                chunk.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
                buffer.copyChunk(chunk, header: header, producer: 1, uid: 0, pid: 0)
            }
            _ = buffer.readPackets()
            #expect(buffer.reassemblyBytes <= 64 * 1024)
        }
        #expect(buffer.stats.traceWriterPacketLoss > 0)
    }

    @Test func aRewrittenChunkIsCountedOnceWhenTheRingBufferWraps() {
        // A chunk committed again (same writer, same id) replaces the stored copy; making room
        // for the new copy must not count the replaced one a second time.
        let buffer = TraceBuffer(capacity: 2_000, policy: .ringBuffer)
        func commit(_ id: UInt32, size: Int) {
            let header = ChunkHeader(chunkID: id, writerID: 1, packetCount: 0)
            var bytes = [UInt8](repeating: 0, count: size)
            bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
            buffer.copyChunk(bytes, header: header, producer: 1, uid: 0, pid: 0)
        }
        commit(0, size: 1_000)
        commit(1, size: 1_000)
        commit(0, size: 1_500)  // bigger: chunk 1 has to go
        #expect(buffer.usedBytes == 1_500)
        #expect(buffer.stats.chunksRewritten == 1)
        #expect(buffer.stats.chunksOverwritten == 1)
        _ = buffer.readPackets()
        #expect(buffer.stats.chunksRead == 1, "only the new copy of chunk 0 is left")
    }

    @Test func writersFromOtherThreadsCommitThroughTheLoop() throws {
        let (producer, consumer, _) = startSession()
        let buffer = BufferID(producer.started[0].config.targetBuffer)
        let writers = (0..<2).map { _ in producer.endpoint.createTraceWriter(targetBuffer: buffer, policy: .stall())! }
        let running = ThreadLock(0)  // writer threads still writing
        for (index, writer) in writers.enumerated() {
            running.withLock { $0 += 1 }
            let box = UncheckedSendableBox(writer)
            Thread.detachNewThread {
                for round in 0..<500 { box.value.writeTestPacket(timestamp: UInt64(round), "t\(index) \(round)") }
                box.value.flush()
                running.withLock { $0 -= 1 }
            }
        }
        // The writers stall for free chunks: keep the service's loop turning until they finish.
        let deadline = ContinuousClock.now + .seconds(60)
        while running.withLock({ $0 }) > 0, ContinuousClock.now < deadline { loop.runUntilIdle() }
        #expect(running.withLock { $0 } == 0, "writer threads did not finish")
        loop.runUntilIdle()
        stopAndRead(consumer)
        let bySequence = Dictionary(grouping: consumer.producerPackets(), by: \.trustedPacketSequenceID)
        // Seen once (in ~30 full runs): one sequence missing. The details help the next person.
        let stats = consumer.decodedPackets().last?.traceStats
        let details = "writers \(writers.map(\.writerID)), dropped \(writers.map(\.packetsDropped)), "
            + "buffer \(String(describing: stats?.bufferStats.first)), discarded \(stats?.chunksDiscarded ?? 0)"
        #expect(bySequence.values.map(\.count).sorted() == [500, 500], Comment(rawValue: details))
    }
}
