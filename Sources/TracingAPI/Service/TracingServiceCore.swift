// The tracing service itself (Perfetto's TracingServiceImpl): producers, consumers, sessions
// and trace buffers, all on one event loop. Bind it in-process (connectProducer /
// connectConsumer give direct endpoints) or behind ProducerPort/ConsumerPort adapters; the
// service does not know which.
//
// Everything producers put in shared memory or send in CommitData is hostile input: indexes
// are checked, chunks are copied out before parsing, and whatever is rejected is counted in
// the trace stats rather than trapping.

import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The tracing service: create one on a loop, connect producers and consumers to it.
///
/// ```swift
/// let service = TracingServiceCore(eventLoop: loop)
/// let producerEndpoint = service.connectProducer(myProducer, options: .init(name: "my_app"))
/// let consumerEndpoint = service.connectConsumer(myConsumer, uid: getuid())
/// ```
///
/// Loop-bound: call it (and its endpoints) on `eventLoop`; callbacks arrive there too.
public final class TracingServiceCore: TracingService, @unchecked Sendable {
    // @unchecked Sendable: loop-bound; only `execute` is used from other threads.

    /// Service-wide settings.
    public struct Options: Sendable {
        /// Shared-memory size for producers that give no (valid) hint.
        public var defaultSharedMemorySize = SharedMemoryABI.defaultBufferSize
        /// Page size for producers that give no (valid) hint.
        public var defaultPageSize = SharedMemoryABI.defaultPageSize
        /// The uid stamped on the service's own packets.
        public var serviceUID: UInt32 = getuid()
        /// Most sessions at once (Perfetto's default limit is 15 concurrent sessions).
        public var maxSessions = 15
        /// Most sessions one uid may have at once, clones included (Perfetto's: 5).
        public var maxSessionsPerUID = 5
        /// Most buffers one session may configure (Perfetto's: 128).
        public var maxBuffersPerSession = 128
        /// The most buffer memory one uid's sessions may ask for together (the sum of their
        /// buffers' `size_kb`, clones counted for the uid that cloned). A session that would
        /// go past it is refused. Buffers grow as data arrives, so this and the next bound what
        /// producers can make the service hold.
        public var maxBufferBytesPerUID = 1 << 30
        /// The most buffer memory the sessions of all uids but root may ask for together. Twice
        /// a uid's share by default, so that no single uid can leave the others without room;
        /// root's sessions count only against root's own share, so no other uid can lock root
        /// out.
        public var maxTotalBufferBytes = 2 << 30
        /// Most data sources one producer may register; registrations past it are refused.
        public var maxDataSourcesPerProducer = 16_384
        /// Most bytes of data source descriptors one producer may register.
        public var maxDataSourceBytesPerProducer = 32 << 20
        /// Most flushes a session may have waiting for producers (Perfetto's: 1000); more fail.
        public var maxPendingFlushesPerSession = 1000
        /// How long a write_into_file output (a pipe, a socket) may take no data before its
        /// session ends with an error. The service never blocks on it meanwhile.
        public var outputFileStallTimeout: Duration = .seconds(10)
        /// The defaults: Perfetto's sizes and limits, this process's uid, 1 GiB of buffers per
        /// uid and 2 GiB for all but root's.
        public init() {}
    }

    /// The loop the service, its endpoints and every callback run on.
    public let eventLoop: any IPCEventLoop
    let options: Options

    var producers: [ProducerID: Weak<LocalProducerEndpoint>] = [:] {
        didSet { producersChanged() }
    }
    var consumers: [UInt64: Weak<LocalConsumerEndpoint>] = [:]
    var sessions: [TracingSessionID: TracingSession] = [:]
    var buffers: [BufferID: TraceBuffer] = [:]
    /// Relays of other machines (RelayPort clients), by their connection.
    var relays: [RelayKey: RelayRecord] = [:]
    /// The next producer id to try (internal: tests make it go round).
    var nextProducerID: ProducerID = 1
    /// Triggers taken, by name, for `max_per_24_h`.
    var triggerHistory = TriggerHistory()
    /// `lockdown_mode`: only producers of the service's own uid connect and are started.
    var lockdown = false
    /// When sessions with `enable_extra_guardrails` began, by unique session name (boot-time
    /// nanoseconds), for traced's five minutes between two of the same name.
    var guardrailedSessionStarts: [String: UInt64] = [:]
    private var nextConsumerID: UInt64 = 1
    var nextSessionID: TracingSessionID = 1
    var nextInstanceID: DataSourceInstanceID = 1
    var nextFlushID: FlushRequestID = 1
    private var nextBufferID: BufferID = 1

