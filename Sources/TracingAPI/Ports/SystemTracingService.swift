// The tracing service of the system, reached over IPC: a TracingService whose endpoints are
// ProducerPort and ConsumerPort clients. Producers and consumers written against the
// in-process TracingServiceCore work unchanged against it, whether the service on the other
// side is ours (`tracebox traced`) or Perfetto's `traced`.

import IPCProtocol

/// A tracing service in another process, reached through its producer and consumer sockets.
///
/// ```swift
/// let loop = try EpollEventLoop()
/// let transport = UnixSocketTransport(loop: loop)
/// let service = SystemTracingService(transport: transport)   // Perfetto's default sockets
/// let endpoint = service.connectProducer(myProducer, options: .init(name: "my_app"))
/// ```
///
/// Loop-bound like every ``TracingService``: use it on its transport's loop.
public final class SystemTracingService: TracingService {
    /// Where producers connect.
    public let producerBackend: IPCBackend
    /// Where consumers connect.
    public let consumerBackend: IPCBackend
    /// What remote producers do when they lose the service.
    public var reconnectPolicy: ReconnectPolicy

    public var eventLoop: any IPCEventLoop { producerBackend.eventLoop }

    /// The service at the given backends (one per socket).
    public init(producerBackend: IPCBackend, consumerBackend: IPCBackend, reconnectPolicy: ReconnectPolicy = .default) {
        self.producerBackend = producerBackend
        self.consumerBackend = consumerBackend
        self.reconnectPolicy = reconnectPolicy
    }

    /// The service on `transport` at `producerAddress` and `consumerAddress`, by default the
    /// addresses Perfetto's programs use (``TracingSocketNames``).
    public convenience init(
        transport: any IPCTransport, producerAddress: String = TracingSocketNames.producer,
        consumerAddress: String = TracingSocketNames.consumer, options: ConnectionOptions = .default,
        reconnectPolicy: ReconnectPolicy = .default
    ) {
        self.init(
            producerBackend: .transport(transport, address: producerAddress, options: options),
            consumerBackend: .transport(transport, address: consumerAddress, options: options),
            reconnectPolicy: reconnectPolicy)
    }

    public func connectProducer(_ producer: any Producer, options: ProducerConnectionOptions) -> any ProducerEndpoint {
        RemoteProducerEndpoint(
            producer: producer, options: options, backend: producerBackend, reconnectPolicy: reconnectPolicy)
    }

    /// Connects a consumer. `uid` is ignored: the service takes the caller's uid from the kernel.
    public func connectConsumer(_ consumer: any Consumer, uid: UInt32) -> any ConsumerEndpoint {
        RemoteConsumerEndpoint(consumer: consumer, backend: consumerBackend)
    }
}

/// Which tracing service an application uses, chosen by one value at init; nothing else in
/// the application changes.
///
/// ```swift
/// let service = TracingBackend.inProcess(loop: loop).makeService()          // tests, tools
/// let service = TracingBackend.system(transport: transport).makeService()   // traced
/// ```
public enum TracingBackend {
    /// A service of this process's own on `loop`: no daemon, no sockets.
    case inProcess(loop: any IPCEventLoop, options: TracingServiceCore.Options = .init())
    /// An existing service in this process (e.g. one also served on sockets).
    case embedded(TracingServiceCore)
    /// The system's service over IPC (ours or Perfetto's `traced`), at the given backends.
    case remote(producer: IPCBackend, consumer: IPCBackend)

    /// The system's service on `transport` at Perfetto's socket addresses (or the ones given).
    public static func system(
        transport: any IPCTransport, producerAddress: String = TracingSocketNames.producer,
        consumerAddress: String = TracingSocketNames.consumer, options: ConnectionOptions = .default
    ) -> TracingBackend {
        .remote(
            producer: .transport(transport, address: producerAddress, options: options),
            consumer: .transport(transport, address: consumerAddress, options: options))
    }

    /// The service producers and consumers connect to. Loop-only.
    public func makeService() -> any TracingService {
        switch self {
        case .inProcess(let loop, let options): return TracingServiceCore(eventLoop: loop, options: options)
        case .embedded(let service): return service
        case .remote(let producer, let consumer): return SystemTracingService(producerBackend: producer, consumerBackend: consumer)
        }
    }
}
