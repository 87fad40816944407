// ReadBuffers replies are written by hand straight into their frames: the bytes must be
// exactly what SwiftProtobuf writes for the same ReadBuffersResponse, every reply must stay
// within Perfetto's budget, and the slices must glue back into the packets.

import Testing

@testable import TracingAPI

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite("ReadBuffers reply encoding")
struct ReadBuffersEncodingTests {
    /// trusted_uid 1000, trusted_packet_sequence_id 2, trusted_pid 4242.
    static let trustedSuffix: [UInt8] = [0x18, 0xE8, 0x07, 0x50, 0x02, 0xF8, 0x04, 0x92, 0x21]

    /// Body sizes, and whether the service appends trusted fields: empty, small, exactly one
    /// slice, one byte over, several slices long, a slice cut inside the trusted fields, then
    /// many small.
    static let layout: [(size: Int, trusted: Bool)] = {
        let maxSlice = ReadBuffersSlicer.maxSliceSize
        let sizes = [0, 1, 127, 128, 16_383, 16_384, maxSlice, maxSlice + 1, 300_000]
        return sizes.flatMap { [($0, false), ($0, true)] } + [(maxSlice - 3, true)]
            + Array(repeating: (1000, true), count: 400)
    }()

    /// The bytes each packet must arrive as.
    static let packets: [TracePacketData] = layout.enumerated().map { index, entry in
        TracePacketData(bytes: body(index, entry.size) + (entry.trusted ? trustedSuffix : []))
    }

    /// The same packets as the service hands them over: bodies inside a larger storage (as in
    /// a chunk), trusted fields apart.
    static let parts: [TracePacketParts] = layout.enumerated().map { index, entry in
        guard entry.trusted else { return TracePacketParts(TracePacketData(bytes: body(index, entry.size))) }
        let storage = [0xEE, 0xEE, 0xEE] + body(index, entry.size) + [0xEE]
        return TracePacketParts(
            storage: storage, body: 3..<(3 + entry.size), trusted: TrustedFields(uid: 1000, sequenceID: 2, pid: 4242))
    }