    /// The producers and data sources of the service state, encoded once for every
    /// QueryServiceState until one comes, goes or changes (see `encodedServiceState`).
    var encodedProducers: EncodedProducers?

    // Service-wide counters (TraceStats).
    var producersSeen: UInt64 = 0
    var dataSourcesSeen: UInt64 = 0
    var chunksDiscarded: UInt64 = 0
    var patchesDiscarded: UInt64 = 0
    var flushesRequested: UInt64 = 0
    var flushesSucceeded: UInt64 = 0
    var flushesFailed: UInt64 = 0

    /// A service on `eventLoop`. Nothing runs until producers and consumers connect.
    public init(eventLoop: any IPCEventLoop, options: Options = Options()) {
        self.eventLoop = eventLoop
        self.options = options
    }

    /// Chunk bytes one part of a ReadBuffers reads before handing its packets over; the next
    /// part is read on a later turn, while the consumer's connection sends the first (a 64 MiB
    /// buffer used to be read whole first, the consumer idle meanwhile). Loop-only; tests set
    /// it small to read in many parts.
    var readPartChunkBytes = 2 << 20
    /// The same for a session read compressed: compressing is slow (deflate ~30 MB/s here), and
    /// every producer's commits and consumer's calls wait for the loop meanwhile, so a part
    /// takes at most ~10 ms of deflate (Perfetto's traced compresses 32 KiB per task).
    var compressedReadPartChunkBytes = 256 << 10
    /// Freeing buffers that held this much gives the freed memory back to the system.
    static let trimAfterFreeingBytes = 4 << 20

    /// Runs `body` on a later loop turn: callbacks never run inside the call that caused them.
    func post(_ body: @escaping () -> Void) {
        _ = eventLoop.scheduleTask(after: .zero, body)
    }

    // MARK: Connecting

    public func connectProducer(_ producer: any Producer, options: ProducerConnectionOptions) -> any ProducerEndpoint {
        connectLocalProducer(producer, options: options)
    }

    /// Connects a producer served over ProducerPort; nil when every producer id is taken.
    func connectRemoteProducer(_ producer: any Producer, options: ProducerConnectionOptions) -> LocalProducerEndpoint? {
        let endpoint = connectLocalProducer(producer, options: options)
        return endpoint.id == 0 ? nil : endpoint
    }

    private func connectLocalProducer(_ producer: any Producer, options: ProducerConnectionOptions) -> LocalProducerEndpoint {
        eventLoop.preconditionInEventLoop()
        // In lockdown only the service's own uid connects, as in traced.
        let lockedOut = lockdown && options.identity.uid != self.options.serviceUID
        guard !lockedOut, let id = allocateProducerID() else {
            // All 65,535 producer ids are in use, or a lockdown: the producer is told it is
            // disconnected.
            let endpoint = LocalProducerEndpoint(id: 0, serial: 0, options: options, producer: producer, service: self)
            endpoint.markDisconnected()
            post { [weak producer] in producer?.onDisconnect() }
            return endpoint
        }
        producersSeen += 1
        let endpoint = LocalProducerEndpoint(
            id: id, serial: ProducerSerial(producersSeen), options: options, producer: producer, service: self)
        producers[id] = Weak(endpoint)
        post { [weak producer] in producer?.onConnect() }
        if endpoint.isSharedMemoryProvidedByProducer {
            // Its own memory is ready now: tracing is set up at once, as traced does it, so a
            // producer that traced from startup can hand over what it wrote.
            endpoint.didSetUpTracing = true
            post { [weak producer] in producer?.onTracingSetup() }
        }
        return endpoint
    }

