// One stream socket (unix, TCP or vsock) bound to an event loop that watches fds.
//
// Reading: on readability, receive straight into the delegate's receive space (the frame
// deserializer's free tail) and report the byte count and any fd.
// Writing: try the kernel at once; what it does not take waits in a bounded SendQueue while
// writability is watched. If the queue has not drained when the send timeout fires, or would
// overflow its bound, the peer is dropped and the disconnect reported; other connections are
// never held up. A send timeout of zero makes sends block the loop instead (client option).
// Disconnect notifications caused by a send are posted, so a delegate is never re-entered
// from inside its own `send` call.
//
// On a loop with edge-triggered watches (epoll), a connected socket is watched for reading
// and writing, edge-triggered, for its whole life. Besides saving the epoll_ctl calls that
// toggled EPOLLOUT, this wakes the sender when the peer starts reading what it sent (the
// kernel signals the freed space): a thread woken then is awake when the reply comes, where
// waking a halted vCPU for the reply costs 10–20 µs on a VM. Blocking reads get this for
// free, which is why a blocking ping-pong beat epoll at 64 KiB by 2x. Edge-triggered means:
// flush only with something queued, read until the kernel would block, and a read cut short
// by the per-event bound continues on a later turn (no new edge comes for bytes already there).

import CPerfettoIPCLinux
import Glibc
import IPCProtocol

/// A connection over a POSIX stream socket.
final class SocketConnection: IPCConnection {
    /// Held weakly, without giving the delegate a side table (IPCProtocol's Weak.swift; the
    /// connection's own handlers hold it the same way, so it has none either).
    var delegate: (any IPCConnectionDelegate)? {
        get { delegateStorage.delegate }
        set { delegateStorage.delegate = newValue }
    }
    private let delegateStorage = WeakConnectionDelegate()
    private(set) var state: ConnectionState
    private(set) var peer = PeerIdentity()

    let loop: any IPCEventLoop
    let address: String
    private let options: ConnectionOptions
    private let isUnixDomain: Bool
    /// Whether the loop watches edge-triggered (then: read and write, always).
    private let edgeTriggered: Bool
    private var fd: Int32
    private var watch: (any FileDescriptorWatch)?
    // Unchecked exclusivity: loop-confined, and `drain` calls only the kernel while it holds
    // the queue (Threading.md, "Costs").
    @exclusivity(unchecked) private var sendQueue = SendQueue()
    var queuedSendBytes: Int { sendQueue.byteCount }
    /// Waiting for the send queue to empty (``whenSendQueueDrains(_:)``).
    private var drainWaiters: [() -> Void] = []
    private var sendDeadline: (any ScheduledTask)?
    /// Fallback receive space when no delegate is set: the bytes are discarded.
    private var discardBuffer: UnsafeMutableRawBufferPointer?
    /// Not reading from the peer for now (``setReadingPaused(_:)``).
    private var readingPaused = false

    /// Wraps an fd that is connected (accepted or adopted) or connecting.
    init(
        fd: Int32, state: ConnectionState, address: String, isUnixDomain: Bool,
        options: ConnectionOptions, loop: any IPCEventLoop
    ) {
        self.fd = fd
        self.state = state
        self.address = address
        self.isUnixDomain = isUnixDomain
        self.options = options
        self.loop = loop
        edgeTriggered = loop.supportsEdgeTriggeredWatches
    }

    deinit {
        if fd >= 0 {
            watch?.cancel()
            Syscall.close(fd)
        }
        discardBuffer?.deallocate()
    }

    // MARK: Lifecycle

    /// Applies options, reads peer credentials and starts reading. Called once connected.
    func becomeConnected() throws(IPCError) {
        try Self.applySocketOptions(fd, options)
        if isUnixDomain {
            var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
            if CPerfettoIPC_peerCredentials(fd, &pid, &uid, &gid) == 0 {
                peer = PeerIdentity(uid: uid, pid: pid, gid: gid)
            }
        } else {
            peer = PeerIdentity(remoteAddress: describeSocketAddress(fd: fd, peer: true) ?? address)
        }
        state = .connected
        if let watch {
            watch.setEvents(watchedEvents)
        } else {
            watch = try loop.watch(fd, for: watchedEvents) { [this = Weak(self)] ready in this.object?.handle(ready) }
        }
    }

    /// What the loop watches for once connected: reading unless paused; writing always when
    /// edge-triggered, else only while bytes wait in the queue.
    private var watchedEvents: FileDescriptorEvents {
        var events: FileDescriptorEvents = readingPaused ? [] : .readable
        if edgeTriggered {
            events.formUnion([.writable, .edgeTriggered])
        } else if !sendQueue.isEmpty {
            events.insert(.writable)
        }
        return events
    }

    /// Watches a connecting socket for the end of its non-blocking connect.
    func awaitConnectCompletion() throws(IPCError) {
        watch = try loop.watch(fd, for: .writable) { [this = Weak(self)] ready in this.object?.handle(ready) }
    }

