// One producer's connection carried through the relay (Perfetto's SocketRelayHandler pair): the
// bytes the local producer sends go to the host unchanged, and back. The relay speaks for the
// producer once, first: a SetPeerIdentity frame with the producer's kernel credentials and this
// machine's id hint and name, which the host takes because the connection is TCP or vsock and
// it is the first. Whatever the producer sends after that (a SetPeerIdentity of its own
// included) the host ignores as it should.
//
// * No fd crosses: fds the producer attaches are closed here. The host sees a TCP or vsock
//   peer and asks for shared-memory emulation, so producers never depend on one.
// * Bytes for a host not connected yet wait here, up to `maxPendingBytes`; past that, or when
//   either side fails, both sides are closed. The producer reconnects through the relay.
// * Flow control: when more than `maxQueuedBytes` wait to go out on one side (a producer
//   faster than the link to the host, or a host faster than a producer reads), the relay stops
//   reading from the other side until they have gone, so the sender is slowed down by its own
//   socket instead of being dropped when the queue passes its bound.
// * A producer that closes has its last bytes delivered before the host side is closed.

import IPCProtocol

final class RelayedConnection: IPCConnectionDelegate {
    /// Bytes kept for a host connection still being made.
    static let maxPendingBytes = 4 * 1024 * 1024
    /// How long a closing producer's last bytes may take to leave for the host.
    static let drainTimeout: Duration = .seconds(10)
    /// Bytes queued on one side past which the relay stops reading from the other.
    static let maxQueuedBytes = 1024 * 1024

    private let local: any IPCConnection
    private var remote: (any IPCConnection)?
    private let eventLoop: any IPCEventLoop
    private var localSpace: UnsafeMutableRawBufferPointer
    private var remoteSpace: UnsafeMutableRawBufferPointer
    private var pendingForRemote: [UInt8] = []
    private var remoteConnected = false
    private(set) var isClosed = false
    private let onClose: (RelayedConnection) -> Void
    /// Told when the host side could not be made (the producer is then dropped).
    private let onHostUnreachable: (IPCError) -> Void
    private var drainTask: (any ScheduledTask)?

    /// Bytes carried each way, for diagnostics and tests.
    private(set) var bytesToHost = 0
    private(set) var bytesToProducer = 0

    init(
        local: any IPCConnection, transport: any IPCTransport, hostAddress: String, options: ConnectionOptions,
        identity: IPCFrame, onHostUnreachable: @escaping (IPCError) -> Void,
        onClose: @escaping (RelayedConnection) -> Void
    ) {
        self.local = local
        self.eventLoop = transport.eventLoop
        self.onClose = onClose
        self.onHostUnreachable = onHostUnreachable
        localSpace = .allocate(byteCount: 64 * 1024, alignment: 16)
        remoteSpace = .allocate(byteCount: 64 * 1024, alignment: 16)
        // Queued before anything of the producer's: the host takes only the first one.
        if let frame = try? FrameSerializer.serialize(identity) { pendingForRemote = frame }
        local.delegate = self
        remote = transport.connect(to: hostAddress, options: options, delegate: self)
    }

    deinit {
        drainTask?.cancel()
        localSpace.deallocate()
        remoteSpace.deallocate()
    }

    /// Closes both sides now.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        drainTask?.cancel()
        drainTask = nil
        local.close()
        remote?.close()
        remote = nil
        let onClose = UncheckedSendableBox(self.onClose)
        let connection = UncheckedSendableBox(self)
        // Not inside a callback of the connections being torn down.
        eventLoop.execute { onClose.value(connection.value) }
    }

    // MARK: IPCConnectionDelegate

    func connectionDidConnect(_ connection: any IPCConnection) {
        guard connection === remote, !isClosed else { return }
        remoteConnected = true
        let pending = pendingForRemote
        pendingForRemote = []
        if !pending.isEmpty, !connection.send(owning: pending, range: 0..<pending.count, fd: nil) { close() }
    }

    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {
        if connection === remote, !isClosed { onHostUnreachable(error) }
        close()
    }

    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {
        if connection === local, error == nil, remoteConnected, let remote, remote.queuedSendBytes > 0 {
            // The producer said its last: let it reach the host first.
            drain(remote, until: ContinuousClock.now + Self.drainTimeout)
            return
        }
        close()
    }

    private func drain(_ remote: any IPCConnection, until deadline: ContinuousClock.Instant) {
        guard !isClosed else { return }
        if remote.queuedSendBytes == 0 || ContinuousClock.now >= deadline || remote.state != .connected {
            close()
            return
        }
        drainTask = eventLoop.scheduleTask(after: .milliseconds(2)) { [weak self] in
            self?.drain(remote, until: deadline)
        }
    }

    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer {
        connection === local ? localSpace : remoteSpace
    }

    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        // `fileDescriptor` is not kept: it closes here (no fd can travel to another machine).
        guard !isClosed, byteCount > 0 else { return }
        if connection === local {
            bytesToHost += byteCount
            let bytes = UnsafeRawBufferPointer(rebasing: localSpace[0..<byteCount])
            guard remoteConnected, let remote else {
                guard pendingForRemote.count + byteCount <= Self.maxPendingBytes else { return close() }
                pendingForRemote.append(contentsOf: bytes)
                return
            }
            forward(bytes, to: remote, from: local)
        } else {
            bytesToProducer += byteCount
            forward(UnsafeRawBufferPointer(rebasing: remoteSpace[0..<byteCount]), to: local, from: connection)
        }
    }

    /// Sends `bytes` on `destination`; past `maxQueuedBytes` queued there, stops reading from
    /// `source` until the queue has drained.
    private func forward(_ bytes: UnsafeRawBufferPointer, to destination: any IPCConnection, from source: any IPCConnection) {
        guard destination.send(bytes, fd: nil) else { return close() }
        guard destination.queuedSendBytes > Self.maxQueuedBytes, source.setReadingPaused(true) else { return }
        let resumed = destination.whenSendQueueDrains { [weak self, weak source] in
            guard let self, !self.isClosed else { return }
            source?.setReadingPaused(false)
        }
        // A transport that cannot say when it drained: read on rather than stall for good.
        if !resumed { source.setReadingPaused(false) }
    }
}
