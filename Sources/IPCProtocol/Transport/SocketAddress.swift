// Perfetto's address strings (../shared/DESIGN.md, "Addresses"):
//   /path or relative/path -> unix socket file
//   @name                  -> Linux abstract unix socket
//   host:port, [v6]:port   -> TCP
//   vsock://cid:port       -> vsock

/// A parsed socket address. Pure value: turning it into a `sockaddr` is the backend's job.
public enum SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// A unix socket file, absolute or relative to the working directory.
    case unixPath(String)
    /// A Linux abstract unix socket (no file), named without the leading `@`.
    case abstract(String)
    /// TCP to `host` (a name, IPv4 or IPv6 literal without brackets) and `port`.
    case tcp(host: String, port: UInt16)
    /// vsock to `cid` and `port`.
    case vsock(cid: UInt32, port: UInt32)

    /// Parses an address string.
    ///
    /// - Throws: ``IPCError/Code/invalidAddress`` with the reason.
    public init(parsing text: String) throws(IPCError) {
        func invalid(_ why: String) -> IPCError {
            IPCError(.invalidAddress, "cannot use address \"\(text)\": \(why)", address: text)
        }
        guard !text.isEmpty else { throw invalid("it is empty") }

        if text.hasPrefix("vsock://") {
            let rest = text.dropFirst("vsock://".count)
            let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let cid = UInt32(parts[0]), let port = UInt32(parts[1]) else {
                throw invalid("expected vsock://CID:PORT")
            }
            self = .vsock(cid: cid, port: port)
            return
        }
        if text.hasPrefix("@") {
            let name = String(text.dropFirst())
            guard !name.isEmpty else { throw invalid("abstract name is empty") }
            guard name.utf8.count <= Self.maxUnixPathLength - 1 else { throw invalid("abstract name is too long") }
            self = .abstract(name)
            return
        }
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":"),
                let port = UInt16(text[text.index(close, offsetBy: 2)...])
            else { throw invalid("expected [IPv6]:PORT") }
            self = .tcp(host: String(text[text.index(after: text.startIndex)..<close]), port: port)
            return
        }
        if !text.contains("/"), let colon = text.lastIndex(of: ":") {
            let host = text[..<colon]
            guard !host.isEmpty, !host.contains(":"), let port = UInt16(text[text.index(after: colon)...]) else {
                throw invalid("expected HOST:PORT")
            }
            self = .tcp(host: String(host), port: port)
            return
        }
        guard text.utf8.count < Self.maxUnixPathLength else {
            throw invalid("unix socket paths are limited to \(Self.maxUnixPathLength - 1) bytes")
        }
        guard !text.utf8.contains(0) else { throw invalid("it contains a NUL byte") }
        self = .unixPath(text)
    }

    /// Size of `sockaddr_un.sun_path` on Linux.
    public static let maxUnixPathLength = 108

    /// Whether peers at this address are local processes with kernel-checked credentials.
    public var isUnixDomain: Bool {
        switch self {
        case .unixPath, .abstract: return true
        case .tcp, .vsock: return false
        }
    }

    public var description: String {
        switch self {
        case .unixPath(let path): return path
        case .abstract(let name): return "@" + name
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .vsock(let cid, let port): return "vsock://\(cid):\(port)"
        }
    }
}
