// The epoll backend's transport is the shared POSIX socket transport on an EpollEventLoop.

@_exported import IPCSocketCore

/// POSIX stream sockets (unix files, `@abstract`, TCP, vsock) on an ``EpollEventLoop``.
public typealias UnixSocketTransport = POSIXSocketTransport
