// The two frames every call sends, InvokeMethod and InvokeMethodReply, written by hand around
// a message that is serialized once, in place.
//
// SwiftProtobuf asks the bytes type for storage of the exact encoded size; `Payload` hands it
// the middle of an array with headroom in front (for the 4-byte length and the IPCFrame fields
// that precede the message) and a little tailroom behind. The frame is then completed around
// the message: one allocation, no copy, where going through `IPCFrame` would encode the
// message, copy it into the frame, and encode the frame.
//
// The bytes decode to exactly the IPCFrame that SwiftProtobuf would produce from the same
// fields (tests compare them); only the position of `drop_reply` differs (after `args_proto`,
// as in field-number order, so it even matches byte for byte).

import SwiftProtobuf

/// A length-prefixed frame ready to send: `storage[start..<end]`.
@usableFromInline
struct OutgoingFrame {
    /// Room in front of a payload: 4 (length) + 11 (request_id) + 6 (oneof tag and length) +
    /// 18 (the message's other fields and its own tag and length), rounded up.
    @usableFromInline static let headroom = 48
    /// Room behind a payload: `drop_reply` of InvokeMethod.
    @usableFromInline static let tailroom = 2

    /// A serialized message with headroom and tailroom for the frame around it.
    @usableFromInline
    struct Payload: SwiftProtobufContiguousBytes {
        @usableFromInline var storage: [UInt8]

        /// What SwiftProtobuf calls with the message's exact size before writing every byte of
        /// it. The storage is not zero-filled first (a 64 KiB memset per frame for nothing): the
        /// message range is written by SwiftProtobuf, and of the headroom and tailroom only the
        /// bytes the frame writer fills are ever sent.
        @usableFromInline
        init(repeating: UInt8, count: Int) {
            let total = OutgoingFrame.headroom + count + OutgoingFrame.tailroom
            if repeating != 0 {
                storage = [UInt8](repeating: repeating, count: total)
            } else {
                storage = [UInt8](unsafeUninitializedCapacity: total) { _, initialized in initialized = total }
            }
        }

        @usableFromInline
        init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
            storage = [UInt8](repeating: 0, count: OutgoingFrame.headroom)
            storage.append(contentsOf: sequence)
            storage.append(contentsOf: repeatElement(0, count: OutgoingFrame.tailroom))
        }

        /// No message (a failure reply): just the room.
        @usableFromInline static var empty: Payload { Payload(repeating: 0, count: 0) }

        @usableFromInline
        var count: Int { storage.count - OutgoingFrame.headroom - OutgoingFrame.tailroom }

        @usableFromInline
        func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
            try storage.withUnsafeBytes { all in
                try body(UnsafeRawBufferPointer(rebasing: all[OutgoingFrame.headroom..<(OutgoingFrame.headroom + count)]))
            }
        }

        @usableFromInline
        mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
            let range = OutgoingFrame.headroom..<(OutgoingFrame.headroom + count)
            return try storage.withUnsafeMutableBytes { all in try body(UnsafeMutableRawBufferPointer(rebasing: all[range])) }
        }
    }

    @usableFromInline var storage: [UInt8]
    @usableFromInline var start: Int
    @usableFromInline var end: Int

    /// Sends the frame on `connection`, handing its storage over (no copy on transports that
    /// keep what they send).
    @discardableResult
    consuming func send(on connection: any IPCConnection, fd: Int32?) -> Bool {
        connection.send(owning: storage, range: start..<end, fd: fd)
    }

    /// The frame's bytes, header included.
    @usableFromInline
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
    }

    /// Size of the IPCFrame payload (the frame without its 4-byte header).
    var payloadSize: Int { end - start - WireLimits.frameHeaderSize }

    // IPCFrame field tags (field number << 3 | wire type).
    private static let requestIDTag: UInt8 = 2 << 3
    private static let invokeMethodTag: UInt8 = 5 << 3 | 2
    private static let invokeMethodReplyTag: UInt8 = 6 << 3 | 2

    /// `IPCFrame{request_id, msg_invoke_method{service_id, method_id, args_proto, drop_reply}}`.
    static func invokeMethod(
        requestID: UInt64, serviceID: UInt32, methodID: UInt32, arguments: consuming Payload, dropReply: Bool
    ) -> OutgoingFrame {
        let argumentCount = arguments.count
        // Consumed, so the array is uniquely referenced and written in place.
        var storage = (consume arguments).storage
        let argsStart = headroom, argsEnd = headroom + argumentCount
        // drop_reply goes behind the arguments, into the tailroom.
        storage[argsEnd] = 4 << 3
        storage[argsEnd + 1] = dropReply ? 1 : 0
        var writer = BackwardWriter(storage: consume storage, position: argsStart)
        writer.prependVarint(UInt64(argumentCount))
        writer.prepend(3 << 3 | 2)
        writer.prependVarint(UInt64(methodID))
        writer.prepend(2 << 3)
        writer.prependVarint(UInt64(serviceID))
        writer.prepend(1 << 3)
        return writer.finish(messageTag: invokeMethodTag, requestID: requestID, end: argsEnd + tailroom)
    }

    /// `IPCFrame{request_id, msg_invoke_method_reply{success, has_more, reply_proto}}`; the
    /// reply is left out when `success` is false.
    static func invokeMethodReply(requestID: UInt64, success: Bool, hasMore: Bool, reply: consuming Payload) -> OutgoingFrame {
        let replyCount = reply.count
        let replyStart = headroom, replyEnd = headroom + (success ? replyCount : 0)
        var writer = BackwardWriter(storage: (consume reply).storage, position: replyStart)
        if success {
            writer.prependVarint(UInt64(replyCount))
            writer.prepend(3 << 3 | 2)
        }
        writer.prepend(hasMore ? 1 : 0)
        writer.prepend(2 << 3)
        writer.prepend(success ? 1 : 0)
        writer.prepend(1 << 3)
        return writer.finish(messageTag: invokeMethodReplyTag, requestID: requestID, end: replyEnd)
    }

    /// Writes fields in front of what is already written, towards the start of the storage.
    private struct BackwardWriter {
        var storage: [UInt8]
        var position: Int
        /// Where the nested message (InvokeMethod / InvokeMethodReply) ends.
        var messageEnd = 0

        mutating func prepend(_ byte: UInt8) {
            position -= 1
            storage[position] = byte
        }

        mutating func prependVarint(_ value: UInt64) {
            var length = 1
            while value >> (7 * length) != 0 { length += 1 }
            position -= length
            var rest = value
            for index in 0..<length {
                storage[position + index] = UInt8(truncatingIfNeeded: rest & 0x7F) | (index < length - 1 ? 0x80 : 0)
                rest >>= 7
            }
        }

        /// Wraps what was written as the frame's message, adds request_id and the header.
        consuming func finish(messageTag: UInt8, requestID: UInt64, end: Int) -> OutgoingFrame {
            prependVarint(UInt64(end - position))
            prepend(messageTag)
            prependVarint(requestID)
            prepend(OutgoingFrame.requestIDTag)
            let payloadSize = UInt32(truncatingIfNeeded: end - position)
            for shift in stride(from: 24, through: 0, by: -8) {
                prepend(UInt8(truncatingIfNeeded: payloadSize >> UInt32(shift)))
            }
            let start = position
            return OutgoingFrame(storage: storage, start: start, end: end)
        }
    }
}
