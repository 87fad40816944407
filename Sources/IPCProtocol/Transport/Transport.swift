// The transport seam: how Host and Client reach peers, without knowing the backend.
//
// Every call here is loop-only (see IPCEventLoop), and every callback arrives on the loop.
// A connection result is never delivered inline from `connect`: it arrives in a later loop
// turn, so callers can finish setting up first.

/// Creates listeners and outgoing connections on one event loop.
///
/// Backends provide it: `UnixSocketTransport`, `LibuvTransport`, `InProcessTransport`.
public protocol IPCTransport: AnyObject, Sendable {
    /// The loop every listener and connection of this transport lives on.
    var eventLoop: any IPCEventLoop { get }

    /// Starts accepting connections at `address`. Loop-only.
    ///
    /// - Throws: ``IPCError`` (`.invalidAddress`, `.addressInUse`, `.systemCallFailed`, …).
    func listen(
        at address: String, options: ConnectionOptions, delegate: any IPCListenerDelegate
    ) throws(IPCError) -> any IPCListener

    /// Starts connecting to `address`; the result arrives on `delegate`. Loop-only.
    ///
    /// Never fails inline: even an unparsable address is reported through
    /// ``IPCConnectionDelegate/connection(_:didFailToConnect:)`` in a later loop turn.
    /// Keep the returned connection: releasing it closes it, with no callback.
    func connect(
        to address: String, options: ConnectionOptions, delegate: any IPCConnectionDelegate
    ) -> any IPCConnection
}

/// A bound, listening endpoint.
public protocol IPCListener: AnyObject {
    /// The address actually listened on (a TCP port 0 is replaced by the real port).
    var address: String { get }
    /// Stops accepting and releases the endpoint (a socket file we created is removed).
    /// Already accepted connections are not affected. Loop-only; idempotent.
    func close()
}

/// Receives new connections from a listener.
public protocol IPCListenerDelegate: AnyObject {
    /// A peer connected. Set the connection's delegate before returning, or its first bytes
    /// are discarded.
    func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection)

    /// A waiting peer could not be accepted (the process is out of file descriptors, or the
    /// kernel out of memory). Peers stay queued and the listener tries again shortly; this is
    /// reported once, and again only after an accept has succeeded in between.
    func listener(_ listener: any IPCListener, didFailToAccept error: IPCError)
}

extension IPCListenerDelegate {
    /// Ignores the failure: the listener goes on trying.
    public func listener(_ listener: any IPCListener, didFailToAccept error: IPCError) {}
}

/// The lifecycle of a connection.
public enum ConnectionState: Sendable, Hashable {
    case connecting
    case connected
    case disconnected
}

/// A byte-stream connection that can carry one file descriptor per send.
public protocol IPCConnection: AnyObject {
    /// Receives this connection's events. Held weakly.
    var delegate: (any IPCConnectionDelegate)? { get set }

    /// Where the connection is in its lifecycle.
    var state: ConnectionState { get }

    /// Who is on the other end. Kept after the connection closes.
    var peer: PeerIdentity { get }

    /// Queues `bytes` for the peer, with `fd` attached to the first byte. Loop-only.
    ///
    /// The connection does not take `fd`: it duplicates it if it cannot send at once.
    /// Returns `false` if the connection is not connected or has just failed; the failure
    /// is then reported through ``IPCConnectionDelegate/connection(_:didDisconnect:)``.
    @discardableResult
    func send(_ bytes: UnsafeRawBufferPointer, fd: Int32?) -> Bool

    /// Like ``send(_:fd:)`` for `bytes[range]`, handing the array over: a transport that keeps
    /// what it sends (the in-memory one) keeps the array instead of copying it. The default
    /// sends the bytes with ``send(_:fd:)``.
    @discardableResult
    func send(owning bytes: consuming [UInt8], range: Range<Int>, fd: Int32?) -> Bool

    /// Closes the connection now. The delegate is not called back. Loop-only; idempotent.
    func close()

    /// Bytes sent but not yet taken by the peer (the kernel's socket buffer aside). Loop-only.
    ///
    /// A sender with much to say (a service streaming a large reply) waits for this to fall
    /// before it sends more, instead of passing ``ConnectionOptions/maxQueuedSendBytes``. The
    /// default is 0: a transport that never queues.
    var queuedSendBytes: Int { get }

