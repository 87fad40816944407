// Backend choice in one value. Each backend module adds its constructors, so this module
// never imports a backend:
//
//   IPCUnixSocket:  .unixSocket("/run/echo.sock", loop: epollLoop)
//   IPCLibuv:       .libuv("/run/echo.sock", loop: uvLoop)
//   IPCInProcess:   .inProcess("echo", loop: anyLoop)    in-memory frames, no kernel
//                   .direct("echo", loop: anyLoop)       no frames at all
//
// The same value builds both ends:  IPCHost(backend: b)  and  IPCClient(backend: b).

/// Where a host listens or a client connects, and over which backend.
public struct IPCBackend: Sendable {
    package enum Kind: Sendable {
        /// Frames over a transport, at an address.
        case transport(any IPCTransport, address: String)
        /// Proxies call service implementations directly, found by name in a registry.
        case direct(any IPCDirectRegistry, name: String, loop: any IPCEventLoop)
    }

    package let kind: Kind
    /// Connection tunables (send timeout, buffer sizes, socket file mode).
    public var options: ConnectionOptions

    package init(_ kind: Kind, options: ConnectionOptions = .default) {
        self.kind = kind
        self.options = options
    }

    /// Frames over any transport at `address`: the constructor backends build on.
    public static func transport(_ transport: any IPCTransport, address: String, options: ConnectionOptions = .default) -> IPCBackend {
        IPCBackend(.transport(transport, address: address), options: options)
    }

    /// The loop hosts and clients made from this value live on.
    public var eventLoop: any IPCEventLoop {
        switch kind {
        case .transport(let transport, _): return transport.eventLoop
        case .direct(_, _, let loop): return loop
        }
    }

    /// The address or name, for messages.
    public var address: String {
        switch kind {
        case .transport(_, let address): return address
        case .direct(_, let name, _): return name
        }
    }
}

/// Where direct hosts are found by name (implemented by the in-process backend).
public protocol IPCDirectRegistry: AnyObject, Sendable {
    /// Makes `host` reachable as `name`. Throws `.addressInUse` if taken.
    func registerDirectHost(_ host: IPCHost, name: String) throws(IPCError)
    /// Removes `host` (if it is the one registered as `name`).
    func unregisterDirectHost(_ host: IPCHost, name: String)
    /// The host registered as `name`, if any.
    func directHost(named name: String) -> IPCHost?
}
