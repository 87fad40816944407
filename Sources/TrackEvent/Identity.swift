// Who is writing: the process and thread track ids, derived as Perfetto's SDK derives them so
// the same process and thread read the same in traces from our SDK and theirs.
//
// * process uuid: 64-bit FNV-1a over the process start time (field 22 of /proc/self/stat, a
//   uint64) and the pid (4 bytes), both little-endian;
// * thread uuid: the tid xor the process uuid, its parent the process track.

import CPerfettoIPCLinux
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

enum ProcessIdentity {
    /// This process's track uuid (computed once).
    static let uuid: UInt64 = {
        var hasher = FNV1a()
        hasher.combine(value: startTime().littleEndian)
        hasher.combine(value: getpid().littleEndian)
        return hasher.value
    }()

    /// The process name: argv[0] without its directory.
    static let name: String = {
        let path = CommandLine.arguments.first ?? "swift"
        return path.split(separator: "/").last.map(String.init) ?? path
    }()

    /// Clock ticks since boot when the process started (0 if /proc cannot be read).
    private static func startTime() -> UInt64 {
        let fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1024)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return 0 }
        let text = String(decoding: bytes[0..<count], as: UTF8.self)
        // The command name (field 2) may hold spaces: count fields after its closing ")".
        guard let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); field 22 is fields[19].
        return fields.count > 19 ? UInt64(fields[19]) ?? 0 : 0
    }
}

/// The boot-time clock (Perfetto's default trace clock), in nanoseconds.
@usableFromInline
func bootTimeNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_BOOTTIME, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// The calling thread's id and name.
enum ThreadIdentity {
    static func current() -> (tid: Int32, name: String?) {
        let tid = CPerfettoIPC_gettid()
        // The kernel's name for the thread (what prctl(PR_SET_NAME) / pthread_setname_np set).
        let fd = open("/proc/thread-self/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return (tid, nil) }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return (tid, nil) }
        let name = String(decoding: bytes[0..<count], as: UTF8.self).split(separator: "\n").first.map(String.init)
        return (tid, name?.isEmpty == false ? name : nil)
    }
}
