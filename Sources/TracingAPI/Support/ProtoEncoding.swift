// The few protobuf encoding primitives the tracing layer writes by hand (trusted fields
// appended to packets, trace-file preambles, the TraceWriter's streaming encoder).

enum ProtoWireType: UInt8 {
    case varint = 0
    case fixed64 = 1
    case lengthDelimited = 2
    case fixed32 = 5
}

enum ProtoEncoding {
    /// The most bytes a varint takes.
    static let maxVarintSize = 10

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        withUnsafeTemporaryAllocation(byteCount: maxVarintSize, alignment: 1) { scratch in
            let count = storeVarint(value, to: scratch.baseAddress!)
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[..<count]))
        }
    }

    /// Writes `value` as a varint at `destination` (which has ``maxVarintSize`` bytes of room).
    /// Returns the bytes written.
    @inline(__always)
    static func storeVarint(_ value: UInt64, to destination: UnsafeMutableRawPointer) -> Int {
        var value = value
        var count = 0
        while value >= 0x80 {
            destination.storeBytes(of: UInt8(truncatingIfNeeded: value) | 0x80, toByteOffset: count, as: UInt8.self)
            value >>= 7
            count += 1
        }
        destination.storeBytes(of: UInt8(value), toByteOffset: count, as: UInt8.self)
        return count + 1
    }

    /// Reads a varint of at most `maxBytes` bytes at `position`, advancing it. Nil (position
    /// unspecified) if the bytes end first or the varint is longer.
    static func readVarint(
        _ bytes: UnsafeRawBufferPointer, at position: inout Int, maxBytes: Int = maxVarintSize
    ) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        let limit = min(bytes.count, position + maxBytes)
        while position < limit {
            let byte = bytes[position]
            position += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    static func appendTag(_ field: Int, _ type: ProtoWireType, to bytes: inout [UInt8]) {
        appendVarint(UInt64(field) << 3 | UInt64(type.rawValue), to: &bytes)
    }

    static func appendVarintField(_ field: Int, _ value: UInt64, to bytes: inout [UInt8]) {
        appendTag(field, .varint, to: &bytes)
        appendVarint(value, to: &bytes)
    }

    /// An int32 field: negative values are sign-extended to 10 bytes, as protobuf requires.
    static func appendInt32Field(_ field: Int, _ value: Int32, to bytes: inout [UInt8]) {
        appendVarintField(field, UInt64(bitPattern: Int64(value)), to: &bytes)
    }

    static func varintSize(_ value: UInt64) -> Int {
        var size = 1
        var value = value
        while value >= 0x80 {
            value >>= 7
            size += 1
        }
        return size
    }

    /// Walks the top-level fields of `bytes`, calling `visit` with each field number.
    /// Returns false if the bytes are not a well-formed message (groups count as malformed).
    static func forEachField(in bytes: UnsafeRawBufferPointer, _ visit: (Int) -> Bool) -> Bool {
        walkFields(in: bytes) { visit($0.number) }
    }

    /// One field as `walkFields` finds it: a varint's value, or where a length-delimited
    /// field's bytes are (fixed-size fields carry neither).
    struct Field {
        let number: Int
        let wireType: UInt64
        /// The value of a varint field (0 for the other types).
        let varint: UInt64
        /// The bytes of a length-delimited field (empty for the other types).
        let bytes: Range<Int>
        /// Where the field ends (the next one starts).
        let end: Int
    }

    /// Walks the top-level fields of `bytes` until `visit` returns false. Returns false if
    /// `visit` did, or if the bytes are not a well-formed message (groups count as malformed).
    static func walkFields(in bytes: UnsafeRawBufferPointer, _ visit: (Field) -> Bool) -> Bool {
        var position = 0
        let end = bytes.count
        func readVarint() -> UInt64? { ProtoEncoding.readVarint(bytes, at: &position) }
        while position < end {
            guard let key = readVarint() else { return false }
            let number = key >> 3
            guard number > 0, number < (1 << 29) else { return false }
            var varint: UInt64 = 0
            var range = position..<position
            switch key & 7 {
            case 0:
                guard let value = readVarint() else { return false }
                varint = value
            case 1:
                guard end - position >= 8 else { return false }
                position += 8
            case 2:
                guard let length = readVarint(), length <= UInt64(end - position) else { return false }
                range = position..<(position + Int(length))
                position += Int(length)
            case 5:
                guard end - position >= 4 else { return false }
                position += 4
            default:
                return false
            }
            guard visit(Field(number: Int(number), wireType: key & 7, varint: varint, bytes: range, end: position)) else { return false }
        }
        return true
    }
}
