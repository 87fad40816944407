// The hand-written InvokeMethod / InvokeMethodReply frames are exactly what SwiftProtobuf
// writes for the same IPCFrame, byte for byte, for small and large ids and payloads.

import Foundation
@testable import IPCProtocol
import Testing

@Suite("Outgoing frames")
struct OutgoingFrameTests {
    /// Requests ids and service/method ids around every varint length boundary.
    static let ids: [UInt64] = [0, 1, 127, 128, 16_383, 16_384, 1 << 32 - 1, 1 << 32, UInt64.max]
    /// Payload sizes around the one- and two-byte length boundaries, and a large one.
    static let sizes = [0, 1, 127, 128, 300, 16_384, 70_000]

    static func bytes(_ frame: OutgoingFrame) -> [UInt8] {
        frame.withUnsafeBytes { Array($0) }
    }

    static func payload(count: Int) throws -> (OutgoingFrame.Payload, Data) {
        var message = IPCFrame()
        message.dataForTesting = count == 0 ? [] : [Data((0..<count).map { UInt8(truncatingIfNeeded: $0) })]
        let data: Data = try message.serializedBytes()
        return (try message.serializedBytes(), data)
    }

    @Test(arguments: ids, sizes)
    func invokeMethodMatchesSwiftProtobuf(id: UInt64, size: Int) throws {
        for dropReply in [false, true] {
            let (payload, data) = try Self.payload(count: size)
            let ours = OutgoingFrame.invokeMethod(
                requestID: id, serviceID: UInt32(truncatingIfNeeded: id), methodID: UInt32(truncatingIfNeeded: id >> 3),
                arguments: payload, dropReply: dropReply)
            var frame = IPCFrame()
            frame.requestID = id
            frame.msgInvokeMethod.serviceID = UInt32(truncatingIfNeeded: id)
            frame.msgInvokeMethod.methodID = UInt32(truncatingIfNeeded: id >> 3)
            frame.msgInvokeMethod.argsProto = data
            frame.msgInvokeMethod.dropReply = dropReply
            let expected = try FrameSerializer.serialize(frame, maxPayloadSize: .max)
            #expect(Self.bytes(ours) == expected)
            #expect(ours.payloadSize == expected.count - 4)
        }
    }

    @Test(arguments: ids, sizes)
    func invokeMethodReplyMatchesSwiftProtobuf(id: UInt64, size: Int) throws {
        for (success, hasMore) in [(true, false), (true, true), (false, false)] {
            let (payload, data) = try Self.payload(count: size)
            let ours = OutgoingFrame.invokeMethodReply(requestID: id, success: success, hasMore: hasMore, reply: payload)
            var frame = IPCFrame()
            frame.requestID = id
            frame.msgInvokeMethodReply.success = success
            frame.msgInvokeMethodReply.hasMore = hasMore
            if success { frame.msgInvokeMethodReply.replyProto = data }
            #expect(Self.bytes(ours) == (try FrameSerializer.serialize(frame, maxPayloadSize: .max)))
        }
    }

    @Test func anEmptyFailureReplyDecodesAsOne() throws {
        let frame = OutgoingFrame.invokeMethodReply(requestID: 9, success: false, hasMore: false, reply: .empty)
        let deserializer = try FrameDeserializer()
        let bytes = Self.bytes(frame)
        bytes.withUnsafeBytes { deserializer.receiveSpace.copyMemory(from: $0) }
        try deserializer.endReceive(byteCount: bytes.count)
        let decoded = try #require(deserializer.popNextFrame())
        #expect(decoded.requestID == 9)
        #expect(decoded.msgInvokeMethodReply.success == false)
        #expect(decoded.msgInvokeMethodReply.hasReplyProto == false)
    }
}
