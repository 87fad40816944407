// Compressed traces: a session whose config asks for deflate (`compression_type`, or
// `compression { deflate {} }`) or zstd (`compression { zstd {} }`) is read out, and written
// into its file, as packets that each hold only the compressed stream of a Trace, as Perfetto's
// traced writes them. Expanded, they are the packets an uncompressed session gives.

import IPCInProcess
import IPCProtocol
import TestSupport
import Foundation
import Testing

@testable import TracingAPI

@Suite("Trace compression", .serialized)
final class TraceCompressionTests {
    var world: TracingWorld!
    var loop: ManualEventLoop!
    var clients: (any TracingService)!

    func use(_ binding: TracingBinding) throws {
        world = try binding.make()
        loop = try #require(world.loop as? ManualEventLoop)
        clients = world.clients
    }

    deinit { world?.tearDown() }

    /// Records `count` test packets in a session with `config`; returns what a read gave.
    private func record(_ config: TraceConfig, count: Int = 300) -> [TracePacketData] {
        let producer = RecordingProducer(service: clients, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = RecordingConsumer(service: clients)
        consumer.endpoint.enableTracing(config, outputFile: nil)
        drive(loop, until: { producer.writers.count == 1 })
        let writer = producer.writers.values.first!
        for index in 0..<count {
            writer.writeTestPacket(timestamp: UInt64(index), "packet number \(index)")
            // The shared memory is small: the service takes each few hundred packets.
            if index % 500 == 499 {
                writer.flush()
                loop.runUntilIdle()
            }
        }
        writer.flush()
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })
        consumer.read(on: loop)
        return consumer.packets
    }

    /// The test packets' texts, in order.
    private func texts(_ packets: [TracePacketData]) throws -> [String] {
        try packets.map { try $0.decode() }.filter { if case .forTesting? = $0.data { true } else { false } }.map(\.forTesting.str)
    }

    private static let expectedTexts = (0..<300).map { "packet number \($0)" }

    @Test(arguments: TracingBinding.deterministic)
    func deflateAsCompressionTypeGivesCompressedPacketsThatExpandToTheTrace(_ binding: TracingBinding) throws {
        try use(binding)
        var config = TracingConfigs.config()
        config.compressionType = .deflate
        let packets = record(config)
        #expect(!packets.isEmpty)
        for packet in packets {
            // Field 50, length-delimited (0x92 0x03), then a zlib stream at level 6 (0x78 0x9C).
            #expect(packet.bytes.starts(with: [0x92, 0x03]))
            let decoded = try packet.decode()
            #expect(decoded.compressedPackets.starts(with: [0x78, 0x9C]))
            #expect(try decoded.serializedBytes() == packet.bytes, "nothing but the compressed stream")
        }
        let expanded = try TraceFile.decompressPackets(packets)
        #expect(try texts(expanded) == Self.expectedTexts)
        let decoded = try expanded.map { try $0.decode() }
        #expect(decoded.first?.hasTraceConfig == true, "the service's packets are inside")
        #expect(decoded.last?.hasTraceStats == true, "and the stats, last")
        #expect(decoded.filter { if case .forTesting? = $0.data { true } else { false } }.allSatisfy { $0.trustedPacketSequenceID > TracingSession.servicePacketSequenceID }, "with their trusted fields")
        #expect(packets.reduce(0) { $0 + $1.bytes.count } * 3 < expanded.reduce(0) { $0 + $1.bytes.count }, "it compresses")
    }

    @Test(arguments: TracingBinding.deterministic)
    func zstdGivesZstdCompressedPackets(_ binding: TracingBinding) throws {
        try use(binding)
        var config = TracingConfigs.config()
        // A level past what the service runs at is lowered, not refused.
        config.compression.zstd.level = 22
        // With both asked for, zstd (the higher field) wins, as in traced.
        config.compression.deflate = .init()
        let packets = record(config)
        #expect(!packets.isEmpty)
        for packet in packets {
            let decoded = try packet.decode()
            // The zstd frame's magic number, 0xFD2FB528 little-endian.
            #expect(decoded.zstdCompressedPackets.starts(with: [0x28, 0xB5, 0x2F, 0xFD]))
            #expect(try decoded.serializedBytes() == packet.bytes)
        }
        #expect(try texts(TraceFile.decompressPackets(packets)) == Self.expectedTexts)
    }

    @Test func aConfigAskingForDeflateInCompressionIsCompressed() throws {
        try use(.direct)
        var config = TracingConfigs.config()
        config.compression.deflate = .init()
        let packets = record(config, count: 10)
        #expect(packets.allSatisfy { (try? $0.decode())?.compressedPackets.isEmpty == false })
        #expect(try texts(TraceFile.decompressPackets(packets)) == Array(Self.expectedTexts.prefix(10)))
    }

    @Test func aLargeReadIsCompressedPartByPartSoThatTheLoopStaysResponsive() throws {
        try use(.direct)
        var config = TracingConfigs.config()
        config.buffers[0].sizeKb = 8 * 1024
        config.compressionType = .deflate
        let packets = record(config, count: 60_000)
        let expanded = try TraceFile.decompressPackets(packets)
        let expandedBytes = expanded.reduce(0) { $0 + TraceFile.framedPacketSize($1.bytes.count) }
        let partBytes = world.core.compressedReadPartChunkBytes
        #expect(expandedBytes > 8 * partBytes)
        #expect(packets.count >= 8, "one compressed packet per part read")
        for packet in packets {
            // A part is 256 KiB of chunks; its packets with their trusted fields a little more.
            let part = try TraceFile.decompressPackets([packet])
            #expect(part.reduce(0) { $0 + TraceFile.framedPacketSize($1.bytes.count) } < 2 * partBytes)
        }
        #expect(try texts(expanded) == (0..<60_000).map { "packet number \($0)" })
    }

    @Test func aFileIsWrittenCompressed() throws {
        try use(.direct)
        let producer = RecordingProducer(service: clients, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = RecordingConsumer(service: clients)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        var config = TracingConfigs.config()
        config.writeIntoFile = true
        config.fileWritePeriodMs = 1_000
        config.compressionType = .deflate
        consumer.endpoint.enableTracing(config, outputFile: file.duplicate())
        drive(loop, until: { producer.writers.count == 1 })
        let writer = producer.writers.values.first!
        writer.writeTestPacket(timestamp: 1, "first period")
        writer.flush()
        loop.advanceTime(by: .milliseconds(1_000))
        writer.writeTestPacket(timestamp: 2, "at the stop")
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })

        let written = try TraceFile.decodePackets(FileDescriptors.content(of: file.rawValue))
        #expect(written.count == 2, "one compressed packet per write")
        #expect(written.allSatisfy { (try? $0.decode())?.compressedPackets.isEmpty == false })
        #expect(try texts(TraceFile.decompressPackets(written)) == ["first period", "at the stop"])
    }

    @Test func decompressingRefusesWhatIsNotACompressedTraceOrExpandsTooFar() throws {
        var config = TracingConfigs.config()
        config.compressionType = .deflate
        try use(.direct)
        let packets = record(config, count: 300)
        let whole = try TraceFile.decompressPackets(packets)
        let expandedBytes = whole.reduce(0) { $0 + TraceFile.framedPacketSize($1.bytes.count) }
        #expect(throws: TracingError.self) { try TraceFile.decompressPackets(packets, maxBytes: expandedBytes - 1) }
        #expect(try TraceFile.decompressPackets(packets, maxBytes: expandedBytes).count == whole.count)

        var truncated = TracePacket()
        truncated.compressedPackets = Data(try packets[0].decode().compressedPackets.dropLast(10))
        #expect(throws: TracingError.self) { try TraceFile.decompressPackets([TracePacketData(bytes: try truncated.serializedBytes())]) }
        var garbage = TracePacket()
        garbage.zstdCompressedPackets = Data([1, 2, 3, 4, 5])
        #expect(throws: TracingError.self) { try TraceFile.decompressPackets([TracePacketData(bytes: try garbage.serializedBytes())]) }
        // A stream that expands to something that is not a trace.
        var notATrace = TracePacket()
        notATrace.compressedPackets = Data(TraceCompression.deflate.compressedBytes([0xFF, 0x01]))
        #expect(throws: TracingError.self) { try TraceFile.decompressPackets([TracePacketData(bytes: try notATrace.serializedBytes())]) }
    }
}