    public func connectConsumer(_ consumer: any Consumer, uid: UInt32) -> any ConsumerEndpoint {
        connectLocalConsumer(consumer, uid: uid)
    }

    func connectLocalConsumer(_ consumer: any Consumer, uid: UInt32) -> LocalConsumerEndpoint {
        eventLoop.preconditionInEventLoop()
        let id = nextConsumerID
        nextConsumerID += 1
        let endpoint = LocalConsumerEndpoint(connectionID: id, uid: uid, consumer: consumer, service: self)
        consumers[id] = Weak(endpoint)
        post { [weak consumer] in consumer?.onConnect() }
        return endpoint
    }

    private func allocateProducerID() -> ProducerID? {
        // An id stays taken until producerDisconnected removes it, even once its endpoint is
        // gone: the cleanup posted by a released endpoint must not hit a newcomer. Ids go round
        // after 65,535 connections; the buffers tell producers apart by their serial.
        guard producers.count < Int(ProducerID.max) else { return nil }
        while producers[nextProducerID] != nil || nextProducerID == 0 {
            nextProducerID &+= 1
        }
        let id = nextProducerID
        nextProducerID &+= 1
        return id
    }

    func allocateBufferID() -> BufferID? {
        guard buffers.count < Int(BufferID.max) else { return nil }
        while buffers[nextBufferID] != nil || nextBufferID == 0 { nextBufferID &+= 1 }
        let id = nextBufferID
        nextBufferID &+= 1
        return id
    }

    func producer(_ id: ProducerID) -> LocalProducerEndpoint? { producers[id]?.object }
    func consumer(_ id: UInt64) -> LocalConsumerEndpoint? { consumers[id]?.object }

    /// Connected producers in id order (deterministic instance creation).
    var connectedProducers: [LocalProducerEndpoint] {
        producers.keys.sorted().compactMap { producers[$0]?.object }
    }

    // MARK: Producer requests

    /// Registers a data source of `producer`; returns why it was refused, if it was (a second
    /// registration of a name is ignored, as in Perfetto).
    @discardableResult
    func registerDataSource(_ descriptor: DataSourceDescriptor, producer: LocalProducerEndpoint) -> String? {
        guard producer.dataSources[descriptor.name] == nil else { return nil }
        // A producer may not make the service hold an unbounded registry.
        guard producer.dataSources.count < options.maxDataSourcesPerProducer else {
            return "too many data sources (the limit is \(options.maxDataSourcesPerProducer) per producer)"
        }
        let size = DataSourceDescriptor.size(of: descriptor)
        guard size <= options.maxDataSourceBytesPerProducer - producer.dataSourceBytes else {
            return "the data source descriptors take too much memory (the limit is "
                + "\(options.maxDataSourceBytesPerProducer / 1024) KiB per producer)"
        }
        producer.dataSources[descriptor.name] = descriptor
        producer.dataSourceBytes += size
        dataSourcesSeen += 1
        // Sessions already running that want this data source get an instance now.
        for session in sessions.values.sorted(by: { $0.id < $1.id })
        where session.state == .configured || session.state == .started {
            for entry in session.config.dataSources where entry.config.name == descriptor.name {
                guard matches(entry, producer: producer, in: session) else { continue }
                setUpInstance(entry, producer: producer, session: session)
                if session.state == .started, let index = session.instances.indices.last {
                    startInstance(at: index, of: session)
                }
            }
        }
        return nil
    }

    /// Replaces the descriptor of a registered data source, within the same memory limit.
    @discardableResult
    func updateDataSource(_ descriptor: DataSourceDescriptor, producer: LocalProducerEndpoint) -> String? {
        guard let old = producer.dataSources[descriptor.name] else { return nil }
        let size = DataSourceDescriptor.size(of: descriptor)
        let remaining = producer.dataSourceBytes - DataSourceDescriptor.size(of: old)
        guard size <= options.maxDataSourceBytesPerProducer - remaining else {
            return "the data source descriptors take too much memory (the limit is "
                + "\(options.maxDataSourceBytesPerProducer / 1024) KiB per producer)"
        }
        producer.dataSources[descriptor.name] = descriptor
        producer.dataSourceBytes = remaining + size
        return nil
    }

