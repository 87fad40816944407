// A plain loop of in-process echo calls, for profilers (callgrind, perf): no benchmark harness.
//   swift build -c release --product ProfileInProcess
//   valgrind --tool=callgrind .build/release/ProfileInProcess direct 100000
//   .build/release/ProfileInProcess inprocess 20000 65536     (third argument: payload bytes)
import Foundation
import IPCEchoService
import IPCInProcess
import IPCProtocol

let direct = CommandLine.arguments.dropFirst().first != "inprocess"
let iterations = Int(CommandLine.arguments.dropFirst(2).first ?? "") ?? 200_000
let payloadSize = Int(CommandLine.arguments.dropFirst(3).first ?? "") ?? 16
let loop = ManualEventLoop()
let network = InProcessNetwork()
let backend: IPCBackend = direct ? .direct("p", loop: loop, network: network) : .inProcess("p", loop: loop, network: network)
let host = try IPCHost(backend: backend)
host.expose(EchoServiceImplementation())
let client = IPCClient(backend: backend)
let proxy = Pfpeers_EchoServiceProxy()
client.bind(proxy)
loop.runUntilIdle()
var request = Pfpeers_EchoRequest()
request.data = Data(repeating: 0x61, count: payloadSize)
var replies = 0
let onReply: (AsyncResult<Pfpeers_EchoReply>) -> Void = { _ in replies += 1 }
let start = ContinuousClock.now
for _ in 0..<iterations {
    proxy.echo(request, reply: onReply)
    loop.runUntilIdle()
}
let elapsed = ContinuousClock.now - start
print("\(direct ? "direct" : "in-memory"): \(iterations) calls, \(elapsed / iterations) per call, replies \(replies)")
withExtendedLifetime((host, client)) {}
