// Reassembles `IPCFrame`s from a byte stream, with Perfetto's semantics.
//
// Usage, once per readable event:
//
//     let space = deserializer.receiveSpace          // free tail of the buffer
//     let n = recv(fd, space.baseAddress, space.count, 0)
//     try deserializer.endReceive(byteCount: n)      // throws -> close the connection
//     while let frame = deserializer.popNextFrame() { dispatch(frame) }
//
// Contract:
// * bytes are read straight into the buffer's free tail, never copied through another buffer;
// * a frame may arrive in any number of pieces, and one read may hold many frames;
// * a zero-length payload is skipped; a payload that does not parse is dropped and decoding
//   goes on with the next frame;
// * a header announcing more than `capacity - 4` bytes is an error: the owner must close the
//   connection (the stream cannot be resynchronised);
// * when the buffer drains after holding more than a page, pages past the first go back to
//   the OS; a partial frame left at the end of a read is moved to the front.
//
// The deserializer is pure: no sockets, no loop, no threads. It is fuzzed on its own.

import SwiftProtobuf

/// Splits a stream of bytes into `IPCFrame`s using one guard-paged receive buffer.
///
/// Not thread-safe: each connection owns one and uses it on its loop only.
public final class FrameDeserializer {
    private let buffer: GuardedReceiveBuffer
    /// Bytes currently held (a partial frame, between calls).
    private var size = 0
    /// High-water mark since the last release, to decide when to `madvise`.
    private var highWaterMark = 0
    private var decoded: [IPCFrame] = []
    private var nextDecoded = 0
    /// Payloads dropped because they did not parse (for diagnostics and tests).
    public private(set) var droppedFrameCount = 0

    /// Creates a deserializer whose buffer holds `capacity` bytes, header included.
    ///
    /// - Throws: ``IPCError`` if the capacity is out of range or the buffer cannot be mapped.
    public init(capacity: Int = WireLimits.defaultReceiveCapacity) throws(IPCError) {
        buffer = try GuardedReceiveBuffer(capacity: capacity)
    }

    /// Bytes the buffer can hold, header included.
    public var capacity: Int { buffer.capacity }
    /// Largest payload accepted: ``capacity`` minus the 4-byte header.
    public var maxPayloadSize: Int { buffer.capacity - WireLimits.frameHeaderSize }
    /// Bytes of an incomplete frame waiting for the rest of it.
    public var bufferedByteCount: Int { size }

    /// The free tail of the receive buffer: read up to `count` bytes into it, then call
    /// ``endReceive(byteCount:)`` with the number actually read.
    public var receiveSpace: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: buffer.base + size, count: buffer.capacity - size)
    }

    /// Accounts for `byteCount` bytes just written into ``receiveSpace`` and decodes every
    /// complete frame in the buffer; fetch them with ``popNextFrame()``.
    ///
    /// - Throws: ``IPCError/Code/frameTooLarge`` when a header announces a payload larger than
    ///   ``maxPayloadSize``. The stream is then unusable: close the connection. Frames decoded
    ///   before the bad header stay available.
    public func endReceive(byteCount: Int) throws(IPCError) {
        precondition(byteCount >= 0 && byteCount <= buffer.capacity - size, "byteCount out of range")
        size += byteCount
        highWaterMark = max(highWaterMark, size)

        var offset = 0
        defer { compact(consumed: offset) }
        while size - offset >= WireLimits.frameHeaderSize {
            let payloadSize = readLittleEndianUInt32(at: offset)
            guard payloadSize <= UInt32(maxPayloadSize) else {
                throw IPCError(
                    .frameTooLarge,
                    "peer announced a \(payloadSize)-byte frame; the limit is \(maxPayloadSize)")
            }
            let frameEnd = offset + WireLimits.frameHeaderSize + Int(payloadSize)
            guard frameEnd <= size else { break }  // partial frame: wait for more bytes
            if payloadSize > 0 {
                decodePayload(at: offset + WireLimits.frameHeaderSize, count: Int(payloadSize))
            }
            offset = frameEnd
        }
    }

    /// Returns the next decoded frame, or `nil` when none is waiting.
    public func popNextFrame() -> IPCFrame? {
        guard nextDecoded < decoded.count else { return nil }
        let frame = decoded[nextDecoded]
        nextDecoded += 1
        if nextDecoded == decoded.count {
            decoded.removeAll(keepingCapacity: true)
            nextDecoded = 0
        }
        return frame
    }

    /// Number of decoded frames not yet popped.
    public var pendingFrameCount: Int { decoded.count - nextDecoded }

    private func readLittleEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(littleEndian: UnsafeRawPointer(buffer.base + offset).loadUnaligned(as: UInt32.self))
    }

    private func decodePayload(at offset: Int, count: Int) {
        let bytes = UnsafeRawBufferPointer(start: buffer.base + offset, count: count)
        do {
            decoded.append(try IPCFrame(serializedBytes: RawSpan(_unsafeBytes: bytes)))
        } catch {
            droppedFrameCount += 1
        }
    }

    /// Drops the `consumed` bytes at the front: moves a partial frame to the front, and when
    /// the buffer drains after use beyond its first page, returns those pages to the OS.
    private func compact(consumed: Int) {
        guard consumed > 0 else { return }
        let remaining = size - consumed
        if remaining > 0 {
            (buffer.base).copyMemory(from: buffer.base + consumed, byteCount: remaining)
            size = remaining
            return
        }
        size = 0
        if highWaterMark > GuardedReceiveBuffer.pageSize {
            buffer.releasePagesAfterFirst()
        }
        highWaterMark = 0
    }
}
