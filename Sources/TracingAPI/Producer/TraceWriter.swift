// Writes TracePackets straight into shared-memory chunks, as Perfetto's TraceWriterImpl with
// protozero does: no intermediate buffer, no second copy.
//
// * Each packet is a record `[4-byte padded size][bytes]`. When a chunk fills mid-packet, the
//   fragment's size is finalised, the chunk is returned flagged "last packet continues", and the
//   packet goes on in the writer's next chunk (chunk id + 1, flagged "first packet continues").
// * A nested message reserves 4 bytes for its length and fills them when it ends. If its chunk
//   was already returned by then, the length travels as a patch in the next CommitData and the
//   chunk was flagged "needs patching", so the service waits for it before reading.
// * With no free chunk, packets are dropped until one is free; the next chunk then begins with
//   a drop marker record so the service knows the sequence lost data.
//
// A TraceWriter is used from one thread at a time; different writers may run on different threads.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SwiftProtobuf

/// Writes packets for one sequence (one writer id) into a producer's shared memory.
public final class TraceWriter: @unchecked Sendable {
    // @unchecked Sendable: may move between threads, but is used by one at a time (documented).
    // Its per-packet state skips dynamic exclusivity checks for the same reason: one thread at
    // a time, and no access spans a call into user code that could reenter the writer.

    /// The writer's id, unique within its producer; the service's sequence key.
    public let writerID: UInt16
    /// The trace buffer (from the data source config) the chunks are committed to.
    public let targetBuffer: UInt16
    private let policy: BufferExhaustedPolicy
    private let arbiter: SharedMemoryArbiter

    @exclusivity(unchecked) private var chunk: AcquiredChunk?
    @exclusivity(unchecked) private var header: ChunkHeader
    /// Write offset inside the current chunk.
    @exclusivity(unchecked) private var position = 0
    /// Offset of the current fragment's size field inside the current chunk.
    @exclusivity(unchecked) private var fragmentHeader = 0
    private var nextChunkID: UInt32 = 0
    @exclusivity(unchecked) private var inPacket = false
    /// Packets were dropped since the last record written; the next chunk starts with a marker.
    private var droppedSinceLastChunk = false
    /// The current packet is being thrown away (no chunk was available for part of it).
    @exclusivity(unchecked) private var droppingPacket = false
    /// Packet bytes written so far (fragment headers excluded), to measure nested messages.
    @exclusivity(unchecked) private var packetBytes = 0
    private var openNested: [NestedLength] = []
    private var pendingPatches: [Perfetto_Protos_CommitDataRequest.ChunkToPatch] = []
    @exclusivity(unchecked) private var closed = false

    /// Where a nested message's reserved length lives until it is known.
    private struct NestedLength {
        enum Location {
            case currentChunk(offset: Int)
            /// In an already returned chunk: sent as a patch. Offset is from the payload start.
            case returnedChunk(chunkID: UInt32, payloadOffset: Int)
        }
        var location: Location
        var startBytes: Int
    }

    /// Packets started, for diagnostics.
    @exclusivity(unchecked) public private(set) var packetsWritten: UInt64 = 0
    /// Packets thrown away because no chunk was free (``BufferExhaustedPolicy``).
    public private(set) var packetsDropped: UInt64 = 0

    init(arbiter: SharedMemoryArbiter, writerID: UInt16, targetBuffer: UInt16, policy: BufferExhaustedPolicy) {
        self.arbiter = arbiter
        self.writerID = writerID
        self.targetBuffer = targetBuffer
        self.policy = policy
        self.header = ChunkHeader(chunkID: 0, writerID: writerID)
    }

    deinit { close() }

    /// Returns the current chunk and releases the writer id. Further writes are ignored.
    public func close() {
        guard !closed else { return }
        precondition(!inPacket, "TraceWriter closed inside a packet")
        returnChunk(continuing: false)
        arbiter.enqueuePatches(pendingPatches)
        pendingPatches = []
        closed = true
        arbiter.releaseWriterID(writerID)
    }

    // MARK: Packets

    /// Writes one TracePacket: `body` appends its fields; lengths are filled in when it returns.
    public func newTracePacket(_ body: (inout TracePacketBuilder) throws -> Void) rethrows {
        precondition(!inPacket, "newTracePacket is not reentrant")
        guard !closed else { return }
        beginPacket()
        var builder = TracePacketBuilder(writer: self)
        defer { endPacket() }
        try body(&builder)
    }

