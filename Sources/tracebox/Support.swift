// Small helpers of the tracebox commands: quantities as people type them, whole-file reads and
// writes, the monotonic clock, what a connection error means.

import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

enum Quantities {
    /// `10s`, `500ms`, `1m`, `2h`, or a bare number of seconds.
    static func milliseconds(_ text: String) -> UInt32? {
        let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let value = Double(text.dropLast(suffix.count)), value >= 0 else { return nil }
            return UInt32(exactly: (value * scale).rounded())
        }
        return Double(text).flatMap { UInt32(exactly: ($0 * 1000).rounded()) }
    }

    /// `64mb`, `512kb`, `1gb`, or a bare number of kilobytes.
    static func kilobytes(_ text: String) -> UInt32? {
        let lower = text.lowercased()
        let units: [(String, Double)] = [("kb", 1), ("mb", 1024), ("gb", 1024 * 1024), ("k", 1), ("m", 1024), ("g", 1024 * 1024)]
        for (suffix, scale) in units where lower.hasSuffix(suffix) {
            guard let value = Double(lower.dropLast(suffix.count)), value > 0 else { return nil }
            return UInt32(exactly: (value * scale).rounded())
        }
        return UInt32(lower)
    }

    /// A byte count for people: `812 B`, `3.4 KiB`, `12.0 MiB`.
    static func bytes(_ count: Int) -> String {
        if count < 1024 { return "\(count) B" }
        if count < 1024 * 1024 { return format1(Double(count) / 1024) + " KiB" }
        return format1(Double(count) / (1024 * 1024)) + " MiB"
    }
}

/// `x` with one decimal.
func format1(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(abs(tenths % 10))"
}

struct SystemError: Error, CustomStringConvertible {
    let description: String
    init(_ call: String) { description = "\(call): \(String(cString: strerror(errno)))" }
}

func readAll(_ fd: Int32) throws -> [UInt8] {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            throw SystemError("read")
        }
        if count == 0 { return bytes }
        bytes.append(contentsOf: chunk[0..<count])
    }
}

func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SystemError("open") }
    defer { close(fd) }
    return try readAll(fd)
}

func writeAll(_ bytes: [UInt8], to fd: Int32) throws {
    var offset = 0
    while offset < bytes.count {
        let count = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            throw SystemError("write")
        }
        offset += count
    }
}

func monotonicMilliseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
}

func bootTimeNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_BOOTTIME, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

extension IPCError {
    /// Whether connecting failed because nothing listens at the address (no socket file, or
    /// one nobody accepts on), as opposed to a service that answered and refused or broke off.
    var meansNothingListens: Bool {
        code == .connectionFailed && [ENOENT, ECONNREFUSED].contains(errno ?? 0)
    }
}
