// Echo requests and an async echo service, shared by the test targets.

import Foundation
import IPCEchoService
import IPCProtocol

/// An EchoRequest with the given fields set.
public func echoRequest(_ text: String, seq: UInt32 = 0, count: UInt32? = nil, wantFD: Bool = false) -> Pfpeers_EchoRequest {
    var request = Pfpeers_EchoRequest()
    request.data = Data(text.utf8)
    request.seq = seq
    if let count { request.count = count }
    if wantFD { request.wantFd = true }
    return request
}

extension Pfpeers_EchoRequest {
    /// The request's wire encoding.
    public var encoded: Data { try! serializedBytes() }
}

/// The echo service written with the async handler protocol. Data "fail" makes Echo throw.
public final class AsyncEchoService: Pfpeers_EchoServiceAsyncHandler {
    public init() {}

    public func echo(_ request: Pfpeers_EchoRequest, context: IPCAsyncCallContext) async throws -> Pfpeers_EchoReply {
        if request.data == Data("fail".utf8) { throw IPCError(.invalidArgument, "asked to fail") }
        var reply = Pfpeers_EchoReply()
        reply.data = request.data
        reply.seq = request.seq
        reply.peerPid = context.client.pid ?? 0
        return reply
    }

    public func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCAsyncCallContext, replies: IPCReplyWriter<Pfpeers_EchoReply>) async throws {
        for index in 0..<request.count {
            var reply = Pfpeers_EchoReply()
            reply.index = index
            replies.write(reply)
        }
    }
}