    /// Writes one packet whose encoded fields are `bytes` (a TracePacket without the outer
    /// tag and length). A packet that fits the current chunk is one size header and one copy;
    /// larger ones are split across chunks as ``newTracePacket(_:)`` splits them.
    public func writePacket(bytes: UnsafeRawBufferPointer) {
        precondition(!inPacket, "writePacket is not reentrant")
        guard !closed else { return }
        let recordSize = SharedMemoryABI.packetHeaderSize + bytes.count
        if let current = chunk, current.size - position >= recordSize,
           Int(header.packetCount) < SharedMemoryABI.maxPacketsPerChunk, let source = bytes.baseAddress {
            packetsWritten += 1
            SharedMemoryABI.writePaddedVarint(UInt32(bytes.count), to: current.start + position)
            (current.start + position + SharedMemoryABI.packetHeaderSize).copyMemory(from: source, byteCount: bytes.count)
            position += recordSize
            header.packetCount += 1
            publishFinishedRecords()
            return
        }
        beginPacket()
        defer { endPacket() }
        write(bytes)
    }

    /// Writes an already-built packet message.
    public func writePacket(_ packet: Perfetto_Protos_TracePacket) throws {
        let bytes: [UInt8] = try packet.serializedBytes()
        newTracePacket { builder in builder.appendRaw(bytes) }
    }

    /// Returns the current (partly filled) chunk and sends everything pending to the service,
    /// with its patches. `completion` runs on the service's loop once it has been applied.
    public func flush(completion: (@Sendable () -> Void)? = nil) {
        precondition(!inPacket, "TraceWriter flushed inside a packet")
        returnChunk(continuing: false)
        arbiter.enqueuePatches(pendingPatches)
        pendingPatches = []
        arbiter.flushPendingCommitData(completion: completion)
    }

    private func beginPacket() {
        inPacket = true
        droppingPacket = false
        packetBytes = 0
        packetsWritten += 1
        if chunk != nil, !hasRoomForNewRecord() { returnChunk(continuing: false) }
        if chunk == nil, !acquireChunk(continuing: false) {
            droppingPacket = true
            return
        }
        startRecord()
    }

    private func endPacket() {
        defer { inPacket = false }
        if droppingPacket {
            packetsDropped += 1
            droppedSinceLastChunk = true
            openNested = []
            return
        }
        precondition(openNested.isEmpty)
        finishFragment()
        publishFinishedRecords()
    }

    private func hasRoomForNewRecord() -> Bool {
        guard let chunk else { return false }
        return chunk.size - position > SharedMemoryABI.packetHeaderSize
            && Int(header.packetCount) < SharedMemoryABI.maxPacketsPerChunk
    }

    private func startRecord() {
        fragmentHeader = position
        position += SharedMemoryABI.packetHeaderSize
        header.packetCount += 1
    }

    /// Publishes, in the chunk's header (a release store), a record count one past the records
    /// finished so far. A service scraping a chunk that is still being written reads all its
    /// records but the last, which may be half written (Perfetto's rule): counting one ahead
    /// means it reads every finished packet. Perfetto's writer publishes the count as each
    /// record starts, so its idle threads lose their last packet to scraping; ours do not.
    private func publishFinishedRecords() {
        guard let chunk, Int(header.packetCount) < SharedMemoryABI.maxPacketsPerChunk else { return }
        var published = header
        published.packetCount += 1
        published.publishPacketsWord(at: chunk.start)
    }

    private func finishFragment() {
        guard let chunk else { return }
        let size = position - fragmentHeader - SharedMemoryABI.packetHeaderSize
        SharedMemoryABI.writePaddedVarint(UInt32(size), to: chunk.start + fragmentHeader)
    }

    /// Takes a new chunk; when `continuing`, the current packet goes on in it.
    private func acquireChunk(continuing: Bool) -> Bool {
        header = ChunkHeader(chunkID: nextChunkID, writerID: writerID)
        guard let acquired = arbiter.acquireChunk(header: header, policy: policy) else { return false }
        nextChunkID &+= 1
        chunk = acquired
        position = SharedMemoryABI.chunkHeaderSize
        if continuing { header.flags.insert(.firstPacketContinuesFromPreviousChunk) }
        if droppedSinceLastChunk {
            // Tell the service this sequence lost packets: a record of the reserved size.
            SharedMemoryABI.writePaddedVarint(SharedMemoryABI.packetSizeDropPacket, to: acquired.start + position)
            position += SharedMemoryABI.packetHeaderSize
            header.packetCount = 1
            droppedSinceLastChunk = false
            // The packet being continued cannot follow a marker: it is lost.
            if continuing {
                header.flags.remove(.firstPacketContinuesFromPreviousChunk)
                return false
            }
        }
        return true
    }

