// Echo round trips through the whole IPC stack over a unix socket (host on one loop thread,
// client driven by the benchmark thread) beside the plain socket ping-pong floor, same sizes,
// same run.
import Benchmark
import Foundation
import IPCEchoService
import IPCProtocol
import IPCUnixSocket

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, maxDuration: .seconds(3))

    for size in [16, 4096, 65536] {
        Benchmark("plain socket ping-pong \(size) B (floor)") { benchmark in
            blackHole(EchoBenchmark.measureRawPingPong(payloadSize: size, iterations: benchmark.scaledIterations.count, warmup: 0))
        }
        for withFD in [false, true] {
            Benchmark("echo \(size) B\(withFD ? " + fd" : "")") { benchmark in
                let fixture = try EchoFixture()
                let call = fixture.makeCall(payloadSize: size, withFD: withFD)
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations { call() }
                benchmark.stopMeasurement()
                fixture.close()
            }
        }
    }
}

/// An echo host on its own loop thread and a bound client on a loop run by the caller.
final class EchoFixture {
    let hostLoop: EpollEventLoop
    let clientLoop: EpollEventLoop
    let hostBox = HostBox()
    let client: IPCClient
    let proxy = Pfpeers_EchoServiceProxy()
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "echo-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/echo.sock"
        hostLoop = try EpollEventLoop.startOnNewThread(name: "echo-host")
        let hostLoop = self.hostLoop, hostBox = self.hostBox
        let ready = DispatchSemaphore(value: 0)
        hostLoop.execute {
            hostBox.host = try? IPCHost(transport: UnixSocketTransport(loop: hostLoop), listeningAt: path)
            hostBox.host?.expose(EchoServiceImplementation())
            ready.signal()
        }
        ready.wait()
        clientLoop = try EpollEventLoop()
        client = IPCClient(transport: UnixSocketTransport(loop: clientLoop), connectingTo: path)
        client.bind(proxy)
        let proxy = self.proxy
        clientLoop.run(until: { proxy.isBound }, timeout: .seconds(5))
    }

    /// A closure performing one round trip.
    func makeCall(payloadSize: Int, withFD: Bool) -> () -> Void {
        var request = Pfpeers_EchoRequest()
        request.data = Data(repeating: 0x61, count: payloadSize)
        let fd = withFD ? EchoServiceImplementation.memfd(holding: [1, 2, 3]) : nil
        return { [proxy, clientLoop] in
            var done = false
            proxy.echo(request, fd: fd?.rawValue) { _ in done = true }
            clientLoop.run(until: { done }, timeout: .seconds(5))
        }
    }

    func close() {
        client.close()
        let hostBox = self.hostBox
        hostLoop.execute { hostBox.host?.close(); hostBox.host = nil }
        hostLoop.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

final class HostBox: @unchecked Sendable {
    var host: IPCHost?
}
