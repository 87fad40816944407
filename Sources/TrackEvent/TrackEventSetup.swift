// One-line setup: where the process's track events go. The in-process backend runs a tracing
// service inside the process (for tests and tools: record with TrackEventSession, no daemon);
// the system backend connects to the machine's service (ours, `tracebox traced`, or Perfetto's
// `traced`) at Perfetto's socket; both at once is allowed, as in Perfetto's SDK. A loop thread of
// its own carries the tracing work; app threads only write into shared memory.

import Dispatch
import IPCProtocol
import IPCUnixSocket
import TracingAPI

/// Where track events are recorded.
public enum TrackEventBackend: Sendable, Hashable {
    /// A tracing service in this process: record it with ``TrackEventSession``.
    case inProcess
    /// The system's tracing service, at `producerSocket` (default: `PERFETTO_PRODUCER_SOCK_NAME`,
    /// else Perfetto's default). The producer reconnects when the service comes and goes.
    case system(producerSocket: String? = nil)
}

extension TrackEvent {
    /// Starts track events for the process: registers `categories` and connects the
    /// `track_event` data source to each backend. Call once, early; later calls only register
    /// more categories.
    ///
    /// - Parameters:
    ///   - categories: the categories the app declares (more can be added with ``register(_:)``).
    ///   - backends: ``TrackEventBackend/inProcess``, ``TrackEventBackend/system(producerSocket:)``,
    ///     or both.
    ///   - producerName: how the process appears to the service (default: its executable name).
    /// - Throws: `IPCError` if the tracing loop cannot be started.
    public static func initialize(
        _ categories: [TrackEventCategory], backends: [TrackEventBackend] = [.inProcess], producerName: String? = nil
    ) throws {
        TrackEventRuntime.shared.register(categories)
        try TrackEventSystem.start(backends: backends, producerName: producerName ?? ProcessIdentity.name)
    }

    /// Declares more categories; sessions already running record them if their config says so.
    public static func register(_ categories: [TrackEventCategory]) {
        guard TrackEventRuntime.shared.register(categories) else { return }
        TrackEventSystem.current?.republishDescriptors()
    }

    /// Whether ``initialize(_:backends:producerName:)`` has run.
    public static var isInitialized: Bool { TrackEventSystem.current != nil }
}

/// The tracing loop, the in-process service and the producers of the process.
final class TrackEventSystem: @unchecked Sendable {
    // @unchecked Sendable: everything but `loop` is touched on the loop only.
    let loop: EpollEventLoop
    private(set) var service: TracingServiceCore?
    private var producers: [TrackEventProducer] = []
    private var systemService: SystemTracingService?

    private static let instance = ThreadLock<TrackEventSystem?>(nil)
    static var current: TrackEventSystem? { instance.withLock { $0 } }

    private init(loop: EpollEventLoop) {
        self.loop = loop
    }

    static func start(backends: [TrackEventBackend], producerName: String) throws {
        try instance.withLock { current throws in
            if let current {
                current.addBackends(backends, producerName: producerName)
                return
            }
            let system = TrackEventSystem(loop: try EpollEventLoop.startOnNewThread(name: "perfetto-track-event"))
            system.addBackends(backends, producerName: producerName)
            current = system
        }
    }

    /// Runs `body` on the loop and waits for it (not callable on the loop itself).
    func sync<T>(_ body: @escaping () -> T) -> T {
        precondition(!loop.inEventLoop, "called on the tracing loop")
        let done = DispatchSemaphore(value: 0)
        let result = ResultSlot<T>()
        let work = UncheckedSendableBox(body)
        loop.execute {
            result.value = work.value()
            done.signal()
        }
        done.wait()
        return result.value!
    }

    private func addBackends(_ backends: [TrackEventBackend], producerName: String) {
        sync {
            for backend in backends { self.connect(backend, producerName: producerName) }
        }
    }

    private func connect(_ backend: TrackEventBackend, producerName: String) {
        let target: any TracingService
        switch backend {
        case .inProcess:
            guard service == nil else { return }
            let core = TracingServiceCore(eventLoop: loop)
            service = core
            target = core
        case .system(let socket):
            guard systemService == nil else { return }
            let system = SystemTracingService(
                transport: UnixSocketTransport(loop: loop), producerAddress: socket ?? TracingSocketNames.producer)
            systemService = system
            target = system
        }
        let producer = TrackEventProducer(runtime: .shared)
        producer.endpoint = target.connectProducer(producer, options: ProducerConnectionOptions(name: producerName))
        producer.publishDescriptor(update: false)
        producers.append(producer)
    }

    func republishDescriptors() {
        let loop = self.loop
        let system = UncheckedSendableBox(self)
        loop.execute {
            for producer in system.value.producers { producer.publishDescriptor(update: true) }
        }
    }
}

/// A value handed from the loop to a waiting thread (the semaphore orders the accesses).
final class ResultSlot<T>: @unchecked Sendable {
    var value: T?
}
