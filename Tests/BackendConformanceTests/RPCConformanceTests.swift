// Host and client behaviour every backend must show, through the generated echo code.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import Testing
import TestSupport

@Suite("RPC conformance")
struct RPCConformanceTests {
    /// A host serving echo and a client with a bound proxy.
    final class World {
        let fixture: any BackendFixture
        let service = EchoServiceImplementation()
        let host: IPCHost
        let client: IPCClient
        let proxy = Pfpeers_EchoServiceProxy()

        init(_ backend: BackendUnderTest) throws {
            fixture = try backend.make()
            host = try IPCHost(backend: .transport(fixture.transport, address: fixture.newAddress()))
            host.expose(service)
            client = IPCClient(backend: .transport(fixture.transport, address: host.address!))
            client.bind(proxy)
            let proxy = self.proxy
            #expect(fixture.run(until: { proxy.isBound }))
        }
    }

    @Test(arguments: BackendUnderTest.all)
    func unaryCallsReturnTheirReply(_ backend: BackendUnderTest) throws {
        let world = try World(backend)
        defer { world.fixture.tearDown() }
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("one"), reply: { replies.append($0) })
        world.proxy.echo(echoRequest("two"), reply: { replies.append($0) })
        #expect(replies.isEmpty, "replies never arrive inline")
        #expect(world.fixture.run(until: { replies.count == 2 }))
        #expect(replies.compactMap(\.message?.data) == [Data("one".utf8), Data("two".utf8)])
        if world.fixture.reportsKernelCredentials { #expect(replies[0].message?.peerPid == getpid()) }
    }

    @Test(arguments: BackendUnderTest.all)
    func streamingDeliversEveryReplyThenEnds(_ backend: BackendUnderTest) throws {
        let world = try World(backend)
        defer { world.fixture.tearDown() }
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.streamEcho(echoRequest("s", count: 3), reply: { replies.append($0) })
        #expect(world.fixture.run(until: { replies.last.map { !$0.hasMore } ?? false }))
        #expect(replies.compactMap(\.message?.index) == [0, 1, 2])
        #expect(replies.map(\.hasMore) == [true, true, false])
    }

    @Test(arguments: BackendUnderTest.all)
    func aStreamLongerThanTheServiceAllowsIsRejected(_ backend: BackendUnderTest) throws {
        let world = try World(backend)
        defer { world.fixture.tearDown() }
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        let tooMany = EchoServiceImplementation.maxStreamCount + 1
        world.proxy.streamEcho(echoRequest("s", count: tooMany), reply: { replies.append($0) })
        #expect(world.fixture.run(until: { !replies.isEmpty }))
        #expect(replies.count == 1)
        #expect(replies.first?.isSuccess == false)
        #expect(replies.first?.hasMore == false, "one final rejection, no stream")
    }

    @Test(arguments: BackendUnderTest.all)
    func fileDescriptorsTravelBothWays(_ backend: BackendUnderTest) throws {
        let world = try World(backend)
        defer { world.fixture.tearDown() }
        guard world.fixture.reportsKernelCredentials else { return }
        let file = FileDescriptors.memfd(named: "rpc-conformance", content: [UInt8](repeating: 1, count: 77))
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("fd"), fd: file.rawValue, reply: { replies.append($0) })
        world.proxy.echo(echoRequest("give", wantFD: true), reply: { replies.append($0) })
        #expect(world.fixture.run(until: { replies.count == 2 }))
        #expect(replies[0].message?.receivedFdSize == 77)
        let fd = try #require(replies[1].fileDescriptor)
        #expect(FileDescriptors.content(of: fd.rawValue) == Array("fd-payload:give".utf8))
    }

    @Test(arguments: BackendUnderTest.all)
    func dropReplyCallsStillRunButAnswerNothing(_ backend: BackendUnderTest) throws {
        let world = try World(backend)
        defer { world.fixture.tearDown() }
        var replies = 0
        world.proxy.echo(echoRequest("quiet"), reply: nil)
        world.proxy.echo(echoRequest("loud"), reply: { _ in replies += 1 })
        #expect(world.fixture.run(until: { replies == 1 }))
        #expect(world.service.echoCount == 2)
    }

    @Test(arguments: BackendUnderTest.all)
    func closingTheHostRejectsOutstandingCallsAndTellsProxies(_ backend: BackendUnderTest) throws {
        let world = try World(backend)
        defer { world.fixture.tearDown() }
        var disconnects: [IPCError.Code] = []
        world.proxy.onDisconnect = { disconnects.append($0.code) }
        var results: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.streamEcho(echoRequest("x", count: 1), reply: { results.append($0) })
        world.host.close()
        #expect(world.fixture.run(until: { disconnects.count == 1 }))
        #expect(disconnects == [.disconnected])
        #expect(world.service.disconnectedClientCount == 1)
        #expect(results.count <= 1)
        world.proxy.echo(echoRequest("late"), reply: { results.append($0) })
        #expect(results.last?.error?.code == .disconnected)
    }

    @Test(arguments: BackendUnderTest.all)
    func bindsBeforeTheConnectionIsUpAreQueued(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        let host = try IPCHost(backend: .transport(fixture.transport, address: fixture.newAddress()))
        host.expose(EchoServiceImplementation())
        let client = IPCClient(backend: .transport(fixture.transport, address: host.address!))
        let proxy = Pfpeers_EchoServiceProxy()
        client.bind(proxy)
        #expect(!client.isConnected)
        #expect(fixture.run(until: { proxy.isBound }))
    }
}
