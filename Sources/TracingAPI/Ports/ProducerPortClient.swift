// ProducerPort, the producer's side (Perfetto's ProducerIPCClientImpl): a ProducerEndpoint
// that speaks to a tracing service in another process, ours or the real traced.
//
// Flow: connect, bind ProducerPort, InitializeConnection (with the producer's own shared memory
// as its fd, for startup tracing) and GetAsyncCommand at once; the reply to the first says
// `onConnect`, the stream carries the service's commands. `setup_tracing` brings the shared
// memory's fd: it is mapped at its fstat size, with the page size the command names, and an
// arbiter makes writers on it whose commits go out as CommitData.
//
// Shared-memory emulation, when the service says `use_shmem_emulation` or the connection is
// not a unix socket (TCP, vsock: the service is on another machine, or behind a relay): the
// producer lays out a buffer of its own (1 MiB, the page size `setup_tracing` names), and its
// commits carry the chunks' bytes, split so no frame passes the limit. On flush, chunks still
// being written are scraped into the commit too, as the service cannot scrape them.
//
// When the connection ends the producer is told once (`onDisconnect`), every pending callback
// runs once, and the endpoint connects again after a backoff; the data sources registered so
// far are registered again. Writers made before keep writing into the old mapping, which
// nobody reads any more: they never block on the dead service beyond their stall policy.

import IPCProtocol

/// When and how often a remote producer connects again after losing its service.
public struct ReconnectPolicy: Sendable, Hashable {
    /// The first wait after a lost or refused connection.
    public var initialDelay: Duration
    /// The wait doubles up to this.
    public var maximumDelay: Duration
    /// Whether to reconnect at all.
    public var isEnabled: Bool

    /// Reconnects after 100 ms, doubling to 5 s between tries.
    public static let `default` = ReconnectPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(5))
    /// Never reconnects: a lost service ends the endpoint.
    public static let never = ReconnectPolicy(initialDelay: .zero, maximumDelay: .zero, isEnabled: false)

    public init(initialDelay: Duration, maximumDelay: Duration, isEnabled: Bool = true) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.isEnabled = isEnabled
    }
}

/// A producer's endpoint on a tracing service in another process, over ProducerPort.
///
/// Usually made by ``SystemTracingService/connectProducer(_:options:)``. Loop-bound: use it on
/// the loop of its backend; the producer's callbacks arrive there.
public final class RemoteProducerEndpoint: ProducerEndpoint {
    public let eventLoop: any IPCEventLoop
    private let backend: IPCBackend
    private var options: ProducerConnectionOptions
    private let reconnectPolicy: ReconnectPolicy
    private weak var producer: (any Producer)?

    private var client: IPCClient?
    private var port: Perfetto_Protos_ProducerPortProxy?
    /// InitializeConnection was answered: calls go through.
    private var initialized = false
    private var closed = false
    private var nextDelay: Duration
    /// When the current connection was initialized.
    private var initializedAt = ContinuousClock.now
    /// A connection that lasted this long resets the reconnection delay.
    static let stableConnection: Duration = .seconds(1)
    private var reconnectTask: (any ScheduledTask)?
    /// Descriptors registered by the producer, in order: sent again on every connection.
    private var dataSources: [DataSourceDescriptor] = []
    /// Sync callbacks waiting for their reply; each runs once, connected or not.
    private var pendingSyncs: [UInt64: () -> Void] = [:]
    private var nextSyncID: UInt64 = 1

    public private(set) var sharedMemory: SharedMemoryBuffer?
    public private(set) var sharedMemoryArbiter: SharedMemoryArbiter?
    public private(set) var isSharedMemoryProvidedByProducer = false
    /// Whether chunks travel inside CommitData on this connection (see the top of the file).
    public private(set) var usesSharedMemoryEmulation = false
    /// Writers and their target buffers, for scraping under emulation.
    private var writerTargets: [WriterID: BufferID] = [:]
    /// When the last batched commit went out, and the commit held back until
    /// `options.commitBatchingInterval` has passed since (see ``commitBatched()``).
    private var lastBatchedCommit: ContinuousClock.Instant?
    private var heldBackCommit: (any ScheduledTask)?
    /// CommitData requests sent on this endpoint, every connection included (diagnostics, tests).
    public private(set) var commitsSent = 0

    /// The size of the producer's own buffer under emulation (Perfetto's, 1 MiB).
    static let emulatedSharedMemorySize = 1024 * 1024

