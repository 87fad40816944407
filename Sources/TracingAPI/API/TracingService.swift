// The tracing API in Swift shape (Perfetto's tracing_service.h, producer.h, consumer.h).
//
// A `TracingService` hands out endpoints: a producer connects and gets a `ProducerEndpoint`, a
// consumer connects and gets a `ConsumerEndpoint`. The service calls back into `Producer` and
// `Consumer` objects. All of it is bound to the service's event loop: endpoints are called on
// the loop, callbacks arrive on the loop, never inside the call that caused them. The same
// protocols are implemented in-process (TracingServiceCore) and, later, over IPC by
// ProducerPort/ConsumerPort adapters, so application code does not change with the binding.

import IPCProtocol

/// A tracing service: the hub producers write into and consumers drive.
public protocol TracingService: AnyObject {
    /// The loop every endpoint of this service is used on.
    var eventLoop: any IPCEventLoop { get }

    /// Connects a producer. Its callbacks start with ``Producer/onConnect()``.
    func connectProducer(_ producer: any Producer, options: ProducerConnectionOptions) -> any ProducerEndpoint

    /// Connects a consumer acting for `uid`. Its callbacks start with ``Consumer/onConnect()``.
    func connectConsumer(_ consumer: any Consumer, uid: UInt32) -> any ConsumerEndpoint
}

/// How a producer introduces itself when it connects.
public struct ProducerConnectionOptions: Sendable {
    /// The producer's name, matched by `producer_name_filter` in trace configs.
    public var name: String
    /// Who the producer is (its uid and pid are stamped on every packet it writes).
    public var identity: PeerIdentity
    /// Wanted shared-memory size in bytes (0 = the service's default, 256 KiB).
    public var sharedMemorySizeHint: Int
    /// Wanted page size in bytes (0 = the service's default, 4 KiB).
    public var sharedMemoryPageSizeHint: Int
    /// A buffer the producer created itself (Perfetto's producer-provided shared memory, used
    /// for startup tracing). The service adopts it if its layout is valid.
    public var producerProvidedSharedMemory: SharedMemoryBuffer?
    /// The producer's SDK version string, for the service state.
    public var sdkVersion: String
    /// The producer lives in another process and is served over ProducerPort: the service
    /// keeps the only mapping of the shared memory and sends its fd instead of mapping it a
    /// second time for the producer.
    var isRemote = false
    /// The machine the producer runs on (0: this one), from the connection.
    var machineID: UInt32 = 0
    /// The name the producer's machine goes by (remote producers; matched by a data source's
    /// `machine_name_filter`).
    var machineName = ""
    /// The producer cannot map shared memory (it is on another machine, behind TCP or vsock):
    /// chunks arrive inside CommitData, and the service keeps no buffer for it.
    var usesSharedMemoryEmulation = false
    /// Whether the service may read chunks the producer has not committed yet, on flush, stop
    /// and disconnect (Perfetto's `smb_scraping_mode`), so a producer that dies loses nothing it
    /// finished writing. On by default, as Perfetto's SDK asks for it.
    public var scrapesSharedMemory = true
    /// Over ProducerPort: the shortest time between two commits of chunks writers completed
    /// (Perfetto's commit batching). A commit after a quiet spell goes at once; one due sooner
    /// waits for the rest of the interval and carries every chunk finished meanwhile, so a
    /// producer writing small packets fast sends one CommitData (and wakes the service once)
    /// per interval instead of per chunk. Flushes, writers waiting for a free chunk, and chunks
    /// filling half the shared memory commit at once. Zero commits every chunk on the loop's
    /// next turn. The in-process service takes chunks on its next turn regardless.
    public var commitBatchingInterval: Duration = .milliseconds(1)

    public init(
        name: String, identity: PeerIdentity = PeerIdentity(), sharedMemorySizeHint: Int = 0,
        sharedMemoryPageSizeHint: Int = 0, producerProvidedSharedMemory: SharedMemoryBuffer? = nil,
        sdkVersion: String = ""
    ) {
        self.name = name
        self.identity = identity
        self.sharedMemorySizeHint = sharedMemorySizeHint
        self.sharedMemoryPageSizeHint = sharedMemoryPageSizeHint
        self.producerProvidedSharedMemory = producerProvidedSharedMemory
        self.sdkVersion = sdkVersion
    }
}

