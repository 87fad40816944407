// 64-bit FNV-1a, the hash Perfetto uses where the wire or the trace needs one: machine ids from
// a relay's hint, track uuids from names, the trace filter bytecode's checksum. One copy for the
// package's modules.

/// 64-bit FNV-1a over bytes, fed in as many pieces as convenient.
package struct FNV1a {
    package private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    package init() {}

    @inlinable
    package mutating func combine(_ bytes: UnsafeRawBufferPointer) {
        for byte in bytes {
            value ^= UInt64(byte)
            value = value &* 0x0000_0100_0000_01b3
        }
    }

    /// Hashes `item`'s bytes as they lie in memory (what Perfetto's FnvHasher does with a
    /// number: little endian here).
    @inlinable
    package mutating func combine<T>(value item: T) {
        withUnsafeBytes(of: item) { combine($0) }
    }

    /// The hash of `string`'s UTF-8 bytes.
    package static func hash(_ string: String) -> UInt64 {
        var hasher = FNV1a()
        var copy = string
        copy.withUTF8 { hasher.combine(UnsafeRawBufferPointer($0)) }
        return hasher.value
    }
}
