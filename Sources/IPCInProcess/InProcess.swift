// The in-process backend (in-memory transport, deterministic loop, direct short circuit)
// lands with its own issue. This namespace marks the module's public entry point.

import IPCProtocol

/// Namespace of the in-process backend.
public enum InProcess {
    /// The largest frame payload an in-process connection accepts, as on real sockets.
    public static let maxPayloadSize = WireLimits.defaultMaxPayloadSize
}
