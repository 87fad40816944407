// Frame encoding: `[u32 little-endian payload length][IPCFrame bytes]`.
//
// SwiftProtobuf writes minimal varints; Perfetto's C++ writer pads nested lengths to four
// bytes. Both decode the same, so byte identity with Perfetto is not a goal; semantic
// identity is (tests check it against captured conversations).

import SwiftProtobuf

/// Turns `IPCFrame`s into length-prefixed bytes ready for a stream socket.
public enum FrameSerializer {
    /// Serializes `frame` with its 4-byte little-endian length header.
    ///
    /// - Throws: ``IPCError/Code/frameTooLarge`` when the payload exceeds `maxPayloadSize`
    ///   (the peer would close the connection on receipt), or a SwiftProtobuf encoding error.
    public static func serialize(
        _ frame: IPCFrame, maxPayloadSize: Int = WireLimits.defaultMaxPayloadSize
    ) throws -> [UInt8] {
        // SwiftProtobuf sizes the output exactly and asks for storage once; HeaderedBytes hands
        // it the tail of an array whose first four bytes are left for the length, so a frame
        // costs one allocation and no copy.
        var framed: HeaderedBytes = try frame.serializedBytes()
        let payloadSize = framed.count
        guard payloadSize <= maxPayloadSize else {
            throw IPCError(
                .frameTooLarge,
                "frame payload of \(payloadSize) bytes exceeds the limit of \(maxPayloadSize)")
        }
        framed.writeHeader()
        return framed.storage
    }

    /// Appends the 4-byte little-endian length header for a payload of `payloadSize` bytes.
    public static func appendHeader(payloadSize: Int, to bytes: inout [UInt8]) {
        let size = UInt32(truncatingIfNeeded: payloadSize)
        bytes.append(UInt8(truncatingIfNeeded: size))
        bytes.append(UInt8(truncatingIfNeeded: size >> 8))
        bytes.append(UInt8(truncatingIfNeeded: size >> 16))
        bytes.append(UInt8(truncatingIfNeeded: size >> 24))
    }
}

/// Serialized bytes preceded by room for the frame header (see `FrameSerializer.serialize`).
struct HeaderedBytes: SwiftProtobufContiguousBytes {
    var storage: [UInt8]

    init(repeating: UInt8, count: Int) {
        storage = [UInt8](repeating: repeating, count: WireLimits.frameHeaderSize + count)
    }

    init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
        storage = [0, 0, 0, 0] + Array(sequence)
    }

    var count: Int { storage.count - WireLimits.frameHeaderSize }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[WireLimits.frameHeaderSize...])) }
    }

    mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withUnsafeMutableBytes { try body(UnsafeMutableRawBufferPointer(rebasing: $0[WireLimits.frameHeaderSize...])) }
    }

    /// Writes the little-endian payload length into the first four bytes.
    mutating func writeHeader() {
        let size = UInt32(truncatingIfNeeded: count).littleEndian
        Swift.withUnsafeBytes(of: size) { header in
            storage.withUnsafeMutableBytes { $0.copyMemory(from: header) }
        }
    }
}
