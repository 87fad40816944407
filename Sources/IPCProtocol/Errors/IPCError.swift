// The one error type of the package.
//
// A call fails with `IPCError`; so does every lifecycle step (listen, connect, send). The code
// says what kind of failure it is, the message says what happened in words, and for failures
// that came from the OS `errno` and the `address` involved are kept so the user can act on them.
// `Code` wraps a hidden enum so new codes can be added without breaking anybody's `switch`.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An error raised by the IPC layer or by one of its transports.
///
/// Compare ``code`` against the static members of ``IPCError/Code`` to tell failures apart:
///
/// ```swift
/// do { let reply = try await echo.echo(request) }
/// catch let error as IPCError where error.code == .disconnected { reconnect() }
/// ```
public struct IPCError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public var code: Code
    /// A human-readable account of what went wrong.
    public var message: String
    /// The OS error number, for failures of a system call.
    public var errno: Int32?
    /// The address involved (socket path, `host:port`, …), if any.
    public var address: String?

    /// Creates an error.
    public init(_ code: Code, _ message: String, errno: Int32? = nil, address: String? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.address = address
    }

    /// Creates an error for a failed system call, keeping `errno` and the call's name.
    public static func systemCall(
        _ call: String, errno: Int32, address: String? = nil, code: Code = .systemCallFailed
    ) -> IPCError {
        let reason = String(cString: strerror(errno))
        return IPCError(code, "\(call) failed: \(reason) (errno \(errno))", errno: errno, address: address)
    }

    public var description: String {
        var text = "IPCError.\(code): \(message)"
        if let address { text += " [address: \(address)]" }
        return text
    }
}

extension IPCError {
    /// The kind of an ``IPCError``. New codes may be added in minor releases.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case disconnected, connectionFailed, serviceNotFound, methodNotFound, remoteFailure
            case alreadyBound, frameTooLarge, protocolViolation, invalidAddress, addressInUse
            case systemCallFailed, sendTimeout, sendQueueFull, cancelled, invalidArgument
        }
        private let wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The connection went away (peer closed, reset, or we shut it down).
        public static let disconnected = Code(.disconnected)
        /// A connection attempt failed (nothing listening, refused, unreachable).
        public static let connectionFailed = Code(.connectionFailed)
        /// The host does not expose the service that was bound.
        public static let serviceNotFound = Code(.serviceNotFound)
        /// The bound service has no method of that name.
        public static let methodNotFound = Code(.methodNotFound)
        /// The host answered the call with `success = false`.
        public static let remoteFailure = Code(.remoteFailure)
        /// A service of the same name is already bound on this client.
        public static let alreadyBound = Code(.alreadyBound)
        /// A peer announced a frame larger than the receive buffer.
        public static let frameTooLarge = Code(.frameTooLarge)
        /// A peer sent something the protocol does not allow.
        public static let protocolViolation = Code(.protocolViolation)
        /// An address string could not be understood.
        public static let invalidAddress = Code(.invalidAddress)
        /// The address is already served by a live listener.
        public static let addressInUse = Code(.addressInUse)
        /// A system call failed; see ``IPCError/errno``.
        public static let systemCallFailed = Code(.systemCallFailed)
        /// Queued bytes did not drain within the connection's send timeout.
        public static let sendTimeout = Code(.sendTimeout)
        /// The per-connection send queue would exceed its bound.
        public static let sendQueueFull = Code(.sendQueueFull)
        /// The caller cancelled the operation.
        public static let cancelled = Code(.cancelled)
        /// An argument was out of range.
        public static let invalidArgument = Code(.invalidArgument)

        public var description: String { "\(wrapped)" }
    }
}