/// What a producer can ask of the service.
public protocol ProducerEndpoint: AnyObject {
    /// The loop this endpoint is used on (the service's).
    var eventLoop: any IPCEventLoop { get }
    /// Announces a data source; sessions that want it get an instance.
    func registerDataSource(_ descriptor: DataSourceDescriptor)
    /// Replaces the descriptor of a registered data source (same name).
    func updateDataSource(_ descriptor: DataSourceDescriptor)
    /// Withdraws a data source; its running instances are stopped.
    func unregisterDataSource(named name: String)
    /// Tells the service which buffer a writer writes into (for stats and scraping).
    func registerTraceWriter(_ writerID: WriterID, targetBuffer: BufferID)
    func unregisterTraceWriter(_ writerID: WriterID)
    /// Moves completed chunks into trace buffers, applies patches, acknowledges a flush.
    /// `completion` runs after the service applied the request.
    func commitData(_ request: CommitDataRequest, completion: (() -> Void)?)
    /// The shared memory, once the service set it up (after ``Producer/onTracingSetup()``).
    var sharedMemory: SharedMemoryBuffer? { get }
    /// The producer-side arbiter of ``sharedMemory``; creates trace writers.
    var sharedMemoryArbiter: SharedMemoryArbiter? { get }
    /// Creates a writer for `targetBuffer`, or nil before tracing is set up.
    func createTraceWriter(targetBuffer: BufferID, policy: BufferExhaustedPolicy) -> TraceWriter?
    /// Whether the service adopted the producer-provided shared memory.
    var isSharedMemoryProvidedByProducer: Bool { get }
    /// Acknowledges ``Producer/flush(_:dataSources:flags:)`` (a CommitData with the id).
    func notifyFlushComplete(_ id: FlushRequestID)
    func notifyDataSourceStarted(_ id: DataSourceInstanceID)
    func notifyDataSourceStopped(_ id: DataSourceInstanceID)
    func activateTriggers(_ names: [String])
    /// Calls `callback` once the service has processed everything sent before.
    func sync(_ callback: @escaping () -> Void)
    /// Disconnects after what was already handed over (calls made before, and the chunks and
    /// patches writers returned), as a socket's end comes after the bytes sent on it; running
    /// instances of this producer are then dropped from their sessions.
    func disconnect()
}

// What every endpoint does the same way through its shared memory, in-process or over IPC.
extension ProducerEndpoint {
    public func createTraceWriter(targetBuffer: BufferID, policy: BufferExhaustedPolicy) -> TraceWriter? {
        sharedMemoryArbiter?.createTraceWriter(targetBuffer: targetBuffer, policy: policy)
    }

    public func notifyFlushComplete(_ id: FlushRequestID) {
        eventLoop.preconditionInEventLoop()
        if let sharedMemoryArbiter {
            // Through the arbiter, so chunks completed before the ack reach the service first.
            sharedMemoryArbiter.flushPendingCommitData(flushRequestID: id)
        } else {
            var request = CommitDataRequest()
            request.flushRequestID = id
            commitData(request, completion: nil)
        }
    }
}

/// What a consumer can ask of the service.
public protocol ConsumerEndpoint: AnyObject {
    /// The loop this endpoint is used on (the service's).
    var eventLoop: any IPCEventLoop { get }
    /// Starts a session with `config` (data sources are started unless `deferred_start`).
    /// With `write_into_file`, the trace is written periodically into `outputFile`.
    func enableTracing(_ config: TraceConfig, outputFile: ScopedFD?)
    /// Starts a session enabled with `deferred_start`.
    func startTracing()
    /// Stops the session; ``Consumer/onTracingDisabled(error:)`` follows.
    func disableTracing()
    /// Asks every data source of the session to commit what it has. `callback(true)` when all
    /// acknowledged within `timeoutMs` (0 = the config's or the default 5 s), else `false`.
    func flush(timeoutMs: UInt32, flags: FlushFlags, _ callback: @escaping (Bool) -> Void)
    /// Delivers the buffered trace through ``Consumer/onTraceData(_:hasMore:)``.
    func readBuffers()
    /// Frees the session's buffers and ends it. `done` runs once: `true` when the service has
    /// freed them, `false` when it could not be told (no service, or the connection went).
    func freeBuffers(_ done: @escaping (Bool) -> Void)
    /// Delivers stats through ``Consumer/onTraceStats(success:_:)``.
    func getTraceStats()
    /// Subscribes to `ObservableEvents.Type` events (an empty list unsubscribes).
    func observeEvents(_ types: [ObservableEvents.TypeEnum])
    /// The service's producers, data sources and sessions.
    func queryServiceState(sessionsOnly: Bool, _ callback: @escaping (Bool, TracingServiceState) -> Void)
    func queryCapabilities(_ callback: @escaping (TracingServiceCapabilities) -> Void)
    /// Detaches from the session under `key`: it goes on without this consumer, survives its
    /// disconnection, and a consumer of the same uid can ``attach(key:_:)`` to it later.
    /// `callback(false)` when there is no session or the key is taken.
    func detach(key: String, _ callback: @escaping (Bool) -> Void)
    /// Attaches to the session this uid detached under `key`; the callback gets its config, or
    /// nil when there is no such session or this consumer has one already.
    func attach(key: String, _ callback: @escaping (TraceConfig?) -> Void)
    /// Makes this consumer's session a read-only copy of another session's buffers (by id or
    /// unique name), after flushing it; the original goes on recording. Read the copy with
    /// ``readBuffers()``. Refused (success false, with an error) for a session of another uid,
    /// or when this consumer has a session already.
    ///
    /// A session that writes into a file (`write_into_file`) is cloned into `outputFile`, as
    /// Perfetto's traced does: what its file holds so far is copied in, then what its buffers
    /// hold, all before the callback, whose response says `was_write_into_file`. Cloning such a
    /// session without a file is refused. For other sessions `outputFile` is not used.
    func cloneSession(
        _ request: CloneSessionRequest, outputFile: ScopedFD?, _ callback: @escaping (CloneSessionResponse) -> Void)
    /// Applies the producer filters of `config`'s data sources to the running session (the only
    /// change a running session takes, as in Perfetto).
    func changeTraceConfig(_ config: TraceConfig)
    /// Disconnects; the session is freed unless detached.
    func disconnect()
}

