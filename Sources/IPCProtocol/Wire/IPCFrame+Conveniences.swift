// Readable names over the generated frame type.

extension IPCFrame.InvokeMethodReply {
    /// `has_more`: more replies for the same request follow (streaming).
    public var hasMore: Bool {
        get { hasMore_p }
        set { hasMore_p = newValue }
    }
}
