// Perfetto's shared-memory ABI (include/perfetto/ext/tracing/core/shared_memory_abi.h), the
// constants and the two 8-byte headers. Little-endian, explicit widths: these bytes are shared
// with C++ producers and services, so nothing here may change.
//
//   page   = [u32 header_bitmap (atomic)][u32 reserved][chunk 0][chunk 1]...
//   bitmap = 2-bit state per chunk in bits [27:0], the layout in bits [30:28]
//   chunk  = [u32 chunk_id][u16 writer_id][u16 count:10 | flags:6][records...]
//   record = [varint size, written as 4 redundant bytes][fragment bytes]

import CPerfettoIPCLinux

/// Constants and header codecs of Perfetto's shared-memory buffer (SMB) layout.
public enum SharedMemoryABI {
    /// The smallest page; every page size is a multiple of it.
    public static let minPageSize = 4096
    /// The ABI's largest page (Perfetto's service uses at most 32 KiB).
    public static let maxPageSize = 65536
    /// The largest page size a service accepts from a producer's hint.
    public static let maxServicePageSize = 32 * 1024
    /// The default buffer size and page size of Perfetto's service.
    public static let defaultBufferSize = 256 * 1024
    /// The default page size of Perfetto's service.
    public static let defaultPageSize = 4096
    /// The largest shared-memory buffer the service creates.
    public static let maxBufferSize = 32 * 1024 * 1024
    /// Bytes of the page header (the atomic bitmap and a reserved word).
    public static let pageHeaderSize = 8
    /// Bytes of the chunk header (``ChunkHeader``).
    public static let chunkHeaderSize = 8
    /// Bytes reserved in front of every record for its size (a padded varint).
    public static let packetHeaderSize = 4
    /// The most chunks a page can be divided into.
    public static let maxChunksPerPage = 14
    /// The largest writer id (Perfetto's `kMaxWriterID`, 15 bits); 0 is no writer. The service
    /// drops chunks and patches of writers outside 1...maxWriterID, as traced drops patches.
    public static let maxWriterID: UInt16 = (1 << 15) - 1

    /// Whether `id` names a writer: 1...``maxWriterID``.
    public static func isValidWriterID(_ id: some BinaryInteger) -> Bool {
        id >= 1 && id <= maxWriterID
    }
    /// The most records one chunk header can count (10 bits).
    public static let maxPacketsPerChunk = 1023
    /// A record of this size marks a packet the writer dropped because the buffer was full.
    public static let packetSizeDropPacket: UInt32 = (1 << 28) - 1
    /// The largest size a 4-byte padded varint can carry.
    public static let maxPaddedVarint: UInt32 = (1 << 28) - 1
    /// A bitmap with every chunk of a 14-chunk page complete.
    public static let allChunksComplete: UInt32 = 0x0FFF_FFFF

    /// Bytes of each chunk in a page of `pageSize` with `layout`.
    public static func chunkSize(pageSize: Int, layout: PageLayout) -> Int {
        let count = layout.chunkCount
        guard count > 0 else { return 0 }
        return ((pageSize - pageHeaderSize) / count) & ~3
    }

    /// Writes `value` as a 4-byte padded varint (`v|0x80, v>>7|0x80, v>>14|0x80, v>>21`).
    /// (`destination` must have 4 writable bytes.)
    @inlinable
    public static func writePaddedVarint(_ value: UInt32, to destination: UnsafeMutableRawPointer) {
        destination.storeBytes(of: UInt8(truncatingIfNeeded: value) | 0x80, as: UInt8.self)
        destination.storeBytes(of: UInt8(truncatingIfNeeded: value >> 7) | 0x80, toByteOffset: 1, as: UInt8.self)
        destination.storeBytes(of: UInt8(truncatingIfNeeded: value >> 14) | 0x80, toByteOffset: 2, as: UInt8.self)
        destination.storeBytes(of: UInt8(truncatingIfNeeded: value >> 21) & 0x7F, toByteOffset: 3, as: UInt8.self)
    }

    /// The 4 bytes of `value` as a padded varint.
    public static func paddedVarint(_ value: UInt32) -> [UInt8] {
        [UInt8(truncatingIfNeeded: value) | 0x80, UInt8(truncatingIfNeeded: value >> 7) | 0x80,
         UInt8(truncatingIfNeeded: value >> 14) | 0x80, UInt8(truncatingIfNeeded: value >> 21) & 0x7F]
    }
}

