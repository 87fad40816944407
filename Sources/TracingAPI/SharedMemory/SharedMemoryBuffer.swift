// The shared-memory buffer (SMB) between one producer and the service: a sealed memfd mapped
// MAP_SHARED, divided into pages, each page into chunks. Chunk ownership moves through the
// 2-bit states of the page header with compare-and-swap on the mapped word, exactly as
// Perfetto's SharedMemoryABI does, so a C++ producer or service can share the same buffer.
//
// The producer side (SharedMemoryArbiter) moves chunks Free -> BeingWritten -> Complete; the
// service side moves them Complete -> BeingRead -> Free. The other process may be hostile:
// every index is checked, the bitmap is re-read on every CAS, and a mapping received from a
// peer must be sealed against shrinking (otherwise a truncate would turn our reads into SIGBUS).

import CPerfettoIPCLinux
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A mapped shared-memory buffer with Perfetto's page/chunk layout.
///
/// Thread-safe: all state lives in the mapping and changes by atomic compare-and-swap.
public final class SharedMemoryBuffer: @unchecked Sendable {
    /// Size of the mapping in bytes (a multiple of ``pageSize``).
    public let size: Int
    /// Page size in bytes (a multiple of 4096).
    public let pageSize: Int
    /// The memfd behind the mapping; duplicate it to hand the buffer to a producer.
    public let fileDescriptor: ScopedFD
    /// Start of the mapping; valid while this object lives. Writing here bypasses the chunk
    /// state machine: only for tools that lay out chunks themselves.
    public let base: UnsafeMutableRawPointer

    /// Number of pages.
    public var pageCount: Int { size / pageSize }

    /// Whether `size` and `pageSize` are a layout Perfetto's service accepts: 4 KiB times a power
    /// of two pages of at most 32 KiB, and a buffer that is a whole number of pages, at most 32 MiB.
    public static func isValid(size: Int, pageSize: Int) -> Bool {
        guard pageSize >= SharedMemoryABI.minPageSize, pageSize <= SharedMemoryABI.maxServicePageSize,
              pageSize % SharedMemoryABI.minPageSize == 0 else { return false }
        let pagesOf4K = pageSize / SharedMemoryABI.minPageSize
        guard pagesOf4K & (pagesOf4K - 1) == 0 else { return false }
        return size > 0 && size <= SharedMemoryABI.maxBufferSize && size % pageSize == 0
    }

    /// Creates a new buffer: a memfd named `perfetto_shmem`, sized, sealed against shrinking and
    /// growing (so the peer cannot make our accesses fault), and mapped read-write.
    public static func create(
        size: Int = SharedMemoryABI.defaultBufferSize, pageSize: Int = SharedMemoryABI.defaultPageSize
    ) throws(TracingError) -> SharedMemoryBuffer {
        guard size > 0, pageSize >= SharedMemoryABI.minPageSize, pageSize <= SharedMemoryABI.maxPageSize,
              pageSize % SharedMemoryABI.minPageSize == 0, size % pageSize == 0 else {
            throw TracingError(.invalidSharedMemory, "size \(size) / page size \(pageSize) is not a valid layout")
        }
        let fd = CPerfettoIPC_memfd_create(
            "perfetto_shmem", UInt32(CPerfettoIPC_MFD_CLOEXEC | CPerfettoIPC_MFD_ALLOW_SEALING))
        guard fd >= 0 else { throw TracingError(.systemCallFailed, "memfd_create", errno: errno) }
        let owned = ScopedFD(fd)
        guard ftruncate(fd, off_t(size)) == 0 else {
            throw TracingError(.systemCallFailed, "ftruncate(\(size))", errno: errno)
        }
        let seals = CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW | CPerfettoIPC_F_SEAL_SEAL
        guard fcntlInt(fd, CPerfettoIPC_F_ADD_SEALS, seals) == 0 else {
            throw TracingError(.systemCallFailed, "F_ADD_SEALS", errno: errno)
        }
        return try SharedMemoryBuffer(mapping: owned, size: size, pageSize: pageSize)
    }

