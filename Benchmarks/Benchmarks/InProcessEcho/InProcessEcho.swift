// The in-process backends on the deterministic loop, beside their floor: a plain Swift closure
// that builds the same reply from the same request, in the same run. Each iteration is one
// complete call: issue, run the loop until idle, reply received. A sample is 1,000 calls on a
// fixture made once per benchmark (figures are per call: package-benchmark's `*` columns).
//   in-memory: real frames through the in-memory transport (encode, frame, deserialize, decode)
//   direct:    the request value handed to the service, the reply value handed back
import Benchmark
import BenchmarkSupport
import Foundation
import IPCEchoService
import IPCInProcess
import IPCProtocol

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .nanoseconds, scalingFactor: .kilo, maxDuration: .seconds(2))

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

    let echoRequest = request
    for (name, direct) in [("in-memory echo", false), ("direct echo", true)] {
        benchmarkWithFixture(
            name, make: { try InProcessFixture(direct: direct) },
            close: { precondition($0.replies == $0.calls, "every call answered") },
            iteration: { $0.call(echoRequest) })
    }
}

/// A host and a bound client on one manual loop.
final class InProcessFixture: @unchecked Sendable {
    let loop = ManualEventLoop()
    let host: IPCHost
    let client: IPCClient
    let proxy = Pfpeers_EchoServiceProxy()
    var replies = 0
    private(set) var calls = 0
    private(set) var onReply: (AsyncResult<Pfpeers_EchoReply>) -> Void = { _ in }

    init(direct: Bool) throws {
        let network = InProcessNetwork()
        let backend: IPCBackend = direct ? .direct("bench", loop: loop, network: network) : .inProcess("bench", loop: loop, network: network)
        host = try IPCHost(backend: backend)
        host.expose(EchoServiceImplementation())
        client = IPCClient(backend: backend)
        client.bind(proxy)
        loop.runUntilIdle()
        precondition(proxy.isBound)
        onReply = { [unowned self] _ in replies += 1 }
    }

    /// One complete call: issued, the loop run until idle, the reply received.
    func call(_ request: Pfpeers_EchoRequest) {
        calls += 1
        proxy.echo(request, reply: onReply)
        loop.runUntilIdle()
    }
}

@inline(never)
func blackHoleIdentity<T>(_ value: T) -> T { value }