/// Callbacks a producer receives, on the service's loop.
public protocol Producer: AnyObject {
    func onConnect()
    func onDisconnect()
    /// Shared memory is ready: ``ProducerEndpoint/sharedMemory`` can be used.
    func onTracingSetup()
    func setupDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig)
    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig)
    func stopDataSource(_ id: DataSourceInstanceID)
    /// Commit what the listed instances have, then ``ProducerEndpoint/notifyFlushComplete(_:)``.
    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags)
    func clearIncrementalState(_ dataSources: [DataSourceInstanceID])
}

extension Producer {
    public func onConnect() {}
    public func onDisconnect() {}
    public func onTracingSetup() {}
    public func setupDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {}
    public func clearIncrementalState(_ dataSources: [DataSourceInstanceID]) {}
}

/// Callbacks a consumer receives, on the service's loop.
public protocol Consumer: AnyObject {
    func onConnect()
    func onDisconnect()
    /// The session ended; `error` is empty on a clean stop.
    func onTracingDisabled(error: String)
    /// A batch of packets from ``ConsumerEndpoint/readBuffers()``; the last batch has `hasMore` false.
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool)
    /// The read ended before the service's last batch: the service failed it, sent a reply that
    /// does not decode (or a packet past ``maxReassembledPacketSize``), or the connection ended.
    /// The last batch (empty, `hasMore` false) follows, so a read always ends the same way; what
    /// came before this call is all the trace that arrived. Does nothing by default.
    func onTraceDataFailed(error: String)
    func onTraceStats(success: Bool, _ stats: TraceStats)
    func onObservableEvents(_ events: ObservableEvents)
}

/// The largest packet a consumer glues back from ReadBuffers slices (128 MiB): a service that
/// never ends a packet cannot make the consumer's memory grow past it.
public let maxReassembledPacketSize = 128 * 1024 * 1024

extension Consumer {
    public func onTraceDataFailed(error: String) {}
    public func onConnect() {}
    public func onDisconnect() {}
    public func onTraceStats(success: Bool, _ stats: TraceStats) {}
    public func onObservableEvents(_ events: ObservableEvents) {}
}

extension ProducerEndpoint {
    /// Creates a writer for `targetBuffer` that stalls (up to 1 s, then drops) when the shared
    /// memory is full, or nil before tracing is set up.
    public func createTraceWriter(targetBuffer: BufferID) -> TraceWriter? {
        createTraceWriter(targetBuffer: targetBuffer, policy: .stall())
    }
}

extension ConsumerEndpoint {
    /// ``cloneSession(_:outputFile:_:)`` without a file: for sessions read back with
    /// ``readBuffers()``.
    public func cloneSession(_ request: CloneSessionRequest, _ callback: @escaping (CloneSessionResponse) -> Void) {
        cloneSession(request, outputFile: nil, callback)
    }

    /// ``freeBuffers(_:)`` without waiting for the service.
    public func freeBuffers() {
        freeBuffers { _ in }
    }
}
