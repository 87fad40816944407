// File-descriptor helpers for tests: counting what is open, memfds with content, flags.

import CPerfettoIPCLinux
import Foundation
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

public enum FileDescriptors {
    /// Descriptors open in this process right now.
    public static func openDescriptors() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [])
            .compactMap(Int32.init)
            .filter { fcntl($0, F_GETFD) >= 0 }  // drop the one the listing itself used
            .sorted()
    }

    /// What `/proc/self/fd/N` points at (`socket:[…]`, `/memfd:name (deleted)`, a path).
    public static func target(of fd: Int32) -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) ?? "?"
    }

    /// A memfd holding `content`, positioned at 0.
    public static func memfd(named name: String, content: [UInt8]) -> ScopedFD {
        let fd = CPerfettoIPC_memfd_create(name, UInt32(CPerfettoIPC_MFD_CLOEXEC))
        precondition(fd >= 0, "memfd_create failed")
        content.withUnsafeBytes { precondition(pwrite(fd, $0.baseAddress, $0.count, 0) == $0.count) }
        return ScopedFD(fd)
    }

    /// The whole content of a file descriptor, read from offset 0.
    public static func content(of fd: Int32) -> [UInt8] {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        return Array(bytes.prefix(max(0, count)))
    }

    public static func isCloseOnExec(_ fd: Int32) -> Bool {
        fcntl(fd, F_GETFD) & FD_CLOEXEC != 0
    }

    /// A connected unix socketpair (close-on-exec).
    public static func socketPair() -> (ScopedFD, ScopedFD) {
        var fds: [Int32] = [-1, -1]
        let rc = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &fds)
        precondition(rc == 0, "socketpair failed")
        return (ScopedFD(fds[0]), ScopedFD(fds[1]))
    }

    /// Whether this machine can bind TCP on ::1.
    public static let hasIPv6Loopback: Bool = {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_addr = in6addr_loopback
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        } == 0
    }()

    /// A unix stream socket bound at `path` (not listening).
    public static func boundUnixSocket(path: String, closeOnExec: Bool = true) -> ScopedFD {
        unixSocket(path: path, closeOnExec: closeOnExec, call: "bind") { bind($0, $1, $2) }
    }

    /// A blocking unix stream socket connected to `path`.
    public static func connectedUnixSocket(path: String) -> ScopedFD {
        unixSocket(path: path, closeOnExec: true, call: "connect") { connect($0, $1, $2) }
    }

    /// A blocking TCP socket connected to `address` (`a.b.c.d:port`).
    public static func connectedTCPSocket(address: String) -> ScopedFD {
        let parts = address.split(separator: ":")
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(parts[1])!.bigEndian
        inet_pton(AF_INET, String(parts[0]), &sin.sin_addr)
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        precondition(rc == 0, "connect \(address) failed")
        return ScopedFD(fd)
    }

    private static func unixSocket(
        path: String, closeOnExec: Bool, call: String, _ body: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32
    ) -> ScopedFD {
        let type = Int32(SOCK_STREAM.rawValue) | (closeOnExec ? Int32(SOCK_CLOEXEC.rawValue) : 0)
        let fd = socket(AF_UNIX, type, 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { path.utf8CString.withUnsafeBytes($0.copyMemory) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(rc == 0, "\(call) \(path) failed")
        return ScopedFD(fd)
    }

    /// Sends `bytes` with every fd in `fds` in one SCM_RIGHTS message, blocking.
    public static func sendWithFDs(_ socket: Int32, bytes: [UInt8], fds: [Int32]) -> Bool {
        var bytes = bytes
        let byteCount = bytes.count
        return bytes.withUnsafeMutableBytes { data in
            var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
            let payload = fds.count * MemoryLayout<Int32>.size
            let space = CPerfettoIPC_CMSG_SPACE(payload)
            return withUnsafeMutablePointer(to: &iov) { iovPointer in
                withUnsafeTemporaryAllocation(byteCount: space, alignment: 8) { control in
                    control.initializeMemory(as: UInt8.self, repeating: 0)
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    message.msg_control = control.baseAddress
                    message.msg_controllen = space
                    let header = CPerfettoIPC_CMSG_FIRSTHDR(&message)!
                    header.pointee.cmsg_level = SOL_SOCKET
                    header.pointee.cmsg_type = CPerfettoIPC_SCM_RIGHTS
                    header.pointee.cmsg_len = CPerfettoIPC_CMSG_LEN(payload)
                    let data = UnsafeMutableRawPointer(CPerfettoIPC_CMSG_DATA(header)!)
                    for (index, fd) in fds.enumerated() { data.storeBytes(of: fd, toByteOffset: index * 4, as: Int32.self) }
                    return sendmsg(socket, &message, Int32(MSG_NOSIGNAL)) == byteCount
                }
            }
        }
    }
}

/// A fresh directory under /tmp, removed by `remove()`.
public struct TemporaryDirectory {
    public let path: String

    public init() {
        var template = Array("/tmp/perfetto-ipc-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) != nil }
        precondition(made, "mkdtemp failed")
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Pages of `[address, address + byteCount)` currently resident in memory (mincore).
public func residentPages(_ address: UnsafeRawPointer, byteCount: Int) -> Int {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let count = (byteCount + page - 1) / page
    var vector = [UInt8](repeating: 0, count: count)
    let rc = mincore(UnsafeMutableRawPointer(mutating: address), byteCount, &vector)
    precondition(rc == 0, "mincore failed")
    return vector.filter { $0 & 1 != 0 }.count
}
