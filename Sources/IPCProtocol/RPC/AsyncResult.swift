// The value a reply callback receives: a reply message or a rejection, whether more replies
// follow (streaming), and the file descriptor that came with it, if any.

/// The outcome of one reply to a call: Perfetto's `AsyncResult`.
///
/// A streaming call delivers several results with ``hasMore`` set, then a last one without.
/// A rejected result (``message`` is `nil`) is always the last.
public struct AsyncResult<Message> {
    /// The reply, or `nil` when the call was rejected.
    public var message: Message?
    /// Whether more replies follow for the same call.
    public var hasMore: Bool
    /// A file descriptor that came with the reply. Take it with `release()` to keep it;
    /// otherwise it is closed when the last reference goes away.
    public var fileDescriptor: ScopedFD?
    /// Why the call was rejected, when it was.
    public var error: IPCError?

    /// A successful reply.
    public init(_ message: Message, hasMore: Bool = false, fileDescriptor: ScopedFD? = nil) {
        self.message = message
        self.hasMore = hasMore
        self.fileDescriptor = fileDescriptor
        self.error = nil
    }

    /// A rejection. Never has more.
    public static func rejected(_ error: IPCError) -> AsyncResult {
        AsyncResult(message: nil, hasMore: false, fileDescriptor: nil, error: error)
    }

    private init(message: Message?, hasMore: Bool, fileDescriptor: ScopedFD?, error: IPCError?) {
        self.message = message
        self.hasMore = hasMore
        self.fileDescriptor = fileDescriptor
        self.error = error
    }

    /// Whether this is a reply rather than a rejection.
    public var isSuccess: Bool { message != nil }

    /// The reply, or the rejection as an error.
    public func get() throws(IPCError) -> Message {
        if let message { return message }
        throw error ?? IPCError(.remoteFailure, "the call was rejected")
    }
}

/// A reply as a client hands it to the decoder of a pending call: the reply's bytes, borrowed
/// from the receive buffer (valid only during the call), or why the call was rejected.
@usableFromInline
struct RawReply {
    /// The encoded reply, or nil when rejected.
    @usableFromInline let bytes: UnsafeRawBufferPointer?
    @usableFromInline let hasMore: Bool
    @usableFromInline let fileDescriptor: ScopedFD?
    @usableFromInline let error: IPCError?

    init(bytes: UnsafeRawBufferPointer, hasMore: Bool, fileDescriptor: ScopedFD?) {
        self.bytes = bytes
        self.hasMore = hasMore
        self.fileDescriptor = fileDescriptor
        error = nil
    }

    init(rejectedWith error: IPCError) {
        bytes = nil
        hasMore = false
        fileDescriptor = nil
        self.error = error
    }
}
