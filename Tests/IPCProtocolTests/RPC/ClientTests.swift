// The client against a raw host that answers frames by hand (Perfetto's client_impl_unittest,
// in our words).

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

/// Records what a proxy's callbacks report.
final class ProxyEvents {
    var connected = 0
    var failures: [IPCError.Code] = []
    var disconnects: [IPCError.Code] = []

    func observe(_ proxy: ServiceProxy) {
        proxy.onConnect = { [unowned self] in connected += 1 }
        proxy.onConnectionFailed = { [unowned self] in failures.append($0.code) }
        proxy.onDisconnect = { [unowned self] in disconnects.append($0.code) }
    }
}

/// Collects callback results.
final class Results<Message> {
    var all: [AsyncResult<Message>] = []
    var callback: (AsyncResult<Message>) -> Void { { [unowned self] in all.append($0) } }
}

@Suite("Client")
struct ClientTests {
    /// An echo proxy asking a raw host to bind it: the BindService frame the host received.
    func bindingProxy(
        _ harness: RPCHarness
    ) throws -> (IPCClient, Pfpeers_EchoServiceProxy, RawFramePeer, ProxyEvents, IPCFrame) {
        let (client, host) = try harness.clientWithRawHost()
        let proxy = Pfpeers_EchoServiceProxy()
        let events = ProxyEvents()
        events.observe(proxy)
        client.bind(proxy)
        let bind = try #require(harness.frames(from: host, count: 1).first)
        return (client, proxy, host, events, bind)
    }

    /// Binds an echo proxy through a raw host that answers with `methods`.
    func boundProxy(
        _ harness: RPCHarness, methods: [String] = ["Echo", "StreamEcho"]
    ) throws -> (IPCClient, Pfpeers_EchoServiceProxy, RawFramePeer, ProxyEvents) {
        let (client, proxy, host, events, bind) = try bindingProxy(harness)
        #expect(bind.msgBindService.serviceName == "EchoService")
        host.send(TestFrames.bindReply(requestID: bind.requestID, success: true, serviceID: 7, methods: methods))
        harness.run(until: { events.connected == 1 })
        return (client, proxy, host, events)
    }

