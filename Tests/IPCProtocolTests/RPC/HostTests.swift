// The host against a raw client that writes frames by hand (Perfetto's host_impl_unittest,
// in our words). Each test is one behaviour of the wire contract.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

@Suite("Host")
struct HostTests {
    @Test func bindingAnUnknownServiceFails() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.bind("NoSuchService", requestID: 1))
        let reply = try #require(harness.frames(from: client, count: 1).first)
        #expect(reply.requestID == 1)
        #expect(reply.msgBindServiceReply.hasSuccess)
        #expect(!reply.msgBindServiceReply.success)
    }

    @Test func aUidPastItsClientLimitHasItsNewcomersClosed() throws {
        // One uid opening connections until the service ran out of descriptors locked every
        // other client out (outside tester, round six).
        let harness = try RPCHarness()
        let host = IPCHost(transport: harness.transport, logger: .quiet)
        host.expose(EchoServiceImplementation())
        host.maxClientsPerUID = 2
        host.clientLimitExemptUIDs = []  // the test may run as root, exempt by default
        harness.keep(host)
        func connect() throws -> RawFramePeer {
            let (peer, other) = RawFramePeer.pair()
            host.adopt(try harness.transport.adoptConnection(fd: other.release()))
            return peer
        }
        var peers = try (0..<3).map { _ in try connect() }
        #expect(host.clientsRefusedForTheirUID == 1)
        harness.run(until: { _ = peers[2].poll(); return peers[2].sawEndOfStream }, "the third was not closed")
        for (index, peer) in peers[0..<2].enumerated() {
            peer.send(TestFrames.bind("EchoService", requestID: UInt64(index + 1)))
            #expect(harness.frames(from: peer, count: 1).first?.msgBindServiceReply.success == true)
        }
        // One leaves: a newcomer of the same uid is served again.
        peers.removeFirst()
        harness.run(until: { host.connectedClientCountForTesting == 1 })
        let newcomer = try connect()
        newcomer.send(TestFrames.bind("EchoService", requestID: 1))
        #expect(harness.frames(from: newcomer, count: 1).first?.msgBindServiceReply.success == true)
        #expect(host.clientsRefusedForTheirUID == 1)
        // An exempt uid (root, by default) is not limited.
        host.clientLimitExemptUIDs = [getuid()]
        let exempt = try connect()
        exempt.send(TestFrames.bind("EchoService", requestID: 1))
        #expect(harness.frames(from: exempt, count: 1).first?.msgBindServiceReply.success == true)
    }

    @Test func bindingReturnsServiceIDAndMethodsInProtoOrder() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.bind("EchoService", requestID: 1))
        let reply = try #require(harness.frames(from: client, count: 1).first).msgBindServiceReply
        #expect(reply.success)
        #expect(reply.serviceID == 1)
        #expect(reply.methods.map(\.id) == [1, 2])
        #expect(reply.methods.map(\.name) == ["Echo", "StreamEcho"])
    }

    @Test func invokingAnUnknownMethodFailsEvenWithDropReply() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.invoke(serviceID: 1, methodID: 3, arguments: Data(), requestID: 1, dropReply: true))
        client.send(TestFrames.invoke(serviceID: 9, methodID: 1, arguments: Data(), requestID: 2))
        let frames = harness.frames(from: client, count: 2)
        #expect(frames.map(\.requestID) == [1, 2])
        for frame in frames {
            #expect(frame.msgInvokeMethodReply.hasSuccess && !frame.msgInvokeMethodReply.success)
            #expect(frame.msgInvokeMethodReply.hasHasMore_p && !frame.msgInvokeMethodReply.hasMore)
        }
    }

    @Test func undecodableArgumentsFail() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: Data([0xFF, 0xFF]), requestID: 4))
        let reply = try #require(harness.frames(from: client, count: 1).first)
        #expect(reply.requestID == 4)
        #expect(!reply.msgInvokeMethodReply.success)
    }

    @Test func invokingEchoReplies() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("hello", seq: 7).encoded, requestID: 3))
        let frame = try #require(harness.frames(from: client, count: 1).first)
        #expect(frame.requestID == 3)
        #expect(frame.msgInvokeMethodReply.success)
        #expect(!frame.msgInvokeMethodReply.hasMore)
        let reply = try #require(decodeEchoReply(frame))
        #expect(reply.data == Data("hello".utf8))
        #expect(reply.seq == 7)
        #expect(reply.receivedFdSize == -1)
    }

    @Test func dropReplySendsNothingBack() throws {
        let harness = try RPCHarness()
        let service = EchoServiceImplementation()
        let (_, client) = try harness.hostWithRawClient(service: service)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("quiet").encoded, requestID: 1, dropReply: true))
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("loud").encoded, requestID: 2))
        let frames = harness.frames(from: client, count: 1)
        harness.settle()
        client.poll()
        #expect(client.frames.map(\.requestID) == [2], "only the call that wants a reply gets one")
        #expect(frames.count == 1)
        #expect(service.echoCount == 2)
    }

    @Test func fileDescriptorReachesTheService() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        let file = FileDescriptors.memfd(named: "to-host", content: [UInt8](repeating: 1, count: 10))
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("with-fd").encoded, requestID: 1), fd: file.rawValue)
        let frame = try #require(harness.frames(from: client, count: 1).first)
        #expect(decodeEchoReply(frame)?.receivedFdSize == 10)
    }

    @Test func receivedFDIsOfferedToTheNextCallThatTakesIt() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        // The fd arrives with a bind (which does not take it); the following Echo takes it.
        let file = FileDescriptors.memfd(named: "early", content: [UInt8](repeating: 2, count: 33))
        client.send(TestFrames.bind("EchoService", requestID: 1), fd: file.rawValue)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("a").encoded, requestID: 2))
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("b").encoded, requestID: 3))
        let frames = harness.frames(from: client, count: 3)
        #expect(decodeEchoReply(frames[1])?.receivedFdSize == 33)
        #expect(decodeEchoReply(frames[2])?.receivedFdSize == -1, "taken once")
    }

    @Test func serviceCanReplyWithAFileDescriptor() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("fd-please", wantFD: true).encoded, requestID: 1))
        _ = harness.frames(from: client, count: 1)
        #expect(client.receivedFDs.count == 1)
        #expect(FileDescriptors.content(of: client.receivedFDs[0].rawValue) == Array("fd-payload:fd-please".utf8))
    }

    @Test func streamingRepliesRepeatTheRequestIDAndEndWithoutHasMore() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.invoke(serviceID: 1, methodID: 2, arguments: echoRequest("s", count: 3).encoded, requestID: 5))
        let frames = harness.frames(from: client, count: 3)
        #expect(frames.map(\.requestID) == [5, 5, 5])
        #expect(frames.map(\.msgInvokeMethodReply.hasMore) == [true, true, false])
        #expect(frames.compactMap(decodeEchoReply).map(\.index) == [0, 1, 2])
    }

    @Test func clientInfoCarriesPeerCredentials() throws {
        let harness = try RPCHarness()
        let recorder = RecordingService()
        let (_, client) = try harness.hostWithRawClient(service: recorder)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("who").encoded, requestID: 1))
        harness.run(until: { !recorder.pending.isEmpty })
        let info = recorder.contexts[0]
        #expect(info.clientID == 1)
        #expect(info.uid == getuid())
        #expect(info.pid == getpid())
        #expect(info.machineID == 0)
    }

    @Test func replyResolvedLaterStillArrives() throws {
        let harness = try RPCHarness()
        let recorder = RecordingService()
        let (_, client) = try harness.hostWithRawClient(service: recorder)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("later").encoded, requestID: 9))
        harness.run(until: { !recorder.pending.isEmpty })
        #expect(client.poll() == 0)
        let deferred = recorder.pending.removeFirst()  // moved out of the handler
        var late = Pfpeers_EchoReply()
        late.data = Data("later".utf8)
        _ = harness.loop.scheduleTask(after: .milliseconds(5)) { deferred.resolve(late) }
        let frame = try #require(harness.frames(from: client, count: 1).first)
        #expect(frame.requestID == 9)
        #expect(decodeEchoReply(frame)?.data == Data("later".utf8))
    }

    @Test func releasedUnresolvedDeferredRepliesFailure() throws {
        let harness = try RPCHarness()
        let recorder = RecordingService()
        let (_, client) = try harness.hostWithRawClient(service: recorder)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("x").encoded, requestID: 2))
        harness.run(until: { !recorder.pending.isEmpty })
        recorder.pending.removeAll()
        let frame = try #require(harness.frames(from: client, count: 1).first)
        #expect(frame.requestID == 2)
        #expect(!frame.msgInvokeMethodReply.success)
        #expect(!frame.msgInvokeMethodReply.hasMore)
    }

    @Test func clientDisconnectingRightAfterInvokingIsSurvivedAndReported() throws {
        let harness = try RPCHarness()
        let recorder = RecordingService()
        let (host, client) = try harness.hostWithRawClient(service: recorder)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("bye").encoded, requestID: 1))
        client.close()
        harness.run(until: { recorder.disconnected.count == 1 })
        #expect(host.clientCount == 0)
        // The call arrived before the disconnect; answering it now goes nowhere, harmlessly.
        #expect(recorder.pending.count == 1)
        recorder.pending.first?.resolve(Pfpeers_EchoReply())
        recorder.pending.removeAll()
        #expect(recorder.disconnected.first?.clientID == 1)
    }

    @Test func unexpectedFrameTypesGetRequestError() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        client.send(TestFrames.reply(requestID: 12))
        let frame = try #require(harness.frames(from: client, count: 1).first)
        #expect(frame.requestID == 12)
        #expect(frame.msgRequestError.error == "unknown request")
    }

    @Test func setPeerIdentityIsIgnoredOnUnixSockets() throws {
        let harness = try RPCHarness()
        let recorder = RecordingService()
        let (_, client) = try harness.hostWithRawClient(service: recorder)
        var identity = IPCFrame()
        identity.setPeerIdentity.pid = 4242
        identity.setPeerIdentity.uid = 4343
        client.send(identity)
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("x").encoded, requestID: 1))
        harness.run(until: { !recorder.contexts.isEmpty })
        #expect(recorder.contexts[0].pid == getpid(), "kernel credentials win")
        #expect(client.poll() == 0, "SetPeerIdentity gets no reply")
    }

    @Test func setPeerIdentityIsTakenOnceFromTCPPeers() throws {
        let harness = try RPCHarness()
        let recorder = RecordingService()
        let host = try IPCHost(transport: harness.transport, listeningAt: "127.0.0.1:0", logger: .quiet)
        host.expose(recorder)
        let raw = RawTCPClient.connect(to: try #require(host.address))
        var identity = IPCFrame()
        identity.setPeerIdentity.pid = 4242
        identity.setPeerIdentity.uid = 4343
        identity.setPeerIdentity.machineIDHint = "other-machine"
        identity.setPeerIdentity.machineName = "guest"
        raw.send(identity)
        identity.setPeerIdentity.pid = 1
        identity.setPeerIdentity.machineIDHint = "a-third-machine"
        raw.send(identity)  // a second one is ignored
        raw.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("x").encoded, requestID: 1))
        harness.run(until: { !recorder.contexts.isEmpty })
        #expect(recorder.contexts[0].pid == 4242)
        #expect(recorder.contexts[0].uid == 4343)
        // Perfetto's derivation: the low 32 bits of FNV-1a-64("other-machine").
        #expect(recorder.contexts[0].machineID == 853_728_861)
        #expect(recorder.contexts[0].machineName == "guest")
        #expect(recorder.contexts[0].remoteAddress?.hasPrefix("127.0.0.1:") == true)
    }

    @Test func oversizedFrameClosesOnlyThatClient() throws {
        let harness = try RPCHarness()
        let (host, bad) = try harness.hostWithRawClient()
        let (good, other) = RawFramePeer.pair()
        host.adopt(try harness.transport.adoptConnection(fd: other.release()))
        var header: [UInt8] = []
        FrameSerializer.appendHeader(payloadSize: 4 << 30 - 1, to: &header)
        bad.sendRaw(header)
        harness.run(until: { bad.poll() >= 0 && bad.sawEndOfStream })
        good.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("still here").encoded, requestID: 1))
        let frame = try #require(harness.frames(from: good, count: 1).first)
        #expect(decodeEchoReply(frame)?.data == Data("still here".utf8))
        #expect(host.clientCount == 1)
    }

    @Test func releasingTheHostDisconnectsItsClientsSafely() throws {
        let harness = try RPCHarness()
        let service = EchoServiceImplementation()
        var host: IPCHost? = IPCHost(transport: harness.transport, logger: .quiet)
        host?.expose(service)
        let (client, other) = RawFramePeer.pair()
        host?.adopt(try harness.transport.adoptConnection(fd: other.release()))
        client.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("x").encoded, requestID: 1))
        host = nil
        harness.run(until: { client.poll() >= 0 && client.sawEndOfStream })
        #expect(client.frames.isEmpty)
        #expect(service.echoCount == 0, "nothing is dispatched after the host is gone")
    }

    @Test func exposingTheSameServiceNameTwiceIsRefused() throws {
        let harness = try RPCHarness()
        let host = IPCHost(transport: harness.transport, logger: .quiet)
        #expect(host.expose(EchoServiceImplementation()))
        #expect(!host.expose(EchoServiceImplementation()))
    }
}

/// An echo service that keeps every Deferred and context, to resolve them when the test says.
final class RecordingService: Pfpeers_EchoServiceHandler {
    var pending: [Deferred<Pfpeers_EchoReply>] = []
    var contexts: [IPCClientInfo] = []
    var disconnected: [IPCClientInfo] = []

    func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        contexts.append(context.client)
        pending.append(reply)
    }

    func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        contexts.append(context.client)
        pending.append(reply)
    }

    func clientDidDisconnect(_ client: IPCClientInfo) { disconnected.append(client) }
}

/// A blocking TCP client socket wrapped as a raw frame peer.
enum RawTCPClient {
    static func connect(to address: String) -> RawFramePeer {
        RawFramePeer(socket: FileDescriptors.connectedTCPSocket(address: address))
    }
}
