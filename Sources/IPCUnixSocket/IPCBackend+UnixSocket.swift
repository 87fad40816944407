// The unix-socket backend as a one-value choice.

import IPCProtocol

extension IPCBackend {
    /// Frames over POSIX stream sockets at `address` (`/path`, `@abstract`, `host:port`,
    /// `[v6]:port`, `vsock://cid:port`), on an epoll `loop`.
    public static func unixSocket(_ address: String, loop: EpollEventLoop, options: ConnectionOptions = .default) -> IPCBackend {
        .transport(UnixSocketTransport(loop: loop), address: address, options: options)
    }
}