    /// Maps a buffer received from a peer (a producer-provided buffer, or the service's buffer
    /// on the producer side). Its size is what `fstat` says.
    ///
    /// - Parameters:
    ///   - fd: the memfd (or file); the buffer takes ownership.
    ///   - pageSize: the page size agreed on (from `setup_tracing` or the producer's hint).
    ///   - requireSeals: demand `F_SEAL_SHRINK`, `F_SEAL_GROW` and `F_SEAL_SEAL` (as traced
    ///     does), so the peer cannot truncate the file under the mapping nor seal it further.
    ///     The service sets it for producer-provided buffers, producers for the service's.
    public static func map(
        _ fd: ScopedFD, pageSize: Int, requireSeals: Bool
    ) throws(TracingError) -> SharedMemoryBuffer {
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else {
            throw TracingError(.systemCallFailed, "fstat", errno: errno)
        }
        let size = Int(info.st_size)
        guard size > 0, size <= SharedMemoryABI.maxBufferSize, pageSize >= SharedMemoryABI.minPageSize,
              pageSize <= SharedMemoryABI.maxPageSize, pageSize % SharedMemoryABI.minPageSize == 0,
              size % pageSize == 0 else {
            throw TracingError(.invalidSharedMemory, "size \(size) / page size \(pageSize) is not a valid layout")
        }
        if requireSeals {
            // What traced requires of a producer's buffer, and seals its own with.
            let required = CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW | CPerfettoIPC_F_SEAL_SEAL
            let seals = fcntlInt(fd.rawValue, CPerfettoIPC_F_GET_SEALS, 0)
            guard seals >= 0, seals & required == required else {
                throw TracingError(.invalidSharedMemory, "the buffer is not sealed against resizing and further seals")
            }
        }
        return try SharedMemoryBuffer(mapping: fd, size: size, pageSize: pageSize)
    }

