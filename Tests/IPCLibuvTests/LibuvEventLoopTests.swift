// The libuv loop's contract, its two ways of use, and libuv <-> epoll interoperation.

import CLibuv
import Foundation
import Glibc
import IPCEchoService
import IPCLibuv
import IPCProtocol
import IPCUnixSocket
import Synchronization
import Testing
import TestSupport

@Suite("LibuvEventLoop")
struct LibuvEventLoopTests {
    @Test func postedTasksRunLaterAndInOrder() throws {
        let loop = try LibuvEventLoop()
        defer { loop.shutdown() }
        let order = Mutex<[Int]>([])
        for index in 0..<100 { loop.execute { order.withLock { $0.append(index) } } }
        #expect(order.withLock { $0.isEmpty })
        #expect(loop.run(until: { order.withLock { $0.count == 100 } }, timeout: .seconds(5)))
        #expect(order.withLock { $0 } == Array(0..<100))
    }

    @Test func delayedTasksFireInOrderAndCanBeCancelled() throws {
        let loop = try LibuvEventLoop()
        defer { loop.shutdown() }
        var fired: [String] = []
        _ = loop.scheduleTask(after: .milliseconds(20)) { fired.append("20") }
        _ = loop.scheduleTask(after: .milliseconds(5)) { fired.append("5") }
        loop.scheduleTask(after: .milliseconds(10)) { fired.append("cancelled") }.cancel()
        #expect(loop.run(until: { fired.count == 2 }, timeout: .seconds(5)))
        #expect(fired == ["5", "20"])
    }

    @Test func ownThreadLoopServesTasksFromOtherThreads() throws {
        let loop = try LibuvEventLoop.startOnNewThread()
        defer { loop.shutdown() }
        let count = Atomic<Int>(0)
        for _ in 0..<1000 { loop.execute { if loop.inEventLoop { count.add(1, ordering: .relaxed) } } }
        let deadline = ContinuousClock.now + .seconds(5)
        while count.load(ordering: .relaxed) < 1000, ContinuousClock.now < deadline { sched_yield() }
        #expect(count.load(ordering: .relaxed) == 1000)
    }

    @Test func postingAfterShutdownIsDroppedSafely() throws {
        let loop = try LibuvEventLoop.startOnNewThread()
        loop.shutdown()
        // A proxy or client released after its loop stopped posts its clean-up: dropped,
        // not a send on a closed uv handle (which aborts inside libuv).
        loop.execute { Issue.record("ran after shutdown") }
    }

    @Test func livesInsideAnApplicationsOwnLoop() throws {
        // The application owns the uv loop and runs it; the IPC host and client live in it.
        let appLoop = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        #expect(uv_loop_init(appLoop) == 0)
        defer { uv_loop_close(appLoop); appLoop.deallocate() }
        let directory = TemporaryDirectory()
        defer { directory.remove() }

        let ipcLoop = try LibuvEventLoop(adopting: appLoop)
        let backend = IPCBackend.libuv(directory.path + "/app.sock", loop: ipcLoop)
        var host: IPCHost? = try IPCHost(backend: backend)
        host?.expose(EchoServiceImplementation())
        var client: IPCClient? = IPCClient(backend: backend)
        let proxy = Pfpeers_EchoServiceProxy()
        client?.bind(proxy)
        var reply: Pfpeers_EchoReply?
        proxy.onConnect = {
            var request = Pfpeers_EchoRequest()
            request.data = Data("inside the app's loop".utf8)
            proxy.echo(request) { reply = $0.message }
        }
        // The application's own loop turns, as it would in its main loop.
        let deadline = ContinuousClock.now + .seconds(5)
        while reply == nil, ContinuousClock.now < deadline { uv_run(appLoop, UV_RUN_ONCE) }
        #expect(reply?.data == Data("inside the app's loop".utf8))
        client = nil
        host = nil
        ipcLoop.shutdown()
        // Everything we opened is closed: the app's loop has no handles of ours left.
        uv_run(appLoop, UV_RUN_NOWAIT)
        #expect(uv_loop_alive(appLoop) == 0)
    }

    @Test(arguments: [true, false])
    func libuvAndEpollInteroperate(libuvHost: Bool) async throws {
        let epoll = try EpollEventLoop.startOnNewThread(name: "interop-epoll")
        let uv = try LibuvEventLoop.startOnNewThread()
        defer { epoll.shutdown(); uv.shutdown() }
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let address = directory.path + "/interop.sock"
        let keep = UncheckedSendableBox(Holder())
        let hostBackend: IPCBackend = libuvHost ? .libuv(address, loop: uv) : .unixSocket(address, loop: epoll)
        let clientBackend: IPCBackend = libuvHost ? .unixSocket(address, loop: epoll) : .libuv(address, loop: uv)
        try await onLoop(hostBackend.eventLoop) {
            let host = try IPCHost(backend: hostBackend)
            host.expose(EchoServiceImplementation())
            keep.value.objects.append(host)
        }
        let proxy = Pfpeers_EchoServiceProxy()
        try await onLoop(clientBackend.eventLoop) {
            let client = IPCClient(backend: clientBackend)
            client.bind(proxy)
            keep.value.objects.append(client)
        }
        try await proxy.waitUntilBound()
        var request = Pfpeers_EchoRequest()
        request.data = Data("across backends".utf8)
        request.wantFd = true
        let response = try await proxy.echoResponse(request)
        #expect(response.message.data == Data("across backends".utf8))
        #expect(response.message.peerPid == getpid())
        let fd = try #require(response.fileDescriptor)
        #expect(FileDescriptors.content(of: fd.rawValue) == Array("fd-payload:across backends".utf8))
        request.count = 3
        var indices: [UInt32] = []
        for try await reply in proxy.streamEcho(request) { indices.append(reply.index) }
        #expect(indices == [0, 1, 2])
        try await onLoop(clientBackend.eventLoop) { keep.value.objects.removeAll { $0 is IPCClient } }
        try await onLoop(hostBackend.eventLoop) { keep.value.objects.removeAll() }
    }
}

final class Holder { var objects: [AnyObject] = [] }

/// Runs `body` on `loop` and waits.
func onLoop(_ loop: any IPCEventLoop, _ body: @escaping @Sendable () throws -> Void) async throws {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
        loop.execute { continuation.resume(with: Result { try body() }) }
    }
}