/// How a page is divided into chunks (bits [30:28] of the page header bitmap).
public enum PageLayout: UInt32, Sendable, CaseIterable {
    case notPartitioned = 0
    case divideBy1 = 1
    case divideBy2 = 2
    case divideBy4 = 3
    case divideBy7 = 4
    case divideBy14 = 5

    /// Chunks in a page with this layout.
    public var chunkCount: Int {
        switch self {
        case .notPartitioned: 0
        case .divideBy1: 1
        case .divideBy2: 2
        case .divideBy4: 4
        case .divideBy7: 7
        case .divideBy14: 14
        }
    }

    static let shift: UInt32 = 28
    static let mask: UInt32 = 0x7 << shift

    /// The layout a bitmap announces, or nil for the reserved values 6 and 7.
    init?(bitmap: UInt32) {
        self.init(rawValue: (bitmap & PageLayout.mask) >> PageLayout.shift)
    }
}

/// The 2-bit state of one chunk in its page's header bitmap.
public enum ChunkState: UInt32, Sendable {
    case free = 0
    case beingWritten = 1
    case beingRead = 2
    case complete = 3

    static func of(chunk index: Int, in bitmap: UInt32) -> ChunkState {
        ChunkState(rawValue: (bitmap >> (UInt32(index) * 2)) & 0x3)!
    }

    static func bitmap(_ bitmap: UInt32, settingChunk index: Int, to state: ChunkState) -> UInt32 {
        let shift = UInt32(index) * 2
        return (bitmap & ~(0x3 << shift)) | (state.rawValue << shift)
    }
}

/// Flags in the top 6 bits of a chunk header's packet word.
public struct ChunkFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The first record is the tail of a packet begun in the previous chunk of the writer.
    public static let firstPacketContinuesFromPreviousChunk = ChunkFlags(rawValue: 1)
    /// The last record is continued in the next chunk of the writer.
    public static let lastPacketContinuesOnNextChunk = ChunkFlags(rawValue: 2)
    /// Some nested length in this chunk will be filled in by a patch in a CommitData.
    public static let needsPatching = ChunkFlags(rawValue: 4)
}

/// The 8-byte header at the start of every chunk.
public struct ChunkHeader: Sendable, Hashable {
    /// Monotonic per writer; consecutive fragments of a packet are in consecutive chunk ids.
    public var chunkID: UInt32
    /// The writer; 0 is invalid.
    public var writerID: UInt16
    /// Records in the chunk (10 bits, at most 1023).
    public var packetCount: UInt16
    /// Continuation and patching flags.
    public var flags: ChunkFlags

    /// A header with the given fields.
    public init(chunkID: UInt32, writerID: UInt16, packetCount: UInt16 = 0, flags: ChunkFlags = []) {
        self.chunkID = chunkID
        self.writerID = writerID
        self.packetCount = packetCount
        self.flags = flags
    }

    /// Reads a header from the first 8 bytes (any alignment); nil if there are fewer.
    public init?(bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= SharedMemoryABI.chunkHeaderSize else { return nil }
        chunkID = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        writerID = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        let packets = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        packetCount = packets & 0x3FF
        flags = ChunkFlags(rawValue: UInt8(packets >> 10))
    }

    /// The packet word: count in bits 0-9, flags in bits 10-15.
    public var packetsWord: UInt16 { (packetCount & 0x3FF) | (UInt16(flags.rawValue & 0x3F) << 10) }

    /// Publishes the final record count and flags of a chunk in shared memory (an atomic 16-bit
    /// store, as the service may look at a chunk's header while it is being written).
    func publishPacketsWord(at chunkStart: UnsafeMutableRawPointer) {
        CPerfettoIPC_atomicStore16((chunkStart + 6).assumingMemoryBound(to: UInt16.self), packetsWord.littleEndian)
    }

    /// Writes the header to 8 bytes.
    public func write(to destination: UnsafeMutableRawPointer) {
        destination.storeBytes(of: chunkID.littleEndian, toByteOffset: 0, as: UInt32.self)
        destination.storeBytes(of: writerID.littleEndian, toByteOffset: 4, as: UInt16.self)
        destination.storeBytes(of: packetsWord.littleEndian, toByteOffset: 6, as: UInt16.self)
    }
}
