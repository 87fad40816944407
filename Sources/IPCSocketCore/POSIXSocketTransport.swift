// POSIX stream sockets on any IPCEventLoop that can watch file descriptors: the transport of
// the epoll backend (IPCUnixSocket) and of the libuv backend (IPCLibuv), so both speak the
// wire identically by construction. Only the loop differs.

import CPerfettoIPCLinux
import Glibc
import IPCProtocol

/// Listens and connects over unix sockets (files and `@abstract`), TCP and vsock, on one
/// event loop that can watch file descriptors (`EpollEventLoop`, `LibuvEventLoop`).
///
/// ```swift
/// let loop = try EpollEventLoop.startOnNewThread()
/// let transport = UnixSocketTransport(loop: loop)
/// ```
///
/// All methods are loop-only (post to the loop with `loop.execute` from other threads).
public final class POSIXSocketTransport: IPCTransport, @unchecked Sendable {
    // @unchecked Sendable: immutable; every method checks it runs on `loop`.
    public let loop: any IPCEventLoop
    public var eventLoop: any IPCEventLoop { loop }

    /// Creates a transport on `loop`.
    public init(loop: any IPCEventLoop) {
        self.loop = loop
    }

    public func listen(
        at address: String, options: ConnectionOptions = .default, delegate: any IPCListenerDelegate
    ) throws(IPCError) -> any IPCListener {
        loop.preconditionInEventLoop()
        let parsed = try SocketAddress(parsing: address)
        let kernelAddress = try parsed.kernelAddress()
        let fd = try makeSocket(family: kernelAddress.family, address: address)
        do {
            var socketFile: SocketFile?
            var actualAddress = address
            switch parsed {
            case .unixPath(let path):
                socketFile = try bindSocketFile(fd, path: path, mode: options.socketFileMode, address: address)
            default:
                if case .tcp = parsed {
                    try Syscall.setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, name: "SO_REUSEADDR")
                }
                _ = try kernelAddress.withSockaddr { addr, length throws(IPCError) in
                    try Syscall.retrying("bind", address: address) { bind(fd, addr, length) }
                }
                _ = try Syscall.retrying("listen", address: address) { Glibc.listen(fd, SOMAXCONN) }
                if case .tcp = parsed, let bound = describeSocketAddress(fd: fd, peer: false) {
                    actualAddress = bound
                }
            }
            return try SocketListener(
                fd: fd, address: actualAddress, socketFile: socketFile, isUnixDomain: parsed.isUnixDomain,
                options: options, loop: loop, delegate: delegate)
        } catch {
            Syscall.close(fd)
            throw error
        }
    }

    public func connect(
        to address: String, options: ConnectionOptions = .default, delegate: any IPCConnectionDelegate
    ) -> any IPCConnection {
        loop.preconditionInEventLoop()
        do {
            let parsed = try SocketAddress(parsing: address)
            let kernelAddress = try parsed.kernelAddress()
            let fd = try makeSocket(family: kernelAddress.family, address: address)
            let connection = SocketConnection(
                fd: fd, state: .connecting, address: address, isUnixDomain: parsed.isUnixDomain,
                options: options, loop: loop)
            connection.delegate = delegate
            if case .tcp = parsed {
                try Syscall.setSocketOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, name: "TCP_NODELAY")
            }
            let rc = kernelAddress.withSockaddrNoThrow { Glibc.connect(fd, $0, $1) }
            let error = rc == 0 ? 0 : errno
            if error == 0 || error == EINPROGRESS || error == EINTR {
                // Completion (immediate for unix sockets) is seen on a later loop turn as
                // writability, so the result is never delivered inline.
                try connection.awaitConnectCompletion()
            } else {
                connection.reportConnectFailureLater(
                    IPCError.systemCall("connect", errno: error, address: address, code: .connectionFailed))
            }
            return connection
        } catch {
            let failed = FailedConnection(loop: loop, delegate: delegate)
            failed.reportLater(error)
            return failed
        }
    }

    /// Takes over an fd that is already listening (socket activation, or a socket inherited
    /// from a parent). It is made non-blocking and close-on-exec; the listener owns it.
    public func adoptListener(
        fd: Int32, options: ConnectionOptions = .default, delegate: any IPCListenerDelegate
    ) throws(IPCError) -> any IPCListener {
        loop.preconditionInEventLoop()
        try Syscall.makeNonBlockingAndCloseOnExec(fd)
        let address = describeSocketAddress(fd: fd, peer: false) ?? "fd:\(fd)"
        return try SocketListener(
            fd: fd, address: address, socketFile: nil, isUnixDomain: Self.isUnixDomain(fd),
            options: options, loop: loop, delegate: delegate)
    }

    /// Takes over an fd that is already connected (e.g. one end of a `socketpair`). The
    /// returned connection is connected at once; give it a delegate (or hand it to
    /// `IPCHost.adopt` / `IPCClient(connection:)`, which set their own) before the loop runs.
    public func adoptConnection(
        fd: Int32, options: ConnectionOptions = .default, delegate: (any IPCConnectionDelegate)? = nil
    ) throws(IPCError) -> any IPCConnection {
        loop.preconditionInEventLoop()
        try Syscall.makeNonBlockingAndCloseOnExec(fd)
        let connection = SocketConnection(
            fd: fd, state: .connecting, address: describeSocketAddress(fd: fd, peer: true) ?? "fd:\(fd)",
            isUnixDomain: Self.isUnixDomain(fd), options: options, loop: loop)
        connection.delegate = delegate
        try connection.becomeConnected()
        return connection
    }

    // MARK: Helpers

    private func makeSocket(family: Int32, address: String) throws(IPCError) -> Int32 {
        try Syscall.retrying("socket", address: address) {
            socket(family, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
        }
    }

    private static func isUnixDomain(_ fd: Int32) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return rc == 0 && Int32(storage.ss_family) == AF_UNIX
    }

    /// Binds `fd` at `path` without stealing a live socket of ours, replacing a stale one or
    /// another user's, with the file mode applied before the path becomes visible. Returns the
    /// file it made.
    private func bindSocketFile(_ fd: Int32, path: String, mode: UInt32?, address: String) throws(IPCError) -> SocketFile {
        try clearPath(path, address: address)
        // Bind a private name in the same directory, then link it into place: atomic, and a
        // socket another service put there since the check above is not replaced.
        let temporary = path + ".tmp\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard temporary.utf8.count < SocketAddress.maxUnixPathLength else {
            // No room for a temporary name: bind in place (mode applied right after).
            try bindAndListen(fd, path: path, address: address)
            if let mode { chmod(path, mode_t(mode)) }
            return try SocketFile(boundAt: path, address: address)
        }
        try bindAndListen(fd, path: temporary, address: address)
        defer { unlink(temporary) }
        if let mode, chmod(temporary, mode_t(mode)) != 0 {
            throw IPCError.systemCall("chmod", errno: errno, address: address)
        }
        let temporaryFile = try SocketFile(boundAt: temporary, address: address)
        // The same file under its final name, once linked (or renamed) there.
        let file = SocketFile(path: path, device: temporaryFile.device, inode: temporaryFile.inode)
        // Someone may put a file at the path between the check and the link: it gets the same
        // check again (a squatter racing us is replaced a few times, then reported).
        for attempt in 0..<3 {
            if link(temporary, path) == 0 { return file }
            let error = errno
            if error != EEXIST {
                // A file system without hard links: replace whatever is there, as rename does.
                guard rename(temporary, path) == 0 else { throw IPCError.systemCall("link", errno: error, address: address) }
                return file
            }
            if attempt < 2 { try clearPath(path, address: address) }
        }
        throw IPCError(.addressInUse, "another process keeps binding \(path) while this one does", errno: EADDRINUSE, address: address)
    }

    /// Makes room at `path` for a socket file. Nothing there: done. Another user's file
    /// (whatever it is): removed, as traced removes what is at its paths; in a directory
    /// everyone may write (/tmp), anyone could otherwise keep the service from starting, or
    /// listen there in its place and take its clients. Our own: a stale socket (nothing
    /// accepts) is removed; a live one is another listener of ours (`addressInUse`); anything
    /// else is left alone and reported (a path given by mistake).
    private func clearPath(_ path: String, address: String) throws(IPCError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if info.st_uid != geteuid() {
            guard unlink(path) == 0 else {
                let error = errno
                throw IPCError(
                    .addressInUse,
                    "\(path) belongs to uid \(info.st_uid), and this process may not remove it (\(String(cString: strerror(error))))",
                    errno: error, address: address)
            }
            return
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw IPCError(.addressInUse, "\(path) exists and is not a socket", address: address)
        }
        if try isLiveSocket(at: path) {
            throw IPCError(.addressInUse, "another process is listening at \(path)", errno: EADDRINUSE, address: address)
        }
    }

    private func bindAndListen(_ fd: Int32, path: String, address: String) throws(IPCError) {
        let kernelAddress = try SocketAddress.unixPath(path).kernelAddress()
        _ = try kernelAddress.withSockaddr { addr, length throws(IPCError) in
            try Syscall.retrying("bind", address: address) { bind(fd, addr, length) }
        }
        _ = try Syscall.retrying("listen", address: address) { Glibc.listen(fd, SOMAXCONN) }
    }

    /// Whether something accepts connections at the socket file `path`; a socket file nobody
    /// listens on is stale and removed.
    private func isLiveSocket(at path: String) throws(IPCError) -> Bool {
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { throw IPCError.systemCall("socket", errno: errno, address: path) }
        defer { Syscall.close(probe) }
        let kernelAddress = try SocketAddress.unixPath(path).kernelAddress()
        let rc = kernelAddress.withSockaddrNoThrow { Glibc.connect(probe, $0, $1) }
        if rc == 0 { return true }
        if errno == ECONNREFUSED {
            unlink(path)
            return false
        }
        return false
    }
}

