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
        let payload: [UInt8] = try frame.serializedBytes()
        guard payload.count <= maxPayloadSize else {
            throw IPCError(
                .frameTooLarge,
                "frame payload of \(payload.count) bytes exceeds the limit of \(maxPayloadSize)")
        }
        var bytes = [UInt8]()
        bytes.reserveCapacity(WireLimits.frameHeaderSize + payload.count)
        appendHeader(payloadSize: payload.count, to: &bytes)
        bytes.append(contentsOf: payload)
        return bytes
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
