// Numbers of the wire contract (../shared/DESIGN.md, "Wire contract").

/// Limits and sizes fixed by Perfetto's IPC wire format.
public enum WireLimits {
    /// Size of the little-endian length that precedes every frame.
    public static let frameHeaderSize = 4
    /// Default receive capacity of a connection, header included (Perfetto's
    /// `kIPCBufferSize`): the largest frame payload is this minus ``frameHeaderSize``.
    public static let defaultReceiveCapacity = 128 * 1024
    /// Largest payload a default-sized receiver accepts.
    public static var defaultMaxPayloadSize: Int { defaultReceiveCapacity - frameHeaderSize }
    /// How long a connection must stay quiet before its receive buffer's pages past the first
    /// go back to the OS. Not part of Perfetto's wire: our memory policy (idle connections
    /// hold one page; busy ones keep their pages warm).
    public static let idleReceiveBufferReleaseDelay: Duration = .milliseconds(500)
}

/// Perfetto's frame message, generated from `Protos/perfetto/ipc/wire_protocol.proto`.
public typealias IPCFrame = Perfetto_Protos_IPCFrame
