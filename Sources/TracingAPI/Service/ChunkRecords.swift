// Walks the records of one chunk copied out of shared memory. The bytes came from another
// process, so nothing is trusted: every size is checked against the end of the chunk, and a
// chunk that lies (a size past its end, a bad varint) yields the records before the lie and
// reports itself as malformed.

/// One record of a chunk: a whole packet, or a fragment of one.
struct ChunkRecord: Equatable {
    /// Byte range of the fragment inside the chunk copy (header excluded).
    var range: Range<Int>
    /// The writer dropped this packet (size = kPacketSizeDropPacket).
    var isDropMarker: Bool
}

/// The records of a chunk, and whether the walk stopped early at malformed bytes.
struct ChunkRecords {
    var records: [ChunkRecord] = []
    var malformed = false

    /// Walks `count` records of `chunk` (the whole chunk, header included).
    init(chunk: [UInt8], count: Int) {
        records.reserveCapacity(count)
        chunk.withUnsafeBytes { bytes in
            var position = SharedMemoryABI.chunkHeaderSize
            let end = bytes.count
            for _ in 0..<count {
                // Sizes never need more than 5 bytes; the SDK writes 1 to 4.
                guard let size = ProtoEncoding.readVarint(bytes, at: &position, maxBytes: 5) else {
                    malformed = true
                    return
                }
                if size == UInt64(SharedMemoryABI.packetSizeDropPacket) {
                    records.append(ChunkRecord(range: position..<position, isDropMarker: true))
                    continue
                }
                guard size <= UInt64(end - position) else {
                    malformed = true
                    return
                }
                let next = position + Int(size)
                records.append(ChunkRecord(range: position..<next, isDropMarker: false))
                position = next
            }
        }
    }
}
