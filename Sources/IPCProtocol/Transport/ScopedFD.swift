// Ownership of one file descriptor, as Perfetto's ScopedFile: closed when the owner goes
// away unless it was released. Used for fds received over a connection and fds attached to
// replies, so an fd nobody takes is never leaked.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// An owned file descriptor, closed on deinit unless ``release()`` took it.
///
/// Thread-safe: ownership moves atomically, so exactly one party closes the descriptor.
public final class ScopedFD: Sendable, CustomStringConvertible {
    private let fd: Atomic<Int32>

    /// Takes ownership of `fd`.
    public init(_ fd: Int32) {
        self.fd = Atomic(fd)
    }

    /// The descriptor, or -1 once released or closed. It stays owned by this object.
    public var rawValue: Int32 { fd.load(ordering: .acquiring) }

    /// Gives up ownership and returns the descriptor (or -1 if already released). The caller
    /// must close it.
    public func release() -> Int32 {
        fd.exchange(-1, ordering: .acquiringAndReleasing)
    }

    /// Closes the descriptor now. Idempotent.
    public func close() {
        let value = release()
        if value >= 0 { _ = systemClose(value) }
    }

    /// A new owned duplicate (close-on-exec), or `nil` if `dup` fails or this one is closed.
    public func duplicate() -> ScopedFD? {
        let value = rawValue
        guard value >= 0 else { return nil }
        let copy = fcntl(value, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? ScopedFD(copy) : nil
    }

    deinit { close() }

    public var description: String { "ScopedFD(\(rawValue))" }
}

@inline(__always)
private func systemClose(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
    return Glibc.close(fd)
    #else
    return Darwin.close(fd)
    #endif
}
