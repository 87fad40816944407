// An in-memory transport: listeners are names, connections are pairs of objects on one loop
// that hand each other real frame bytes. No kernel sockets and no system calls per message, yet
// Host and Client run their full wire path (framing, deserializer, dispatch). A file
// descriptor sent along is duplicated (`dup`), as SCM_RIGHTS would do.
//
// Contract, as for every transport: all calls on the loop; a connect result arrives on a later
// loop turn; bytes are delivered on a later loop turn, in order, into the receiver's space.

import IPCProtocol
import Synchronization

/// Listens on and connects to names, in memory, on one loop.
///
/// Host and client must use the same transport instance (or the same ``InProcessNetwork``
/// through ``init(loop:network:)``) to find each other.
public final class InProcessTransport: IPCTransport, @unchecked Sendable {
    // @unchecked Sendable: immutable references; the network is thread-safe and every
    // connection it hands out checks it is used on `eventLoop`.
    public let eventLoop: any IPCEventLoop
    public let network: InProcessNetwork

    /// A transport on `loop`, resolving names in `network` (its own private one by default).
    public init(loop: any IPCEventLoop, network: InProcessNetwork = InProcessNetwork()) {
        eventLoop = loop
        self.network = network
    }

    public func listen(
        at address: String, options: ConnectionOptions = .default, delegate: any IPCListenerDelegate
    ) throws(IPCError) -> any IPCListener {
        eventLoop.preconditionInEventLoop()
        let listener = InProcessListener(
            name: address, loop: eventLoop, network: network, delegate: delegate,
            maxQueuedSendBytes: options.maxQueuedSendBytes)
        try network.register(listener)
        return listener
    }

    public func connect(
        to address: String, options: ConnectionOptions = .default, delegate: any IPCConnectionDelegate
    ) -> any IPCConnection {
        eventLoop.preconditionInEventLoop()
        let client = InMemoryConnection(loop: eventLoop, address: address, maxQueuedSendBytes: options.maxQueuedSendBytes)
        client.delegate = delegate
        let listener = network.listener(named: address)
        // Two boxes, not one box of a tuple: Swift 6.3.1 over-releases when a tuple is
        // destructured out of a generic struct (see UncheckedSendableBox).
        let clientBox = UncheckedSendableBox(client)
        let listenerBox = UncheckedSendableBox(listener)
        eventLoop.execute {
            let client = clientBox.value
            let listener = listenerBox.value
            guard client.state == .connecting else { return }  // closed meanwhile
            guard let listener, let server = listener.accept(for: client) else {
                client.failToConnect(IPCError(.connectionFailed, "nothing listens at \"\(address)\" in this process", address: address))
                return
            }
            client.connect(to: server)
        }
        return client
    }
}

/// Names of in-process listeners. Thread-safe; listeners and connections are loop-bound.
public final class InProcessNetwork: Sendable {
    private let listeners = ThreadLock<[String: Weak<InProcessListener>]>([:])
    let directHosts = ThreadLock<[String: Weak<IPCHost>]>([:])

    public init() {}

    /// A network shared by every user in the process, for host and client code that are
    /// set up apart (e.g. through `IPCBackend.inProcess`).
    public static let shared = InProcessNetwork()

    func register(_ listener: InProcessListener) throws(IPCError) {
        var holder: InProcessListener?  // released after the lock: its deinit takes the lock
        let taken = listeners.withLock { table -> Bool in
            holder = table[listener.name]?.object
            if holder != nil { return true }
            table[listener.name] = Weak(listener)
            return false
        }
        holder = nil
        if taken {
            throw IPCError(.addressInUse, "an in-process listener already uses \"\(listener.name)\"", address: listener.name)
        }
    }

    /// Called from the listener's deinit (where the entry's reference already reads nil): the
    /// entry goes, and the listener's memory it kept with it.
    func unregister(_ listener: InProcessListener) {
        listeners.withLock { table in
            if table[listener.name]?.refers(to: listener) == true { table[listener.name] = nil }
        }
    }

    func listener(named name: String) -> InProcessListener? {
        listeners.withLock { $0[name]?.object }
    }
}


/// An in-process listening name.
final class InProcessListener: IPCListener {
    let name: String
    let loop: any IPCEventLoop
    /// Held weakly, without giving the delegate (a host) a side table (IPCProtocol's Weak.swift).
    private var delegate: (any IPCListenerDelegate)? {
        get { delegateStorage.delegate }
        set { delegateStorage.delegate = newValue }
    }
    private let delegateStorage = WeakListenerDelegate()
    private let network: InProcessNetwork
    private var closed = false
    /// Applied to every accepted connection (from the listen options).
    private let maxQueuedSendBytes: Int

    init(
        name: String, loop: any IPCEventLoop, network: InProcessNetwork, delegate: any IPCListenerDelegate,
        maxQueuedSendBytes: Int
    ) {
        self.name = name
        self.loop = loop
        self.network = network
        self.maxQueuedSendBytes = maxQueuedSendBytes
        self.delegate = delegate
    }

    deinit { network.unregister(self) }

    var address: String { name }

    func close() {
        guard !closed else { return }
        closed = true
        network.unregister(self)
    }

    /// Creates the server end for `client`, hands it to the delegate, returns it (nil if
    /// closed, on another loop, or nobody accepts).
    func accept(for client: InMemoryConnection) -> InMemoryConnection? {
        guard !closed, let delegate, loop === client.loop else { return nil }
        let server = InMemoryConnection(loop: loop, address: name, maxQueuedSendBytes: maxQueuedSendBytes)
        server.pair(with: client)
        delegate.listener(self, didAccept: server)
        return server
    }
}
