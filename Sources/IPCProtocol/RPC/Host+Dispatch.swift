// How a host answers each frame (../shared/DESIGN.md, "Wire contract"):
// * BindService: success with the service id and its methods (ids 1...N in .proto order), or
//   success = false for an unknown name;
// * InvokeMethod: the method runs with a Deferred; unknown method ids and undecodable arguments
//   are answered success = false, has_more = false, even when drop_reply is set;
// * SetPeerIdentity: taken once, only from peers without kernel credentials; no reply;
// * anything else: RequestError("unknown request").

import Foundation
import Logging
import SwiftProtobuf

extension IPCHost {
    func dispatch(_ frame: IPCFrame, from client: HostClient) {
        switch frame.msg {
        case .msgBindService(let bind):
            answerBind(bind, requestID: frame.requestID, client: client)
        case .msgInvokeMethod(let invoke):
            answerInvoke(invoke, requestID: frame.requestID, client: client)
        case .setPeerIdentity(let identity):
            acceptPeerIdentity(identity, client: client)
        default:
            var reply = IPCFrame()
            reply.requestID = frame.requestID
            reply.msgRequestError.error = "unknown request"
            client.connection.sendFrame(reply, maxPayloadSize: maxPayloadSize, logger: logger)
        }
    }

    private func answerBind(_ bind: IPCFrame.BindService, requestID: UInt64, client: HostClient) {
        var reply = IPCFrame()
        reply.requestID = requestID
        if let id = serviceID(named: bind.serviceName), let service = service(withID: id) {
            reply.msgBindServiceReply.success = true
            reply.msgBindServiceReply.serviceID = id
            reply.msgBindServiceReply.methods = service.serviceDescriptor.methods.enumerated().map { index, method in
                var info = IPCFrame.BindServiceReply.MethodInfo()
                info.id = UInt32(index + 1)
                info.name = method.name
                return info
            }
        } else {
            logger.info("client \(client.id) asked for unknown service \"\(bind.serviceName)\"")
            reply.msgBindServiceReply.success = false
        }
        client.connection.sendFrame(reply, maxPayloadSize: maxPayloadSize, logger: logger)
    }

    private func answerInvoke(_ invoke: IPCFrame.InvokeMethod, requestID: UInt64, client: HostClient) {
        let sink = IPCReplySink(client: client, requestID: requestID, dropReply: invoke.dropReply)
        guard let service = service(withID: invoke.serviceID),
            invoke.methodID >= 1, Int(invoke.methodID) <= service.serviceDescriptor.methods.count
        else {
            logger.info("client \(client.id) invoked unknown method \(invoke.serviceID):\(invoke.methodID)")
            sink.sendFailure()
            return
        }
        let accepted = service.invoke(
            methodIndex: Int(invoke.methodID) - 1, arguments: invoke.argsProto, context: client.callContext, reply: sink)
        if !accepted {
            logger.info("client \(client.id) sent undecodable arguments to \(service.serviceDescriptor.name)")
            sink.sendFailure()
        }
    }

    private func acceptPeerIdentity(_ identity: IPCFrame.SetPeerIdentity, client: HostClient) {
        guard !client.hasPeerIdentity else {
            logger.info("ignoring SetPeerIdentity from client \(client.id): identity already known")
            return
        }
        client.hasPeerIdentity = true
        if identity.hasPid { client.info.pid = identity.pid }
        if identity.hasUid { client.info.uid = UInt32(bitPattern: identity.uid) }
        if identity.hasMachineIDHint, !identity.machineIDHint.isEmpty {
            client.info.machineID = machineID(hint: identity.machineIDHint)
        }
    }
}
