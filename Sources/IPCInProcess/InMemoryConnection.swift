// One end of an in-memory connection. Sending copies the bytes (and dups the fd) into the
// peer's inbox and asks the loop to deliver them; delivery writes them into the peer's
// receive space, as much as fits per call, with the fd on the first piece of its message.
// Like the socket transports, a sender whose undelivered bytes would pass
// `ConnectionOptions.maxQueuedSendBytes` is dropped (sendQueueFull) rather than queue forever.
// The two ends point at each other unowned, and each clears the other's pointer when it closes
// or goes, so neither ever points at a peer that is gone (both live on one loop).
// An end that pauses reading keeps its inbox (and a peer's close) until it resumes; its peer
// sees the bytes as queued and hears when they have all been delivered.

import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

final class InMemoryConnection: IPCConnection {
    /// Held weakly, without giving the delegate a side table (IPCProtocol's Weak.swift).
    var delegate: (any IPCConnectionDelegate)? {
        get { delegateStorage.delegate }
        set { delegateStorage.delegate = newValue }
    }
    private let delegateStorage = WeakConnectionDelegate()
    private(set) var state: ConnectionState = .connecting
    let peer: PeerIdentity
    let loop: any IPCEventLoop
    let address: String
    /// The peer end, while connected. Unowned: each end clears the other's reference when it
    /// closes or goes (a weak reference would give both ends side tables, and every retain and
    /// release of a connection on the call path would take the slow path: 2-4% of a call).
    private unowned(unsafe) var other: InMemoryConnection?
    /// What posted tasks hold instead of the connection: it forgets the connection when the
    /// connection goes, so a task that runs later finds nothing (loop-confined, like `other`).
    private let token = Token()
    // Per-message state: unchecked exclusivity (loop-confined; Threading.md, "Costs").
    @exclusivity(unchecked) private var inbox: [Message] = []
    @exclusivity(unchecked) private var inboxHead = 0
    /// Bytes in the inbox not delivered yet (what the sending side has queued).
    @exclusivity(unchecked) private var undeliveredBytes = 0
    @exclusivity(unchecked) private var deliveryScheduled = false
    /// Posted to deliver the inbox; made once, so a send allocates no task of its own.
    private var deliveryTask: (@Sendable () -> Void)?
    /// Not delivering the inbox for now (``setReadingPaused(_:)``), and whether the peer closed
    /// meanwhile (reported after the inbox, on resume).
    private var readingPaused = false
    private var peerClosedWhilePaused = false
    /// Called when the peer has taken everything this end sent (``whenSendQueueDrains(_:)``).
    private var drainWaiters: [() -> Void] = []
    /// The most bytes this end may have waiting undelivered at its peer.
    let maxQueuedSendBytes: Int
    var queuedSendBytes: Int { other?.undeliveredBytes ?? 0 }

    private final class Token: @unchecked Sendable {
        unowned(unsafe) var connection: InMemoryConnection?
    }

    private struct Message {
        var bytes: [UInt8]
        /// The undelivered part is `bytes[offset..<end]`.
        var offset = 0
        var end: Int
        var fd: ScopedFD?
    }

    init(loop: any IPCEventLoop, address: String, maxQueuedSendBytes: Int) {
        self.loop = loop
        self.address = address
        self.maxQueuedSendBytes = maxQueuedSendBytes
        // Same process: the kernel would report exactly these credentials.
        peer = PeerIdentity(uid: getuid(), pid: getpid(), gid: getgid())
        token.connection = self
    }

    deinit {
        token.connection = nil
        // Like a socket closing: the peer sees end of stream (and forgets this end).
        if let other { other.peerClosed() }
    }

    // MARK: Pairing (transport)

    func pair(with client: InMemoryConnection) {
        other = client
        state = .connected
    }

    func connect(to server: InMemoryConnection) {
        // A server end its listener's delegate closed at once has already told this end it
        // closed (the report comes on a later turn): this end must not point at it.
        if server.other === self { other = server }
        state = .connected
        delegate?.connectionDidConnect(self)
    }

    func failToConnect(_ error: IPCError) {
        state = .disconnected
        delegate?.connection(self, didFailToConnect: error)
    }

    // MARK: IPCConnection

    @discardableResult
    func send(_ bytes: UnsafeRawBufferPointer, fd: Int32?) -> Bool {
        send(owning: Array(bytes), range: 0..<bytes.count, fd: fd)
    }

