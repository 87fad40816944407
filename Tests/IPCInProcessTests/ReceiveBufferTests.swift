// Receive buffers stay warm while a connection is busy and give their pages back once it has
// been quiet for `WireLimits.idleReceiveBufferReleaseDelay`, on the host and on the client.

import Foundation
import IPCEchoService
import IPCInProcess
import IPCProtocol
import Testing
import TestSupport

@Suite("Receive buffers")
struct ReceiveBufferTests {
    @Test func pagesGoBackOnlyAfterTheConnectionHasBeenQuiet() throws {
        let loop = ManualEventLoop()
        let backend = IPCBackend.inProcess("buffers", loop: loop, network: InProcessNetwork())
        let host = try IPCHost(backend: backend)
        host.expose(EchoServiceImplementation())
        let client = IPCClient(backend: backend)
        let proxy = Pfpeers_EchoServiceProxy()
        client.bind(proxy)
        loop.runUntilIdle()
        let hostBuffer = try #require(host.receiveBuffersForTesting.first)
        let clientBuffer = try #require(client.receiveBufferForTesting)
        func resident(_ buffer: FrameDeserializer) -> Int {
            residentPages(buffer.receiveSpace.baseAddress!, byteCount: buffer.capacity)
        }

        var replies = 0
        let large = echoRequest(String(repeating: "x", count: 60_000))
        proxy.echo(large) { if $0.isSuccess { replies += 1 } }
        loop.runUntilIdle()
        #expect(replies == 1)
        // Both ends just held a 60 KB frame: its pages stay for the next one.
        #expect(resident(hostBuffer) >= 14)
        #expect(resident(clientBuffer) >= 14)

        // Not a moment before the quiet period is over.
        loop.advanceTime(by: WireLimits.idleReceiveBufferReleaseDelay - .milliseconds(1))
        #expect(resident(hostBuffer) >= 14)
        loop.advanceTime(by: .milliseconds(1))
        #expect(resident(hostBuffer) <= 1)
        #expect(resident(clientBuffer) <= 1)

        // Small calls touch only the first page: nothing to give back, no timer armed.
        proxy.echo(echoRequest("small")) { if $0.isSuccess { replies += 1 } }
        loop.runUntilIdle()
        #expect(replies == 2)
        #expect(!hostBuffer.holdsReleasablePages)
        withExtendedLifetime((host, client)) {}
    }
}
