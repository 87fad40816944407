// Recording from inside the process, for tests and tools: start a session on the in-process
// service with a TraceConfig, run the instrumented code, stop, and get the packets or a trace
// file. No daemon, no sockets.

import Dispatch
import IPCProtocol
import TracingAPI

/// A tracing session on the in-process service (``TrackEventBackend/inProcess``).
///
/// ```swift
/// try TrackEvent.initialize([.app])
/// let session = try TrackEventSession.start(.trackEvent(enabling: ["app"]))
/// runTheCodeUnderTest()
/// let trace = try session.stop()          // packets; trace.file is a Perfetto trace file
/// ```
///
/// `start` returns once the session's data sources have started: events from then on are
/// recorded. `stop` returns the whole trace. Both block the calling thread (not the tracing
/// loop's); there are `async` forms.
public final class TrackEventSession: @unchecked Sendable {
    // @unchecked Sendable: `consumer` lives on the tracing loop; calls hop there.
    private let system: TrackEventSystem
    private let consumer: SessionConsumer

    private init(system: TrackEventSystem, consumer: SessionConsumer) {
        self.system = system
        self.consumer = consumer
    }

    /// Starts a session with `config` on the in-process service and waits (up to `timeout`) until
    /// its data sources have started.
    ///
    /// - Throws: `TracingError` if track events were not initialized with the in-process backend,
    ///   or the service refused the config.
    public static func start(_ config: TraceConfig, timeout: Duration = .seconds(5)) throws(TracingError) -> TrackEventSession {
        guard let system = TrackEventSystem.current else {
            throw TracingError(.invalidState, "TrackEvent.initialize(_:backends:) has not run")
        }
        let started = DispatchSemaphore(value: 0)
        let consumer: SessionConsumer? = system.sync {
            guard let service = system.service else { return nil }
            let consumer = SessionConsumer(onStarted: { started.signal() })
            consumer.endpoint = service.connectConsumer(consumer, uid: 0)
            consumer.endpoint.observeEvents([.allDataSourcesStarted])
            consumer.endpoint.enableTracing(config, outputFile: nil)
            return consumer
        }
        guard let consumer else {
            throw TracingError(.invalidState, "track events were initialized without the in-process backend")
        }
        let session = TrackEventSession(system: system, consumer: consumer)
        if started.wait(timeout: .now() + .nanoseconds(Int(timeout.components.seconds) * 1_000_000_000
            + Int(timeout.components.attoseconds / 1_000_000_000))) == .timedOut {
            throw TracingError(.invalidState, "the session's data sources did not start within \(timeout)")
        }
        if let error = system.sync({ consumer.disabledError }), !error.isEmpty {
            throw TracingError(.invalidConfig, error)
        }
        return session
    }

    /// Stops the session and returns its trace.
    ///
    /// What the calling thread wrote is handed over first; other threads' finished events are
    /// read from shared memory by the service.
    public func stop() throws(TracingError) -> RecordedTrace {
        TrackEvent.flush()
        let done = DispatchSemaphore(value: 0)
        let outcome = ResultSlot<Result<[TracePacketData], TracingError>>()
        let consumer = UncheckedSendableBox(self.consumer)
        system.loop.execute {
            consumer.value.stop { result in
                outcome.value = result
                done.signal()
            }
        }
        done.wait()
        return RecordedTrace(packets: try outcome.value!.get())
    }

    /// Stops the session and returns its trace, without blocking a thread.
    public func stop() async throws(TracingError) -> RecordedTrace {
        TrackEvent.flush()
        let consumer = UncheckedSendableBox(self.consumer)
        let loop = system.loop
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[TracePacketData], TracingError>, Never>) in
            loop.execute {
                consumer.value.stop { continuation.resume(returning: $0) }
            }
        }
        return RecordedTrace(packets: try result.get())
    }
}

/// A recorded trace.
public struct RecordedTrace: Sendable {
    /// Every packet, in the order the service handed them over.
    public var packets: [TracePacketData]
    /// The trace as a Perfetto trace file (open it in the Perfetto UI).
    public var file: [UInt8] { TraceFile.encode(packets) }
    /// The packets decoded (a packet that does not decode is left out).
    public var decodedPackets: [TracePacket] { packets.compactMap { try? $0.decode() } }
}

extension TraceConfig {
    /// A config recording the `track_event` data source into one ring buffer.
    ///
    /// - Parameters:
    ///   - enabling: category names or patterns (`"*"`, `"net.*"`) to record.
    ///   - disabling: category names or patterns not to record (the default config records
    ///     every category not tagged `slow` or `debug`; pass `["*"]` here to record only `enabling`).
    ///   - bufferSizeKB: the ring buffer's size.
    public static func trackEvent(
        enabling: [String] = [], disabling: [String] = [], bufferSizeKB: UInt32 = 4096
    ) -> TraceConfig {
        var config = TraceConfig()
        var buffer = TraceConfig.BufferConfig()
        buffer.sizeKb = bufferSizeKB
        config.buffers = [buffer]
        var source = TraceConfig.DataSource()
        source.config.name = "track_event"
        source.config.trackEventConfig.enabledCategories = enabling
        source.config.trackEventConfig.disabledCategories = disabling
        config.dataSources = [source]
        return config
    }
}

/// The consumer behind a TrackEventSession (on the tracing loop).
final class SessionConsumer: Consumer {
    var endpoint: (any ConsumerEndpoint)!
    private let onStarted: @Sendable () -> Void
    private var startedReported = false
    private(set) var disabledError: String?
    private var packets: [TracePacketData] = []
    private var pendingStop: ((Result<[TracePacketData], TracingError>) -> Void)?

    init(onStarted: @escaping @Sendable () -> Void) {
        self.onStarted = onStarted
    }

    private func reportStarted() {
        guard !startedReported else { return }
        startedReported = true
        onStarted()
    }

    func stop(_ completion: @escaping (Result<[TracePacketData], TracingError>) -> Void) {
        pendingStop = completion
        if disabledError == nil { endpoint.disableTracing() } else { read() }
    }

    private func read() {
        if let error = disabledError, !error.isEmpty {
            finish(.failure(TracingError(.invalidState, error)))
            return
        }
        endpoint.readBuffers()
    }

    private func finish(_ result: Result<[TracePacketData], TracingError>) {
        let completion = pendingStop
        pendingStop = nil
        completion?(result)
        endpoint.freeBuffers()
    }

    func onObservableEvents(_ events: ObservableEvents) {
        if events.allDataSourcesStarted { reportStarted() }
    }

    func onTracingDisabled(error: String) {
        disabledError = error
        reportStarted()  // a refused config ends the wait too
        if pendingStop != nil { read() }
    }

    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        self.packets.append(contentsOf: packets)
        if !hasMore, pendingStop != nil { finish(.success(self.packets)) }
    }
}
