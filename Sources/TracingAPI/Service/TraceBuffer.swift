// One trace buffer of a tracing session: chunks copied out of producers' shared memory, kept
// per writer sequence (producer, writer) and read back as whole packets.
//
// * Capacity is `size_kb` of chunk bytes. RING_BUFFER overwrites the oldest chunks when full;
//   DISCARD stops accepting chunks once the buffer has been filled once (reads do not make room,
//   as in Perfetto).
// * Reading is consuming. Sequences are visited in (producer, writer) order; per sequence, chunks are read in chunk-id order; fragments are glued
//   across consecutive chunk ids; a chunk still waiting for patches blocks its sequence until the
//   patches arrive; a gap in chunk ids (overwritten, discarded or never committed) drops the packet
//   being reassembled and marks the next packet of the sequence `previous_packet_dropped`.
// * Everything discarded is counted in `stats` (Perfetto's BufferStats names).

/// A writer sequence: one trace writer of one producer.
/// A producer connection's number, never given twice by a service (its 16-bit producer id is
/// given again after 65,535 connections). Buffers key writer sequences by it, so a newcomer
/// given a departed producer's id never continues that producer's sequences nor takes its
/// identity.
typealias ProducerSerial = UInt64

/// One writer of one producer connection.
struct SequenceKey: Hashable {
    var producer: ProducerSerial
    var writerID: UInt16
}

/// A packet read out of a buffer, with what the service knows about where it came from.
struct BufferedPacket {
    /// The packet is `storage[body]`: a range of the chunk it was read from (not copied), or
    /// the whole of an array glued from fragments.
    var storage: [UInt8]
    var body: Range<Int>
    var sequence: SequenceKey
    var producerUID: UInt32
    var producerPID: Int32
    /// The producer's machine (0: the service's own).
    var machineID: UInt32 = 0
    /// Data may have been lost on this sequence just before this packet: it was, or this is the
    /// first packet read from the sequence (the service cannot know what came before it; Perfetto
    /// marks those too).
    var previousPacketDropped: Bool
}

/// Counters of one buffer, named after Perfetto's `TraceStats.BufferStats`.
struct TraceBufferStats: Sendable, Hashable {
    var bufferSize: UInt64 = 0
    var bytesWritten: UInt64 = 0
    var bytesOverwritten: UInt64 = 0
    var bytesRead: UInt64 = 0
    var chunksWritten: UInt64 = 0
    var chunksRewritten: UInt64 = 0
    var chunksOverwritten: UInt64 = 0
    var chunksDiscarded: UInt64 = 0
    var chunksRead: UInt64 = 0
    var chunksCommittedOutOfOrder: UInt64 = 0
    var writeWrapCount: UInt64 = 0
    var patchesSucceeded: UInt64 = 0
    var patchesFailed: UInt64 = 0
    var abiViolations: UInt64 = 0
    var traceWriterPacketLoss: UInt64 = 0
}

final class TraceBuffer {
    enum FillPolicy { case ringBuffer, discard }

    private struct StoredChunk {
        var bytes: [UInt8]
        var packetCount: Int
        var flags: ChunkFlags
        var needsPatching: Bool
        /// Position in `insertionOrder`, so stale order entries can be told apart.
        var serial: UInt64
        /// False for a chunk scraped while being written: its packets so far can be read, but
        /// the sequence cannot go past it until its committed copy arrives.
        var isComplete = true
        /// Records already read from it (scraped chunks are read in parts).
        var recordsRead = 0
    }

    /// A packet being glued from fragments.
    private enum Reassembly {
        case none
        case collecting([UInt8])
        /// The head of this packet was lost: skip fragments until a new packet starts.
        case discarding
    }

