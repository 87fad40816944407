// Reads the two frames every call brings, InvokeMethod and InvokeMethodReply, where they lie
// in the receive buffer: their arguments or reply stay a range of it, to be decoded straight
// from there by the service or the proxy. Nothing is copied and nothing is allocated.
//
// Only the plain shape is taken: request_id, then (in any order) one msg_invoke_method or
// msg_invoke_method_reply holding only its own fields, each of the right wire type; padded
// varints accepted, a repeated scalar field's last value wins (as in protobuf). Anything else
// (data_for_testing, unknown fields, two messages, no request id, a varint or length running
// past the end) returns nil and the frame takes SwiftProtobuf's decoder, which then decides
// whether it parses at all. So the result is always what SwiftProtobuf would have decoded.

/// A frame as parsed; the in-place kinds hold byte ranges of the receive buffer.
enum ParsedFrame {
    case decoded(IPCFrame)
    case invokeMethod(requestID: UInt64, serviceID: UInt32, methodID: UInt32, dropReply: Bool, arguments: Range<Int>?)
    case invokeMethodReply(requestID: UInt64, success: Bool, hasMore: Bool, reply: Range<Int>?)
}

/// A frame handed to a host or client; the buffers of the in-place kinds are valid only
/// while it is being handled.
enum ReceivedFrame {
    case invokeMethod(requestID: UInt64, serviceID: UInt32, methodID: UInt32, dropReply: Bool, arguments: UnsafeRawBufferPointer)
    case invokeMethodReply(requestID: UInt64, success: Bool, hasMore: Bool, reply: UnsafeRawBufferPointer)
    case other(IPCFrame)
}

enum InPlaceFrameParser {
    private static let varint: UInt64 = 0, lengthDelimited: UInt64 = 2

    /// The frame in `base[start..<end]`, if it has the plain shape of InvokeMethod or
    /// InvokeMethodReply; nil otherwise.
    static func parse(_ base: UnsafeMutableRawPointer, from start: Int, to end: Int) -> ParsedFrame? {
        var reader = Reader(base: UnsafeRawPointer(base), position: start, end: end)
        var requestID: UInt64?
        var message: (field: UInt64, range: Range<Int>)?
        while !reader.atEnd {
            guard let key = reader.varint() else { return nil }
            switch (key >> 3, key & 7) {
            case (2, varint):
                guard let value = reader.varint() else { return nil }
                requestID = value
            case (5, lengthDelimited), (6, lengthDelimited):
                guard message == nil, let range = reader.lengthDelimited() else { return nil }
                message = (key >> 3, range)
            default:
                return nil
            }
        }
        guard let requestID, let message else { return nil }
        return message.field == 5
            ? invokeMethod(requestID: requestID, reader: Reader(base: reader.base, range: message.range))
            : invokeMethodReply(requestID: requestID, reader: Reader(base: reader.base, range: message.range))
    }

    private static func invokeMethod(requestID: UInt64, reader: Reader) -> ParsedFrame? {
        var reader = reader
        var serviceID: UInt32 = 0, methodID: UInt32 = 0, dropReply = false
        var arguments: Range<Int>?
        while !reader.atEnd {
            guard let key = reader.varint() else { return nil }
            switch (key >> 3, key & 7) {
            case (1, varint):
                guard let value = reader.varint() else { return nil }
                serviceID = UInt32(truncatingIfNeeded: value)
            case (2, varint):
                guard let value = reader.varint() else { return nil }
                methodID = UInt32(truncatingIfNeeded: value)
            case (3, lengthDelimited):
                guard let range = reader.lengthDelimited() else { return nil }
                arguments = range
            case (4, varint):
                guard let value = reader.varint() else { return nil }
                dropReply = value != 0
            default:
                return nil
            }
        }
        return .invokeMethod(
            requestID: requestID, serviceID: serviceID, methodID: methodID, dropReply: dropReply, arguments: arguments)
    }

    private static func invokeMethodReply(requestID: UInt64, reader: Reader) -> ParsedFrame? {
        var reader = reader
        var success = false, hasMore = false
        var reply: Range<Int>?
        while !reader.atEnd {
            guard let key = reader.varint() else { return nil }
            switch (key >> 3, key & 7) {
            case (1, varint):
                guard let value = reader.varint() else { return nil }
                success = value != 0
            case (2, varint):
                guard let value = reader.varint() else { return nil }
                hasMore = value != 0
            case (3, lengthDelimited):
                guard let range = reader.lengthDelimited() else { return nil }
                reply = range
            default:
                return nil
            }
        }
        return .invokeMethodReply(requestID: requestID, success: success, hasMore: hasMore, reply: reply)
    }

    /// Protobuf primitives over `base[position..<end]`; every read checks the bounds.
    private struct Reader {
        let base: UnsafeRawPointer
        var position: Int
        let end: Int

        init(base: UnsafeRawPointer, position: Int, end: Int) {
            self.base = base
            self.position = position
            self.end = end
        }

        init(base: UnsafeRawPointer, range: Range<Int>) {
            self.init(base: base, position: range.lowerBound, end: range.upperBound)
        }

        var atEnd: Bool { position >= end }

        /// A varint of at most ten bytes (padded ones included).
        mutating func varint() -> UInt64? {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while position < end, shift < 70 {
                let byte = base.load(fromByteOffset: position, as: UInt8.self)
                position += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }

        /// A length and that many bytes: their range.
        mutating func lengthDelimited() -> Range<Int>? {
            guard let length = varint(), length <= UInt64(end - position) else { return nil }
            let range = position..<(position + Int(length))
            position = range.upperBound
            return range
        }
    }
}
