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
        var position = SharedMemoryABI.chunkHeaderSize
        let end = chunk.count
        records.reserveCapacity(count)
        for _ in 0..<count {
            guard let (size, headerLength) = ChunkRecords.readVarint(chunk, at: position, end: end) else {
                malformed = true
                return
            }
            position += headerLength
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

    /// A varint of at most 5 bytes (sizes never need more) starting at `position`.
    static func readVarint(_ bytes: [UInt8], at position: Int, end: Int) -> (UInt64, Int)? {
        var value: UInt64 = 0
        var index = position
        var shift: UInt64 = 0
        while index < end, shift < 35 {
            let byte = bytes[index]
            value |= UInt64(byte & 0x7F) << shift
            index += 1
            if byte & 0x80 == 0 { return (value, index - position) }
            shift += 7
        }
        return nil
    }
}