    private static func body(_ index: Int, _ size: Int) -> [UInt8] {
        (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index) }
    }

    @Test func eachReplyIsWhatSwiftProtobufWritesForItsSlices() throws {
        let replies = ReadBuffersSlicer.plan(Self.parts, hasMore: false)
        #expect(replies.count > 3)
        #expect(replies.dropLast().allSatisfy(\.hasMore) && replies.last?.hasMore == false)
        for reply in replies {
            var message = Perfetto_Protos_ReadBuffersResponse()
            for slice in reply.slices {
                var entry = Perfetto_Protos_ReadBuffersResponse.Slice()
                entry.data = Data(Self.packets[slice.packet].bytes[slice.start..<slice.end])
                entry.lastSliceForPacket = slice.isLast
                message.slices.append(entry)
            }
            let expected: [UInt8] = try message.serializedBytes()
            #expect(reply.encodedSize == expected.count)
            #expect(reply.encodedSize <= ReadBuffersSlicer.replyBudget)
            let written = [UInt8](unsafeUninitializedCapacity: reply.encodedSize) { buffer, count in
                ReadBuffersSlicer.encode(reply, packets: Self.parts, into: UnsafeMutableRawBufferPointer(buffer))
                count = reply.encodedSize
            }
            #expect(Self.equal(written, expected), "reply of \(reply.slices.count) slices differs from SwiftProtobuf's")
        }
    }

    @Test func slicesGlueBackIntoThePackets() throws {
        var directReassembler = TracePacketReassembler()
        var pending: [UInt8] = []
        var glued: [TracePacketData] = []
        var direct: [TracePacketData] = []
        // Planned in two batches, as the service hands them over: indexes continue.
        let half = Self.parts.count / 2
        let first = Array(Self.parts[..<half])
        let replies = ReadBuffersSlicer.plan(first, hasMore: true)
            + ReadBuffersSlicer.plan(Array(Self.parts[half...]), firstIndex: half, hasMore: false)
        for reply in replies {
            let bytes = [UInt8](unsafeUninitializedCapacity: reply.encodedSize) { buffer, count in
                ReadBuffersSlicer.encode(reply, packets: Self.parts, into: UnsafeMutableRawBufferPointer(buffer))
                count = reply.encodedSize
            }
            // SwiftProtobuf's view of the same reply, glued as its fields say.
            for slice in try Perfetto_Protos_ReadBuffersResponse(serializedBytes: bytes).slices {
                pending += slice.data
                if slice.lastSliceForPacket {
                    glued.append(TracePacketData(bytes: pending))
                    pending = []
                }
            }
            direct += try #require(bytes.withUnsafeBytes { directReassembler.append(encoded: $0) })
        }
        // Through SwiftProtobuf and read straight from the bytes alike.
        #expect(glued.count == Self.packets.count && direct.count == Self.packets.count)
        #expect(sameBytes(glued, Self.packets))
        #expect(sameBytes(direct, Self.packets))
    }

    /// Compared without printing megabytes when they differ.
    private static func equal(_ bytes: [UInt8], _ expected: [UInt8]) -> Bool { bytes == expected }

    /// Compared without printing megabytes when they differ.
    private func sameBytes(_ packets: [TracePacketData], _ expected: [TracePacketData]) -> Bool {
        packets.map(\.bytes) == expected.map(\.bytes)
    }

    @Test func readingStraightFromTheBytesSkipsUnknownFieldsAndRefusesMalformedOnes() throws {
        var reassembler = TracePacketReassembler()
        // slices { data: "ab" last: false unknown 7: 1 }, unknown field 9 "x",
        // slices { data: "zz" data: "cd" last: true }: the last `data` counts, as in protobuf.
        let bytes: [UInt8] = [0x12, 0x08, 0x0A, 0x02, 0x61, 0x62, 0x10, 0x00, 0x38, 0x01,
                              0x4A, 0x01, 0x78,
                              0x12, 0x0A, 0x0A, 0x02, 0x7A, 0x7A, 0x0A, 0x02, 0x63, 0x64, 0x10, 0x01]
        let expected = try Perfetto_Protos_ReadBuffersResponse(serializedBytes: bytes)
        #expect(expected.slices.map(\.data) == [Data("ab".utf8), Data("cd".utf8)])
        let packets = try #require(bytes.withUnsafeBytes { reassembler.append(encoded: $0) })
        #expect(packets.map(\.bytes) == [Array("abcd".utf8)])
        // Cut short, a slice whose data is a varint, a group: not a ReadBuffersResponse.
        for malformed: [UInt8] in [[0x12, 0x08, 0x0A], [0x12, 0x02, 0x08, 0x01], [0x13, 0x14]] {
            #expect(malformed.withUnsafeBytes { reassembler.append(encoded: $0) } == nil)
        }
    }

    @Test func trustedFieldsAtTheirLargestDecodeAsWhatTheServiceMeant() throws {
        // Negative int32s take ten bytes; every optional field present.
        let fields = TrustedFields(
            uid: UInt32.max, sequenceID: UInt32.max, pid: Int32.min, machineID: UInt32.max, previousPacketDropped: true)
        #expect(fields.count == 39 && fields.count <= TrustedFields.capacity)
        var bytes: [UInt8] = []
        fields.append(to: &bytes)
        let packet = try TracePacket(serializedBytes: bytes)
        #expect(packet.trustedUid == -1 && packet.trustedPacketSequenceID == UInt32.max)
        #expect(packet.trustedPid == Int32.min && packet.machineID == UInt32.max && packet.previousPacketDropped == 1)
        // Machine 0 (this one) and no drop are left out, as Perfetto does.
        #expect(TrustedFields(uid: 1000, sequenceID: 2, pid: 4242).count == Self.trustedSuffix.count)
    }

    @Test func noPacketsIsOneEmptyReply() {
        let replies = ReadBuffersSlicer.plan([], hasMore: false)
        #expect(replies == [ReadBuffersSlicer.Reply(slices: [], encodedSize: 0, hasMore: false)])
    }

    @Test func aPacketThatNeverEndsFailsTheReadAtTheBound() throws {
        // Slices that never say last_slice_for_packet: the client stops gluing at its bound.
        var reassembler = TracePacketReassembler()
        reassembler.maxPacketSize = 10_000
        var slice = Perfetto_Protos_ReadBuffersResponse.Slice()
        slice.data = Data(repeating: 0x41, count: 4_000)
        var response = Perfetto_Protos_ReadBuffersResponse()
        response.slices = [slice]
        let bytes: [UInt8] = try response.serializedBytes()
        #expect(bytes.withUnsafeBytes { reassembler.append(encoded: $0) } == [])
        #expect(bytes.withUnsafeBytes { reassembler.append(encoded: $0) } == [])
        #expect(bytes.withUnsafeBytes { reassembler.append(encoded: $0) } == nil)
        #expect(reassembler.failure == "a packet of more than 10000 bytes")
    }
}
