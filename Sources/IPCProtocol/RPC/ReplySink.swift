// The reply channel of one call a host serves. Generated handlers wrap it in a Deferred
// (`Deferred(replyingTo:)`); hand-written services may also call `send` on it directly.
//
// Contract:
// * replies go out as InvokeMethodReply frames with the call's request id; nothing is sent
//   for a drop_reply call, except the host's own failures (unknown method, undecodable
//   arguments), which Perfetto answers even then;
// * after a final reply (has_more false, or a rejection) nothing more is sent;
// * a reply too large for a frame is logged and replaced by a failure, so the caller still
//   hears back;
// * a client that went away makes sending a no-op.

import Logging
import SwiftProtobuf

/// Where a service's replies to one call go.
public final class IPCReplySink {
    private enum Route {
        /// A client of a host: replies become frames on its connection.
        case host(HostClient, requestID: UInt64, dropReply: Bool)
        /// A service without a value entry point called through a direct binding: replies go
        /// to the binding's Deferred.
        case forward(any ReplyForwarding)
    }
    private let route: Route
    /// Replies go to a Deferred rather than onto the wire.
    @usableFromInline let isForwarding: Bool
    @exclusivity(unchecked) @usableFromInline var finished = false

    init(client: HostClient, requestID: UInt64, dropReply: Bool) {
        route = .host(client, requestID: requestID, dropReply: dropReply)
        isForwarding = false
    }

    /// Replies sent on this call's connection that its peer has not taken yet (0 when the
    /// replies do not cross a connection). A service streaming much waits for it to fall.
    public var queuedSendBytes: Int {
        guard case .host(let client, _, _) = route, client.connection.state == .connected else { return 0 }
        return client.connection.queuedSendBytes
    }

    /// Calls `callback` once when this call's connection has sent everything queued; false if
    /// that cannot be known (see ``IPCConnection/whenSendQueueDrains(_:)``).
    public func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool {
        guard case .host(let client, _, _) = route, client.connection.state == .connected else { return false }
        return client.connection.whenSendQueueDrains(callback)
    }

    init(forwardingTo forwarder: any ReplyForwarding) {
        route = .forward(forwarder)
        isForwarding = true
    }

    /// Sends one reply (or a rejection when `result.message` is nil). A reply with
    /// `hasMore == false`, or a rejection, is the last.
    public func send<Message: SwiftProtobuf.Message>(_ result: AsyncResult<Message>) {
        send(result) { try $0.serializedBytes() }
    }

    /// A Deferred whose results go to this sink.
    public func makeDeferred<Message: SwiftProtobuf.Message>(of type: Message.Type) -> Deferred<Message> {
        Deferred(replyingTo: self)
    }

    /// The hot path, specialized in the caller's module: `encode` writes the message straight
    /// into the frame's storage.
    @inlinable
    func send<Message>(_ result: AsyncResult<Message>, encode: (Message) throws -> OutgoingFrame.Payload) {
        guard !finished else { return }
        guard !isForwarding else { return forward(result) }
        var payload: OutgoingFrame.Payload?
        if let message = result.message {
            do {
                payload = try encode(message)
            } catch {
                return failEncoding(error)
            }
        }
        sendEncoded(
            success: result.isSuccess, hasMore: result.isSuccess && result.hasMore, payload: consume payload,
            fd: result.fileDescriptor)
    }

    /// Sends a reply whose message the service serialized itself: `write` fills the frame's
    /// `size` message bytes in place. Not for a forwarding sink (give it a decoded message).
    func sendSerialized(size: Int, hasMore: Bool, write: (UnsafeMutableRawBufferPointer) -> Void) {
        precondition(!isForwarding, "a forwarding sink takes messages")
        guard !finished else { return }
        var payload = OutgoingFrame.Payload(repeating: 0, count: size)
        payload.withUnsafeMutableBytes(write)
        sendEncoded(success: true, hasMore: hasMore, payload: consume payload, fd: nil)
    }

    @usableFromInline
    func forward<Message>(_ result: AsyncResult<Message>) {
        guard case .forward(let forwarder) = route else { return }
        if !result.hasMore || !result.isSuccess { finished = true }
        forwarder.forward(result)
    }

    @usableFromInline
    func sendEncoded(success: Bool, hasMore: Bool, payload: consuming OutgoingFrame.Payload?, fd: ScopedFD?) {
        guard case .host(let client, let requestID, let dropReply) = route else { return }
        guard !dropReply else {
            if !hasMore { finished = true }
            return
        }
        let frame = OutgoingFrame.invokeMethodReply(
            requestID: requestID, success: success, hasMore: hasMore, reply: payload.take() ?? .empty)
        guard frame.payloadSize <= client.maxPayloadSize else {
            client.logger.error(
                "reply to request \(requestID) is \(frame.payloadSize) bytes, over the frame limit of \(client.maxPayloadSize): sending a failure instead")
            return sendFailure()
        }
        if !hasMore { finished = true }
        client.send(frame, fd: fd?.rawValue)
    }

    @usableFromInline
    func failEncoding(_ error: any Error) {
        if case .host(let client, let requestID, _) = route {
            client.logger.error("cannot encode reply to request \(requestID): \(error)")
        }
        sendFailure()
    }

    /// success = false, has_more = false: sent even when drop_reply was set.
    func sendFailure() {
        guard !finished else { return }
        finished = true
        switch route {
        case .host(let client, let requestID, _):
            client.send(OutgoingFrame.invokeMethodReply(requestID: requestID, success: false, hasMore: false, reply: .empty), fd: nil)
        case .forward(let forwarder):
            forwarder.forward(AsyncResult<Never>.rejected(IPCError(.remoteFailure, "the service could not encode its reply")))
        }
    }
}

extension Deferred where Message: SwiftProtobuf.Message {
    /// A Deferred whose outcome goes to `sink`.
    @inlinable
    public convenience init(replyingTo sink: IPCReplySink) {
        self.init(wire: sink, encode: { try $0.serializedBytes() })
    }
}

/// Receives the typed replies of a service called through ``IPCReplySink`` on a direct
/// binding (a hand-written service with only the encoded entry point).
@usableFromInline
protocol ReplyForwarding: AnyObject {
    func forward<Message>(_ result: AsyncResult<Message>)
}

/// Hands replies to a direct binding's Deferred when the types match.
final class DeferredForwarder<Reply>: ReplyForwarding {
    private let deferred: Deferred<Reply>

    init(_ deferred: Deferred<Reply>) { self.deferred = deferred }

    func forward<Message>(_ result: AsyncResult<Message>) {
        if Message.self == Reply.self {
            deferred.resolve(unsafeBitCast(result, to: AsyncResult<Reply>.self))
        } else if let error = result.error {
            deferred.reject(error)
        } else {
            deferred.reject(IPCError(.protocolViolation, "the service replied with \(Message.self), expected \(Reply.self)"))
        }
    }
}