    private final class Sequence {
        let key: SequenceKey
        var uid: UInt32
        var pid: Int32
        var machineID: UInt32 = 0
        var chunks: [UInt32: StoredChunk] = [:]
        /// The next chunk id to read; nil until the first read.
        var nextChunkID: UInt32?
        var reassembly = Reassembly.none
        var dataLost = false
        var anyPacketRead = false
        /// Its producer disconnected: nothing more will come, and once its chunks are read or
        /// overwritten the sequence is forgotten.
        var producerGone = false

        /// Gone for good: its producer left and it holds nothing more.
        var isFinished: Bool { producerGone && chunks.isEmpty }

        init(key: SequenceKey, uid: UInt32, pid: Int32) {
            self.key = key
            self.uid = uid
            self.pid = pid
        }
    }

    let capacity: Int
    let policy: FillPolicy
    private(set) var stats = TraceBufferStats()
    private(set) var usedBytes = 0
    /// Bytes of packets being joined from fragments, across sequences: kept outside the chunks,
    /// and together at most `capacity`.
    private(set) var reassemblyBytes = 0
    /// Chunks stored now, across sequences.
    private var storedChunkCount = 0
    private var bytesEverWritten = 0
    private var sequences: [SequenceKey: Sequence] = [:]
    /// How many of `sequences` each producer has, so that a session can tell in O(1) when a
    /// producer that left has nothing left here.
    private var sequenceCounts: [ProducerSerial: Int] = [:]
    /// Chunks in insertion order, for ring-buffer eviction (entries may be stale).
    private var insertionOrder: [(key: SequenceKey, chunkID: UInt32, serial: UInt64)] = []
    private var insertionHead = 0
    private var nextSerial: UInt64 = 0

    /// Stale eviction-order entries tolerated before pruning (see pruneInsertionOrder).
    private let pruneThreshold: Int

    init(capacity: Int, policy: FillPolicy, pruneThreshold: Int = 4096) {
        self.capacity = capacity
        self.policy = policy
        self.pruneThreshold = pruneThreshold
        stats.bufferSize = UInt64(capacity)
    }

    /// A copy of everything stored now, read independently of this buffer (CloneSession).
    func clone() -> TraceBuffer {
        let copy = TraceBuffer(capacity: capacity, policy: policy, pruneThreshold: pruneThreshold)
        copy.stats = stats
        copy.usedBytes = usedBytes
        copy.reassemblyBytes = reassemblyBytes
        copy.storedChunkCount = storedChunkCount
        copy.bytesEverWritten = bytesEverWritten
        copy.insertionOrder = insertionOrder
        copy.insertionHead = insertionHead
        copy.nextSerial = nextSerial
        for (key, sequence) in sequences {
            let duplicate = Sequence(key: key, uid: sequence.uid, pid: sequence.pid)
            duplicate.machineID = sequence.machineID
            duplicate.chunks = sequence.chunks
            duplicate.nextChunkID = sequence.nextChunkID
            duplicate.reassembly = sequence.reassembly
            duplicate.dataLost = sequence.dataLost
            duplicate.anyPacketRead = sequence.anyPacketRead
            duplicate.producerGone = sequence.producerGone
            copy.sequences[key] = duplicate
        }
        copy.sequenceCounts = sequenceCounts
        return copy
    }

    // MARK: Writing

