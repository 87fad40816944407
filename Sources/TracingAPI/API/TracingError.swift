// Errors of the tracing layer: typed, with a code to switch on and a message for humans.

/// A failure of the tracing service, a producer or a consumer.
public struct TracingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public var code: Code
    /// A human-readable explanation.
    public var message: String
    /// The `errno` of a failed system call, if any.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    public var description: String {
        var text = "\(code): \(message)"
        if let errno { text += " (errno \(errno))" }
        return text
    }

    /// Failure codes. New codes may be added: match the ones you handle and keep a default.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// A shared-memory buffer could not be created, mapped, or did not pass validation.
        public static let invalidSharedMemory = Code("invalidSharedMemory")
        /// A trace config or an argument was rejected.
        public static let invalidConfig = Code("invalidConfig")
        /// The operation is not allowed in the current state (e.g. no session, or one already enabled).
        public static let invalidState = Code("invalidState")
        /// A system call failed; see ``TracingError/errno``.
        public static let systemCallFailed = Code("systemCallFailed")
        /// The endpoint is disconnected.
        public static let disconnected = Code("disconnected")
        /// Writing the trace file failed.
        public static let fileWriteFailed = Code("fileWriteFailed")

        public var description: String { name }
    }
}
