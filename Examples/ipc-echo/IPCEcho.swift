// ipc-echo: Perfetto's echo.proto (../shared/interop/echo.proto) served and called over our
// IPC. It is the demo, the benchmark driver, and what a real Perfetto IPC peer talks to.
//
//   ipc-echo serve --socket /tmp/echo.sock
//   ipc-echo call  --socket /tmp/echo.sock --data hello [--want-fd] [--send-file PATH] [--stream N]
//                  [--timeout SECONDS]
//   ipc-echo bench --socket /tmp/echo.sock [--iterations N] [--payload BYTES] [--compare-raw]
//   ipc-echo demo

import ArgumentParser
import Dispatch
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import IPCEchoService
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif
import IPCLibuv
import IPCUnixSocket

@main
struct IPCEcho: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ipc-echo",
        abstract: "Serve, call and benchmark Perfetto's EchoService over swift-perfetto-ipc.",
        subcommands: [Serve.self, Call.self, Bench.self, Demo.self])
}

/// Where to connect or listen, and on which backend.
struct EndpointOptions: ParsableArguments {
    @Option(help: "Socket address: /path, relative/path, @abstract, host:port, [v6]:port or vsock://cid:port (the in-process backends use it as a name).")
    var socket: String?

    @Option(help: "Backend: unix (epoll sockets), libuv (libuv sockets), inprocess (in-memory frames, host in this process), direct (no frames, host in this process).")
    var backend: Backend = .unix

    /// The address to use, checked against the backend.
    func address(for command: String) throws -> String {
        if let socket { return socket }
        guard backend.isInProcess else { throw ValidationError("\(command) needs --socket ADDRESS with --backend unix") }
        return "ipc-echo"
    }
}

extension Backend: ExpressibleByArgument {}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve EchoService at an address until killed.")

    @OptionGroup var endpoint: EndpointOptions

    @Option(help: "Socket file mode in octal, e.g. 660 (unix socket files only).")
    var mode: String?

    @Option(help: "Microseconds the epoll loop polls before it sleeps (0: never spins).")
    var spinUs: Int = 0

    func run() throws {
        guard !endpoint.backend.isInProcess else {
            throw ValidationError("serve needs --backend unix or libuv: in-process backends serve only their own process (try `ipc-echo demo --backend \(endpoint.backend.rawValue)`)")
        }
        let address = try endpoint.address(for: "serve")
        var options = ConnectionOptions()
        if let mode {
            guard let value = UInt32(mode, radix: 8) else { throw ValidationError("--mode must be octal, e.g. 660") }
            options.socketFileMode = value
        }
        // The loop runs on this thread until the process is killed.
        if endpoint.backend == .libuv {
            let loop = try LibuvEventLoop()
            let host = try IPCHost(backend: .libuv(address, loop: loop, options: options))
            host.expose(EchoServiceImplementation())
            say("serving EchoService at \(host.address ?? address) with libuv (pid \(getpid()))")
            while true { loop.run(until: { false }, timeout: .seconds(3600)) }
        } else {
            let loop = try EpollEventLoop()
            loop.spinBeforeSleeping = .microseconds(spinUs)
            let host = try IPCHost(backend: .unixSocket(address, loop: loop, options: options))
            host.expose(EchoServiceImplementation())
            say("serving EchoService at \(host.address ?? address) (pid \(getpid()))")
            loop.run()
            host.close()
        }
    }
}

struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Call Echo (or StreamEcho) once and print every reply.")

    @OptionGroup var endpoint: EndpointOptions
    @Option(help: "The data to echo.") var data: String = "hello"
    @Option(help: "The sequence number to send.") var seq: UInt32 = 0
    @Flag(help: "Ask the server to attach a memfd holding the data to its reply.") var wantFd = false
    @Option(help: "Attach this file to the request; the server reports its size.") var sendFile: String?
    @Option(help: "Call StreamEcho for this many replies instead of Echo.") var stream: UInt32?
    @Option(help: "Give up (exit 1) when the call has not finished after this many seconds: connecting, binding and every reply. 0 waits for ever.")
    var timeout: Double = 10

    func run() async throws {
        guard timeout >= 0, timeout.isFinite else { throw ValidationError("--timeout must be 0 or more seconds") }
        // A host that accepts and never answers, or stops in the middle of a frame, would
        // otherwise keep this command waiting until killed.
        if timeout > 0 { exitAfter(seconds: timeout, "no answer from \(endpoint.socket ?? "the host") within \(timeout) s") }
        let session = try await EchoSession.connect(to: try endpoint.address(for: "call"), backend: endpoint.backend)
        defer { session.close() }
        var request = Pfpeers_EchoRequest()
        request.data = Data(data.utf8)
        request.seq = seq
        if wantFd { request.wantFd = true }
        var file: ScopedFD?
        if let sendFile {
            let opened = open(sendFile, O_RDONLY | O_CLOEXEC)
            guard opened >= 0 else { throw ValidationError("cannot open \(sendFile): \(String(cString: strerror(errno)))") }
            file = ScopedFD(opened)
        }
        let fd = file?.rawValue
        if let count = stream {
            request.count = count
            for try await reply in session.proxy.streamEcho(request, fd: fd) {
                say(describe(reply))
            }
        } else {
            let response = try await session.proxy.echoResponse(request, fd: fd)
            say(describe(response.message))
            if let received = response.fileDescriptor {
                say(describeFD(received))
            }
        }
        file?.close()
    }
}