    func unregisterDataSource(_ name: String, producer: LocalProducerEndpoint) {
        guard let old = producer.dataSources.removeValue(forKey: name) else { return }
        producer.dataSourceBytes -= DataSourceDescriptor.size(of: old)
        for session in sessions.values.sorted(by: { $0.id < $1.id }) {
            removeInstances(named: name, of: producer, from: session)
        }
    }

    /// CommitData: move complete chunks into buffers, apply patches, then acknowledge a flush.
    func commitData(_ request: CommitDataRequest, from producer: LocalProducerEndpoint) {
        for move in request.chunksToMove {
            moveChunk(move, from: producer)
        }
        for entry in request.chunksToPatch {
            applyPatches(entry, from: producer)
        }
        if request.hasFlushRequestID {
            flushAcknowledged(request.flushRequestID, producer: producer.id)
        }
    }

    private func moveChunk(_ move: CommitDataRequest.ChunksToMove, from producer: LocalProducerEndpoint) {
        let bytes: [UInt8]
        var isComplete = true
        if move.hasData {
            // Shared-memory emulation: the chunk travels inside the request.
            guard move.data.count >= SharedMemoryABI.chunkHeaderSize,
                  move.data.count <= SharedMemoryABI.maxPageSize else {
                chunksDiscarded += 1
                return
            }
            bytes = [UInt8](move.data)
            // A chunk the producer scraped from its own buffer while a writer was still in it.
            isComplete = !move.chunkIncomplete
        } else {
            guard let memory = producer.readableSharedMemory, move.page < UInt32(memory.pageCount),
                  move.chunk < UInt32(SharedMemoryABI.maxChunksPerPage),
                  let (start, size) = memory.tryAcquireChunkForReading(page: Int(move.page), chunk: Int(move.chunk)) else {
                chunksDiscarded += 1
                return
            }
            // Copy first: the producer can still scribble over shared memory while we parse.
            bytes = [UInt8](UnsafeRawBufferPointer(start: start, count: size))
            memory.releaseChunkAsFree(page: Int(move.page), chunk: Int(move.chunk))
        }
        guard move.targetBuffer <= UInt32(BufferID.max), producer.allowedTargetBuffers.contains(BufferID(move.targetBuffer)),
              let buffer = buffers[BufferID(move.targetBuffer)] else {
            chunksDiscarded += 1
            return
        }
        guard let header = bytes.withUnsafeBytes({ ChunkHeader(bytes: $0) }),
              SharedMemoryABI.isValidWriterID(header.writerID) else {
            chunksDiscarded += 1
            return
        }
        buffer.copyChunk(
            bytes, header: header, producer: producer.serial, uid: producer.uid, pid: producer.pid,
            machineID: producer.machineID, isComplete: isComplete)
    }

    private func applyPatches(_ entry: CommitDataRequest.ChunkToPatch, from producer: LocalProducerEndpoint) {
        guard entry.targetBuffer <= UInt32(BufferID.max), SharedMemoryABI.isValidWriterID(entry.writerID),
              producer.allowedTargetBuffers.contains(BufferID(entry.targetBuffer)),
              let buffer = buffers[BufferID(entry.targetBuffer)] else {
            patchesDiscarded += UInt64(max(entry.patches.count, 1))
            return
        }
        let writer = WriterID(entry.writerID)
        for patch in entry.patches {
            buffer.applyPatch(
                producer: producer.serial, writerID: writer, chunkID: entry.chunkID,
                offset: Int(clamping: patch.offset), data: [UInt8](patch.data))
        }
        if !entry.hasMorePatches_p {
            buffer.finishPatching(producer: producer.serial, writerID: writer, chunkID: entry.chunkID)
        }
    }

