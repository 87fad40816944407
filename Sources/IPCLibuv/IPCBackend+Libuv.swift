// The libuv backend as a one-value choice.

@_exported import IPCSocketCore
import IPCProtocol

/// POSIX stream sockets watched by libuv (`uv_poll_t`): the same transport as the epoll backend,
/// on a ``LibuvEventLoop``.
public typealias LibuvTransport = POSIXSocketTransport

extension IPCBackend {
    /// Frames over POSIX stream sockets at `address`, on a libuv `loop` (its own, or the
    /// application's adopted with `LibuvEventLoop(adopting:)`).
    public static func libuv(_ address: String, loop: LibuvEventLoop, options: ConnectionOptions = .default) -> IPCBackend {
        .transport(POSIXSocketTransport(loop: loop), address: address, options: options)
    }
}