    /// Keeps the sender's array as the message: no copy until delivery.
    @discardableResult
    func send(owning bytes: consuming [UInt8], range: Range<Int>, fd: Int32?) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected, let other else { return false }
        guard other.undeliveredBytes + range.count <= maxQueuedSendBytes else {
            dropForFullQueue(queued: other.undeliveredBytes + range.count)
            return false
        }
        var duplicate: ScopedFD?
        if let fd {
            let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            guard copy >= 0 else { return false }
            duplicate = ScopedFD(copy)
        }
        other.enqueue(Message(bytes: bytes, offset: range.lowerBound, end: range.upperBound, fd: duplicate))
        return true
    }

    func close() {
        loop.preconditionInEventLoop()
        guard state != .disconnected else { return }
        let wasConnected = state == .connected
        state = .disconnected
        delegate = nil
        // Released last (SocketConnection.tearDown says why).
        var waiters: [() -> Void] = []
        swap(&waiters, &drainWaiters)
        dropInbox()
        if wasConnected, let other { other.peerClosed() }
        other = nil
        withExtendedLifetime(waiters) {}
    }

    func setReadingPaused(_ paused: Bool) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected else { return false }
        guard paused != readingPaused else { return true }
        readingPaused = paused
        guard !paused else { return true }
        if peerClosedWhilePaused {
            let token = self.token
            loop.execute { token.connection?.finishAfterPeerClosed() }
        } else if inboxHead < inbox.count {
            scheduleDelivery()
        }
        return true
    }

    func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected else { return false }
        guard queuedSendBytes == 0 else {
            drainWaiters.append(callback)
            return true
        }
        let unchecked = UncheckedSendableBox(callback)
        loop.execute { unchecked.value() }
        return true
    }

    /// The peer is not taking what we send: close, and report it on a later loop turn, as the
    /// socket transports do.
    private func dropForFullQueue(queued: Int) {
        let error = IPCError(
            .sendQueueFull,
            "peer is not reading: \(queued) bytes would be queued, the limit is \(maxQueuedSendBytes)",
            address: address)
        let delegate = WeakConnectionDelegate()  // close() forgets ours
        delegate.delegate = self.delegate
        close()
        let report: () -> Void = { [token] in
            guard let connection = token.connection, let delegate = delegate.delegate else { return }
            delegate.connection(connection, didDisconnect: error)
        }
        let unchecked = UncheckedSendableBox(report)
        loop.execute { unchecked.value() }
    }

    // MARK: Delivery

    private func enqueue(_ message: Message) {
        undeliveredBytes += message.end - message.offset
        inbox.append(message)
        scheduleDelivery()
    }

    private func scheduleDelivery() {
        guard !deliveryScheduled else { return }
        deliveryScheduled = true
        if deliveryTask == nil {
            let token = self.token
            deliveryTask = { token.connection?.deliver() }
        }
        loop.execute(deliveryTask!)
    }

    private func deliver() {
        deliveryScheduled = false
        while state == .connected, !readingPaused, inboxHead < inbox.count {
            guard let delegate else { dropInbox(); return }
            let space = delegate.receiveSpace(for: self)
            precondition(space.count > 0, "receive space must not be empty")
            var message = inbox[inboxHead]
            let count = min(space.count, message.end - message.offset)
            message.bytes.withUnsafeBytes { bytes in
                space.baseAddress!.copyMemory(from: bytes.baseAddress! + message.offset, byteCount: count)
            }
            let fd = message.fd
            message.fd = nil
            message.offset += count
            undeliveredBytes -= count
            if message.offset == message.end {
                inboxHead += 1
            } else {
                inbox[inboxHead] = message
            }
            if inboxHead == inbox.count {
                inbox.removeAll(keepingCapacity: true)
                inboxHead = 0
            }
            delegate.connection(self, didReceive: count, fileDescriptor: fd)
        }
        if state == .disconnected { dropInbox() }
        // The sender's queue has drained: tell whoever waits for it.
        if undeliveredBytes == 0, let other, !other.drainWaiters.isEmpty {
            let waiters = other.drainWaiters
            other.drainWaiters.removeAll()
            for waiter in waiters { waiter() }
        }
    }

    /// The other end went away: deliver what is already here, then report end of stream.
    private func peerClosed() {
        other = nil
        let token = self.token
        loop.execute { token.connection?.finishAfterPeerClosed() }
    }

    /// Delivers what the closed peer sent, then reports end of stream (once resumed, if paused).
    private func finishAfterPeerClosed() {
        guard state == .connected else { return }
        deliver()
        guard state == .connected else { return }
        guard !readingPaused else {
            peerClosedWhilePaused = true
            return
        }
        state = .disconnected
        delegate?.connection(self, didDisconnect: nil)
    }

    private func dropInbox() {
        inbox.removeAll()
        inboxHead = 0
        undeliveredBytes = 0
    }
}

