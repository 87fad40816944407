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
    /// Empty, small, exactly one slice, one byte over, several slices long, then many small.
    static let packets: [TracePacketData] = {
        let sizes = [0, 1, 127, 128, 16_383, 16_384, ReadBuffersSlicer.maxSliceSize, ReadBuffersSlicer.maxSliceSize + 1, 300_000]
            + Array(repeating: 1000, count: 400)
        return sizes.enumerated().map { index, size in
            TracePacketData(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index) })
        }
    }()

    @Test func eachReplyIsWhatSwiftProtobufWritesForItsSlices() throws {
        let replies = ReadBuffersSlicer.plan(Self.packets, hasMore: false)
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
                ReadBuffersSlicer.encode(reply, packets: Self.packets, into: UnsafeMutableRawBufferPointer(buffer))
                count = reply.encodedSize
            }
            #expect(written == expected)
        }
    }

    @Test func slicesGlueBackIntoThePackets() throws {
        var reassembler = TracePacketReassembler()
        var glued: [TracePacketData] = []
        // Planned in two batches, as the service hands them over: indexes continue.
        let half = Self.packets.count / 2
        let first = Array(Self.packets[..<half])
        let replies = ReadBuffersSlicer.plan(first, hasMore: true)
            + ReadBuffersSlicer.plan(Array(Self.packets[half...]), firstIndex: half, hasMore: false)
        for reply in replies {
            let bytes = [UInt8](unsafeUninitializedCapacity: reply.encodedSize) { buffer, count in
                ReadBuffersSlicer.encode(reply, packets: Self.packets, into: UnsafeMutableRawBufferPointer(buffer))
                count = reply.encodedSize
            }
            glued += reassembler.append(try Perfetto_Protos_ReadBuffersResponse(serializedBytes: bytes))
        }
        #expect(glued.map(\.bytes) == Self.packets.map(\.bytes))
    }

    @Test func noPacketsIsOneEmptyReply() {
        let replies = ReadBuffersSlicer.plan([], hasMore: false)
        #expect(replies == [ReadBuffersSlicer.Reply(slices: [], encodedSize: 0, hasMore: false)])
    }
}