    /// Calls `callback` once, on the loop, when ``queuedSendBytes`` has fallen to zero (on a
    /// later turn if it is zero now), unless the connection closes first. Returns false when the
    /// transport cannot tell: the caller then looks at ``queuedSendBytes`` again later. The
    /// default returns false.
    func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool

    /// Stops (`true`) or resumes (`false`) reading from the peer. While paused nothing is
    /// received: the peer's bytes wait in the kernel and its sends back up in its own socket,
    /// which slows it down (flow control for a connection whose bytes go on to a slower one).
    /// Returns false when the connection is not connected or the transport cannot pause; the
    /// default returns false. Loop-only.
    @discardableResult
    func setReadingPaused(_ paused: Bool) -> Bool
}

extension IPCConnection {
    public var queuedSendBytes: Int { 0 }

    public func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool { false }

    @discardableResult
    public func setReadingPaused(_ paused: Bool) -> Bool { false }

    @discardableResult
    public func send(owning bytes: consuming [UInt8], range: Range<Int>, fd: Int32?) -> Bool {
        bytes.withUnsafeBytes { send(UnsafeRawBufferPointer(rebasing: $0[range]), fd: fd) }
    }

    /// Sends `bytes` with no file descriptor.
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { send($0, fd: nil) }
    }
}

/// Receives a connection's events, on its loop.
///
/// Received bytes are written straight into space the delegate provides (for the IPC layer,
/// the free tail of its ``FrameDeserializer``), so nothing is copied on the way in.
public protocol IPCConnectionDelegate: AnyObject {
    /// The connection is established and ``IPCConnection/peer`` is known.
    func connectionDidConnect(_ connection: any IPCConnection)

    /// A connection attempt failed. No other callback follows.
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError)

    /// An established connection ended: `error` is `nil` for an orderly close by the peer.
    /// Not called after ``IPCConnection/close()``.
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?)

    /// Space to receive the next bytes into. Must not be empty.
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer

    /// `byteCount` bytes were written at the start of the last ``receiveSpace(for:)``.
    /// `fileDescriptor` arrived with them; unless the delegate keeps it, it is closed.
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?)
}

/// Tunables applied to a connection (and to every connection a listener accepts).
public struct ConnectionOptions: Sendable, Hashable {
    /// How long queued bytes may wait for a peer that does not read. When it passes with
    /// bytes still queued, the connection is dropped and the disconnect reported.
    /// `.zero` makes `send` block the loop until everything is written (client-side option).
    public var sendTimeout: Duration = .seconds(10)
    /// The most bytes a connection may hold queued for a slow peer before it is dropped.
    public var maxQueuedSendBytes: Int = 16 * 1024 * 1024
    /// `SO_SNDBUF`, if set.
    public var socketSendBufferSize: Int?
    /// `SO_RCVBUF`, if set.
    public var socketReceiveBufferSize: Int?
    /// Unix socket files only: the file's mode (e.g. `0o660`), applied atomically at bind.
    public var socketFileMode: UInt32?

    public init() {}

    /// The defaults: 10 s send timeout, 16 MiB send queue, kernel buffer sizes.
    public static var `default`: ConnectionOptions { ConnectionOptions() }
}

/// Who is on the other end of a connection.
public struct PeerIdentity: Sendable, Hashable, CustomStringConvertible {
    /// The peer's user id (`SO_PEERCRED` on unix sockets), if known.
    public var uid: UInt32?
    /// The peer's process id, if known.
    public var pid: Int32?
    /// The peer's group id, if known.
    public var gid: UInt32?
    /// For remote (TCP, vsock) peers, their address as `host:port` / `vsock://cid:port`.
    public var remoteAddress: String?

    public init(uid: UInt32? = nil, pid: Int32? = nil, gid: UInt32? = nil, remoteAddress: String? = nil) {
        self.uid = uid
        self.pid = pid
        self.gid = gid
        self.remoteAddress = remoteAddress
    }

    /// Whether the peer is on this machine with kernel-verified credentials.
    public var isLocal: Bool { remoteAddress == nil }

    public var description: String {
        if let remoteAddress { return "remote peer \(remoteAddress)" }
        return "peer pid=\(pid.map(String.init) ?? "?") uid=\(uid.map(String.init) ?? "?")"
    }
}
