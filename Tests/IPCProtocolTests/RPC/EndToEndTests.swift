// Host and client together over a real unix socket, through the generated echo code, used the
// way an application would: async/await from ordinary tasks, the loop on its own thread.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Synchronization
import Testing
import TestSupport

/// A host serving echo and a client bound to it, on a loop thread of their own.
final class EchoWorld: @unchecked Sendable {
    // @unchecked Sendable: host, client and service are created and used on `loop` only; the
    // proxy is set once before `start` returns and then only used through its async methods,
    // which hop onto the loop themselves.
    let loop: EpollEventLoop
    let directory = TemporaryDirectory()
    var host: IPCHost?
    var client: IPCClient?
    var proxy: Pfpeers_EchoServiceProxy!

    private init(loop: EpollEventLoop) { self.loop = loop }

    static func start(makeService: @escaping @Sendable () -> any IPCService = { EchoServiceImplementation() }) async throws -> EchoWorld {
        let world = EchoWorld(loop: try EpollEventLoop.startOnNewThread(name: "echo-world"))
        let path = world.directory.path + "/echo.sock"
        try await world.onLoop {
            let host = try IPCHost(transport: UnixSocketTransport(loop: world.loop), listeningAt: path)
            host.expose(makeService())
            world.host = host
            let client = IPCClient(transport: UnixSocketTransport(loop: world.loop), connectingTo: path)
            let proxy = Pfpeers_EchoServiceProxy()
            client.bind(proxy)
            world.client = client
            world.proxy = proxy
        }
        try await world.proxy.waitUntilBound()
        return world
    }

    /// Runs `body` on the loop and waits for it.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            loop.execute { continuation.resume(with: Result { try body() }) }
        }
    }

    func shutdown() async {
        _ = try? await onLoop { [self] in
            client?.close()
            client = nil
            host?.close()
            host = nil
        }
        loop.shutdown()
        directory.remove()
    }
}

@Suite("End to end over a unix socket")
struct EndToEndTests {
    @Test func asyncEchoReturnsTheReply() async throws {
        let world = try await EchoWorld.start()
        let reply = try await world.proxy.echo(echoRequest("hello", seq: 3))
        #expect(reply.data == Data("hello".utf8))
        #expect(reply.seq == 3)
        #expect(reply.peerPid == getpid())
        #expect(reply.peerUid == Int32(bitPattern: getuid()))
        #expect(reply.receivedFdSize == -1)
        await world.shutdown()
    }

    @Test func fileDescriptorsTravelBothWays() async throws {
        let world = try await EchoWorld.start()
        let file = FileDescriptors.memfd(named: "e2e", content: [UInt8](repeating: 9, count: 1234))
        let sized = try await world.proxy.echo(echoRequest("with-fd"), fd: file.rawValue)
        #expect(sized.receivedFdSize == 1234)
        let response = try await world.proxy.echoResponse(echoRequest("fd-please", wantFD: true))
        let fd = try #require(response.fileDescriptor)
        #expect(FileDescriptors.content(of: fd.rawValue) == Array("fd-payload:fd-please".utf8))
        await world.shutdown()
    }

    @Test func streamingRepliesArriveAsAnAsyncSequence() async throws {
        let world = try await EchoWorld.start()
        var indices: [UInt32] = []
        for try await reply in world.proxy.streamEcho(echoRequest("s", count: 50)) {
            indices.append(reply.index)
        }
        #expect(indices == Array(0..<50))
        await world.shutdown()
    }