    /// Stores a chunk copied out of shared memory (header included in `bytes`).
    ///
    /// `isComplete` false marks a chunk scraped while its writer was still in it: its last
    /// record may be half written, so it is left out, and its packets carry on no further.
    /// A later copy of the same chunk (another scrape, or its commit) replaces it, and reading
    /// resumes after the records already read: nothing is read twice.
    func copyChunk(
        _ bytes: [UInt8], header: ChunkHeader, producer: ProducerSerial, uid: UInt32, pid: Int32, machineID: UInt32 = 0,
        isComplete: Bool = true
    ) {
        var header = header
        if !isComplete {
            guard header.packetCount > 0 else { return }
            header.packetCount -= 1
            header.flags.remove(.lastPacketContinuesOnNextChunk)
            header.flags.remove(.needsPatching)
        }
        let size = bytes.count
        let key = SequenceKey(producer: producer, writerID: header.writerID)
        if size > capacity || (policy == .discard && bytesEverWritten + size > capacity) {
            stats.chunksDiscarded += 1
            return
        }
        let sequence = sequenceFor(key, uid: uid, pid: pid)
        sequence.machineID = machineID
        if let next = sequence.nextChunkID, ChunkOrder.isBefore(header.chunkID, next) {
            stats.chunksCommittedOutOfOrder += 1
            return
        }
        var recordsRead = 0
        if let old = sequence.chunks[header.chunkID] {
            // A copy that says less than the one held (fewer records, or incomplete after
            // complete) is stale or a lie: keep what we have.
            if Int(header.packetCount) < old.recordsRead || Int(header.packetCount) < old.packetCount
                || (old.isComplete && !isComplete) {
                if Int(header.packetCount) < old.recordsRead { stats.abiViolations += 1 }
                return
            }
            recordsRead = old.recordsRead
        }
        if let old = sequence.chunks.removeValue(forKey: header.chunkID) {
            // Out of the buffer now, so eviction below cannot count it a second time.
            usedBytes -= old.bytes.count
            storedChunkCount -= 1
            stats.chunksRewritten += 1
        } else {
            stats.chunksWritten += 1
        }
        if policy == .ringBuffer {
            while usedBytes + size > capacity, evictOldest() {}
        }
        let serial = nextSerial
        nextSerial += 1
        sequence.chunks[header.chunkID] = StoredChunk(
            bytes: bytes, packetCount: Int(header.packetCount), flags: header.flags,
            needsPatching: header.flags.contains(.needsPatching), serial: serial, isComplete: isComplete,
            recordsRead: recordsRead)
        insertionOrder.append((key, header.chunkID, serial))
        usedBytes += size
        storedChunkCount += 1
        bytesEverWritten += size
        stats.bytesWritten += UInt64(size)
    }

    /// Applies one 4-byte patch at `offset` from the payload start of a stored chunk. Returns
    /// false (and counts a failed patch) when the chunk is gone or the patch falls outside it.
    @discardableResult
    func applyPatch(
        producer: ProducerSerial, writerID: UInt16, chunkID: UInt32, offset: Int, data: [UInt8]
    ) -> Bool {
        let key = SequenceKey(producer: producer, writerID: writerID)
        guard let sequence = sequences[key], let size = sequence.chunks[chunkID]?.bytes.count, data.count == 4,
              offset >= 0, offset <= size - SharedMemoryABI.chunkHeaderSize - data.count else {
            stats.patchesFailed += 1
            return false
        }
        let start = SharedMemoryABI.chunkHeaderSize + offset
        // In place: a copy of the chunk taken out of the table would share its bytes, and the
        // patch would copy the whole chunk.
        sequence.chunks[chunkID]!.bytes.replaceSubrange(start..<start + data.count, with: data)
        stats.patchesSucceeded += 1
        return true
    }

    /// Marks a chunk's patches as complete (`has_more_patches` was false), unblocking its sequence.
    func finishPatching(producer: ProducerSerial, writerID: UInt16, chunkID: UInt32) {
        guard let sequence = sequences[SequenceKey(producer: producer, writerID: writerID)] else { return }
        sequence.chunks[chunkID]?.needsPatching = false
    }

