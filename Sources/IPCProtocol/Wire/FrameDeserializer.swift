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
// * a partial frame left at the end of a read is moved to the front;
// * pages past the first go back to the OS only when the owner asks, with the buffer drained
//   (`releaseIdlePages()`): hosts and clients do it once a connection has been quiet for a
//   while (IdleBufferTrimmer). Perfetto releases after every large frame; on this kind of
//   machine that makes each 64 KiB frame fault 16 pages in again (~30 µs per frame).
//
// * a file descriptor that arrived with a read belongs to the last frame that starts in that
//   read: senders attach an fd to the first bytes of its frame, and the kernel ends a read
//   right after the bytes that carried fds, so earlier frames may share the read but later
//   ones never do. It is handed out with that frame, not with whatever frame comes first.
//
// * the two frames every call brings, InvokeMethod and InvokeMethodReply, are read in place:
//   hosts and clients get them through `endReceive(byteCount:fileDescriptor:visit:)` while
//   their payload still lies in the buffer, so the arguments or the reply are decoded straight
//   from it (no copy, no allocation). Anything unusual in them (unknown fields, several
//   messages, no request id) takes SwiftProtobuf's decoder, as every other frame does.
//   `endReceive(byteCount:)` + `popNextFrame()` decode every frame with SwiftProtobuf.
//
// The deserializer is pure: no sockets, no loop, no threads. It is fuzzed on its own.

import SwiftProtobuf