    /// Returns the current chunk, completed. Open nested lengths in it become patches.
    private func returnChunk(continuing: Bool) {
        guard let current = chunk else { return }
        if continuing { header.flags.insert(.lastPacketContinuesOnNextChunk) }
        for index in openNested.indices {
            if case .currentChunk(let offset) = openNested[index].location {
                openNested[index].location = .returnedChunk(
                    chunkID: header.chunkID, payloadOffset: offset - SharedMemoryABI.chunkHeaderSize)
                header.flags.insert(.needsPatching)
            }
        }
        arbiter.returnCompletedChunk(current, header: header, targetBuffer: targetBuffer, patches: pendingPatches)
        pendingPatches = []
        chunk = nil
    }

    /// Ends the fragment in the full chunk and continues the packet in a new one.
    private func continueInNewChunk() {
        finishFragment()
        returnChunk(continuing: true)
        if acquireChunk(continuing: true) {
            startRecord()
        } else {
            abandonPacket()
        }
    }

    /// No chunk for the rest of the packet: stop writing it, and unblock chunks waiting for
    /// patches that will now never be meaningful.
    private func abandonPacket() {
        droppingPacket = true
        for nested in openNested {
            if case .returnedChunk(let chunkID, let offset) = nested.location {
                addPatch(chunkID: chunkID, payloadOffset: offset, size: 0, hasMore: false)
            }
        }
        openNested = []
        droppedSinceLastChunk = true
    }

    // MARK: Raw writing (used by TracePacketBuilder)

    func write(_ bytes: UnsafeRawBufferPointer) {
        guard !droppingPacket else { return }
        // Fast path: it fits in the current chunk.
        if let current = chunk, current.size - position >= bytes.count, let source = bytes.baseAddress {
            (current.start + position).copyMemory(from: source, byteCount: bytes.count)
            position += bytes.count
            packetBytes += bytes.count
            return
        }
        var remaining = bytes
        while !remaining.isEmpty {
            guard let current = chunk else { return }
            let room = current.size - position
            if room == 0 {
                continueInNewChunk()
                if droppingPacket { return }
                continue
            }
            let count = min(room, remaining.count)
            (current.start + position).copyMemory(from: remaining.baseAddress!, byteCount: count)
            position += count
            packetBytes += count
            remaining = UnsafeRawBufferPointer(rebasing: remaining[count...])
        }
    }

    func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    func writeVarint(_ value: UInt64) {
        // Fast path: straight into the chunk when the longest varint fits.
        if !droppingPacket, let current = chunk, current.size - position >= ProtoEncoding.maxVarintSize {
            let count = ProtoEncoding.storeVarint(value, to: current.start + position)
            position += count
            packetBytes += count
            return
        }
        // Near the end of a chunk: encode aside, then write (which may continue in a new chunk).
        withUnsafeTemporaryAllocation(byteCount: ProtoEncoding.maxVarintSize, alignment: 1) { scratch in
            let count = ProtoEncoding.storeVarint(value, to: scratch.baseAddress!)
            write(UnsafeRawBufferPointer(rebasing: scratch[..<count]))
        }
    }

    /// Reserves the 4-byte length of a nested message (kept contiguous in one chunk).
    func beginNested() {
        guard !droppingPacket, let current = chunk else { return }
        if current.size - position < SharedMemoryABI.packetHeaderSize {
            continueInNewChunk()
            if droppingPacket { return }
        }
        openNested.append(NestedLength(location: .currentChunk(offset: position), startBytes: packetBytes + 4))
        position += SharedMemoryABI.packetHeaderSize
        packetBytes += SharedMemoryABI.packetHeaderSize
    }

    /// Fills the length reserved by the matching ``beginNested()``: in place, or as a patch.
    func endNested() {
        guard !droppingPacket, let nested = openNested.popLast() else { return }
        let size = packetBytes - nested.startBytes
        switch nested.location {
        case .currentChunk(let offset):
            SharedMemoryABI.writePaddedVarint(UInt32(size), to: chunk!.start + offset)
        case .returnedChunk(let chunkID, let offset):
            let moreForThisChunk = openNested.contains {
                if case .returnedChunk(chunkID, _) = $0.location { return true }
                return false
            }
            addPatch(chunkID: chunkID, payloadOffset: offset, size: UInt32(size), hasMore: moreForThisChunk)
        }
    }

    private func addPatch(chunkID: UInt32, payloadOffset: Int, size: UInt32, hasMore: Bool) {
        var patch = Perfetto_Protos_CommitDataRequest.ChunkToPatch.Patch()
        patch.offset = UInt32(payloadOffset)
        patch.data = Data(SharedMemoryABI.paddedVarint(size))
        var entry = Perfetto_Protos_CommitDataRequest.ChunkToPatch()
        entry.targetBuffer = UInt32(targetBuffer)
        entry.writerID = UInt32(writerID)
        entry.chunkID = chunkID
        entry.patches = [patch]
        entry.hasMorePatches_p = hasMore
        pendingPatches.append(entry)
    }
}
