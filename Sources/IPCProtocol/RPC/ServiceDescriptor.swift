// What a service is on the wire: its unqualified name and its methods in .proto order. Method
// ids are 1...N in that order; clients look methods up by name from the bind reply.


/// The wire description of a service, generated from its `.proto`.
public struct ServiceDescriptor: Sendable, Hashable {
    /// A method of the service.
    public struct Method: Sendable, Hashable {
        /// The method's name as declared (`"Echo"`).
        public var name: String
        /// Whether the method streams its replies (`returns (stream …)`).
        public var isServerStreaming: Bool

        public init(name: String, isServerStreaming: Bool = false) {
            self.name = name
            self.isServerStreaming = isServerStreaming
        }
    }

    /// The unqualified service name used on the wire (`"EchoService"`).
    public var name: String
    /// The methods, in declaration order: method id = index + 1.
    public var methods: [Method]

    public init(name: String, methods: [Method]) {
        self.name = name
        self.methods = methods
    }
}

/// Who is calling: what a service knows about the client of a call.
public struct IPCClientInfo: Sendable, Hashable {
    /// Unique per host for the life of the host (1, 2, …).
    public var clientID: UInt64
    /// The client's uid: from SO_PEERCRED on unix sockets, from SetPeerIdentity otherwise.
    public var uid: UInt32?
    /// The client's pid, from the same sources as ``uid``.
    public var pid: Int32?
    /// 0 for a client on this machine; a stable non-zero id per remote machine.
    public var machineID: UInt32
    /// The client's address for remote (TCP, vsock) clients.
    public var remoteAddress: String?
    /// The name a remote client gave its machine in SetPeerIdentity (Perfetto's
    /// `PERFETTO_MACHINE_NAME`, else the kernel's name), matched by `machine_name_filter`.
    public var machineName: String?

    public init(
        clientID: UInt64, uid: UInt32?, pid: Int32?, machineID: UInt32 = 0, remoteAddress: String? = nil,
        machineName: String? = nil
    ) {
        self.clientID = clientID
        self.uid = uid
        self.pid = pid
        self.machineID = machineID
        self.remoteAddress = remoteAddress
        self.machineName = machineName
    }
}

/// The context of one incoming call, given to the service method handling it.
///
/// Loop-bound; keep ``client`` if you need it later.
public struct IPCCallContext {
    /// The caller.
    public let client: IPCClientInfo
    /// The loop the call runs on; replies must be given there.
    public let eventLoop: any IPCEventLoop
    private let fileDescriptorSlot: ReceivedFDSlot?

    package init(client: IPCClientInfo, eventLoop: any IPCEventLoop, fileDescriptorSlot: ReceivedFDSlot?) {
        self.client = client
        self.eventLoop = eventLoop
        self.fileDescriptorSlot = fileDescriptorSlot
    }

    /// The Sendable context for async handlers; it takes the received fd.
    func makeAsyncContext() -> IPCAsyncCallContext {
        IPCAsyncCallContext(client: client, receivedFileDescriptor: takeReceivedFileDescriptor())
    }

    /// Takes the file descriptor that arrived with this call (or, if that one was not taken,
    /// the last one the client sent). Returns `nil` if there is none; only one caller gets it.
    public func takeReceivedFileDescriptor() -> ScopedFD? {
        fileDescriptorSlot?.take()
    }
}

/// The single "received fd" slot of a connection: a new fd replaces (and closes) an untaken
/// older one; the next call that asks takes it.
package final class ReceivedFDSlot {
    @exclusivity(unchecked) private var fd: ScopedFD?
    package init() {}
    package func store(_ fd: ScopedFD) { self.fd = fd }
    package func take() -> ScopedFD? {
        defer { fd = nil }
        return fd
    }
}

/// A service a host exposes. Generated handler protocols conform to it, so you usually only
/// implement the methods of your `.proto`.
public protocol IPCService: AnyObject {
    /// The service's wire description.
    var serviceDescriptor: ServiceDescriptor { get }

    /// Decodes `arguments` for the method at `methodIndex` (0-based) and calls it, handing it
    /// `reply`. Returns `false` if the arguments do not decode; the host then rejects the call.
    ///
    /// `arguments` is borrowed from the connection's receive buffer (no copy): decode it
    /// during the call, e.g. `try Request(serializedBytes: arguments)`; it cannot be kept.
    func invoke(methodIndex: Int, arguments: RawSpan, context: IPCCallContext, reply: IPCReplySink) -> Bool

    /// Calls the method at `methodIndex` with a request value and the caller's own Deferred
    /// (the direct, in-process path: no encoding, no sink). Returns `false` if `Request` or
    /// `Reply` are not the method's types; the call is then rejected.
    func invoke<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodIndex: Int, request: Request, context: IPCCallContext, reply: Deferred<Reply>
    ) -> Bool

    /// A client went away: release what you keep for it. Its pending Deferreds are rejected.
    func clientDidDisconnect(_ client: IPCClientInfo)
}

extension IPCService {
    public func clientDidDisconnect(_ client: IPCClientInfo) {}

    /// Fallback for hand-written services: encodes the request and takes the wire path; the
    /// replies are handed to `reply` if they are of its type.
    public func invoke<Request: SwiftProtobuf.Message, Reply: SwiftProtobuf.Message>(
        methodIndex: Int, request: Request, context: IPCCallContext, reply: Deferred<Reply>
    ) -> Bool {
        guard let arguments: [UInt8] = try? request.serializedBytes() else { return false }
        let sink = IPCReplySink(forwardingTo: DeferredForwarder(reply))
        return arguments.withUnsafeBytes { bytes in
            invoke(methodIndex: methodIndex, arguments: RawSpan(_unsafeBytes: bytes), context: context, reply: sink)
        }
    }
}

import SwiftProtobuf