    /// Connects `producer` to the service at `backend`. Loop-only (the backend's loop).
    public init(
        producer: any Producer, options: ProducerConnectionOptions, backend: IPCBackend,
        reconnectPolicy: ReconnectPolicy = .default
    ) {
        self.eventLoop = backend.eventLoop
        self.backend = backend
        self.options = options
        self.reconnectPolicy = reconnectPolicy
        self.producer = producer
        self.nextDelay = reconnectPolicy.initialDelay
        eventLoop.preconditionInEventLoop()
        connect()
    }

    deinit {
        reconnectTask?.cancel()
        heldBackCommit?.cancel()
        // Released, which disconnects: as in disconnect(). Off the loop nothing can be sent.
        if eventLoop.inEventLoop { sendWhatWritersHandedOver() }
    }

    /// Whether the service accepted the connection and it is still up.
    public var isConnected: Bool { initialized }

    /// Why the last connection failed or ended: nothing listening, the service gone, or what
    /// made this endpoint hang up (a refused InitializeConnection, shared memory it cannot use).
    public private(set) var connectionError: IPCError?
    /// Why this endpoint is closing its connection, reported as the connection's end.
    private var hangUpReason: IPCError?

    /// Closes the connection for `reason`; it ends (and is reconnected) as any lost one.
    private func hangUp(_ reason: String) {
        hangUpReason = IPCError(.protocolViolation, reason)
        client?.close()
    }

    // MARK: Connection

    private func connect() {
        let client = IPCClient(backend: backend)
        let port = Perfetto_Protos_ProducerPortProxy()
        self.client = client
        self.port = port
        port.onConnect = { [weak self, weak port] in
            guard let self, let port, port === self.port else { return }
            self.initialize(port)
        }
        port.onConnectionFailed = { [weak self, weak port] error in
            guard let self, let port, port === self.port else { return }
            self.connectionEnded(error)
        }
        port.onDisconnect = { [weak self, weak port] error in
            guard let self, let port, port === self.port else { return }
            self.connectionEnded(error)
        }
        client.bind(port)
    }

    private func initialize(_ port: Perfetto_Protos_ProducerPortProxy) {
        var request = Perfetto_Protos_InitializeConnectionRequest()
        request.producerName = options.name
        request.sharedMemorySizeHintBytes = UInt32(clamping: options.sharedMemorySizeHint)
        request.sharedMemoryPageSizeHintBytes = UInt32(clamping: options.sharedMemoryPageSizeHint)
        request.smbScrapingMode = options.scrapesSharedMemory ? .smbScrapingEnabled : .smbScrapingDisabled
        request.sdkVersion = options.sdkVersion.isEmpty ? Self.sdkVersion : options.sdkVersion
        var fd: Int32?
        if let provided = options.producerProvidedSharedMemory {
            request.producerProvidedShmem = true
            request.sharedMemoryPageSizeHintBytes = UInt32(provided.pageSize)
            fd = provided.fileDescriptor.rawValue
        }
        port.initializeConnection(request, fd: fd) { [weak self, weak port] result in
            guard let self, let port, port === self.port else { return }
            guard let response = result.message else {
                self.hangUp("the service refused InitializeConnection: \(result.error?.message ?? "no reply")")
                return
            }
            self.connectionInitialized(response)
        }
        port.getAsyncCommand(Perfetto_Protos_GetAsyncCommandRequest()) { [weak self, weak port] result in
            guard let self, let port, port === self.port else { return }
            if let command = result.message { self.handle(command, fileDescriptor: result.fileDescriptor) }
            // The stream lasts as long as the service serves this producer. One that ends (a
            // last reply, or a rejection) left a producer connected that nothing would start
            // again: it is a lost service, and the producer connects anew.
            if !result.hasMore, result.error?.code != .disconnected, port === self.port {
                self.hangUp("the service ended its command stream")
            }
        }
    }

    private func connectionInitialized(_ response: Perfetto_Protos_InitializeConnectionResponse) {
        initialized = true
        initializedAt = ContinuousClock.now
        usesSharedMemoryEmulation = response.useShmemEmulation || client?.peer?.isLocal == false
        if let provided = options.producerProvidedSharedMemory {
            if response.usingShmemProvidedByProducer && !usesSharedMemoryEmulation {
                isSharedMemoryProvidedByProducer = true
                installSharedMemory(provided)
            } else {
                // Refused (Perfetto's SDK does the same): the service makes its own buffer.
                options.producerProvidedSharedMemory = nil
            }
        }
        for descriptor in dataSources { sendRegistration(descriptor) }
        producer?.onConnect()
    }