extension KernelSocketAddress {
    func withSockaddrNoThrow<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var copy = storage
        return withUnsafePointer(to: &copy) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

extension SocketConnection {
    /// Reports a connect that failed synchronously, on the next loop turn.
    func reportConnectFailureLater(_ error: IPCError) {
        let box = UncheckedSendableBox(self)
        loop.execute { box.value.failConnecting(error) }
    }
}

/// Stands in for a connection whose address was unusable, so `connect` can still report the
/// failure through the delegate on a later loop turn.
final class FailedConnection: IPCConnection {
    /// Held weakly, without giving the delegate a side table (IPCProtocol's Weak.swift).
    var delegate: (any IPCConnectionDelegate)? {
        get { delegateStorage.delegate }
        set { delegateStorage.delegate = newValue }
    }
    private let delegateStorage = WeakConnectionDelegate()
    var state: ConnectionState = .connecting
    let peer = PeerIdentity()
    private let loop: any IPCEventLoop

    init(loop: any IPCEventLoop, delegate: any IPCConnectionDelegate) {
        self.loop = loop
        self.delegate = delegate
    }

    func reportLater(_ error: IPCError) {
        let box = UncheckedSendableBox(self)
        loop.execute {
            let connection = box.value
            guard connection.state == .connecting else { return }
            connection.state = .disconnected
            connection.delegate?.connection(connection, didFailToConnect: error)
        }
    }

    func send(_ bytes: UnsafeRawBufferPointer, fd: Int32?) -> Bool { false }
    func close() {
        state = .disconnected
        delegate = nil
    }
}
