// How a host answers each frame (../shared/DESIGN.md, "Wire contract"):
// * BindService: success with the service id and its methods (ids 1...N in .proto order), or
//   success = false for an unknown name;
// * InvokeMethod: the method runs with a Deferred; unknown method ids and undecodable arguments
//   are answered success = false, has_more = false, even when drop_reply is set;
// * SetPeerIdentity: taken once, only from peers without kernel credentials; no reply;
// * anything else: RequestError("unknown request").

import Logging
import SwiftProtobuf

extension IPCHost {
    /// A frame as the deserializer hands it over: the hot kind, InvokeMethod, with its
    /// arguments still in the receive buffer.
    func dispatch(_ frame: ReceivedFrame, from client: HostClient) {
        switch frame {
        case .invokeMethod(let requestID, let serviceID, let methodID, let dropReply, let arguments):
            answerInvoke(
                requestID: requestID, serviceID: serviceID, methodID: methodID, dropReply: dropReply,
                arguments: RawSpan(_unsafeBytes: arguments), client: client)
        case .invokeMethodReply(let requestID, _, _, _):
            answerUnknownRequest(requestID, client: client)
        case .other(let frame):
            dispatch(frame, from: client)
        }
    }

    func dispatch(_ frame: IPCFrame, from client: HostClient) {
        switch frame.msg {
        case .msgBindService(let bind):
            answerBind(bind, requestID: frame.requestID, client: client)
        case .msgInvokeMethod(let invoke):
            invoke.argsProto.withUnsafeBytes { arguments in
                answerInvoke(
                    requestID: frame.requestID, serviceID: invoke.serviceID, methodID: invoke.methodID,
                    dropReply: invoke.dropReply, arguments: RawSpan(_unsafeBytes: arguments), client: client)
            }
        case .setPeerIdentity(let identity):
            acceptPeerIdentity(identity, client: client)
        default:
            answerUnknownRequest(frame.requestID, client: client)
        }
    }

    private func answerUnknownRequest(_ requestID: UInt64, client: HostClient) {
        var reply = IPCFrame()
        reply.requestID = requestID
        reply.msgRequestError.error = "unknown request"
        client.connection.sendFrame(reply, maxPayloadSize: maxPayloadSize, logger: logger)
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
            // Per request and caused by the peer, which is told: debug, so that a peer cannot
            // flood the log (Perfetto logs these in debug builds only).
            logger.debug("client \(client.id) asked for unknown service \"\(bind.serviceName)\"")
            reply.msgBindServiceReply.success = false
        }
        client.connection.sendFrame(reply, maxPayloadSize: maxPayloadSize, logger: logger)
    }

    private func answerInvoke(
        requestID: UInt64, serviceID: UInt32, methodID: UInt32, dropReply: Bool, arguments: RawSpan, client: HostClient
    ) {
        let sink = IPCReplySink(client: client, requestID: requestID, dropReply: dropReply)
        guard let service = service(withID: serviceID),
            methodID >= 1, Int(methodID) <= service.serviceDescriptor.methods.count
        else {
            logger.debug("client \(client.id) invoked unknown method \(serviceID):\(methodID)")
            sink.sendFailure()
            return
        }
        let accepted = service.invoke(
            methodIndex: Int(methodID) - 1, arguments: arguments, context: client.callContext, reply: sink)
        if !accepted {
            logger.debug("client \(client.id) sent undecodable arguments to \(service.serviceDescriptor.name)")
            sink.sendFailure()
        }
    }

    /// Longest machine name kept from a peer (names are matched by trace configs, not stored
    /// in bulk; a peer gets no more room than that).
    static let maxMachineNameLength = 256

    private func acceptPeerIdentity(_ identity: IPCFrame.SetPeerIdentity, client: HostClient) {
        guard !client.hasPeerIdentity else {
            logger.debug("ignoring SetPeerIdentity from client \(client.id): identity already known")
            return
        }
        client.hasPeerIdentity = true
        if identity.hasPid { client.info.pid = identity.pid }
        if identity.hasUid { client.info.uid = UInt32(bitPattern: identity.uid) }
        if identity.hasMachineIDHint, !identity.machineIDHint.isEmpty {
            client.info.machineID = machineID(hint: identity.machineIDHint)
        }
        // Without a hint the machine stays the one its address names (Perfetto hashes the
        // host's own address there, which gives every hintless peer the same machine).
        if identity.hasMachineName, !identity.machineName.isEmpty {
            client.info.machineName = String(identity.machineName.prefix(Self.maxMachineNameLength))
        }
    }
}