    /// A producer is gone: by `disconnect()`, or (posted from its deinit) because its endpoint
    /// was released. Either way its instances stop counting: no flush or stop is waited for.
    func producerDisconnected(_ id: ProducerID, serial: ProducerSerial) {
        // What it finished writing but never committed is read before it goes.
        if let endpoint = producers[id]?.object { scrapeSharedMemory(of: endpoint) }
        // Nothing more will come from it: what waits for its patches or commits is read as is.
        for buffer in buffers.values { buffer.producerDisconnected(serial) }
        let endpoint = producers.removeValue(forKey: id)?.object
        endpoint?.markDisconnected()
        for session in sessions.values {
            session.forgetNameMatches(of: id)
            // Only a session it had instances in waits for it. Flushes it was asked for stop
            // waiting for it, and fail (also when its instances went first: its data sources
            // unregistered while a flush waited).
            guard session.producersWithInstances.remove(id) != nil else { continue }
            for flushID in Array(session.pendingFlushes.keys) where session.pendingFlushes[flushID]?.waitingFor.contains(id) == true {
                session.pendingFlushes[flushID]?.producerLeft = true
                flushAcknowledged(flushID, producer: id, in: session)
            }
            var changed = false
            for index in session.instances.indices where session.instances[index].producerID == id {
                session.instances[index].state = .stopped
                changed = true
            }
            guard changed else { continue }
            if session.state == .disablingWaitingStopAcks { maybeFinishDisabling(session) }
        }
        guard let endpoint else { return }
        post { [weak producer = endpoint.producer] in producer?.onDisconnect() }
    }

    func consumerDisconnected(_ id: UInt64) {
        guard let endpoint = consumers.removeValue(forKey: id)?.object else {
            consumers[id] = nil
            // The endpoint is gone already: free its session anyway.
            if let session = sessions.values.first(where: { $0.consumerID == id }) { destroySession(session) }
            return
        }
        endpoint.markDisconnected()
        if let sessionID = endpoint.sessionID, let session = sessions[sessionID] { destroySession(session) }
        post { [weak consumer = endpoint.consumer] in consumer?.onDisconnect() }
    }

    /// Ends every session now, as a service that is going away must: what producers wrote is
    /// read from shared memory, sessions writing into a file get their last data written and
    /// their file closed, and buffers are freed. Consumers are told tracing is disabled.
    /// Loop-only.
    public func shutDown() {
        eventLoop.preconditionInEventLoop()
        for session in sessions.values.sorted(by: { $0.id < $1.id }) {
            if session.state == .configured || session.state == .started || session.state == .disablingWaitingStopAcks {
                session.cancelTimers()
                scrapeSharedMemory(for: session)
                session.state = .disabled
                if session.isWritingIntoFile { drainIntoFile(session) }
                if let endpoint = consumer(session.consumerID) {
                    let error = session.fileError ?? "the tracing service shut down"
                    post { [weak client = endpoint.consumer] in client?.onTracingDisabled(error: error) }
                }
            } else if session.state == .disabled, session.outputFile != nil, let endpoint = consumer(session.consumerID) {
                // Stopped, but its file had not taken everything yet: told now, as it will not be.
                let error = session.fileError ?? "the tracing service shut down before the trace file was complete"
                post { [weak client = endpoint.consumer] in client?.onTracingDisabled(error: error) }
            }
            destroySession(session)
        }
    }

    // MARK: Queries