    /// The producer is gone: no patch and no committed copy of its chunks will come. A chunk
    /// waiting for patches is read without its last record (the packet the patches were for,
    /// which went on in the next chunk and is lost), instead of blocking the packets before it
    /// in the chunk and every chunk after it; a chunk scraped while being written is final.
    ///
    /// Its sequences are forgotten once they hold no chunk (now, or when their chunks are read
    /// or overwritten): a producer reconnecting again and again with thousands of writers each
    /// time would otherwise grow the buffer's bookkeeping for as long as the session lasts.
    func producerDisconnected(_ producer: ProducerSerial) {
        for (key, sequence) in sequences where key.producer == producer {
            sequence.producerGone = true
            for chunkID in Array(sequence.chunks.keys) {
                guard var chunk = sequence.chunks[chunkID], chunk.needsPatching || !chunk.isComplete else { continue }
                if chunk.needsPatching {
                    chunk.needsPatching = false
                    chunk.packetCount = max(chunk.recordsRead, chunk.packetCount - 1)
                    chunk.flags.remove(.lastPacketContinuesOnNextChunk)
                }
                chunk.isComplete = true
                sequence.chunks[chunkID] = chunk
            }
            forgetIfFinished(sequence)
        }
    }

    /// Drops `sequence` if its producer left and it holds no chunk; a packet it was joining
    /// can no longer end, and is lost.
    private func forgetIfFinished(_ sequence: Sequence) {
        guard sequence.isFinished else { return }
        loseReassembly(sequence)
        sequences[sequence.key] = nil
        let producer = sequence.key.producer
        if let count = sequenceCounts[producer], count > 1 {
            sequenceCounts[producer] = count - 1
        } else {
            sequenceCounts[producer] = nil
        }
    }

    /// Whether any writer sequence of `producer` is still kept (chunks to read, or its
    /// producer still connected).
    func holdsSequences(of producer: ProducerSerial) -> Bool {
        sequenceCounts[producer] != nil
    }

    private func sequenceFor(_ key: SequenceKey, uid: UInt32, pid: Int32) -> Sequence {
        if let existing = sequences[key] { return existing }
        let sequence = Sequence(key: key, uid: uid, pid: pid)
        sequences[key] = sequence
        sequenceCounts[key.producer, default: 0] += 1
        return sequence
    }

    /// Drops the oldest stored chunk. Returns false when there is nothing to drop.
    private func evictOldest() -> Bool {
        while insertionHead < insertionOrder.count {
            let entry = insertionOrder[insertionHead]
            insertionHead += 1
            guard let sequence = sequences[entry.key], let chunk = sequence.chunks[entry.chunkID],
                  chunk.serial == entry.serial else { continue }
            sequence.chunks[entry.chunkID] = nil
            usedBytes -= chunk.bytes.count
            storedChunkCount -= 1
            stats.chunksOverwritten += 1
            stats.bytesOverwritten += UInt64(chunk.bytes.count)
            stats.writeWrapCount += 1
            sequence.dataLost = true
            forgetIfFinished(sequence)
            compactInsertionOrder()
            return true
        }
        return false
    }

    private func compactInsertionOrder() {
        if insertionHead > 1024, insertionHead * 2 > insertionOrder.count {
            insertionOrder.removeFirst(insertionHead)
            insertionHead = 0
        }
    }

    /// Reads remove chunks without touching the eviction order; drop the entries they left
    /// behind once they outnumber the live ones, so a long session read as it goes stays small.
    private func pruneInsertionOrder() {
        let entries = insertionOrder.count - insertionHead
        guard entries > pruneThreshold else { return }
        let live = storedChunkCount
        guard entries > 2 * live else { return }
        insertionOrder = insertionOrder[insertionHead...].filter { entry in
            sequences[entry.key]?.chunks[entry.chunkID]?.serial == entry.serial
        }
        insertionHead = 0
    }

    /// Entries kept for eviction order (for tests).
    var insertionOrderCount: Int { insertionOrder.count - insertionHead }

    /// Writer sequences the buffer keeps state for (for tests).
    var sequenceCount: Int { sequences.count }

    // MARK: Reading

    /// Reads (and removes) every packet that can be read now, in order per sequence.
    func readPackets() -> [BufferedPacket] {
        readPackets(maxChunkBytes: .max).packets
    }

