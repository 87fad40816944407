// Replays of the echo conversation recorded between Perfetto's own C++ IPC client and host
// (Fixtures/interop/echo): our host answers the captured client's bytes like the C++ host did,
// and our client, fed the captured host's replies, sends what the C++ client sent.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

@Suite("Echo replay against captured Perfetto bytes")
struct EchoReplayTests {
    static let capture = try! CapturedConversation.load(folder: "echo", connection: "conn0")

    @Test func ourHostAnswersTheCapturedClientLikePerfettoDid() throws {
        let harness = try RPCHarness()
        let (_, client) = try harness.hostWithRawClient()
        let requests = Self.capture.frames(.clientToServer)
        let expected = Self.capture.frames(.serverToClient)
        var clientFD: ScopedFD?
        for request in requests {
            if request.carriesFD {
                // The C++ client attached a 10-byte memfd to this request.
                clientFD = FileDescriptors.memfd(named: "captured-client-fd", content: [UInt8](repeating: 0x43, count: 10))
            }
            client.sendRaw(request.bytes, fd: request.carriesFD ? clientFD?.rawValue : nil)
        }
        let replies = harness.frames(from: client, count: expected.count)
        harness.settle()
        #expect(client.poll() == expected.count)

        for (ours, captured) in zip(replies, expected) {
            let theirs = try #require(try FrameDeserializer().feed(captured.bytes).first)
            let context = "reply #\(captured.index)"
            #expect(ours.requestID == theirs.requestID, "\(context)")
            #expect(ours.msg.map(kind) == theirs.msg.map(kind), "\(context)")
            switch theirs.msg {
            case .msgBindServiceReply(let reply):
                #expect(ours.msgBindServiceReply == reply, "\(context)")
            case .msgInvokeMethodReply(let reply):
                #expect(ours.msgInvokeMethodReply.success == reply.success, "\(context)")
                #expect(ours.msgInvokeMethodReply.hasMore == reply.hasMore, "\(context)")
                var ourPayload = try Pfpeers_EchoReply(serializedBytes: ours.msgInvokeMethodReply.replyProto)
                var theirPayload = try Pfpeers_EchoReply(serializedBytes: reply.replyProto)
                // The pid/uid are of whoever connected: the recording proxy there, us here.
                if theirPayload.hasPeerPid {
                    #expect(ourPayload.peerPid == getpid(), "\(context)")
                    ourPayload.clearPeerPid(); theirPayload.clearPeerPid()
                    ourPayload.clearPeerUid(); theirPayload.clearPeerUid()
                }
                #expect(ourPayload == theirPayload, "\(context)")
            default:
                Issue.record("\(context): unexpected frame in capture")
            }
        }
        // Exactly one reply carried an fd, as in the capture: the want_fd one.
        #expect(expected.filter(\.carriesFD).count == 1)
        #expect(client.receivedFDs.count == 1)
        #expect(FileDescriptors.content(of: client.receivedFDs[0].rawValue) == Array("fd-payload:fd-please".utf8))
    }

    @Test func ourClientSendsWhatThePerfettoClientSent() throws {
        let harness = try RPCHarness()
        let (client, host) = try harness.clientWithRawHost()
        let captured = Self.capture.frames(.clientToServer)
        let cannedReplies = Self.capture.frames(.serverToClient)
        let proxy = Pfpeers_EchoServiceProxy()
        var bound = false
        proxy.onConnect = { bound = true }
        client.bind(proxy)

        // Answer each request with the captured reply(ies) for the same request id.
        func answer(upTo count: Int) {
            harness.run(until: { host.poll() >= count })
            for frame in host.frames.suffix(host.frames.count - answered) {
                for reply in cannedReplies where reply.requestID == frame.requestID {
                    let fd = reply.carriesFD ? FileDescriptors.memfd(named: "canned", content: Array("fd-payload:fd-please".utf8)) : nil
                    host.sendRaw(reply.bytes, fd: fd?.rawValue)
                }
            }
            answered = host.frames.count
        }
        var answered = 0
        answer(upTo: 1)
        harness.run(until: { bound })

        var replies: [AsyncResult<Pfpeers_EchoReply>] = []
        let collect: (AsyncResult<Pfpeers_EchoReply>) -> Void = { replies.append($0) }
        proxy.echo(echoRequest("hello", seq: 0), reply: collect)
        proxy.echo(echoRequest("fd-please", seq: 1, wantFD: true), reply: collect)
        let clientFD = FileDescriptors.memfd(named: "client-fd", content: [UInt8](repeating: 1, count: 10))
        proxy.echo(echoRequest("with-client-fd", seq: 2), fd: clientFD.rawValue, reply: collect)
        proxy.streamEcho(echoRequest("stream", seq: 3, count: 3), reply: collect)
        for seq in 0..<3 { proxy.echo(echoRequest("pppppppp", seq: UInt32(seq)), reply: collect) }
        answer(upTo: captured.count)
        harness.run(until: { replies.count == cannedReplies.count - 1 })

        #expect(host.frames.count == captured.count)
        for (ours, theirs) in zip(host.frames, captured) {
            let decoded = try #require(try FrameDeserializer().feed(theirs.bytes).first)
            #expect(ours == decoded, "request #\(theirs.index): same fields, same values")
        }
        #expect(host.receivedFDs.count == 1, "only the with-client-fd request carried an fd")
        #expect(replies.map(\.isSuccess).allSatisfy { $0 })
        #expect(replies[1].fileDescriptor != nil)
        #expect(replies.map(\.hasMore) == [false, false, false, true, true, false, false, false, false])
    }
}

private func kind(_ msg: IPCFrame.OneOf_Msg) -> String {
    switch msg {
    case .msgBindService: return "BindService"
    case .msgBindServiceReply: return "BindServiceReply"
    case .msgInvokeMethod: return "InvokeMethod"
    case .msgInvokeMethodReply: return "InvokeMethodReply"
    case .msgRequestError: return "RequestError"
    case .setPeerIdentity: return "SetPeerIdentity"
    }
}