    @Test func bindsAndInvokesWithIncreasingRequestIDs() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, _) = try boundProxy(harness)
        let results = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("one"), reply: results.callback)
        proxy.echo(echoRequest("two"), reply: nil)
        let frames = harness.frames(from: host, count: 3)
        #expect(frames.map(\.requestID) == [1, 2, 3], "binds count as requests")
        #expect(frames[1].msgInvokeMethod.serviceID == 7)
        #expect(frames[1].msgInvokeMethod.methodID == 1)
        #expect(frames[1].msgInvokeMethod.dropReply == false)
        #expect(frames[2].msgInvokeMethod.dropReply == true, "no callback means drop_reply")
        var reply = Pfpeers_EchoReply()
        reply.data = Data("one".utf8)
        host.send(TestFrames.reply(requestID: 2, payload: try reply.serializedBytes()))
        harness.run(until: { results.all.count == 1 })
        #expect(results.all[0].message?.data == Data("one".utf8))
        #expect(!results.all[0].hasMore)
    }

    @Test func aUnaryCallEndsAtItsFirstReplyWhateverHasMoreSays() throws {
        // A host answering a unary call with has_more cannot call the caller back again and
        // again, nor keep the call's entry (and its callback) alive.
        let harness = try RPCHarness()
        let (client, proxy, host, _) = try boundProxy(harness)
        let unary = Results<Pfpeers_EchoReply>()
        let stream = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("once"), reply: unary.callback)
        proxy.streamEcho(echoRequest("many", count: 3), reply: stream.callback)
        let frames = harness.frames(from: host, count: 3)
        for _ in 0..<3 {
            host.send(TestFrames.reply(requestID: frames[1].requestID, hasMore: true, payload: Data()))
            host.send(TestFrames.reply(requestID: frames[2].requestID, hasMore: true, payload: Data()))
        }
        harness.run(until: { stream.all.count == 3 })
        harness.settle()
        #expect(unary.all.map(\.isSuccess) == [true], "called back once")
        #expect(unary.all.map(\.hasMore) == [false], "and told it was the last")
        #expect(stream.all.map(\.hasMore) == [true, true, true], "a streaming call still streams")
        #expect(client.pendingRequestCountForTesting == 1, "only the stream is still waiting")
    }

    @Test func aReplyOfTheWrongKindLeavesTheRequestWaitingForItsOwn() throws {
        let harness = try RPCHarness()
        let (client, proxy, host, events, bind) = try bindingProxy(harness)
        // A call's reply naming the bind's request id, then the bind's own reply.
        host.send(TestFrames.reply(requestID: bind.requestID))
        host.send(TestFrames.bindReply(requestID: bind.requestID, success: true, serviceID: 7, methods: ["Echo"]))
        harness.run(until: { events.connected == 1 }, "a stray reply made the bind wait for ever")
        // And the other way round: a bind's reply naming a call's request id.
        let results = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("x"), reply: results.callback)
        let call = try #require(harness.frames(from: host, count: 2).dropFirst().first)
        host.send(TestFrames.bindReply(requestID: call.requestID, success: true, serviceID: 8))
        host.send(TestFrames.reply(requestID: call.requestID))
        harness.run(until: { results.all.count == 1 }, "a stray bind reply lost the call")
        #expect(results.all[0].isSuccess)
        withExtendedLifetime(client) {}
    }

    @Test func methodIDsComeFromTheBindReplyByName() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, _) = try boundProxy(harness, methods: ["StreamEcho", "Other", "Echo"])
        proxy.echo(echoRequest("x"), reply: nil)
        #expect(harness.frames(from: host, count: 2)[1].msgInvokeMethod.methodID == 3)
    }

    @Test func unknownMethodIsRejectedLocally() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, _) = try boundProxy(harness, methods: ["StreamEcho"])
        let results = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("x"), reply: results.callback)
        #expect(results.all.isEmpty, "rejected on a later turn, never inside the call")
        harness.run(until: { results.all.count == 1 })
        #expect(results.all[0].error?.code == .methodNotFound)
        harness.settle()
        #expect(results.all.count == 1)
        #expect(host.poll() == 1, "nothing was sent")
    }

    @Test func streamingDeliversEveryReplyThenEnds() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, _) = try boundProxy(harness)
        let results = Results<Pfpeers_EchoReply>()
        proxy.streamEcho(echoRequest("s", count: 3), reply: results.callback)
        let id = harness.frames(from: host, count: 2)[1].requestID
        for index in 0..<3 {
            var reply = Pfpeers_EchoReply()
            reply.index = UInt32(index)
            host.send(TestFrames.reply(requestID: id, hasMore: index < 2, payload: try reply.serializedBytes()))
        }
        host.send(TestFrames.reply(requestID: id, payload: Data()))  // after the end: ignored
        harness.run(until: { results.all.count == 3 })
        harness.settle()
        #expect(results.all.map(\.hasMore) == [true, true, false])
        #expect(results.all.compactMap(\.message?.index) == [0, 1, 2])
    }

    @Test func fileDescriptorsTravelBothWays() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, _) = try boundProxy(harness)
        let outgoing = FileDescriptors.memfd(named: "client-out", content: Array("to host".utf8))
        let results = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("fd"), fd: outgoing.rawValue, reply: results.callback)
        let invoke = harness.frames(from: host, count: 2)[1]
        #expect(host.receivedFDs.count == 1)
        #expect(FileDescriptors.content(of: host.receivedFDs[0].rawValue) == Array("to host".utf8))
        let incoming = FileDescriptors.memfd(named: "host-out", content: Array("to client".utf8))
        host.send(TestFrames.reply(requestID: invoke.requestID, payload: Data()), fd: incoming.rawValue)
        harness.run(until: { results.all.count == 1 })
        let fd = try #require(results.all[0].fileDescriptor)
        #expect(FileDescriptors.content(of: fd.rawValue) == Array("to client".utf8))
    }

    @Test func bindingTheSameServiceTwiceFailsTheLaterProxy() throws {
        let harness = try RPCHarness()
        let (client, first, host, firstEvents) = try boundProxy(harness)
        let second = Pfpeers_EchoServiceProxy()
        let secondEvents = ProxyEvents()
        secondEvents.observe(second)
        client.bind(second)
        harness.run(until: { !secondEvents.failures.isEmpty })
        #expect(secondEvents.failures == [.alreadyBound])
        #expect(first.isBound)
        #expect(firstEvents.failures.isEmpty)
        #expect(host.poll() == 1, "no second BindService on the wire")
    }

    @Test func bindsMadeBeforeConnectingAreQueued() throws {
        let harness = try RPCHarness()
        let listener = RawListener(path: harness.socketPath)
        let client = IPCClient(transport: harness.transport, connectingTo: harness.socketPath)
        harness.keep(client)
        let echo = Pfpeers_EchoServiceProxy()
        let events = ProxyEvents()
        events.observe(echo)
        client.bind(echo)
        #expect(echo.state == .binding)
        var host: RawFramePeer?
        harness.run(until: { host = host ?? listener.accept(); return host != nil })
        let acceptedHost = try #require(host)
        let bind = try #require(harness.frames(from: acceptedHost, count: 1).first)
        #expect(bind.requestID == 1)
        #expect(bind.msgBindService.serviceName == "EchoService")
        host?.send(TestFrames.bindReply(requestID: 1, success: true, methods: ["Echo"]))
        harness.run(until: { events.connected == 1 })
    }

    @Test func proxyDestroyedWithACallPendingIsNeverCalledBack() throws {
        let harness = try RPCHarness()
        var (_, proxy, host, _): (IPCClient, Pfpeers_EchoServiceProxy?, RawFramePeer, ProxyEvents) = try boundProxy(harness)
        var called = false
        weak var weakCallbackOwner: CallbackOwner?
        do {
            let owner = CallbackOwner { called = true }
            weakCallbackOwner = owner
            proxy?.echo(echoRequest("x"), reply: { _ in owner.fire() })
        }
        let id = harness.frames(from: host, count: 2)[1].requestID
        proxy = nil
        harness.settle()
        #expect(weakCallbackOwner == nil, "the callback was released")
        host.send(TestFrames.reply(requestID: id, payload: Data()))
        harness.settle()
        #expect(!called)
    }

    @Test func clientDestroyedBeforeProxyReleasesCallbacksWithoutCalling() throws {
        let harness = try RPCHarness()
        let (peer, other) = RawFramePeer.pair()
        var client: IPCClient? = IPCClient(connection: try harness.transport.adoptConnection(fd: other.release()), eventLoop: harness.loop)
        let proxy = Pfpeers_EchoServiceProxy()
        let events = ProxyEvents()
        events.observe(proxy)
        client?.bind(proxy)
        let bind = try #require(harness.frames(from: peer, count: 1).first)
        peer.send(TestFrames.bindReply(requestID: bind.requestID, success: true, methods: ["Echo"]))
        harness.run(until: { events.connected == 1 })
        let results = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("x"), reply: results.callback)
        client = nil
        harness.run(until: { peer.poll() >= 0 && peer.sawEndOfStream })
        #expect(results.all.isEmpty, "no callback after teardown")
        #expect(events.disconnects.isEmpty)
        // Calling a proxy whose client is gone is rejected (on a later turn), not a crash.
        proxy.echo(echoRequest("y"), reply: results.callback)
        harness.run(until: { !results.all.isEmpty })
        #expect(results.all.first?.error?.code == .disconnected)
    }

    @Test func unreachableHostFailsBindsAndTellsTheClient() throws {
        let harness = try RPCHarness()
        let client = IPCClient(transport: harness.transport, connectingTo: harness.directory.path + "/nobody.sock")
        var clientError: IPCError?
        client.onDisconnect = { clientError = $0 }
        let proxy = Pfpeers_EchoServiceProxy()
        let events = ProxyEvents()
        events.observe(proxy)
        client.bind(proxy)
        harness.run(until: { !events.failures.isEmpty })
        #expect(events.failures == [.connectionFailed])
        #expect(clientError?.code == .connectionFailed)
        #expect(proxy.state == .failed)
    }

    @Test func hostDyingAfterBindRejectsOutstandingCallsOnce() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, events) = try boundProxy(harness)
        let unary = Results<Pfpeers_EchoReply>()
        let stream = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("a"), reply: unary.callback)
        proxy.streamEcho(echoRequest("b", count: 5), reply: stream.callback)
        let id = harness.frames(from: host, count: 3)[2].requestID
        host.send(TestFrames.reply(requestID: id, hasMore: true, payload: Data()))
        harness.run(until: { stream.all.count == 1 })
        host.close()
        harness.run(until: { events.disconnects.count == 1 })
        harness.settle()
        #expect(unary.all.map(\.error?.code) == [.disconnected])
        #expect(stream.all.map(\.isSuccess) == [true, false], "streaming calls are rejected too, once")
        #expect(events.disconnects == [.disconnected])
        #expect(proxy.state == .disconnected)
    }

    @Test func hostDyingBeforeBindReplyFailsTheBinding() throws {
        let harness = try RPCHarness()
        let (client, host) = try harness.clientWithRawHost()
        let proxy = Pfpeers_EchoServiceProxy()
        let events = ProxyEvents()
        events.observe(proxy)
        client.bind(proxy)
        _ = harness.frames(from: host, count: 1)
        host.close()
        harness.run(until: { !events.failures.isEmpty })
        #expect(events.failures == [.disconnected])
        #expect(events.disconnects.isEmpty)
    }

    @Test func unknownServiceFailsTheBinding() throws {
        let harness = try RPCHarness()
        let (client, proxy, host, events, bind) = try bindingProxy(harness)
        host.send(TestFrames.bindReply(requestID: bind.requestID, success: false))
        harness.run(until: { !events.failures.isEmpty })
        #expect(events.failures == [.serviceNotFound])
        withExtendedLifetime((client, proxy)) {}
    }

    @Test func destroyingTheClientInsideItsDisconnectCallbackIsSafe() throws {
        let harness = try RPCHarness()
        let (peer, other) = RawFramePeer.pair()
        var client: IPCClient? = IPCClient(connection: try harness.transport.adoptConnection(fd: other.release()), eventLoop: harness.loop)
        var disconnects = 0
        client?.onDisconnect = { _ in
            disconnects += 1
            client = nil
        }
        let proxy = Pfpeers_EchoServiceProxy()
        client?.bind(proxy)
        _ = harness.frames(from: peer, count: 1)
        peer.close()
        harness.run(until: { client == nil })
        harness.settle()
        #expect(disconnects == 1)
        #expect(proxy.state == .failed)
    }

    @Test func hostRejectionIsReportedAsRemoteFailure() throws {
        let harness = try RPCHarness()
        let (_, proxy, host, _) = try boundProxy(harness)
        let results = Results<Pfpeers_EchoReply>()
        proxy.echo(echoRequest("x"), reply: results.callback)
        let id = harness.frames(from: host, count: 2)[1].requestID
        host.send(TestFrames.reply(requestID: id, success: false))
        harness.run(until: { results.all.count == 1 })
        #expect(results.all[0].error?.code == .remoteFailure)
    }
}

/// Fires a closure; used to observe that a callback (and what it captured) was released.
final class CallbackOwner {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func fire() { body() }
}