    private func connectionEnded(_ error: IPCError) {
        connectionError = hangUpReason ?? error
        hangUpReason = nil
        let wasInitialized = initialized
        // The delay starts over only after a connection that lasted: a service that accepts
        // and then drops producers at once made them reconnect a few times a second for ever.
        if wasInitialized, ContinuousClock.now - initializedAt >= Self.stableConnection {
            nextDelay = reconnectPolicy.initialDelay
        }
        initialized = false
        port = nil
        client = nil
        sharedMemoryArbiter = nil
        sharedMemory = nil
        heldBackCommit?.cancel()
        heldBackCommit = nil
        isSharedMemoryProvidedByProducer = false
        usesSharedMemoryEmulation = false
        writerTargets = [:]
        // Startup-tracing memory is offered once, as Perfetto's SDK does.
        options.producerProvidedSharedMemory = nil
        let syncs = pendingSyncs
        pendingSyncs = [:]
        for (_, callback) in syncs.sorted(by: { $0.key < $1.key }) { callback() }
        if wasInitialized { producer?.onDisconnect() }
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        guard !closed, reconnectPolicy.isEnabled, producer != nil else {
            if !closed { closed = true }
            return
        }
        let delay = nextDelay
        nextDelay = min(nextDelay * 2, reconnectPolicy.maximumDelay)
        reconnectTask = eventLoop.scheduleTask(after: delay) { [weak self] in
            guard let self, !self.closed, self.client == nil else { return }
            self.connect()
        }
    }

    /// What we tell the service we are, in the form Perfetto's SDK uses.
    static let sdkVersion = "swift-perfetto-ipc (ProducerPort client)"

    // MARK: Commands from the service

    private func handle(_ command: Perfetto_Protos_GetAsyncCommandResponse, fileDescriptor: ScopedFD?) {
        guard let producer else { return }
        switch command.cmd {
        case .setupTracing(let setup)?:
            setUpTracing(setup, fileDescriptor: fileDescriptor)
        case .setupDataSource(let setup)?:
            producer.setupDataSource(setup.newInstanceID, config: setup.config)
        case .startDataSource(let start)?:
            producer.startDataSource(start.newInstanceID, config: start.config)
        case .stopDataSource(let stop)?:
            producer.stopDataSource(stop.instanceID)
        case .flush(let flush)?:
            producer.flush(flush.requestID, dataSources: flush.dataSourceIds, flags: FlushFlags(rawValue: flush.flags))
        case .clearIncrementalState_p(let clear)?:
            producer.clearIncrementalState(clear.dataSourceIds)
        case nil:
            break
        }
    }

    private func setUpTracing(_ setup: Perfetto_Protos_GetAsyncCommandResponse.SetupTracing, fileDescriptor: ScopedFD?) {
        if usesSharedMemoryEmulation {
            // Any fd is ignored (closed): the service cannot share memory with us.
            if sharedMemory == nil {
                var pageSize = Int(setup.sharedBufferPageSizeKb) * 1024
                if !SharedMemoryBuffer.isValid(size: Self.emulatedSharedMemorySize, pageSize: pageSize) {
                    pageSize = SharedMemoryABI.defaultPageSize
                }
                do {
                    installSharedMemory(try SharedMemoryBuffer.create(size: Self.emulatedSharedMemorySize, pageSize: pageSize))
                } catch {
                    return hangUp("cannot make the buffer to emulate shared memory with: \(error.message)")
                }
            }
        } else if let fileDescriptor {
            let pageSize = Int(setup.sharedBufferPageSizeKb) * 1024
            // Sealed against resizing, as traced (and our service) seal theirs: a buffer the
            // service could shrink after sending it would turn the writers' stores into SIGBUS,
            // in the application's own threads.
            let mapping: SharedMemoryBuffer
            do {
                mapping = try SharedMemoryBuffer.map(
                    fileDescriptor, pageSize: pageSize == 0 ? SharedMemoryABI.defaultPageSize : pageSize, requireSeals: true)
            } catch {
                // A buffer we cannot map is a service we cannot trace into.
                return hangUp("the service's shared memory cannot be used: \(error.message)")
            }
            isSharedMemoryProvidedByProducer = false
            installSharedMemory(mapping)
        } else if sharedMemory == nil {
            return hangUp("the service set up tracing without shared memory")
        }
        producer?.onTracingSetup()
    }

