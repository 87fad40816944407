// Runs the tracebox executable (built beside the test bundle) as real processes: separate
// programs on real sockets, as users run them. Waits are bounded by deadlines and poll the
// process or its output; nothing sleeps for a fixed time.

import Foundation
import Glibc
import Testing

/// One child process with its output in files.
final class Subprocess {
    let pid: pid_t
    let name: String
    private let stdoutPath: String
    private let stderrPath: String
    private(set) var exitStatus: Int32?
    private(set) var killedBySignal: Int32?

    /// The tracebox binary next to the running test bundle.
    static var tracebox: String {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return (executable as NSString).deletingLastPathComponent + "/tracebox"
    }

    /// Starts `tracebox arguments...` with `environment` added to ours; with a `wrapper`
    /// (e.g. `setpriv --reuid=…`), starts `wrapper... tracebox arguments...`.
    init(
        _ arguments: [String], environment: [String: String] = [:], directory: String, name: String,
        wrapper: [String] = []
    ) throws {
        self.name = name
        stdoutPath = directory + "/\(name).stdout"
        stderrPath = directory + "/\(name).stderr"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var merged = ProcessInfo.processInfo.environment
        for (key, value) in environment { merged[key] = value }
        let executable = wrapper.first ?? Self.tracebox
        let argv = (wrapper + [Self.tracebox] + arguments).map { strdup($0) } + [nil]
        let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, nil, argv, envp)
        guard result == 0 else { throw POSIXError(POSIXErrorCode(rawValue: result) ?? .EINVAL) }
        pid = child
    }

    deinit {
        if exitStatus == nil && killedBySignal == nil {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
    }

    var standardOutput: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var standardError: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    func signal(_ number: Int32) { kill(pid, number) }

    /// Waits for the process to exit; returns its exit code (nil if it did not exit in time
    /// or was killed by a signal).
    @discardableResult
    func wait(seconds: Double = 20) -> Int32? {
        _ = poll(seconds: seconds) { self.reap(options: WNOHANG) }
        return exitStatus
    }

    /// Waits until the process is stopped (SIGSTOP); true if it is.
    func waitUntilStopped(seconds: Double = 20) -> Bool {
        poll(seconds: seconds) {
            var status: Int32 = 0
            let result = waitpid(self.pid, &status, WNOHANG | WUNTRACED)
            return result == self.pid && (status & 0xff) == 0x7f
        }
    }

    /// Kills the process and collects it.
    func kill9() {
        kill(pid, SIGKILL)
        _ = reap(options: 0)
    }

    private func reap(options: Int32) -> Bool {
        var status: Int32 = 0
        guard waitpid(pid, &status, options) == pid else { return false }
        if status & 0x7f == 0 {
            exitStatus = (status >> 8) & 0xff
        } else if status & 0xff != 0x7f {
            killedBySignal = status & 0x7f
        } else {
            return false
        }
        return true
    }
}

/// Polls `condition` every millisecond or so until it holds or `seconds` pass.
func poll(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        var pause = timespec(tv_sec: 0, tv_nsec: 2_000_000)
        nanosleep(&pause, nil)
    }
    return condition()
}