    func close() {
        loop.preconditionInEventLoop()
        tearDown()
        delegate = nil
    }

    /// Closes the socket and forgets queued bytes; returns false if already closed.
    @discardableResult
    private func tearDown() -> Bool {
        guard fd >= 0 else { return false }
        // Closed first, and what user code gave us released last, outside any access to our
        // state: a drain waiter may hold a Deferred whose release sends its rejection on this
        // very connection. That send must find the connection closed; it re-entered this
        // teardown while `drainWaiters` was being emptied (an exclusivity violation: a crash).
        let closing = fd
        fd = -1
        state = .disconnected
        watch?.cancel()
        watch = nil
        sendDeadline?.cancel()
        sendDeadline = nil
        var waiters: [() -> Void] = []
        swap(&waiters, &drainWaiters)
        sendQueue.removeAll()
        Syscall.close(closing)
        withExtendedLifetime(waiters) {}
        return true
    }

    /// Fails the connection and tells the delegate, now or (from inside `send`) on a later
    /// loop turn.
    private func fail(_ error: IPCError?, deferred: Bool) {
        let wasConnecting = state == .connecting
        guard tearDown() else { return }
        let report: () -> Void = { [this = Weak(self)] in
            guard let self = this.object, let delegate = self.delegate else { return }
            if wasConnecting {
                delegate.connection(self, didFailToConnect: error ?? IPCError(.connectionFailed, "connection failed", address: self.address))
            } else {
                delegate.connection(self, didDisconnect: error)
            }
        }
        if deferred {
            let loop = self.loop
            let unchecked = UncheckedSendableBox(report)
            loop.execute { unchecked.value() }
        } else {
            report()
        }
    }

    // MARK: Events

    private func handle(_ ready: FileDescriptorEvents) {
        switch state {
        case .connecting:
            finishConnecting()
        case .connected:
            if ready.contains(.writable), !sendQueue.isEmpty { flushQueue() }
            if ready.contains(.readable), fd >= 0 { readAvailable(endOfStreamReported: ready.contains(.hangup)) }
        case .disconnected:
            break
        }
    }

    /// A connect that failed at once, reported from a later loop turn.
    func failConnecting(_ error: IPCError) {
        guard state == .connecting else { return }
        fail(error, deferred: false)
    }

    private func finishConnecting() {
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { error = errno }
        guard error == 0 else {
            fail(IPCError.systemCall("connect", errno: error, address: address, code: .connectionFailed), deferred: false)
            return
        }
        do {
            try becomeConnected()
        } catch {
            fail(error, deferred: false)
            return
        }
        delegate?.connectionDidConnect(self)
    }

    /// Reads what the socket holds. `endOfStreamReported`: the event that woke us also said
    /// the peer closed (or shut down writing), so the read goes on until end of stream.
    private func readAvailable(endOfStreamReported: Bool = false) {
        guard !readingPaused else { return }  // resuming reads what came meanwhile
        // Bounded so one busy peer cannot starve the others on the loop.
        for _ in 0..<16 {
            let space = receiveSpace()
            precondition(space.count > 0, "receive space must not be empty")
            let result: IOResult<FDPassing.Received>
            do {
                result = try FDPassing.receive(fd, into: space, address: address)
            } catch {
                fail(error, deferred: false)
                return
            }
            guard case .processed(let received) = result else { return }
            if received.byteCount == 0 {
                fail(nil, deferred: false)  // orderly end of stream
                return
            }
            delegate?.connection(self, didReceive: received.byteCount, fileDescriptor: received.fd)
            guard state == .connected, !readingPaused else { return }  // the delegate closed or paused us
            guard received.byteCount < space.count else { continue }
            // Level-triggered, a short read means drained enough: the loop reports the rest.
            // Edge-triggered, it means the socket is empty, unless the read ended after a
            // message with fds (the kernel ends a read there, and only there: reading on would
            // find the next message) or the end of stream came with this event (it brings no
            // edge of its own). Bytes and an end of stream arriving after the event was taken
            // bring a new edge. So no read is spent on being told EAGAIN, once per message.
            if !edgeTriggered || (received.fd == nil && !endOfStreamReported) { return }
        }
        // Bytes may be left: level-triggered, the loop reports them again; edge-triggered, it
        // would not, so continue on a later turn (after the other connections had theirs).
        if edgeTriggered { continueReadingLater(endOfStreamReported: endOfStreamReported) }
    }

    private func continueReadingLater(endOfStreamReported: Bool) {
        let box = WeakBox(self)
        loop.execute {
            guard let connection = box.object, connection.state == .connected, connection.fd >= 0 else { return }
            connection.readAvailable(endOfStreamReported: endOfStreamReported)
        }
    }

    private func receiveSpace() -> UnsafeMutableRawBufferPointer {
        if let delegate { return delegate.receiveSpace(for: self) }
        if discardBuffer == nil {
            discardBuffer = .allocate(byteCount: 4096, alignment: 16)
        }
        return discardBuffer!
    }