    private func installSharedMemory(_ mapping: SharedMemoryBuffer) {
        guard sharedMemory !== mapping else { return }
        sharedMemory = mapping
        let loop = eventLoop
        let endpoint = WeakBox(self)
        let sink = SharedMemoryArbiter.Sink(
            scheduleCommit: { [memory = WeakBox(mapping)] batched, completion in
                loop.execute {
                    // A writer left on the memory of a lost connection must not take the
                    // pending batch of the current one: its commits go nowhere.
                    guard let current = endpoint.object, let memory = memory.object, current.sharedMemory === memory else {
                        completion?()
                        return
                    }
                    if batched {
                        current.commitBatched()
                    } else {
                        current.commitFromArbiter(completion: completion)
                    }
                }
            },
            registerWriter: { writer, buffer in
                // At once on the loop, ahead of the writer's first commit: the service scrapes
                // only writers it knows.
                loop.runNowOrPost { endpoint.object?.registerTraceWriter(writer, targetBuffer: buffer) }
            },
            unregisterWriter: { writer in
                loop.execute { endpoint.object?.unregisterTraceWriter(writer) }
            },
            // A writer stalling on this loop would stop the commits that free its chunks.
            isServiceThread: { loop.inEventLoop })
        sharedMemoryArbiter = SharedMemoryArbiter(buffer: mapping, emulatesSharedMemory: usesSharedMemoryEmulation, sink: sink)
    }

    /// Sends, now, the chunks and patches writers handed over that wait for the commit the
    /// arbiter queued on the loop: so a Sync, or the end of the connection, comes after them.
    private func sendWhatWritersHandedOver() {
        commitFromArbiter(completion: nil)
    }

    /// A commit nothing waits on but its chunks: at most one per `commitBatchingInterval`. The
    /// first after a quiet spell goes at once; one coming sooner is held back until the
    /// interval has passed, and carries everything writers finish meanwhile.
    private func commitBatched() {
        guard heldBackCommit == nil else { return }
        let now = ContinuousClock.now
        let interval = options.commitBatchingInterval
        if interval > .zero, let last = lastBatchedCommit, now < last + interval {
            heldBackCommit = eventLoop.scheduleTask(after: last + interval - now) { [weak self] in
                guard let self else { return }
                self.heldBackCommit = nil
                self.lastBatchedCommit = ContinuousClock.now
                self.commitFromArbiter(completion: nil)
            }
            return
        }
        lastBatchedCommit = now
        commitFromArbiter(completion: nil)
    }

    private func commitFromArbiter(completion: (@Sendable () -> Void)?) {
        guard let arbiter = sharedMemoryArbiter else {
            completion?()
            return
        }
        var request = arbiter.takePendingCommit()
        if request.hasFlushRequestID {
            if arbiter.emulatesSharedMemory && options.scrapesSharedMemory {
                // The service cannot scrape our buffer: what writers finished so far comes along.
                request.chunksToMove += arbiter.scrapeEmulatedChunks(targets: writerTargets)
            }
        }
        guard !request.chunksToMove.isEmpty || !request.chunksToPatch.isEmpty || request.hasFlushRequestID
            || completion != nil else { return }
        guard arbiter.emulatesSharedMemory else {
            commitData(request, completion: completion)
            return
        }
        let parts = CommitDataSplitting.split(request)
        for part in parts.dropLast() { commitData(part, completion: nil) }
        commitData(parts[parts.count - 1], completion: completion)
    }

    // MARK: ProducerEndpoint

    public func registerDataSource(_ descriptor: DataSourceDescriptor) {
        eventLoop.preconditionInEventLoop()
        guard !descriptor.name.isEmpty, !dataSources.contains(where: { $0.name == descriptor.name }) else { return }
        dataSources.append(descriptor)
        if initialized { sendRegistration(descriptor) }
    }

    private func sendRegistration(_ descriptor: DataSourceDescriptor) {
        var request = Perfetto_Protos_RegisterDataSourceRequest()
        request.dataSourceDescriptor = descriptor
        port?.registerDataSource(request) { _ in }
    }