    /// Reads (and removes) packets that can be read now, in order per sequence, stopping once
    /// chunks of about `maxChunkBytes` were consumed; `complete` is false when it stopped early
    /// (the next call goes on where this one stopped), `chunkBytes` is what was consumed. This
    /// is how a large buffer is read in parts that go to the consumer while the next is read.
    func readPackets(maxChunkBytes: Int) -> (packets: [BufferedPacket], complete: Bool, chunkBytes: Int) {
        var packets: [BufferedPacket] = []
        var budget = maxChunkBytes
        // Sequences in (producer, writer) order, as Perfetto's buffer index is sorted (producers
        // in the order they connected): this is also the order in which the session hands out
        // trusted packet sequence ids.
        let keys = sequences.keys.sorted { ($0.producer, $0.writerID) < ($1.producer, $1.writerID) }
        var complete = true
        for key in keys {
            let sequence = sequences[key]!
            let readThrough = read(sequence, into: &packets, budget: &budget)
            forgetIfFinished(sequence)
            guard readThrough else {
                complete = false
                break
            }
        }
        pruneInsertionOrder()
        return (packets, complete, maxChunkBytes - budget)
    }

    /// Reads `sequence` as far as it can be read; false when `budget` ran out first.
    private func read(_ sequence: Sequence, into packets: inout [BufferedPacket], budget: inout Int) -> Bool {
        while !sequence.chunks.isEmpty {
            guard budget > 0 else { return false }
            let expected = sequence.nextChunkID ?? ChunkOrder.oldest(sequence.chunks.keys)
            guard let chunk = sequence.chunks[expected] else {
                // A gap: the chunk was overwritten, discarded or never committed. Wait if
                // nothing newer exists; otherwise skip to the next chunk we have.
                guard let later = ChunkOrder.next(after: expected, in: sequence.chunks.keys) else { return true }
                loseReassembly(sequence)
                sequence.dataLost = true
                sequence.nextChunkID = later
                continue
            }
            if chunk.needsPatching { return true }
            consume(chunk, of: sequence, into: &packets)
            budget -= chunk.bytes.count
            if !chunk.isComplete {
                // Its writer may add more: wait here for the next copy of it.
                sequence.chunks[expected]?.recordsRead = chunk.packetCount
                sequence.nextChunkID = expected
                return true
            }
            sequence.chunks[expected] = nil
            // Read in the order written (one writer, or one at a time), the chunk is the oldest
            // in the eviction order: its entry goes now rather than waiting for a prune.
            if insertionHead < insertionOrder.count, insertionOrder[insertionHead].serial == chunk.serial {
                insertionHead += 1
                compactInsertionOrder()
            }
            usedBytes -= chunk.bytes.count
            storedChunkCount -= 1
            stats.chunksRead += 1
            stats.bytesRead += UInt64(chunk.bytes.count)
            sequence.nextChunkID = expected &+ 1
        }
        return true
    }

    private func consume(_ chunk: StoredChunk, of sequence: Sequence, into packets: inout [BufferedPacket]) {
        let last = chunk.packetCount - 1
        let wellFormed = chunk.bytes.withUnsafeBytes { bytes in
            ChunkRecords.walk(bytes, count: chunk.packetCount) { index, record in
                guard index >= chunk.recordsRead else { return }
                consume(record, at: index, last: last, of: chunk, sequence: sequence, into: &packets)
            }
        }
        if !wellFormed {
            stats.abiViolations += 1
            loseReassembly(sequence)
            sequence.dataLost = true
        }
    }

