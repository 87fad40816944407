// The in-process backends on the deterministic loop, beside their floor: a plain Swift closure
// that builds the same reply from the same request, in the same run. Each iteration is one
// complete call: issue, run the loop until idle, reply received.
//   in-memory: real frames through the in-memory transport (encode, frame, deserialize, decode)
//   direct:    the request value handed to the service, the reply value handed back
import Benchmark
import Foundation
import IPCEchoService
import IPCInProcess
import IPCProtocol

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .nanoseconds, maxDuration: .seconds(2))

    var request = Pfpeers_EchoRequest()
    request.data = Data(repeating: 0x61, count: 16)

    Benchmark("closure call (floor)") { benchmark in
        let echo: (Pfpeers_EchoRequest) -> Pfpeers_EchoReply = { request in
            var reply = Pfpeers_EchoReply()
            reply.data = request.data
            reply.seq = request.seq
            return reply
        }
        let callee = blackHoleIdentity(echo)
        for _ in benchmark.scaledIterations { blackHole(callee(request)) }
    }

    for (name, direct) in [("in-memory echo", false), ("direct echo", true)] {
        Benchmark(name) { benchmark in
            let loop = ManualEventLoop()
            let network = InProcessNetwork()
            let backend: IPCBackend = direct ? .direct("bench", loop: loop, network: network) : .inProcess("bench", loop: loop, network: network)
            let host = try IPCHost(backend: backend)
            host.expose(EchoServiceImplementation())
            let client = IPCClient(backend: backend)
            let proxy = Pfpeers_EchoServiceProxy()
            client.bind(proxy)
            loop.runUntilIdle()
            precondition(proxy.isBound)
            var replies = 0
            let onReply: (AsyncResult<Pfpeers_EchoReply>) -> Void = { _ in replies += 1 }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                proxy.echo(request, reply: onReply)
                loop.runUntilIdle()
            }
            benchmark.stopMeasurement()
            precondition(replies == benchmark.scaledIterations.count)
            withExtendedLifetime((host, client)) {}
        }
    }
}

@inline(never)
func blackHoleIdentity<T>(_ value: T) -> T { value }