    public func updateDataSource(_ descriptor: DataSourceDescriptor) {
        eventLoop.preconditionInEventLoop()
        guard let index = dataSources.firstIndex(where: { $0.name == descriptor.name }) else { return }
        dataSources[index] = descriptor
        guard initialized else { return }
        var request = Perfetto_Protos_UpdateDataSourceRequest()
        request.dataSourceDescriptor = descriptor
        port?.updateDataSource(request) { _ in }
    }

    public func unregisterDataSource(named name: String) {
        eventLoop.preconditionInEventLoop()
        dataSources.removeAll { $0.name == name }
        guard initialized else { return }
        var request = Perfetto_Protos_UnregisterDataSourceRequest()
        request.dataSourceName = name
        port?.unregisterDataSource(request, reply: nil)
    }

    public func registerTraceWriter(_ writerID: WriterID, targetBuffer: BufferID) {
        eventLoop.preconditionInEventLoop()
        guard initialized else { return }
        writerTargets[writerID] = targetBuffer
        var request = Perfetto_Protos_RegisterTraceWriterRequest()
        request.traceWriterID = UInt32(writerID)
        request.targetBuffer = UInt32(targetBuffer)
        port?.registerTraceWriter(request, reply: nil)
    }

    public func unregisterTraceWriter(_ writerID: WriterID) {
        eventLoop.preconditionInEventLoop()
        guard initialized else { return }
        writerTargets[writerID] = nil
        var request = Perfetto_Protos_UnregisterTraceWriterRequest()
        request.traceWriterID = UInt32(writerID)
        port?.unregisterTraceWriter(request, reply: nil)
    }

    public func commitData(_ request: CommitDataRequest, completion: (() -> Void)?) {
        eventLoop.preconditionInEventLoop()
        guard initialized, let port else {
            // Nobody to commit to: the completion still runs once.
            if let completion { eventLoop.execute { [completion = UncheckedSendableBox(completion)] in completion.value() } }
            return
        }
        commitsSent += 1
        guard let completion else {
            port.commitData(request, reply: nil)
            return
        }
        port.commitData(request) { _ in completion() }
    }

    public func notifyDataSourceStarted(_ id: DataSourceInstanceID) {
        eventLoop.preconditionInEventLoop()
        guard initialized else { return }
        var request = Perfetto_Protos_NotifyDataSourceStartedRequest()
        request.dataSourceID = id
        port?.notifyDataSourceStarted(request, reply: nil)
    }

    public func notifyDataSourceStopped(_ id: DataSourceInstanceID) {
        eventLoop.preconditionInEventLoop()
        guard initialized else { return }
        // After the data written so far: pending commits leave first, on this same channel.
        sharedMemoryArbiter?.flushPendingCommitData()
        let endpoint = WeakBox(self)
        eventLoop.execute {
            guard let self = endpoint.object, self.initialized else { return }
            var request = Perfetto_Protos_NotifyDataSourceStoppedRequest()
            request.dataSourceID = id
            self.port?.notifyDataSourceStopped(request, reply: nil)
        }
    }

    public func activateTriggers(_ names: [String]) {
        eventLoop.preconditionInEventLoop()
        guard initialized else { return }
        var request = Perfetto_Protos_ActivateTriggersRequest()
        request.triggerNames = names
        port?.activateTriggers(request, reply: nil)
    }

    public func sync(_ callback: @escaping () -> Void) {
        eventLoop.preconditionInEventLoop()
        let id = nextSyncID
        nextSyncID += 1
        pendingSyncs[id] = callback
        guard initialized, let port else {
            let endpoint = WeakBox(self)
            eventLoop.execute { endpoint.object?.pendingSyncs.removeValue(forKey: id)?() }
            return
        }
        sendWhatWritersHandedOver()  // "everything sent before" includes it
        port.sync(Perfetto_Protos_SyncRequest()) { [weak self] _ in
            self?.pendingSyncs.removeValue(forKey: id)?()
        }
    }

    /// Ends the connection after what writers handed over before this call (chunks and
    /// patches still waiting for their commit), as over one socket they come before its end.
    public func disconnect() {
        eventLoop.preconditionInEventLoop()
        guard !closed else { return }
        closed = true
        reconnectTask?.cancel()
        reconnectTask = nil
        heldBackCommit?.cancel()
        heldBackCommit = nil
        sendWhatWritersHandedOver()
        client?.close()
    }
}