    @Test func manyConcurrentCallsAllComeBack() async throws {
        let world = try await EchoWorld.start()
        let proxy = world.proxy!
        let sequences = try await withThrowingTaskGroup(of: UInt32.self) { group in
            for seq in 0..<200 { group.addTask { try await proxy.echo(echoRequest("c", seq: UInt32(seq))).seq } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(sequences.sorted() == Array(0..<200))
        await world.shutdown()
    }

    @Test func cancellingAWaitingCallReleasesItAndIgnoresTheLateReply() async throws {
        let world = try await EchoWorld.start(makeService: { ParkingEchoService() })
        let proxy = world.proxy!
        let task = Task { try await proxy.echo(echoRequest("never")) }
        // Wait until the host has the call parked, then cancel the caller.
        while try await world.onLoop({ (world.host!.parkedService?.parked.count ?? 0) == 0 }) { await Task.yield() }
        task.cancel()
        let outcome = await task.result
        #expect(throws: IPCError.self) { try outcome.get() }
        if case .failure(let error as IPCError) = outcome { #expect(error.code == .cancelled) }
        #expect(try await world.onLoop { world.client!.pendingRequestCountForTesting } == 0)
        // The host answers after all: nothing is called, nothing breaks, the client still works.
        try await world.onLoop { world.host!.parkedService?.releaseAll() }
        #expect(try await proxy.echo(echoRequest("after")).data == Data("after".utf8))
        await world.shutdown()
    }

    @Test func stoppingAStreamEarlyForgetsTheCall() async throws {
        let world = try await EchoWorld.start()
        var seen = 0
        for try await _ in world.proxy.streamEcho(echoRequest("s", count: 100_000)) {
            seen += 1
            if seen == 3 { break }
        }
        #expect(seen == 3)
        // The rest of the stream arrives for a forgotten request and is dropped.
        #expect(try await world.proxy.echo(echoRequest("next")).data == Data("next".utf8))
        await world.shutdown()
    }

    @Test func asyncHandlersServeUnaryAndStreamingCalls() async throws {
        let world = try await EchoWorld.start(makeService: { AsyncEchoService() })
        let reply = try await world.proxy.echo(echoRequest("async", seq: 5))
        #expect(reply.data == Data("async".utf8))
        #expect(reply.peerPid == getpid())
        var indices: [UInt32] = []
        for try await reply in world.proxy.streamEcho(echoRequest("s", count: 4)) { indices.append(reply.index) }
        #expect(indices == [0, 1, 2, 3])
        await #expect(throws: IPCError.self) { try await world.proxy.echo(echoRequest("fail")) }
        await world.shutdown()
    }

    @Test func callsAfterTheHostIsGoneFailAsDisconnected() async throws {
        let world = try await EchoWorld.start()
        try await world.onLoop { world.host?.close() }
        let error = await #expect(throws: IPCError.self) {
            for _ in 0..<100 { _ = try await world.proxy.echo(echoRequest("x")) }
        }
        #expect(error?.code == .disconnected)
        await world.shutdown()
    }

    @Test func bindingAServiceTheHostLacksThrows() async throws {
        let world = try await EchoWorld.start()
        let other = try await world.onLoop { () -> UncheckedSendableBox<ServiceProxy> in
            let proxy = ServiceProxy(descriptor: ServiceDescriptor(name: "Missing", methods: []))
            world.client?.bind(proxy)
            return UncheckedSendableBox(proxy)
        }
        let error = await #expect(throws: IPCError.self) { try await other.value.waitUntilBound() }
        #expect(error?.code == .serviceNotFound)
        await world.shutdown()
    }
}

/// Parks every Echo call until told to answer.
final class ParkingEchoService: Pfpeers_EchoServiceHandler {
    var parked: [(Pfpeers_EchoRequest, Deferred<Pfpeers_EchoReply>)] = []
    let fallback = EchoServiceImplementation()

    func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        if request.data == Data("never".utf8) { parked.append((request, reply)) } else { fallback.echo(request, context: context, reply: reply) }
    }

    func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        fallback.streamEcho(request, context: context, reply: reply)
    }

    func releaseAll() {
        for (request, deferred) in parked {
            var reply = Pfpeers_EchoReply()
            reply.data = request.data
            deferred.resolve(reply)
        }
        parked.removeAll()
    }
}

extension IPCHost {
    var parkedService: ParkingEchoService? { exposedServicesForTesting.first as? ParkingEchoService }
}
