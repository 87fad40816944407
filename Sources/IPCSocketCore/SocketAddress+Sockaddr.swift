// Turning a parsed SocketAddress into a kernel sockaddr, and back for display.

import CPerfettoIPCLinux
import Glibc
import IPCProtocol

/// A sockaddr ready for bind/connect.
struct KernelSocketAddress {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: Int32 = 0

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(IPCError) -> R) throws(IPCError) -> R {
        var copy = storage
        return try withUnsafePointer(to: &copy) { pointer throws(IPCError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { addr throws(IPCError) in
                try body(addr, length)
            }
        }
    }
}

extension SocketAddress {
    /// Resolves to a sockaddr. TCP host names are looked up with getaddrinfo (blocking; use
    /// numeric addresses on latency-sensitive paths).
    func kernelAddress() throws(IPCError) -> KernelSocketAddress {
        var result = KernelSocketAddress()
        switch self {
        case .unixPath(let path):
            result.family = AF_UNIX
            result.length = Self.fillUnix(&result.storage, bytes: Array(path.utf8), abstract: false)
        case .abstract(let name):
            result.family = AF_UNIX
            result.length = Self.fillUnix(&result.storage, bytes: Array(name.utf8), abstract: true)
        case .vsock(let cid, let port):
            result.family = AF_VSOCK
            var vm = sockaddr_vm()
            vm.svm_family = sa_family_t(AF_VSOCK)
            vm.svm_cid = cid
            vm.svm_port = port
            withUnsafeMutableBytes(of: &result.storage) { storage in
                withUnsafeBytes(of: &vm) { storage.copyMemory(from: $0) }
            }
            result.length = socklen_t(MemoryLayout<sockaddr_vm>.size)
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host, String(port), &hints, &list)
            guard rc == 0, let first = list else {
                let reason = rc == 0 ? "no address" : String(cString: gai_strerror(rc))
                throw IPCError(.invalidAddress, "cannot resolve \(host): \(reason)", address: description)
            }
            defer { freeaddrinfo(list) }
            result.family = first.pointee.ai_family
            result.length = first.pointee.ai_addrlen
            withUnsafeMutableBytes(of: &result.storage) { storage in
                storage.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
            }
        }
        return result
    }

    /// Fills a sockaddr_un; an abstract name gets a leading NUL and no trailing one, and the
    /// returned length covers exactly the name (Linux semantics).
    private static func fillUnix(_ storage: inout sockaddr_storage, bytes: [UInt8], abstract: Bool) -> socklen_t {
        var un = sockaddr_un()
        un.sun_family = sa_family_t(AF_UNIX)
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        withUnsafeMutableBytes(of: &un.sun_path) { path in
            let start = abstract ? 1 : 0
            path.baseAddress!.advanced(by: start).copyMemory(from: bytes, byteCount: bytes.count)
        }
        withUnsafeMutableBytes(of: &storage) { storage in
            withUnsafeBytes(of: &un) { storage.copyMemory(from: $0) }
        }
        let length = abstract ? pathOffset + 1 + bytes.count : pathOffset + bytes.count + 1
        return socklen_t(length)
    }
}

/// `host:port` / `[v6]:port` / `vsock://cid:port` of a connected or bound socket's address.
func describeSocketAddress(fd: Int32, peer: Bool) -> String? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &storage) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length)
        }
    }
    guard rc == 0 else { return nil }
    switch Int32(storage.ss_family) {
    case AF_INET:
        return withUnsafeBytes(of: &storage) { raw in
            var addr = raw.load(as: sockaddr_in.self)
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            inet_ntop(AF_INET, &addr.sin_addr, &text, socklen_t(text.count))
            return "\(cText(text)):\(UInt16(bigEndian: addr.sin_port))"
        }
    case AF_INET6:
        return withUnsafeBytes(of: &storage) { raw in
            var addr = raw.load(as: sockaddr_in6.self)
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &addr.sin6_addr, &text, socklen_t(text.count))
            return "[\(cText(text))]:\(UInt16(bigEndian: addr.sin6_port))"
        }
    case AF_VSOCK:
        return withUnsafeBytes(of: &storage) { raw in
            let addr = raw.load(as: sockaddr_vm.self)
            return "vsock://\(addr.svm_cid):\(addr.svm_port)"
        }
    default:
        return nil
    }
}

private func cText(_ chars: [CChar]) -> String {
    String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
