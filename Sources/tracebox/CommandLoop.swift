// The event loop a tracebox command runs on, on the backend the user picked, and the signals
// (SIGINT, SIGTERM) that end it cleanly: they are turned into a task on the loop.

import ArgumentParser
import Dispatch
import IPCLibuv
import IPCProtocol
import IPCUnixSocket

#if canImport(Glibc)
import Glibc
#endif

/// Which IPC backend carries the command's connections.
enum BackendChoice: String, ExpressibleByArgument, CaseIterable {
    case unix, libuv
}

/// A loop on the calling thread and a transport on it.
final class CommandLoop {
    let loop: any IPCEventLoop
    let transport: any IPCTransport
    private let epoll: EpollEventLoop?
    private let uv: LibuvEventLoop?
    private var signalSources: [any DispatchSourceSignal] = []
    private var signalHandler: SignalHandlerBox?

    init(backend: BackendChoice) throws {
        switch backend {
        case .unix:
            let loop = try EpollEventLoop()
            epoll = loop
            uv = nil
            self.loop = loop
            transport = UnixSocketTransport(loop: loop)
        case .libuv:
            let loop = try LibuvEventLoop()
            uv = loop
            epoll = nil
            self.loop = loop
            transport = LibuvTransport(loop: loop)
        }
    }

    /// Runs the loop until `condition` holds or `timeout` passes; returns whether it held.
    @discardableResult
    func run(until condition: () -> Bool, timeout: Duration = .seconds(365 * 24 * 3600)) -> Bool {
        if let epoll { return epoll.run(until: condition, timeout: timeout) }
        return uv!.run(until: condition, timeout: timeout)
    }

    /// Calls `handler` on the loop when SIGINT or SIGTERM arrives (instead of dying).
    ///
    /// The handler stays owned here, on the loop's thread: the signal sources only hold it
    /// weakly, so nothing it captures is ever released on a dispatch thread.
    func onTerminationSignal(_ handler: @escaping () -> Void) {
        let box = SignalHandlerBox(handler)
        signalHandler = box
        let loop = self.loop
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [weak box] in
                guard let box else { return }
                loop.execute { [weak box] in box?.handler() }
            }
            source.resume()
            signalSources.append(source)
        }
    }

    /// From now on SIGINT and SIGTERM end the process at once, as they would have by default:
    /// for a command that is shutting down and may wait (for threads a stuck service holds
    /// back), so that asking again is heard.
    func endOnNextTerminationSignal() {
        for source in signalSources { source.cancel() }
        signalSources = []
        for number in [SIGINT, SIGTERM] { signal(number, SIG_DFL) }
    }

    deinit {
        for source in signalSources { source.cancel() }
    }
}

/// A loop-confined closure; signal sources reach it weakly and only to post it to the loop.
private final class SignalHandlerBox: @unchecked Sendable {
    let handler: () -> Void
    init(_ handler: @escaping () -> Void) { self.handler = handler }
}

/// Prints one line to standard error, its control characters escaped (``printable(_:)``).
func printError(_ line: String) {
    writeError(printable(line) + "\n")
}

/// Writes `text` to standard error as it is (no newline added).
func writeError(_ text: String) {
    try? writeAll(Array(text.utf8), to: STDERR_FILENO)
}

/// Prints `text` and a newline to standard output, at once; within each of its lines, control
/// characters are escaped (``printable(_:)``).
func say(_ text: String) {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { printable(String($0)) }
    try? writeAll(Array((lines.joined(separator: "\n") + "\n").utf8), to: STDOUT_FILENO)
}

/// `text` with every character a terminal would act on written as an escape (`\u{1B}`): control
/// characters (an escape sequence could retitle the window, clear it or fake a prompt line) and
/// the bidirectional formatting marks (they reorder what is shown). Names and messages come from
/// other processes, a producer of any user among them: they are shown, never obeyed.
func printable(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isActedOnByTerminals) else { return text }
    var escaped = ""
    for scalar in text.unicodeScalars {
        if isActedOnByTerminals(scalar) {
            escaped += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
        } else {
            escaped.unicodeScalars.append(scalar)
        }
    }
    return escaped
}

private func isActedOnByTerminals(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.value {
    case 0x00...0x1F, 0x7F...0x9F: return true  // C0, DEL, C1
    case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: return true  // bidi marks
    default: return false
    }
}
