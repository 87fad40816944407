// System calls, wrapped once: EINTR is retried here, EAGAIN becomes `.wouldBlock`, and any
// other failure becomes an IPCError that keeps errno, the call's name and the address.

import CPerfettoIPCLinux
import Glibc
import IPCProtocol

/// The outcome of a non-blocking call.
package enum IOResult<Value> {
    case processed(Value)
    case wouldBlock
}

package enum Syscall {
    /// Calls `body` until it stops failing with EINTR; returns its result or throws.
    @inline(__always)
    package static func retrying<T: BinaryInteger>(
        _ name: @autoclosure () -> String, address: String? = nil, _ body: () -> T
    ) throws(IPCError) -> T {
        while true {
            let result = body()
            if result >= 0 { return result }
            let error = errno
            if error == EINTR { continue }
            throw IPCError.systemCall(name(), errno: error, address: address)
        }
    }

    /// Like `retrying`, but EAGAIN/EWOULDBLOCK is `.wouldBlock` instead of an error.
    @inline(__always)
    package static func nonBlocking<T: BinaryInteger>(
        _ name: @autoclosure () -> String, address: String? = nil, _ body: () -> T
    ) throws(IPCError) -> IOResult<T> {
        while true {
            let result = body()
            if result >= 0 { return .processed(result) }
            let error = errno
            if error == EINTR { continue }
            if error == EAGAIN || error == EWOULDBLOCK { return .wouldBlock }
            throw IPCError.systemCall(name(), errno: error, address: address)
        }
    }

    /// Closes `fd`, ignoring EINTR (on Linux the descriptor is released regardless).
    package static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// Sets O_NONBLOCK and FD_CLOEXEC on a descriptor we did not create ourselves.
    package static func makeNonBlockingAndCloseOnExec(_ fd: Int32) throws(IPCError) {
        let flags = try retrying("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        _ = try retrying("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        let fdFlags = try retrying("fcntl(F_GETFD)") { fcntl(fd, F_GETFD) }
        _ = try retrying("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, fdFlags | FD_CLOEXEC) }
    }

    package static func setSocketOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32, name: String) throws(IPCError) {
        var value = value
        _ = try retrying("setsockopt(\(name))") {
            setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<Int32>.size))
        }
    }
}