    /// What `QueryServiceState` shows a consumer of `uid`: every producer and data source (as
    /// in Perfetto), and the sessions that uid may clone, its own (root: all). The counts of
    /// sessions cover every session, as Perfetto's do.
    func serviceState(sessionsOnly: Bool, for uid: UInt32) -> TracingServiceState {
        var state = TracingServiceState()
        if !sessionsOnly { appendProducers(connectedProducers, to: &state) }
        for session in sessions.values.sorted(by: { $0.id < $1.id }) where session.isVisible(to: uid) {
            var entry = TracingServiceState.TracingSession()
            entry.id = session.id
            entry.consumerUid = Int32(bitPattern: session.consumerUID)
            entry.state = session.state.rawValue
            if !session.config.uniqueSessionName.isEmpty { entry.uniqueSessionName = session.config.uniqueSessionName }
            entry.bufferSizeKb = session.config.buffers.map(\.sizeKb)
            entry.durationMs = session.config.durationMs
            entry.numDataSources = UInt32(session.instances.count)
            entry.isStarted = session.state == .started
            if session.startRealtimeNanoseconds != 0 { entry.startRealtimeNs = session.startRealtimeNanoseconds }
            state.tracingSessions.append(entry)
        }
        state.supportsTracingSessions = true
        state.numSessions = Int32(sessions.count)
        state.numSessionsStarted = Int32(sessions.values.filter { $0.state == .started }.count)
        state.tracingServiceVersion = "swift-perfetto-ipc"
        return state
    }

    /// `producers` and their data sources (by name), as the state shows them.
    func appendProducers(_ producers: [LocalProducerEndpoint], to state: inout TracingServiceState) {
        for producer in producers {
            var entry = TracingServiceState.Producer()
            entry.id = Int32(producer.id)
            entry.name = producer.name
            entry.uid = Int32(bitPattern: producer.uid)
            entry.pid = producer.pid
            if !producer.sdkVersion.isEmpty { entry.sdkVersion = producer.sdkVersion }
            state.producers.append(entry)
            for name in producer.dataSources.keys.sorted() {
                var dataSource = TracingServiceState.DataSource()
                dataSource.producerID = Int32(producer.id)
                dataSource.dsDescriptor = producer.dataSources[name]!
                state.dataSources.append(dataSource)
            }
        }
    }

    func traceStats(for session: TracingSession?) -> TraceStats {
        var stats = TraceStats()
        stats.producersConnected = UInt32(connectedProducers.count)
        stats.producersSeen = producersSeen
        stats.dataSourcesRegistered = UInt32(connectedProducers.reduce(0) { $0 + $1.dataSources.count })
        stats.dataSourcesSeen = dataSourcesSeen
        stats.tracingSessions = UInt32(sessions.count)
        stats.totalBuffers = UInt32(buffers.count)
        stats.chunksDiscarded = chunksDiscarded
        stats.patchesDiscarded = patchesDiscarded
        stats.invalidPackets = session?.invalidPackets ?? 0
        stats.flushesRequested = flushesRequested
        stats.flushesSucceeded = flushesSucceeded
        stats.flushesFailed = flushesFailed
        for id in session?.bufferIDs ?? [] {
            guard let buffer = buffers[id] else { continue }
            stats.bufferStats.append(Self.bufferStats(buffer.stats))
        }
        if let session, session.traceFilter != nil { stats.filterStats = session.filterStats }
        return stats
    }

    private static func bufferStats(_ counters: TraceBufferStats) -> TraceStats.BufferStats {
        var stats = TraceStats.BufferStats()
        stats.bufferSize = counters.bufferSize
        stats.bytesWritten = counters.bytesWritten
        stats.bytesOverwritten = counters.bytesOverwritten
        stats.bytesRead = counters.bytesRead
        stats.chunksWritten = counters.chunksWritten
        stats.chunksRewritten = counters.chunksRewritten
        stats.chunksOverwritten = counters.chunksOverwritten
        stats.chunksDiscarded = counters.chunksDiscarded
        stats.chunksRead = counters.chunksRead
        stats.chunksCommittedOutOfOrder = counters.chunksCommittedOutOfOrder
        stats.writeWrapCount = counters.writeWrapCount
        stats.patchesSucceeded = counters.patchesSucceeded
        stats.patchesFailed = counters.patchesFailed
        stats.abiViolations = counters.abiViolations
        stats.traceWriterPacketLoss = counters.traceWriterPacketLoss
        return stats
    }
}

extension DataSourceDescriptor {
    /// Bytes `descriptor` takes serialized: what the service counts against a producer's limit.
    static func size(of descriptor: DataSourceDescriptor) -> Int {
        (try? descriptor.serializedBytes() as [UInt8])?.count ?? 0
    }
}
