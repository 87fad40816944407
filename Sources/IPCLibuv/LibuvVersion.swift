// The libuv backend starts here: the event loop and transport on uv_loop_t land with their
// own issue. For now the module links the system libuv and reports which one it found.

import CLibuv

/// The libuv library this module was linked against.
public enum LibuvVersion {
    /// libuv's version as `major.minor.patch`, e.g. `"1.44.2"`.
    public static var string: String {
        let version = uv_version()
        return "\(version >> 16 & 0xFF).\(version >> 8 & 0xFF).\(version & 0xFF)"
    }
}
