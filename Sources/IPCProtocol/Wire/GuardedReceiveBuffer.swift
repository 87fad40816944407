// One contiguous receive buffer per connection, mapped with `mmap` and fenced by inaccessible
// (PROT_NONE) guard pages on both sides, so that a decoding bug that runs off either end traps
// at once instead of reading or corrupting a neighbour's memory.
//
//   [ guard page | capacity rounded up to pages ... | guard page ]
//
// Untouched pages of an anonymous mapping cost no memory; `releasePagesAfterFirst()` hands
// touched pages back to the OS (MADV_DONTNEED) when the buffer has drained, so an idle
// connection holds at most one resident page.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A page-aligned, guard-paged byte buffer owned by one ``FrameDeserializer``.
///
/// Not thread-safe: used only on the loop that owns the connection.
package final class GuardedReceiveBuffer {
    /// Usable bytes (what the caller asked for).
    package let capacity: Int
    /// Start of the usable region.
    package let base: UnsafeMutableRawPointer
    private let mapping: UnsafeMutableRawPointer
    private let mappingSize: Int
    package static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Maps `capacity` usable bytes between two guard pages.
    ///
    /// - Throws: ``IPCError`` with code `.invalidArgument` for a capacity below the frame
    ///   header size, or `.systemCallFailed` if `mmap`/`mprotect` fail.
    package init(capacity: Int) throws(IPCError) {
        guard capacity >= WireLimits.frameHeaderSize, capacity <= 64 * 1024 * 1024 else {
            throw IPCError(.invalidArgument, "receive capacity \(capacity) is out of range")
        }
        let page = Self.pageSize
        let usable = (capacity + page - 1) / page * page
        let total = usable + 2 * page
        guard let mapped = mmap(nil, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            mapped != MAP_FAILED
        else {
            throw IPCError.systemCall("mmap", errno: errno)
        }
        guard mprotect(mapped + page, usable, PROT_READ | PROT_WRITE) == 0 else {
            let error = errno
            munmap(mapped, total)
            throw IPCError.systemCall("mprotect", errno: error)
        }
        self.capacity = capacity
        self.mapping = mapped
        self.mappingSize = total
        self.base = mapped + page
    }

    deinit {
        munmap(mapping, mappingSize)
    }

    /// Returns every page after the first to the OS. Their contents read back as zeros.
    package func releasePagesAfterFirst() {
        let page = Self.pageSize
        let usable = mappingSize - 2 * page
        guard usable > page else { return }
        _ = madvise(base + page, usable - page, Int32(MADV_DONTNEED))
    }
}
