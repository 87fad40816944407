// sendmsg/recvmsg with SCM_RIGHTS, as the wire contract wants it:
// * an fd travels with the first sendmsg of the bytes it belongs to;
// * we receive with room for a few fds and MSG_CMSG_CLOEXEC; the first fd is kept, any extra
//   ones are closed; a truncated control message (more fds than room) is an error: every fd
//   that did arrive is closed and the caller drops the connection.

import CPerfettoIPCLinux
import Glibc
import IPCProtocol

enum FDPassing {
    /// How many fds one recvmsg makes room for. More than this is a truncation error.
    static let maxReceivedFDs = 8

    /// Sends `bytes` (some of them, as the kernel allows), attaching `fd` if not nil.
    static func send(
        _ socket: Int32, _ bytes: UnsafeRawBufferPointer, fd: Int32?, blocking: Bool, address: String
    ) throws(IPCError) -> IOResult<Int> {
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        let flags = Int32(MSG_NOSIGNAL) | (blocking ? 0 : Int32(MSG_DONTWAIT))
        return try withUnsafeMutablePointer(to: &iov) { iovPointer throws(IPCError) in
            var message = msghdr()
            message.msg_iov = iovPointer
            message.msg_iovlen = 1
            guard let fd else {
                return try Syscall.nonBlocking("sendmsg", address: address) { Glibc.sendmsg(socket, &message, flags) }
                    .map { Int($0) }
            }
            let space = CPerfettoIPC_CMSG_SPACE(MemoryLayout<Int32>.size)
            return try withUnsafeTemporaryAllocation(byteCount: space, alignment: 8) { control throws(IPCError) in
                control.initializeMemory(as: UInt8.self, repeating: 0)
                message.msg_control = control.baseAddress
                message.msg_controllen = space
                let header = CPerfettoIPC_CMSG_FIRSTHDR(&message)!
                header.pointee.cmsg_level = SOL_SOCKET
                header.pointee.cmsg_type = CPerfettoIPC_SCM_RIGHTS
                header.pointee.cmsg_len = CPerfettoIPC_CMSG_LEN(MemoryLayout<Int32>.size)
                UnsafeMutableRawPointer(CPerfettoIPC_CMSG_DATA(header)!).storeBytes(of: fd, as: Int32.self)
                return try Syscall.nonBlocking("sendmsg(SCM_RIGHTS)", address: address) {
                    Glibc.sendmsg(socket, &message, flags)
                }.map { Int($0) }
            }
        }
    }

    /// The result of one receive.
    struct Received {
        var byteCount: Int
        var fd: ScopedFD?
    }

    /// Receives into `space`. A byte count of 0 means end of stream.
    static func receive(
        _ socket: Int32, into space: UnsafeMutableRawBufferPointer, address: String
    ) throws(IPCError) -> IOResult<Received> {
        var iov = iovec(iov_base: space.baseAddress, iov_len: space.count)
        let controlSpace = CPerfettoIPC_CMSG_SPACE(maxReceivedFDs * MemoryLayout<Int32>.size)
        return try withUnsafeMutablePointer(to: &iov) { iovPointer throws(IPCError) in
            try withUnsafeTemporaryAllocation(byteCount: controlSpace, alignment: 8) { control throws(IPCError) in
                var message = msghdr()
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = controlSpace
                let flags = CPerfettoIPC_MSG_CMSG_CLOEXEC | Int32(MSG_DONTWAIT)
                let result = try Syscall.nonBlocking("recvmsg", address: address) {
                    Glibc.recvmsg(socket, &message, flags)
                }
                guard case .processed(let count) = result else { return .wouldBlock }
                let fds = collectFDs(&message)
                if message.msg_flags & Int32(MSG_CTRUNC) != 0 {
                    fds.forEach { Syscall.close($0) }
                    throw IPCError(
                        .protocolViolation,
                        "peer sent more than \(maxReceivedFDs) file descriptors in one message (control data truncated)",
                        address: address)
                }
                fds.dropFirst().forEach { Syscall.close($0) }
                return .processed(Received(byteCount: Int(count), fd: fds.first.map(ScopedFD.init)))
            }
        }
    }

    /// Every fd in the SCM_RIGHTS control messages of `message`.
    private static func collectFDs(_ message: inout msghdr) -> [Int32] {
        guard message.msg_controllen > 0 else { return [] }
        var fds: [Int32] = []
        var header = CPerfettoIPC_CMSG_FIRSTHDR(&message)
        while let current = header {
            if current.pointee.cmsg_level == SOL_SOCKET, current.pointee.cmsg_type == CPerfettoIPC_SCM_RIGHTS {
                let payload = Int(current.pointee.cmsg_len) - CPerfettoIPC_CMSG_LEN(0)
                let data = UnsafeRawPointer(CPerfettoIPC_CMSG_DATA(current)!)
                for index in 0..<(payload / MemoryLayout<Int32>.size) {
                    fds.append(data.loadUnaligned(fromByteOffset: index * 4, as: Int32.self))
                }
            }
            header = CPerfettoIPC_CMSG_NXTHDR(&message, current)
        }
        return fds
    }
}

extension IOResult {
    func map<U>(_ transform: (Value) -> U) -> IOResult<U> {
        switch self {
        case .processed(let value): return .processed(transform(value))
        case .wouldBlock: return .wouldBlock
        }
    }
}
