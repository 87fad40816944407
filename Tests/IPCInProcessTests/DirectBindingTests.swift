// The direct short circuit keeps every promise of the wire path, without frames.

import Foundation
import Glibc
import IPCEchoService
import IPCInProcess
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

@Suite("Direct binding")
struct DirectBindingTests {
    /// A host and a client made from the same `.direct` value, on a manual loop.
    final class World {
        let loop = ManualEventLoop()
        let network = InProcessNetwork()
        let service: any IPCService
        var host: IPCHost?
        var client: IPCClient?
        let proxy = Pfpeers_EchoServiceProxy()
        var backend: IPCBackend { .direct("echo", loop: loop, network: network) }

        init(service: any IPCService = EchoServiceImplementation()) throws {
            self.service = service
            host = try IPCHost(backend: .direct("echo", loop: loop, network: network))
            host?.expose(service)
            client = IPCClient(backend: .direct("echo", loop: loop, network: network))
            client?.bind(proxy)
            loop.runUntilIdle()
        }
    }

    @Test func bindsAndCallsWithoutFrames() throws {
        let world = try World()
        #expect(world.proxy.isBound)
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("direct"), reply: { replies.append($0) })
        #expect(replies.isEmpty, "never inline")
        world.loop.runUntilIdle()
        #expect(replies.count == 1)
        #expect(replies[0].message?.data == Data("direct".utf8))
        #expect(replies[0].message?.peerPid == getpid())
    }

    @Test func passesTheRequestValueItselfToTheService() throws {
        let recorder = ValueRecorder()
        let world = try World(service: recorder)
        let sent = echoRequest("value")
        world.proxy.echo(sent, reply: { _ in })
        world.loop.runUntilIdle()
        #expect(recorder.requests == [sent])
        #expect(recorder.sawEncodedArguments == false)
    }

    @Test func callsMadeInARepliesCallbackRunAfterItAndCannotHoldTheLoop() throws {
        // A client that answers each reply with a new call (a ping-pong) runs its calls one
        // after another, each once the callback that made it has returned, and a task posted
        // meanwhile still gets its turn before the ping-pong ends.
        let world = try World()
        let echo = try #require(world.service as? EchoServiceImplementation)
        let order = UncheckedSendableBox(Recorder())
        var remaining = 100
        func ping() {
            world.proxy.echo(echoRequest("ping")) { reply in
                #expect(reply.isSuccess)
                let served = echo.echoCount
                remaining -= 1
                if remaining > 0 { ping() }
                #expect(echo.echoCount == served, "a call never runs inside the callback that made it")
                order.value.values.append(0)
            }
        }
        ping()
        world.loop.execute { order.value.values.append(1) }
        world.loop.runUntilIdle()
        #expect(echo.echoCount == 100)
        #expect(order.value.values.count == 101)
        let task = try #require(order.value.values.firstIndex(of: 1))
        #expect(task <= 16, "the posted task waited for \(task) calls")
    }

    @Test func streamsUntilTheLastReply() throws {
        let world = try World()
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.streamEcho(echoRequest("s", count: 4), reply: { replies.append($0) })
        world.loop.runUntilIdle()
        #expect(replies.compactMap(\.message?.index) == [0, 1, 2, 3])
        #expect(replies.map(\.hasMore) == [true, true, true, false])
    }

    @Test func fileDescriptorsAreHandedOverBothWays() throws {
        let world = try World()
        let file = FileDescriptors.memfd(named: "direct", content: [UInt8](repeating: 3, count: 42))
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("fd"), fd: file.rawValue, reply: { replies.append($0) })
        world.proxy.echo(echoRequest("want", wantFD: true), reply: { replies.append($0) })
        world.loop.runUntilIdle()
        #expect(replies[0].message?.receivedFdSize == 42)
        let fd = try #require(replies[1].fileDescriptor)
        #expect(FileDescriptors.content(of: fd.rawValue) == Array("fd-payload:want".utf8))
    }

    @Test func unresolvedDeferredRejectsTheCall() throws {
        let parking = ParkingService()
        let world = try World(service: parking)
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("x"), reply: { replies.append($0) })
        world.loop.runUntilIdle()
        #expect(replies.isEmpty)
        parking.parked.removeAll()
        #expect(replies.count == 1)
        #expect(replies[0].error?.code == .remoteFailure)
    }

    @Test func closingTheHostRejectsOutstandingCallsOnceAndTellsTheProxy() throws {
        let parking = ParkingService()
        let world = try World(service: parking)
        var disconnects = 0
        world.proxy.onDisconnect = { _ in disconnects += 1 }
        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        world.proxy.echo(echoRequest("a"), reply: { replies.append($0) })
        world.proxy.streamEcho(echoRequest("b"), reply: { replies.append($0) })
        world.loop.runUntilIdle()
        world.host?.close()
        world.loop.runUntilIdle()
        #expect(replies.map(\.error?.code) == [.disconnected, .disconnected])
        #expect(disconnects == 1)
        #expect(parking.disconnected.count == 1)
        parking.parked.removeAll()  // resolving (auto-rejecting) afterwards reaches nobody
        world.loop.runUntilIdle()
        #expect(replies.count == 2)
    }

    @Test func destroyedProxyIsNeverCalledBack() throws {
        let parking = ParkingService()
        let world = try World(service: parking)
        let secondClient = IPCClient(backend: world.backend)
        var proxy: Pfpeers_EchoServiceProxy? = Pfpeers_EchoServiceProxy()
        secondClient.bind(proxy!)
        world.loop.runUntilIdle()
        #expect(proxy?.isBound == true)
        var called = false
        proxy?.echo(echoRequest("x"), reply: { _ in called = true })
        world.loop.runUntilIdle()
        proxy = nil
        world.loop.runUntilIdle()
        parking.releaseAll()
        world.loop.runUntilIdle()
        #expect(!called)
        #expect(parking.disconnected.count == 1, "the service hears that this client went away")
    }

    @Test func destroyedClientIsNeverCalledBackAndServicesAreTold() throws {
        let parking = ParkingService()
        let world = try World(service: parking)
        var called = false
        world.proxy.echo(echoRequest("x"), reply: { _ in called = true })
        world.loop.runUntilIdle()
        world.client = nil
        world.loop.runUntilIdle()
        parking.releaseAll()
        world.loop.runUntilIdle()
        #expect(!called)
        #expect(parking.disconnected.count == 1)
    }

    @Test func unknownServiceAndUnknownHostFailTheBinding() throws {
        let world = try World()
        let missing = ServiceProxy(descriptor: ServiceDescriptor(name: "Missing", methods: []))
        var failures: [IPCError.Code] = []
        missing.onConnectionFailed = { failures.append($0.code) }
        world.client?.bind(missing)
        let lonely = IPCClient(backend: .direct("nobody", loop: world.loop, network: world.network))
        let orphan = Pfpeers_EchoServiceProxy()
        orphan.onConnectionFailed = { failures.append($0.code) }
        lonely.bind(orphan)
        world.loop.runUntilIdle()
        #expect(failures == [.serviceNotFound, .connectionFailed])
    }

    @Test func asyncCallsWorkOnARealLoop() async throws {
        let loop = try EpollEventLoop.startOnNewThread(name: "direct-async")
        defer { loop.shutdown() }
        let network = InProcessNetwork()
        let proxy = Pfpeers_EchoServiceProxy()
        let keep = UncheckedSendableBox(Keeper())
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            loop.execute {
                continuation.resume(with: Result {
                    let host = try IPCHost(backend: .direct("async", loop: loop, network: network))
                    host.expose(AsyncEchoService())
                    let client = IPCClient(backend: .direct("async", loop: loop, network: network))
                    client.bind(proxy)
                    keep.value.objects = [host, client]
                })
            }
        }
        try await proxy.waitUntilBound()
        #expect(try await proxy.echo(echoRequest("async")).data == Data("async".utf8))
        var indices: [UInt32] = []
        for try await reply in proxy.streamEcho(echoRequest("s", count: 3)) { indices.append(reply.index) }
        #expect(indices == [0, 1, 2])
        await withCheckedContinuation { continuation in loop.execute { keep.value.objects = []; continuation.resume() } }
    }
}

final class Keeper { var objects: [AnyObject] = [] }

/// Records the request values it is called with, and whether it was ever given bytes.
final class ValueRecorder: Pfpeers_EchoServiceHandler {
    var requests: [Pfpeers_EchoRequest] = []
    var sawEncodedArguments = false

    func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        requests.append(request)
        reply.resolve(Pfpeers_EchoReply())
    }
    func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        reply.resolve(Pfpeers_EchoReply())
    }
    func invoke(methodIndex: Int, arguments: RawSpan, context: IPCCallContext, reply: IPCReplySink) -> Bool {
        sawEncodedArguments = true
        return false
    }
}

/// Keeps every Deferred until told.
final class ParkingService: Pfpeers_EchoServiceHandler {
    var parked: [Deferred<Pfpeers_EchoReply>] = []
    var disconnected: [IPCClientInfo] = []
    func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) { parked.append(reply) }
    func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) { parked.append(reply) }
    func clientDidDisconnect(_ client: IPCClientInfo) { disconnected.append(client) }
    func releaseAll() {
        parked.forEach { $0.resolve(Pfpeers_EchoReply()) }
        parked.removeAll()
    }
}
