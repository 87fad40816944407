// Rates and footprint over a unix socket, host on its own loop thread, client loop on this
// thread. Prints one line per figure.
//
//   swift run -c release RateProbe [connections]   (capped by RLIMIT_NOFILE: two fds each)
//
//   pipelined   Echo calls with 1,000 kept outstanding, calls/s
//   streaming   one StreamEcho of 100,000 replies, replies/s
//   connect     connect + bind EchoService + close, per second
//   idle RSS    resident bytes the process gains per idle connection: N raw sockets that each
//               bound EchoService (the client ends are bare fds and cost no resident memory)
import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket

final class Box: @unchecked Sendable { var host: IPCHost? }
struct Unchecked<T>: @unchecked Sendable { let value: T }

func probe() throws {
    let requested = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 10_000
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    // Both ends live in this process: two descriptors per connection. Raise the limit as far
    // as we may (root may lift the hard limit too).
    let wanted = rlim_t(2 * requested + 1024)
    if limit.rlim_max < wanted {
        var raised = rlimit(rlim_cur: wanted, rlim_max: wanted)
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
    }
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    // What the machine allows: two descriptors per connection plus headroom.
    let connections = min(requested, (Int(limit.rlim_cur) - 1024) / 2)

    let directory = NSTemporaryDirectory() + "rate-probe-\(getpid())"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let path = directory + "/echo.sock"
    let hostLoop = try EpollEventLoop.startOnNewThread(name: "echo-host")
    let hostBox = Box()
    let ready = DispatchSemaphore(value: 0)
    hostLoop.execute {
        hostBox.host = try? IPCHost(backend: .unixSocket(path, loop: hostLoop))
        hostBox.host?.expose(EchoServiceImplementation())
        ready.signal()
    }
    ready.wait()

    let loop = try EpollEventLoop()
    func run(until condition: () -> Bool) { _ = loop.run(until: condition, timeout: .seconds(120)) }
    func seconds(_ body: () -> Void) -> Double {
        let start = ContinuousClock.now
        body()
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    let client = IPCClient(backend: .unixSocket(path, loop: loop))
    let proxy = Pfpeers_EchoServiceProxy()
    client.bind(proxy)
    run { proxy.isBound }
    var request = Pfpeers_EchoRequest()
    request.data = Data(repeating: 0x61, count: 16)

    // Pipelined.
    let total = 200_000
    var issued = 0, completed = 0
    func issue() {
        issued += 1
        proxy.echo(request) { _ in
            completed += 1
            if issued < total { issue() }
        }
    }
    let pipelined = seconds {
        for _ in 0..<1000 { issue() }
        run { completed == total }
    }
    print(String(format: "pipelined: %.0f calls/s (%d calls, 1,000 outstanding)", Double(total) / pipelined, total))

    // Streaming.
    var streamRequest = request
    streamRequest.count = 100_000
    var replies = 0, finished = false
    let streaming = seconds {
        proxy.streamEcho(streamRequest) { result in
            if result.isSuccess { replies += 1 }
            if !result.hasMore { finished = true }
        }
        run { finished }
    }
    print(String(format: "streaming: %.0f replies/s (%d replies)", Double(replies) / streaming, replies))

    // Connect + bind + close.
    let rounds = 5000
    let connecting = seconds {
        for _ in 0..<rounds {
            let other = IPCClient(backend: .unixSocket(path, loop: loop))
            let otherProxy = Pfpeers_EchoServiceProxy()
            other.bind(otherProxy)
            run { otherProxy.isBound }
            other.close()
        }
    }
    print(String(format: "connect+bind: %.0f per second (%d rounds)", Double(rounds) / connecting, rounds))

    // Idle connections.
    func residentBytes() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
    }
    func hostClientCount() -> Int {
        let done = DispatchSemaphore(value: 0)
        let count = UnsafeMutablePointer<Int>.allocate(capacity: 1)
        defer { count.deallocate() }
        let box = Unchecked(value: count)
        hostLoop.execute { box.value.pointee = hostBox.host?.clientCount ?? 0; done.signal() }
        done.wait()
        return count.pointee
    }
    let bind = try FrameSerializer.serialize({ var f = IPCFrame(); f.requestID = 1; f.msgBindService.serviceName = "EchoService"; return f }())
    let before = residentBytes()
    let baseClients = hostClientCount()
    var sockets: [Int32] = []
    for _ in 0..<connections {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { path.utf8CString.withUnsafeBytes($0.copyMemory) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, rc == 0 else { print("stopped at \(sockets.count) connections: errno \(errno)"); break }
        _ = bind.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        sockets.append(fd)
    }
    while hostClientCount() < baseClients + sockets.count { sched_yield() }
    // Let the host read every bind (and answer it) before measuring.
    Thread.sleep(forTimeInterval: 0.5)
    let after = residentBytes()
    print(String(format: "idle connections: %d, resident growth %.0f bytes per connection (host side; %d KiB total)",
                 sockets.count, Double(after - before) / Double(max(1, sockets.count)), (after - before) / 1024))
    for fd in sockets { close(fd) }
    client.close()
    hostLoop.execute { hostBox.host?.close(); hostBox.host = nil }
    hostLoop.shutdown()

}

try probe()
