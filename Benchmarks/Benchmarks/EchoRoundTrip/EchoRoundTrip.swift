// Echo round trips through the whole IPC stack over a unix socket (host on one loop thread,
// client driven by the benchmark thread) beside the plain socket ping-pong floor, same sizes,
// same run; on the epoll backend and on the libuv backend.
import Benchmark
import Foundation
import IPCEchoService
import IPCLibuv
import IPCProtocol
import IPCUnixSocket

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, maxDuration: .seconds(3))

    for size in [16, 4096, 65536] {
        Benchmark("plain socket ping-pong \(size) B (floor)") { benchmark in
            blackHole(EchoBenchmark.measureRawPingPong(payloadSize: size, iterations: benchmark.scaledIterations.count, warmup: 0))
        }
        for backend in ["epoll", "libuv"] {
            for withFD in [false, true] where backend == "epoll" || !withFD {
                Benchmark("echo \(size) B \(backend)\(withFD ? " + fd" : "")") { benchmark in
                    let fixture = try EchoFixture(libuv: backend == "libuv")
                    let call = fixture.makeCall(payloadSize: size, withFD: withFD)
                    benchmark.startMeasurement()
                    for _ in benchmark.scaledIterations { call() }
                    benchmark.stopMeasurement()
                    fixture.close()
                }
            }
        }
    }
}

/// An echo host on its own loop thread and a bound client on a loop run by the caller.
final class EchoFixture {
    let hostLoop: any IPCEventLoop
    let stopHost: () -> Void
    let hostBox = HostBox()
    let client: IPCClient
    let proxy = Pfpeers_EchoServiceProxy()
    let directory: String
    let runClient: (() -> Bool) -> Void

    init(libuv: Bool) throws {
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
    }

    /// A closure performing one round trip.
    func makeCall(payloadSize: Int, withFD: Bool) -> () -> Void {
        var request = Pfpeers_EchoRequest()
        request.data = Data(repeating: 0x61, count: payloadSize)
        let fd = withFD ? EchoServiceImplementation.memfd(holding: [1, 2, 3]) : nil
        return { [proxy, runClient] in
            var done = false
            proxy.echo(request, fd: fd?.rawValue) { _ in done = true }
            runClient { done }
        }
    }

    func close() {
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