/// Splits a stream of bytes into `IPCFrame`s using one guard-paged receive buffer.
///
/// Not thread-safe: each connection owns one and uses it on its loop only.
public final class FrameDeserializer {
    private let buffer: GuardedReceiveBuffer
    /// Bytes currently held (a partial frame, between calls).
    // Unchecked exclusivity on the per-read state: one owner, one loop; the visitor of
    // `endReceive(byteCount:fileDescriptor:visit:)` runs between accesses, never inside one, and
    // nothing it can reach re-enters the deserializer (received bytes arrive on a later loop
    // turn) (Threading.md, "Costs").
    @exclusivity(unchecked) private var size = 0
    /// High-water mark since the pages were last released, to decide whether to `madvise`.
    @exclusivity(unchecked) private var highWaterMark = 0
    @exclusivity(unchecked) private var decoded: [(frame: ParsedFrame, start: UInt64)] = []
    @exclusivity(unchecked) private var nextDecoded = 0
    /// Stream position of the first byte in the buffer.
    @exclusivity(unchecked) private var bufferStart: UInt64 = 0
    /// A received fd and the stream position of the frame it belongs to.
    private var pendingFD: (fd: ScopedFD, owner: UInt64)?
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
        try endReceive(byteCount: byteCount, fileDescriptor: nil)
    }

    /// Like ``endReceive(byteCount:)``, for a read that also carried `fileDescriptor`; it is
    /// returned by ``popNextReceivedFrame()`` with the frame it belongs to.
    public func endReceive(byteCount: Int, fileDescriptor: ScopedFD?) throws(IPCError) {
        var consumed = 0
        defer { compact(consumed: consumed) }
        try parse(byteCount: byteCount, fileDescriptor: fileDescriptor, inPlace: false, consumed: &consumed)
    }

    /// Accounts for `byteCount` bytes (and the fd that came with them) and hands every
    /// complete frame to `visit`, in order, with the fd that belongs to it; `visit` returns
    /// false to stop (the connection was closed: the rest are dropped). The buffers in a
    /// ``ReceivedFrame`` are valid only during its visit.
    ///
    /// - Throws: as ``endReceive(byteCount:)``, after visiting the frames before the bad header.
    func endReceive(
        byteCount: Int, fileDescriptor: ScopedFD?, visit: (ReceivedFrame, ScopedFD?) -> Bool
    ) throws(IPCError) {
        var failure: IPCError?
        var consumed = 0
        do {
            try parse(byteCount: byteCount, fileDescriptor: fileDescriptor, inPlace: true, consumed: &consumed)
        } catch {
            failure = error
        }
        while nextDecoded < decoded.count {
            let (parsed, start) = decoded[nextDecoded]
            nextDecoded += 1
            let frame: ReceivedFrame
            switch parsed {
            case .decoded(let decodedFrame):
                frame = .other(decodedFrame)
            case .invokeMethod(let requestID, let serviceID, let methodID, let dropReply, let arguments):
                frame = .invokeMethod(
                    requestID: requestID, serviceID: serviceID, methodID: methodID, dropReply: dropReply,
                    arguments: bytes(in: arguments))
            case .invokeMethodReply(let requestID, let success, let hasMore, let reply):
                frame = .invokeMethodReply(requestID: requestID, success: success, hasMore: hasMore, reply: bytes(in: reply))
            }
            if !visit(frame, takeFileDescriptor(forFrameAt: start)) { break }
        }
        decoded.removeAll(keepingCapacity: true)
        nextDecoded = 0
        compact(consumed: consumed)
        if let failure { throw failure }
    }

    /// Parses every complete frame into `decoded` (with `inPlace`, the hot kinds as ranges of
    /// the buffer) and attaches `fileDescriptor` to its frame. Sets `consumed` to the bytes of
    /// complete frames: the caller drops them from the buffer (``compact(consumed:)``) once it
    /// is done with frames read in place.
    private func parse(byteCount: Int, fileDescriptor: ScopedFD?, inPlace: Bool, consumed: inout Int) throws(IPCError) {
        precondition(byteCount >= 0 && byteCount <= buffer.capacity - size, "byteCount out of range")
        let readStart = bufferStart + UInt64(size)
        let decodedBefore = decoded.count
        size += byteCount
        highWaterMark = max(highWaterMark, size)

        var offset = 0
        defer {
            // The buffer is as parsed (not compacted): a partial frame left over starts at `offset`.
            if let fileDescriptor {
                let partialStart = size > offset ? bufferStart + UInt64(offset) : nil
                assign(fileDescriptor, readStart: readStart, decodedBefore: decodedBefore, partialStart: partialStart)
            }
            consumed = offset
        }
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
                decodePayload(
                    at: offset + WireLimits.frameHeaderSize, count: Int(payloadSize), start: bufferStart + UInt64(offset),
                    inPlace: inPlace)
            }
            offset = frameEnd
        }
    }

    /// Returns the next decoded frame, or `nil` when none is waiting. A file descriptor that
    /// belonged to it is closed; use ``popNextReceivedFrame()`` to get it.
    public func popNextFrame() -> IPCFrame? {
        popNextReceivedFrame()?.frame
    }

    /// Returns the next decoded frame with the file descriptor that came with it, if any.
    public func popNextReceivedFrame() -> (frame: IPCFrame, fileDescriptor: ScopedFD?)? {
        guard nextDecoded < decoded.count else { return nil }
        let (parsed, start) = decoded[nextDecoded]
        nextDecoded += 1
        if nextDecoded == decoded.count {
            decoded.removeAll(keepingCapacity: true)
            nextDecoded = 0
        }
        guard case .decoded(let frame) = parsed else {
            preconditionFailure("only endReceive(byteCount:fileDescriptor:visit:) reads frames in place")
        }
        return (frame, takeFileDescriptor(forFrameAt: start))
    }

    /// The pending fd, if it belongs to the frame starting at stream position `start`.
    private func takeFileDescriptor(forFrameAt start: UInt64) -> ScopedFD? {
        guard let pending = pendingFD, pending.owner <= start else { return nil }
        pendingFD = nil
        return pending.fd
    }

    private func bytes(in range: Range<Int>?) -> UnsafeRawBufferPointer {
        guard let range else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: buffer.base + range.lowerBound, count: range.count)
    }

    /// Attaches `fd` to the last frame that starts at or after `readStart`: a decoded one, or
    /// the partial one now at the front of the buffer. A still-unclaimed older fd is closed.
    private func assign(_ fd: ScopedFD, readStart: UInt64, decodedBefore: Int, partialStart: UInt64?) {
        var owner = readStart
        if let partialStart, partialStart >= readStart {
            owner = partialStart  // the partial frame that starts in this read
        } else if let last = decoded.last, decoded.count > decodedBefore, last.start >= readStart {
            owner = last.start
        }
        pendingFD?.fd.close()
        pendingFD = (fd, owner)
    }

    /// Whether pages past the first were touched since they were last released: what
    /// ``releaseIdlePages()`` would give back.
    public var holdsReleasablePages: Bool { highWaterMark > GuardedReceiveBuffer.pageSize }

    /// Returns the pages past the first to the OS (they read back as zeros), if no frame is
    /// buffered. Call it once the connection has gone quiet.
    public func releaseIdlePages() {
        guard size == 0, holdsReleasablePages else { return }
        buffer.releasePagesAfterFirst()
        highWaterMark = 0
    }

    /// Number of decoded frames not yet popped.
    public var pendingFrameCount: Int { decoded.count - nextDecoded }

    private func readLittleEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(littleEndian: UnsafeRawPointer(buffer.base + offset).loadUnaligned(as: UInt32.self))
    }

    private func decodePayload(at offset: Int, count: Int, start: UInt64, inPlace: Bool) {
        if inPlace, let frame = InPlaceFrameParser.parse(buffer.base, from: offset, to: offset + count) {
            decoded.append((frame, start))
            return
        }
        let bytes = UnsafeRawBufferPointer(start: buffer.base + offset, count: count)
        do {
            decoded.append((.decoded(try IPCFrame(serializedBytes: RawSpan(_unsafeBytes: bytes))), start))
        } catch {
            droppedFrameCount += 1
        }
    }

    /// Drops the `consumed` bytes at the front, moving a partial frame to the front.
    private func compact(consumed: Int) {
        guard consumed > 0 else { return }
        bufferStart += UInt64(consumed)
        let remaining = size - consumed
        if remaining > 0 {
            (buffer.base).copyMemory(from: buffer.base + consumed, byteCount: remaining)
            size = remaining
            return
        }
        size = 0
    }
}
