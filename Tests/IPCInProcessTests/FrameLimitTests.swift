// What a frame too large for the receiver does on each side: the caller always hears back, and
// nothing oversized reaches the wire.

import Foundation
import IPCEchoService
import IPCInProcess
import IPCProtocol
import Testing
import TestSupport

/// Answers every Echo with a reply larger than any frame may be.
final class OversizedReplyService: Pfpeers_EchoServiceHandler {
    func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        var response = Pfpeers_EchoReply()
        response.data = Data(count: WireLimits.defaultReceiveCapacity + 1)
        reply.resolve(response)
    }
    func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        reply.resolve(Pfpeers_EchoReply())
    }
}

@Suite("Frame limits")
struct FrameLimitTests {
    final class World {
        let loop = ManualEventLoop()
        let host: IPCHost
        let client: IPCClient
        let proxy = Pfpeers_EchoServiceProxy()

        init(service: any IPCService) throws {
            let backend = IPCBackend.inProcess("limits", loop: loop, network: InProcessNetwork())
            host = try IPCHost(backend: backend, logger: .quiet)
            host.expose(service)
            client = IPCClient(backend: backend)
            client.bind(proxy)
            loop.runUntilIdle()
        }
    }

    @Test func aRequestTooLargeForAFrameIsRejectedLaterAndNotSent() throws {
        let world = try World(service: EchoServiceImplementation())
        var results: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest(String(repeating: "x", count: WireLimits.defaultReceiveCapacity))) { results.append($0) }
        #expect(results.isEmpty, "never inside the call")
        world.loop.runUntilIdle()
        #expect(results.map(\.error?.code) == [.frameTooLarge])
        // The connection is fine: the next call goes through.
        world.proxy.echo(echoRequest("small")) { results.append($0) }
        world.loop.runUntilIdle()
        #expect(results.count == 2)
        #expect(results[1].message?.data == Data("small".utf8))
    }

    @Test func aReplyTooLargeForAFrameBecomesAFailure() throws {
        let world = try World(service: OversizedReplyService())
        var results: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("big please")) { results.append($0) }
        world.loop.runUntilIdle()
        #expect(results.map(\.error?.code) == [.remoteFailure], "the caller hears back")
        #expect(world.client.isConnected, "an oversized frame never went out, so the host was not dropped")
    }
}
