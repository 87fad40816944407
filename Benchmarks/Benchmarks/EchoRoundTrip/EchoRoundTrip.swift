// Echo round trips through the whole IPC stack over a unix socket (host on one loop thread,
// client driven by the benchmark thread) beside the plain socket ping-pong floor, same sizes,
// same run; on the epoll backend and on the libuv backend. Fixtures are made once per
// benchmark and reused by every sample, so samples time warm round trips.
//
// "mallocs client side" and "mallocs host side" put a raw peer that allocates nothing on the
// other end, so the malloc count is that of one side alone.
import Benchmark
import BenchmarkSupport
import Foundation
import IPCEchoService
import IPCLibuv
import IPCProtocol
import IPCUnixSocket

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, maxDuration: .seconds(3))

    for size in [16, 4096, 65536] {
        benchmarkPlainSocketFloor(payloadSize: size)
        for backend in ["epoll", "libuv"] {
            for withFD in [false, true] where backend == "epoll" || !withFD {
                benchmarkWithFixture(
                    "echo \(size) B \(backend)\(withFD ? " + fd" : "")",
                    make: { try EchoFixture(libuv: backend == "libuv", payloadSize: size, withFD: withFD) },
                    close: { $0.close() }, iteration: { $0.call() })
            }
        }
    }

    let mallocs = Benchmark.Configuration(metrics: [.mallocCountTotal, .wallClock], timeUnits: .microseconds, maxDuration: .seconds(2))
    for size in [16, 4096] {
        benchmarkWithFixture(
            "mallocs client side, echo \(size) B", configuration: mallocs,
            make: { try ClientSideFixture(payloadSize: size) }, close: { $0.close() }, iteration: { $0.call() })
        benchmarkWithFixture(
            "mallocs host side, echo \(size) B", configuration: mallocs,
            make: { try HostSideFixture(payloadSize: size) }, close: { $0.close() }, iteration: { $0.client.roundTrip() })
    }
}

/// An echo host on its own loop thread and a bound client on a loop run by the caller.
final class EchoFixture: @unchecked Sendable {
    let hostLoop: any IPCEventLoop
    let stopHost: () -> Void
    let hostBox = HostBox()
    let client: IPCClient
    let proxy = Pfpeers_EchoServiceProxy()
    let directory: String
    let runClient: (() -> Bool) -> Void
    let request: Pfpeers_EchoRequest
    let fd: ScopedFD?

    init(libuv: Bool, payloadSize: Int, withFD: Bool) throws {
        directory = NSTemporaryDirectory() + "echo-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/echo.sock"
        let hostBackend: IPCBackend
        let clientBackend: IPCBackend
        if libuv {
            let host = try LibuvEventLoop.startOnNewThread()
            hostLoop = host
            stopHost = { host.shutdown() }
            hostBackend = .libuv(path, loop: host)
            let clientLoop = try LibuvEventLoop()
            clientBackend = .libuv(path, loop: clientLoop)
            runClient = { condition in _ = clientLoop.run(until: condition, timeout: .seconds(5)) }
        } else {
            let host = try EpollEventLoop.startOnNewThread(name: "echo-host")
            hostLoop = host
            stopHost = { host.shutdown() }
            hostBackend = .unixSocket(path, loop: host)
            let clientLoop = try EpollEventLoop()
            clientBackend = .unixSocket(path, loop: clientLoop)
            runClient = { condition in _ = clientLoop.run(until: condition, timeout: .seconds(5)) }
        }
        let hostBox = self.hostBox
        let ready = DispatchSemaphore(value: 0)
        hostLoop.execute {
            hostBox.host = try? IPCHost(backend: hostBackend)
            hostBox.host?.expose(EchoServiceImplementation())
            ready.signal()
        }
        ready.wait()
        client = IPCClient(backend: clientBackend)
        client.bind(proxy)
        let proxy = self.proxy
        runClient { proxy.isBound }
        var request = Pfpeers_EchoRequest()
        request.data = Data(repeating: 0x61, count: payloadSize)
        self.request = request
        fd = withFD ? EchoServiceImplementation.memfd(holding: [1, 2, 3]) : nil
    }

    /// One round trip.
    func call() {
        var done = false
        proxy.echo(request, fd: fd?.rawValue) { _ in done = true }
        runClient { done }
    }

    /// Closes the client (claiming its loop for the calling thread first: teardown may run
    /// on another thread than the samples) and the host.
    func close() {
        runClient { true }
        client.close()
        let hostBox = self.hostBox
        hostLoop.execute { hostBox.host?.close(); hostBox.host = nil }
        stopHost()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

final class HostBox: @unchecked Sendable {
    var host: IPCHost?
}

/// The real client on an epoll loop run by the caller, served by a raw host thread.
final class ClientSideFixture: @unchecked Sendable {
    let loop: EpollEventLoop
    let client: IPCClient
    let proxy = Pfpeers_EchoServiceProxy()
    let request: Pfpeers_EchoRequest
    let host: RawEchoHost

    init(payloadSize: Int) throws {
        var fds: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        host = RawEchoHost(fd: fds[1], payloadSize: payloadSize)
        loop = try EpollEventLoop()
        let connection = try UnixSocketTransport(loop: loop).adoptConnection(fd: fds[0])
        client = IPCClient(connection: connection, eventLoop: loop)
        client.bind(proxy)
        let proxy = self.proxy
        loop.run(until: { proxy.isBound }, timeout: .seconds(5))
        var request = Pfpeers_EchoRequest()
        request.data = Data(repeating: 0x61, count: payloadSize)
        self.request = request
    }

    func call() {
        var done = false
        proxy.echo(request) { _ in done = true }
        loop.run(until: { done }, timeout: .seconds(5))
    }

    func close() {
        loop.run(until: { true }, timeout: .zero)
        client.close()
    }
}

/// The real host on an epoll loop thread, driven by a raw client on the caller's thread.
final class HostSideFixture: @unchecked Sendable {
    let loop: EpollEventLoop
    let hostBox = HostBox()
    let client: RawEchoClient

    init(payloadSize: Int) throws {
        var fds: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        loop = try EpollEventLoop.startOnNewThread(name: "echo-host")
        let loop = self.loop, hostBox = self.hostBox, theirs = fds[1]
        let ready = DispatchSemaphore(value: 0)
        loop.execute {
            let transport = UnixSocketTransport(loop: loop)
            let host = IPCHost(transport: transport)
            host.expose(EchoServiceImplementation())
            if let connection = try? transport.adoptConnection(fd: theirs) { host.adopt(connection) }
            hostBox.host = host
            ready.signal()
        }
        ready.wait()
        client = RawEchoClient(fd: fds[0], payloadSize: payloadSize)
    }

    func close() {
        client.close()
        let hostBox = self.hostBox
        loop.execute { hostBox.host?.close(); hostBox.host = nil }
        loop.shutdown()
    }
}
