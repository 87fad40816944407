// A protobuf encoder that streams into a TraceWriter's chunks (protozero's Message, in Swift).
// Fields are appended in the order written; a nested message is written inside a closure so its
// length is always filled in.

import SwiftProtobuf

/// Appends the fields of one TracePacket (or of a message nested in it) to shared memory.
///
/// ```swift
/// writer.newTracePacket { packet in
///     packet.appendVarint(8, timestamp)               // TracePacket.timestamp
///     packet.appendNested(900) { testEvent in         // TracePacket.for_testing
///         testEvent.appendString(1, "hello")          // TestEvent.str
///     }
/// }
/// ```
public struct TracePacketBuilder {
    // Strong, not unowned: an unowned reference costs a check-and-retain on every field written
    // (measured: a third of the writer's time).
    let writer: TraceWriter

    init(writer: TraceWriter) { self.writer = writer }

    /// A varint field (uint32/64, int64, enum; int32 values are sign-extended by the caller).
    public mutating func appendVarint(_ field: Int, _ value: UInt64) {
        writer.writeVarint(UInt64(field) << 3 | 0)
        writer.writeVarint(value)
    }

    /// An int32/int64 field.
    public mutating func appendInt(_ field: Int, _ value: Int64) {
        appendVarint(field, UInt64(bitPattern: value))
    }

    /// A bool field.
    public mutating func appendBool(_ field: Int, _ value: Bool) {
        appendVarint(field, value ? 1 : 0)
    }

    /// A sint32/sint64 (zigzag) field.
    public mutating func appendZigZag(_ field: Int, _ value: Int64) {
        appendVarint(field, UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    /// A fixed64 / double field's 8 bytes.
    public mutating func appendFixed64(_ field: Int, _ value: UInt64) {
        writer.writeVarint(UInt64(field) << 3 | 1)
        withUnsafeBytes(of: value.littleEndian) { writer.write($0) }
    }

    /// A fixed32 / float field's 4 bytes.
    public mutating func appendFixed32(_ field: Int, _ value: UInt32) {
        writer.writeVarint(UInt64(field) << 3 | 5)
        withUnsafeBytes(of: value.littleEndian) { writer.write($0) }
    }

    /// A double field.
    public mutating func appendDouble(_ field: Int, _ value: Double) {
        appendFixed64(field, value.bitPattern)
    }

    /// A string field (UTF-8).
    public mutating func appendString(_ field: Int, _ value: String) {
        var value = value
        value.withUTF8 { utf8 in appendBytes(field, UnsafeRawBufferPointer(utf8)) }
    }

    /// A bytes field.
    public mutating func appendBytes(_ field: Int, _ value: UnsafeRawBufferPointer) {
        writer.writeVarint(UInt64(field) << 3 | 2)
        writer.writeVarint(UInt64(value.count))
        writer.write(value)
    }

    /// A bytes field.
    public mutating func appendBytes(_ field: Int, _ value: [UInt8]) {
        value.withUnsafeBytes { appendBytes(field, $0) }
    }

    /// A message field from a swift-protobuf message (serialized, then copied in).
    public mutating func appendMessage(_ field: Int, _ message: some SwiftProtobuf.Message) throws {
        let bytes: [UInt8] = try message.serializedBytes()
        appendBytes(field, bytes)
    }

    /// A nested message written in place: its length is reserved now and filled in (or
    /// patched, if it ended up spanning chunks) when `body` returns.
    public mutating func appendNested(_ field: Int, _ body: (inout TracePacketBuilder) throws -> Void) rethrows {
        writer.writeVarint(UInt64(field) << 3 | 2)
        writer.beginNested()
        defer { writer.endNested() }
        var nested = TracePacketBuilder(writer: writer)
        try body(&nested)
    }

    /// Bytes that are already an encoded sequence of fields.
    public mutating func appendRaw(_ bytes: [UInt8]) {
        writer.write(bytes)
    }
}