    // MARK: Sending

    @discardableResult
    func send(_ bytes: UnsafeRawBufferPointer, fd attached: Int32?) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected else { return false }
        if options.sendTimeout == .zero { return sendBlocking(bytes, fd: attached) }

        if sendQueue.isEmpty {
            let sent: Int
            do {
                switch try FDPassing.send(fd, bytes, fd: attached, blocking: false, address: address) {
                case .processed(let count): sent = count
                case .wouldBlock: sent = 0
                }
            } catch {
                fail(error, deferred: true)
                return false
            }
            if sent == bytes.count { return true }
            let rest = UnsafeRawBufferPointer(rebasing: bytes[sent...])
            return enqueue(rest, fd: sent == 0 ? attached : nil)
        }
        return enqueue(bytes, fd: attached)
    }

    private func enqueue(_ bytes: UnsafeRawBufferPointer, fd attached: Int32?) -> Bool {
        guard sendQueue.byteCount + bytes.count <= options.maxQueuedSendBytes else {
            fail(
                IPCError(
                    .sendQueueFull,
                    "peer is not reading: \(sendQueue.byteCount + bytes.count) bytes would be queued, the limit is \(options.maxQueuedSendBytes)",
                    address: address),
                deferred: true)
            return false
        }
        var owned: ScopedFD?
        if let attached {
            guard let copy = ScopedFD(attached).duplicateAndRelease() else {
                fail(IPCError.systemCall("dup", errno: errno, address: address), deferred: true)
                return false
            }
            owned = copy
        }
        let wasEmpty = sendQueue.isEmpty
        sendQueue.append(bytes, fd: owned)
        if wasEmpty {
            if !edgeTriggered { watch?.setEvents(watchedEvents) }
            let timeout = options.sendTimeout
            sendDeadline = loop.scheduleTask(after: timeout) { [this = Weak(self)] in
                guard let self = this.object, !self.sendQueue.isEmpty else { return }
                self.fail(
                    IPCError(.sendTimeout, "peer did not read \(self.sendQueue.byteCount) queued bytes within \(timeout)", address: self.address),
                    deferred: false)
            }
        }
        return true
    }

    private func flushQueue() {
        do {
            try sendQueue.drain { bytes, attached throws(IPCError) in
                switch try FDPassing.send(fd, bytes, fd: attached, blocking: false, address: address) {
                case .processed(let count): return count
                case .wouldBlock: return 0
                }
            }
        } catch {
            fail(error, deferred: false)
            return
        }
        if sendQueue.isEmpty {
            sendDeadline?.cancel()
            sendDeadline = nil
            if !edgeTriggered { watch?.setEvents(watchedEvents) }
            let waiters = drainWaiters
            drainWaiters.removeAll()
            for waiter in waiters { waiter() }
        }
    }

    func setReadingPaused(_ paused: Bool) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected else { return false }
        guard paused != readingPaused else { return true }
        readingPaused = paused
        watch?.setEvents(watchedEvents)
        // Bytes and an end of stream that arrived while paused were not read, and an edge-
        // triggered loop owes no new event for them (epoll happens to report again when the
        // watch changes): read on resume until the kernel would block or the stream ends.
        if !paused { continueReadingLater(endOfStreamReported: true) }
        return true
    }

    func whenSendQueueDrains(_ callback: @escaping () -> Void) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected else { return false }
        guard sendQueue.isEmpty else {
            drainWaiters.append(callback)
            return true
        }
        let unchecked = UncheckedSendableBox(callback)
        loop.execute { unchecked.value() }
        return true
    }

    /// Send timeout zero: write everything now, waiting for the kernel as long as it takes.
    private func sendBlocking(_ bytes: UnsafeRawBufferPointer, fd attached: Int32?) -> Bool {
        var offset = 0
        var pendingFD = attached
        while offset < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            do {
                switch try FDPassing.send(fd, rest, fd: pendingFD, blocking: true, address: address) {
                case .processed(let count):
                    offset += count
                    pendingFD = nil
                case .wouldBlock:
                    var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&poller, 1, -1)
                }
            } catch {
                fail(error, deferred: true)
                return false
            }
        }
        return true
    }

    // MARK: Socket options

    static func applySocketOptions(_ fd: Int32, _ options: ConnectionOptions) throws(IPCError) {
        if let size = options.socketSendBufferSize {
            try Syscall.setSocketOption(fd, SOL_SOCKET, SO_SNDBUF, Int32(clamping: size), name: "SO_SNDBUF")
        }
        if let size = options.socketReceiveBufferSize {
            try Syscall.setSocketOption(fd, SOL_SOCKET, SO_RCVBUF, Int32(clamping: size), name: "SO_RCVBUF")
        }
    }
}

extension ScopedFD {
    /// A close-on-exec duplicate of a borrowed descriptor; the borrowed one is not closed.
    func duplicateAndRelease() -> ScopedFD? {
        defer { _ = release() }
        return duplicate()
    }
}
