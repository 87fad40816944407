// InvokeMethod and InvokeMethodReply are read in place, by hand: whatever bytes arrive, the
// result must be exactly what SwiftProtobuf makes of them (a frame, or a dropped payload),
// through the copying API and through the in-place visitor hosts and clients use.

import Foundation
@testable import IPCProtocol
import Testing

@Suite("In-place frames")
struct InPlaceFrameTests {
    /// One frame through the copying API: what `popNextFrame` gives, or nil if dropped.
    static func viaCopies(_ payload: [UInt8]) throws -> IPCFrame? {
        let deserializer = try FrameDeserializer()
        let framed = Self.framed(payload)
        framed.withUnsafeBytes { deserializer.receiveSpace.copyMemory(from: $0) }
        try deserializer.endReceive(byteCount: framed.count)
        return deserializer.popNextFrame()
    }

    /// One frame through the visitor, turned back into an IPCFrame from what was visited.
    static func viaVisitor(_ payload: [UInt8]) throws -> IPCFrame? {
        let deserializer = try FrameDeserializer()
        let framed = Self.framed(payload)
        framed.withUnsafeBytes { deserializer.receiveSpace.copyMemory(from: $0) }
        var seen: IPCFrame?
        try deserializer.endReceive(byteCount: framed.count, fileDescriptor: nil) { frame, _ in
            var result = IPCFrame()
            switch frame {
            case .invokeMethod(let requestID, let serviceID, let methodID, let dropReply, let arguments):
                result.requestID = requestID
                result.msgInvokeMethod.serviceID = serviceID
                result.msgInvokeMethod.methodID = methodID
                result.msgInvokeMethod.argsProto = Data(arguments)
                result.msgInvokeMethod.dropReply = dropReply
            case .invokeMethodReply(let requestID, let success, let hasMore, let reply):
                result.requestID = requestID
                result.msgInvokeMethodReply.success = success
                result.msgInvokeMethodReply.hasMore = hasMore
                result.msgInvokeMethodReply.replyProto = Data(reply)
            case .other(let decoded):
                result = decoded
            }
            seen = result
            return true
        }
        return seen
    }

    /// Whether the hand parser takes `payload` (rather than passing it to SwiftProtobuf).
    static func readsInPlace(_ payload: [UInt8]) -> Bool {
        var copy = payload
        return copy.withUnsafeMutableBytes { InPlaceFrameParser.parse($0.baseAddress!, from: 0, to: $0.count) != nil }
    }

    static func framed(_ payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        FrameSerializer.appendHeader(payloadSize: payload.count, to: &bytes)
        return bytes + payload
    }

    /// The same fields as SwiftProtobuf decodes them, with absent fields at their defaults (the
    /// visitor reports values, not presence).
    static func values(of frame: IPCFrame) -> IPCFrame {
        var result = IPCFrame()
        switch frame.msg {
        case .msgInvokeMethod(let invoke):
            result.requestID = frame.requestID
            result.msgInvokeMethod.serviceID = invoke.serviceID
            result.msgInvokeMethod.methodID = invoke.methodID
            result.msgInvokeMethod.argsProto = invoke.argsProto
            result.msgInvokeMethod.dropReply = invoke.dropReply
        case .msgInvokeMethodReply(let reply):
            result.requestID = frame.requestID
            result.msgInvokeMethodReply.success = reply.success
            result.msgInvokeMethodReply.hasMore = reply.hasMore
            result.msgInvokeMethodReply.replyProto = reply.replyProto
        default:
            return frame
        }
        return result
    }

    static func randomFrame(_ random: inout SplitMix64) -> IPCFrame {
        var frame = IPCFrame()
        if random.next() % 8 != 0 { frame.requestID = random.next() >> (random.next() % 64) }
        let bytes = Data((0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) })
        if random.next() % 2 == 0 {
            if random.next() % 4 != 0 { frame.msgInvokeMethod.serviceID = UInt32(truncatingIfNeeded: random.next() >> 40) }
            if random.next() % 4 != 0 { frame.msgInvokeMethod.methodID = UInt32(truncatingIfNeeded: random.next() >> 50) }
            if random.next() % 4 != 0 { frame.msgInvokeMethod.argsProto = bytes }
            if random.next() % 2 == 0 { frame.msgInvokeMethod.dropReply = random.next() % 2 == 0 }
            if random.next() % 6 == 0 { frame.msgInvokeMethod = IPCFrame.InvokeMethod() }
        } else {
            if random.next() % 4 != 0 { frame.msgInvokeMethodReply.success = random.next() % 2 == 0 }
            if random.next() % 2 == 0 { frame.msgInvokeMethodReply.hasMore = random.next() % 2 == 0 }
            if random.next() % 4 != 0 { frame.msgInvokeMethodReply.replyProto = bytes }
        }
        if random.next() % 10 == 0 { frame.dataForTesting = [Data([1, 2, 3])] }  // not the plain shape
        return frame
    }

    @Test func everyPayloadDecodesAsSwiftProtobufWouldDecodeIt() throws {
        var random = SplitMix64(seed: 0x1A7E)
        var inPlace = 0, mutated = 0, dropped = 0
        for round in 0..<20_000 {
            var payload: [UInt8] = try Self.randomFrame(&random).serializedBytes()
            if round % 2 == 1, !payload.isEmpty {  // flip, cut or pad
                mutated += 1
                for _ in 0..<(1 + Int(random.next() % 3)) {
                    let index = Int(random.next() % UInt64(payload.count))
                    switch random.next() % 3 {
                    case 0: payload[index] = UInt8(truncatingIfNeeded: random.next())
                    case 1: payload.removeSubrange(index...)
                    default: payload.insert(0x80, at: index)
                    }
                    if payload.isEmpty { break }
                }
            }
            if payload.isEmpty { continue }
            let expected = try? IPCFrame(serializedBytes: payload)
            if expected == nil { dropped += 1 }
            #expect(try Self.viaCopies(payload) == expected, "payload \(payload)")
            let visited = try Self.viaVisitor(payload)
            #expect(visited.map(Self.values) == expected.map(Self.values), "payload \(payload)")
            if Self.readsInPlace(payload) { inPlace += 1 }
        }
        // The test means something only if all three kinds of input occurred.
        #expect(inPlace > 5_000)
        #expect(mutated > 5_000)
        #expect(dropped > 500)
    }

    @Test func paddedVarintsAsPerfettoWritesThemAreReadInPlace() throws {
        // request_id 7, msg_invoke_method_reply with a 4-byte padded length, success, reply "hi".
        let payload: [UInt8] = [0x10, 0x07, 0x32, 0x86, 0x80, 0x80, 0x00, 0x08, 0x01, 0x1A, 0x02, 0x68, 0x69]
        #expect(Self.readsInPlace(payload))
        let frame = try #require(try Self.viaVisitor(payload))
        #expect(frame.requestID == 7)
        #expect(frame.msgInvokeMethodReply.success)
        #expect(frame.msgInvokeMethodReply.replyProto == Data("hi".utf8))
    }
}