/// Prints `message` and ends the process with status 1 after `seconds`, unless it ended first.
private func exitAfter(seconds: Double, _ message: String) {
    DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
        let line = Array("ipc-echo: \(message)\n".utf8)
        _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
        exit(1)
    }
}

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure sequential Echo round trips.")

    @OptionGroup var endpoint: EndpointOptions
    @Option(help: "Timed calls.") var iterations: Int = 10_000
    @Option(help: "Bytes of data per request (echoed back).") var payload: Int = 16
    @Flag(help: "Attach an fd to every request.") var withFd = false
    @Flag(help: "First measure a plain blocking unix-socket ping-pong of the same size (with a forked echo process) and print the ratio.")
    var compareRaw = false
    @Option(help: "Microseconds the client's epoll loop polls before it sleeps (0: never spins).")
    var spinUs: Int = 0

    func run() async throws {
        let session = try await EchoSession.connect(to: try endpoint.address(for: "bench"), backend: endpoint.backend)
        defer { session.close() }
        if spinUs > 0, let loop = session.loop as? EpollEventLoop {
            let spin = Duration.microseconds(spinUs)
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                loop.execute {
                    loop.spinBeforeSleeping = spin
                    done.resume()
                }
            }
        }
        try runEchoBench(session: session, iterations: iterations, payload: payload, withFD: withFd, compareRaw: compareRaw)
    }
}

/// Prints a bench line (and, with `compareRaw`, the raw floor and the ratio first).
func runEchoBench(session: EchoSession, iterations: Int, payload: Int, withFD: Bool, compareRaw: Bool) throws {
    var raw: LatencySummary?
    if compareRaw {
        raw = EchoBenchmark.measureRawPingPong(payloadSize: payload, iterations: iterations)
        say("raw   \(payload)B: \(raw!)")
    }
    let cpuBefore = processCPUMicroseconds()
    let echo = try EchoBenchmark.measureEcho(proxy: session.proxy, payloadSize: payload, iterations: iterations, withFD: withFD)
    let cpuPerCall = (processCPUMicroseconds() - cpuBefore) / Double(iterations)
    say("echo  \(payload)B\(withFD ? "+fd" : "") [\(session.backend.rawValue)]: \(echo)"
        + " cpu=\(fixed(cpuPerCall))us/call (this process)")
    if let raw {
        say("ratio p50=\(fixed(echo.p50 / raw.p50))x mean=\(fixed(echo.mean / raw.mean))x (echo / raw ping-pong)"
            + (isDebugBuild ? " [debug build]" : ""))
    }
    if isDebugBuild {
        say("(a debug build: our side runs unoptimised, the raw floor does not. For figures, build with `swift build -c release` and run .build/release/ipc-echo)")
    }
}

/// User and system CPU time this process has used, in microseconds.
func processCPUMicroseconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let user = Double(usage.ru_utime.tv_sec) * 1e6 + Double(usage.ru_utime.tv_usec)
    let system = Double(usage.ru_stime.tv_sec) * 1e6 + Double(usage.ru_stime.tv_usec)
    return user + system
}

/// Whether this binary was built without optimisation (figures from it mean little).
var isDebugBuild: Bool {
    #if DEBUG
    return true
    #else
    return false
    #endif
}

func describe(_ reply: Pfpeers_EchoReply) -> String {
    var fields: [String] = []
    if reply.hasData { fields.append("data: \"\(String(decoding: reply.data, as: UTF8.self))\"") }
    if reply.hasSeq { fields.append("seq: \(reply.seq)") }
    if reply.hasIndex { fields.append("index: \(reply.index)") }
    if reply.hasPeerPid { fields.append("peer_pid: \(reply.peerPid)") }
    if reply.hasPeerUid { fields.append("peer_uid: \(reply.peerUid)") }
    if reply.hasReceivedFdSize { fields.append("received_fd_size: \(reply.receivedFdSize)") }
    return "EchoReply { " + fields.joined(separator: " ") + " }"
}

func describeFD(_ fd: ScopedFD) -> String {
    let size = EchoServiceImplementation.size(of: fd.rawValue)
    var bytes = [UInt8](repeating: 0, count: Int(max(0, min(size, 4096))))
    let count = bytes.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, $0.count, 0) }
    return "reply fd: \(size) bytes: \"\(String(decoding: bytes.prefix(max(0, count)), as: UTF8.self))\""
}

/// Writes a line to standard output unbuffered, so piped output appears at once.
func say(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeMutableBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
        if written <= 0 { return }
        offset += written
    }
}
