// What a host keeps per connected client: the connection, its frame deserializer, its
// received-fd slot and who it is.

import Logging

/// One client connection of a ``IPCHost``. Loop-bound.
///
/// Replies are sent through it, not through the host (``IPCReplySink`` keeps it), so a service
/// may resolve a Deferred after the host is gone: the frame then goes nowhere.
final class HostClient: IPCConnectionDelegate {
    let id: UInt64
    let connection: any IPCConnection
    let deserializer: FrameDeserializer
    private let trimmer: IdleBufferTrimmer
    let receivedFD = ReceivedFDSlot()
    var info: IPCClientInfo {
        didSet { callContext = IPCCallContext(client: info, eventLoop: eventLoop, fileDescriptorSlot: receivedFD) }
    }
    /// What each call of this client runs with (rebuilt only when the identity changes).
    private(set) var callContext: IPCCallContext
    var hasPeerIdentity: Bool
    let maxPayloadSize: Int
    let logger: Logger
    let eventLoop: any IPCEventLoop
    /// Fires if a frame stays incomplete for too long (a peer that sends half a frame and
    /// stalls would otherwise pin its buffer forever).
    private var partialFrameDeadline: (any ScheduledTask)?
    /// Called with each decoded frame, and once when the connection ends. Only touched while
    /// the connection is open: the host closes every connection before it goes.
    unowned let host: IPCHost

    init(id: UInt64, connection: any IPCConnection, host: IPCHost) throws(IPCError) {
        self.id = id
        self.connection = connection
        self.host = host
        maxPayloadSize = host.maxPayloadSize
        logger = host.logger
        eventLoop = host.eventLoop
        deserializer = try FrameDeserializer(capacity: host.receiveCapacity)
        trimmer = IdleBufferTrimmer(deserializer: deserializer, loop: eventLoop)
        let peer = connection.peer
        var info = IPCClientInfo(clientID: id, uid: peer.uid, pid: peer.pid, machineID: 0, remoteAddress: peer.remoteAddress)
        hasPeerIdentity = peer.isLocal
        if !peer.isLocal {
            // Until the peer says who it is, identify its machine by its address's host part.
            info.machineID = machineID(hint: peer.remoteAddress.map(hostPart) ?? "remote")
        }
        self.info = info
        callContext = IPCCallContext(client: info, eventLoop: eventLoop, fileDescriptorSlot: receivedFD)
    }

    /// Sends a frame to this client (nothing if it has gone).
    func send(_ frame: consuming OutgoingFrame, fd: Int32?) {
        guard connection.state == .connected else { return }
        frame.send(on: connection, fd: fd)
    }

    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}

    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {
        partialFrameDeadline?.cancel()
        trimmer.cancel()
        host.clientDidDisconnect(self, reason: error)
    }

    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer {
        deserializer.receiveSpace
    }

    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        do {
            // Frames are dispatched while they still lie in the receive buffer (arguments are
            // decoded from there); frames before a bad header are dispatched before it throws.
            try deserializer.endReceive(byteCount: byteCount, fileDescriptor: fileDescriptor) { frame, fd in
                guard connection.state == .connected else { return false }
                if let fd { receivedFD.store(fd) }
                host.dispatch(frame, from: self)
                return true
            }
        } catch {
            host.logger.warning("closing client \(id) (\(connection.peer)): \(error)")
            drop(error)
            return
        }
        watchForStalledFrame()
        trimmer.bytesReceived()
    }

    /// Closes the connection and tells the host, as for a disconnect.
    func drop(_ reason: IPCError) {
        partialFrameDeadline?.cancel()
        partialFrameDeadline = nil
        trimmer.cancel()
        connection.close()
        host.clientDidDisconnect(self, reason: reason)
    }

    private func watchForStalledFrame() {
        guard connection.state == .connected, deserializer.bufferedByteCount > 0 else {
            partialFrameDeadline?.cancel()
            partialFrameDeadline = nil
            return
        }
        guard partialFrameDeadline == nil else { return }  // timed from the frame's first bytes
        let timeout = host.partialFrameTimeout
        let box = UncheckedSendableBox(Weak(self))
        partialFrameDeadline = host.eventLoop.scheduleTask(after: timeout) {
            guard let client = box.value.object, client.connection.state == .connected,
                client.deserializer.bufferedByteCount > 0
            else { return }
            client.host.logger.warning("closing client \(client.id) (\(client.connection.peer)): a frame stayed incomplete for \(timeout)")
            client.drop(IPCError(.protocolViolation, "a frame stayed incomplete for \(timeout)"))
        }
    }

}

/// A remote machine's id, derived as Perfetto's host derives it: the low 32 bits of the 64-bit
/// FNV-1a hash of the hint (the peer's boot id, as relays send it), never 0 (0 is this machine).
func machineID(hint: String) -> UInt32 {
    let id = UInt32(truncatingIfNeeded: FNV1a.hash(hint))
    return id == 0 ? 1 : id
}

/// `host` of `host:port` / `[v6]:port` / `vsock://cid:port`.
private func hostPart(_ address: String) -> String {
    guard let colon = address.lastIndex(of: ":") else { return address }
    return String(address[..<colon])
}