    /// One record of `chunk`: a packet, the start, middle or end of one, or a drop marker.
    /// (The last record exists only if the chunk is well formed up to it, so its flags hold.)
    private func consume(
        _ record: ChunkRecord, at index: Int, last: Int, of chunk: StoredChunk, sequence: Sequence,
        into packets: inout [BufferedPacket]
    ) {
        if record.isDropMarker {
            loseReassembly(sequence)
            sequence.dataLost = true
            stats.traceWriterPacketLoss += 1
            return
        }
        let continuesFromPrevious = index == 0 && chunk.flags.contains(.firstPacketContinuesFromPreviousChunk)
        let continuesOnNext = index == last && chunk.flags.contains(.lastPacketContinuesOnNextChunk)
        let fragment = chunk.bytes[record.range]
        // A packet whole in this chunk stays where it is; one glued from fragments is an
        // array of its own.
        var packet: (storage: [UInt8], body: Range<Int>)
        if continuesFromPrevious {
            switch sequence.reassembly {
            case .collecting(var head):
                sequence.reassembly = .none  // so that `head` is the only reference left
                reassemblyBytes -= head.count
                guard reassemblyBytes + head.count + fragment.count <= capacity else {
                    return dropReassembly(sequence, continuesOnNext: continuesOnNext)
                }
                head.append(contentsOf: fragment)
                if continuesOnNext {
                    reassemblyBytes += head.count
                    sequence.reassembly = .collecting(head)
                    return
                }
                packet = (head, head.indices)
            case .none, .discarding:
                // The head of this packet never reached us.
                if case .none = sequence.reassembly { sequence.dataLost = true }
                sequence.reassembly = continuesOnNext ? .discarding : .none
                return
            }
        } else {
            // A new packet started before the previous one ended: the tail is lost.
            loseReassembly(sequence)
            if fragment.isEmpty && !continuesOnNext { return }  // zero-size records are padding, not packets
            if continuesOnNext {
                guard reassemblyBytes + fragment.count <= capacity else {
                    return dropReassembly(sequence, continuesOnNext: true)
                }
                reassemblyBytes += fragment.count
                sequence.reassembly = .collecting(Array(fragment))
                return
            }
            packet = (chunk.bytes, record.range)
        }
        packets.append(BufferedPacket(
            storage: packet.storage, body: packet.body, sequence: sequence.key, producerUID: sequence.uid,
            producerPID: sequence.pid, machineID: sequence.machineID,
            previousPacketDropped: sequence.dataLost || !sequence.anyPacketRead))
        sequence.dataLost = false
        sequence.anyPacketRead = true
    }

    private func loseReassembly(_ sequence: Sequence) {
        if case .collecting(let head) = sequence.reassembly {
            sequence.dataLost = true
            reassemblyBytes -= head.count
        }
        sequence.reassembly = .none
    }

    /// The packet being joined would take the bytes being joined across sequences past the
    /// buffer's size: it is dropped and counted lost, its later fragments skipped. Perfetto's
    /// buffer could never hold all of those fragments at once either; unbounded, writers whose
    /// packets never ended grew the service's memory for as long as the session lasted.
    private func dropReassembly(_ sequence: Sequence, continuesOnNext: Bool) {
        sequence.dataLost = true
        stats.traceWriterPacketLoss += 1
        sequence.reassembly = continuesOnNext ? .discarding : .none
    }
}

/// Chunk ids count up and wrap from 0xFFFFFFFF to 0 (a writer past 4 billion chunks, or one
/// that starts near the end): ids are ordered by their distance, as serial numbers are, so a
/// chunk id is before another when it is less than half the id space behind it.
enum ChunkOrder {
    /// Whether `id` comes before `other`.
    static func isBefore(_ id: UInt32, _ other: UInt32) -> Bool {
        let behind = other &- id
        return behind != 0 && behind <= UInt32.max / 2
    }

    /// The oldest of `ids` (not empty) in that order: `0xFFFFFFFF` before `0`.
    static func oldest<Ids: Collection<UInt32>>(_ ids: Ids) -> UInt32 {
        ids.reduce(ids.first!) { isBefore($1, $0) ? $1 : $0 }
    }

    /// The first of `ids` after `id`, if any.
    static func next<Ids: Collection<UInt32>>(after id: UInt32, in ids: Ids) -> UInt32? {
        ids.lazy.filter { isBefore(id, $0) }.min { ($0 &- id) < ($1 &- id) }
    }
}