    private init(mapping fd: ScopedFD, size: Int, pageSize: Int) throws(TracingError) {
        guard let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0),
              address != MAP_FAILED else {
            throw TracingError(.systemCallFailed, "mmap(\(size))", errno: errno)
        }
        self.base = address
        self.size = size
        self.pageSize = pageSize
        self.fileDescriptor = fd
    }

    deinit { munmap(base, size) }

    // MARK: Page header

    private func bitmapAddress(page: Int) -> UnsafeMutablePointer<UInt32> {
        (base + page * pageSize).assumingMemoryBound(to: UInt32.self)
    }

    /// The header bitmap of `page` (atomic load), or 0 for a page outside the buffer.
    public func headerBitmap(page: Int) -> UInt32 {
        guard page >= 0, page < pageCount else { return 0 }
        return CPerfettoIPC_atomicLoad32(bitmapAddress(page: page))
    }

    /// Overwrites the header bitmap of `page` (atomic store). For tools that lay chunks out
    /// themselves, such as replaying a capture; writers go through the arbiter.
    /// Returns false (and stores nothing) for a page outside the buffer.
    @discardableResult
    public func storeHeaderBitmap(_ bitmap: UInt32, page: Int) -> Bool {
        guard page >= 0, page < pageCount else { return false }
        CPerfettoIPC_atomicStore32(bitmapAddress(page: page), bitmap)
        return true
    }

    /// The layout of `page`, or nil if its bitmap holds a reserved layout value.
    public func layout(page: Int) -> PageLayout? { PageLayout(bitmap: headerBitmap(page: page)) }

    /// Bytes per chunk of `page` with `layout`.
    public func chunkSize(layout: PageLayout) -> Int {
        SharedMemoryABI.chunkSize(pageSize: pageSize, layout: layout)
    }

    /// Start of chunk `chunk` of `page` laid out with `layout`.
    func chunkAddress(page: Int, chunk: Int, layout: PageLayout) -> UnsafeMutableRawPointer {
        base + page * pageSize + SharedMemoryABI.pageHeaderSize + chunk * chunkSize(layout: layout)
    }

    /// Applies `layout` to a free, unpartitioned page. Fails if someone else got there first,
    /// if `page` is outside the buffer, or if `layout` is ``PageLayout/notPartitioned``.
    public func tryPartitionPage(_ page: Int, layout: PageLayout) -> Bool {
        guard page >= 0, page < pageCount, layout != .notPartitioned else { return false }
        var expected: UInt32 = 0
        return CPerfettoIPC_atomicCompareExchange32(
            bitmapAddress(page: page), &expected, layout.rawValue << PageLayout.shift) != 0
    }

    /// Moves one chunk from `from` to `to`, checking the page's layout still allows `chunk`.
    /// Returns the layout on success.
    private func transition(page: Int, chunk: Int, from: ChunkState, to: ChunkState) -> PageLayout? {
        let address = bitmapAddress(page: page)
        var bitmap = CPerfettoIPC_atomicLoad32(address)
        while true {
            guard let layout = PageLayout(bitmap: bitmap), chunk < layout.chunkCount,
                  ChunkState.of(chunk: chunk, in: bitmap) == from else { return nil }
            let next = ChunkState.bitmap(bitmap, settingChunk: chunk, to: to)
            if CPerfettoIPC_atomicCompareExchange32(address, &bitmap, next) != 0 { return layout }
        }
    }

    // MARK: Producer side

    /// Takes a free chunk for writing and stamps its header. Returns where it starts and its
    /// size, or nil if the chunk is not free in a partitioned page.
    func tryAcquireChunkForWriting(page: Int, chunk: Int, header: ChunkHeader) -> (UnsafeMutableRawPointer, Int)? {
        guard page >= 0, page < pageCount, chunk >= 0, let layout = transition(page: page, chunk: chunk, from: .free, to: .beingWritten) else { return nil }
        let start = chunkAddress(page: page, chunk: chunk, layout: layout)
        header.write(to: start)
        return (start, chunkSize(layout: layout))
    }

    /// Marks a chunk the writer has finished as complete (ready for the service to move).
    func releaseChunkAsComplete(page: Int, chunk: Int) {
        guard page >= 0, page < pageCount, chunk >= 0 else { return }
        _ = transition(page: page, chunk: chunk, from: .beingWritten, to: .complete)
    }

    // MARK: Service side

    /// Takes a complete chunk for reading. Returns its bytes' location and size, or nil when
    /// the indexes are out of range or the chunk is not complete (as CommitData requires).
    func tryAcquireChunkForReading(page: Int, chunk: Int) -> (UnsafeRawPointer, Int)? {
        guard page >= 0, page < pageCount, chunk >= 0, chunk < SharedMemoryABI.maxChunksPerPage,
              let layout = transition(page: page, chunk: chunk, from: .complete, to: .beingRead) else {
            return nil
        }
        return (UnsafeRawPointer(chunkAddress(page: page, chunk: chunk, layout: layout)), chunkSize(layout: layout))
    }

    /// A chunk copied in place by ``scrapeChunks()``.
    struct ScrapedChunk {
        /// The chunk's bytes, header included, copied before anything parses them.
        var bytes: [UInt8]
        var header: ChunkHeader
        /// Complete but not committed (all its packets are whole), rather than being written.
        var isComplete: Bool
    }

    /// Copies every chunk that holds data the producer has not committed: complete chunks, and
    /// chunks being written that hold at least one finished packet (the last one of those may
    /// still be growing). States are left as they are: the producer still owns the chunks.
    func scrapeChunks() -> [ScrapedChunk] {
        var scraped: [ScrapedChunk] = []
        for page in 0..<pageCount {
            let bitmap = headerBitmap(page: page)
            guard let layout = PageLayout(bitmap: bitmap), layout != .notPartitioned else { continue }
            let size = chunkSize(layout: layout)
            for chunk in 0..<layout.chunkCount {
                let state = ChunkState.of(chunk: chunk, in: bitmap)
                guard state == .beingWritten || state == .complete else { continue }
                let start = UnsafeRawPointer(chunkAddress(page: page, chunk: chunk, layout: layout))
                // The header first: packets counted now were started before the copy below.
                guard let header = ChunkHeader(bytes: UnsafeRawBufferPointer(start: start, count: SharedMemoryABI.chunkHeaderSize)),
                      SharedMemoryABI.isValidWriterID(header.writerID),
                      state == .complete || header.packetCount >= 2 else { continue }
                var bytes = [UInt8](UnsafeRawBufferPointer(start: start, count: size))
                // The copy carries the header that was read, not one a writer changed since.
                bytes.withUnsafeMutableBytes { header.write(to: $0.baseAddress!) }
                scraped.append(ScrapedChunk(bytes: bytes, header: header, isComplete: state == .complete))
            }
        }
        return scraped
    }

    /// Frees a chunk taken for reading: clears its header, marks it free, and when the whole
    /// page is free, resets the page to unpartitioned so the producer can re-lay it out.
    func releaseChunkAsFree(page: Int, chunk: Int) {
        guard page >= 0, page < pageCount, chunk >= 0 else { return }
        let address = bitmapAddress(page: page)
        var bitmap = CPerfettoIPC_atomicLoad32(address)
        guard let layout = PageLayout(bitmap: bitmap), chunk < layout.chunkCount else { return }
        memset(chunkAddress(page: page, chunk: chunk, layout: layout), 0, SharedMemoryABI.chunkHeaderSize)
        while true {
            guard ChunkState.of(chunk: chunk, in: bitmap) == .beingRead else { return }
            var next = ChunkState.bitmap(bitmap, settingChunk: chunk, to: .free)
            if next & ~PageLayout.mask == 0 { next = 0 }
            if CPerfettoIPC_atomicCompareExchange32(address, &bitmap, next) != 0 { return }
            guard PageLayout(bitmap: bitmap) == layout else { return }
        }
    }
}

/// `fcntl` with an int argument (Swift imports the variadic form only for some commands).
func fcntlInt(_ fd: Int32, _ command: Int32, _ argument: Int32) -> Int32 {
    fcntl(fd, command, argument)
}
