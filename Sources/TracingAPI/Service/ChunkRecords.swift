// Walks the records of one chunk copied out of shared memory. The bytes came from another
// process, so nothing is trusted: every size is checked against the end of the chunk, and a
// chunk that lies (a size past its end, a bad varint) yields the records before the lie and
// reports itself as malformed.

import CPerfettoIPCLinux

/// One record of a chunk: a whole packet, or a fragment of one.
struct ChunkRecord: Equatable {
    /// Byte range of the fragment inside the chunk copy (header excluded).
    var range: Range<Int>
    /// The writer dropped this packet (size = kPacketSizeDropPacket).
    var isDropMarker: Bool
}

/// Walking the records of a chunk.
enum ChunkRecords {
    /// Calls `visit` with the index and range of each of the first `count` records of `chunk`
    /// (the whole chunk, header included), in order, as it finds them (nothing is collected).
    /// Returns false if the walk stopped early at malformed bytes.
    static func walk(_ chunk: UnsafeRawBufferPointer, count: Int, _ visit: (Int, ChunkRecord) -> Void) -> Bool {
        // The chunk was stored a while ago and is likely out of the caches: the walk below
        // jumps from record to record, each jump a miss unless the lines are on their way.
        CPerfettoIPC_prefetch(chunk.baseAddress, chunk.count)
        var position = SharedMemoryABI.chunkHeaderSize
        let end = chunk.count
        for index in 0..<count {
            // Sizes never need more than 5 bytes; the SDK writes 1 to 4.
            guard let size = ProtoEncoding.readVarint(chunk, at: &position, maxBytes: 5) else { return false }
            if size == UInt64(SharedMemoryABI.packetSizeDropPacket) {
                visit(index, ChunkRecord(range: position..<position, isDropMarker: true))
                continue
            }
            guard size <= UInt64(end - position) else { return false }
            let next = position + Int(size)
            visit(index, ChunkRecord(range: position..<next, isDropMarker: false))
            position = next
        }
        return true
    }
}
