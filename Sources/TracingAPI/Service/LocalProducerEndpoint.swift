// A producer connected directly to the service (the in-process binding): calls become method
// calls on the service's loop, no frames. The shared memory is still a real memfd with the
// real ABI: the service keeps its mapping, the producer side maps the same fd again, and chunks
// travel through page-header CAS and CommitData exactly as they would across processes.

import IPCProtocol

final class LocalProducerEndpoint: ProducerEndpoint, @unchecked Sendable {
    // @unchecked Sendable: loop-bound (checked at entry); the arbiter's sink posts onto the loop.
    let id: ProducerID
    /// This connection's number, never given twice (the id is, after 65,535 connections).
    let serial: ProducerSerial
    let name: String
    let uid: UInt32
    let pid: Int32
    let sdkVersion: String
    /// The machine it runs on (0: the service's own) and that machine's name.
    let machineID: UInt32
    let machineName: String
    /// Chunks come inside CommitData (no shared memory can reach it): see
    /// ``ProducerConnectionOptions/usesSharedMemoryEmulation``.
    let usesSharedMemoryEmulation: Bool
    /// The page size the producer is told to lay its own buffer out with, under emulation.
    private(set) var emulatedPageSize: Int?
    let sizeHint: Int
    let pageSizeHint: Int
    weak var producer: (any Producer)?
    private weak var service: TracingServiceCore?
    let eventLoop: any IPCEventLoop

    /// The service's mapping of the shared memory (what it reads chunks from).
    private(set) var serviceMapping: SharedMemoryBuffer?
    /// The producer's mapping and its arbiter.
    private(set) var sharedMemory: SharedMemoryBuffer?
    private(set) var sharedMemoryArbiter: SharedMemoryArbiter?
    private(set) var isSharedMemoryProvidedByProducer = false
    var dataSources: [String: DataSourceDescriptor] = [:] {
        didSet { service?.producersChanged() }
    }
    /// Serialized bytes of `dataSources` (bounded by the service's options).
    var dataSourceBytes = 0
    var writers: [WriterID: BufferID] = [:]
    /// Requests about a data source waiting for the commits before them (an unregistration, and
    /// the registrations and updates behind it), by name.
    private var pendingNameRequests: [String: Int] = [:]
    /// Buffers of sessions this producer takes part in: the only ones it may commit into.
    var allowedTargetBuffers: Set<BufferID> = []
    private(set) var connected = true
    /// onTracingSetup was sent (once per producer).
    var didSetUpTracing = false
    /// Served over ProducerPort: the producer maps the shared memory in its own process.
    let isRemote: Bool
    /// Chunks it has not committed are read on flush, stop and disconnect.
    let scrapesSharedMemory: Bool

    init(
        id: ProducerID, serial: ProducerSerial, options: ProducerConnectionOptions, producer: any Producer,
        service: TracingServiceCore
    ) {
        self.id = id
        self.serial = serial
        self.name = options.name
        self.uid = options.identity.uid ?? UInt32(bitPattern: -1)
        self.pid = options.identity.pid ?? 0
        self.sdkVersion = options.sdkVersion
        self.machineID = options.machineID
        self.machineName = options.machineName
        self.usesSharedMemoryEmulation = options.usesSharedMemoryEmulation
        self.sizeHint = options.sharedMemorySizeHint
        self.pageSizeHint = options.sharedMemoryPageSizeHint
        self.producer = producer
        self.service = service
        self.eventLoop = service.eventLoop
        self.isRemote = options.isRemote
        self.scrapesSharedMemory = options.scrapesSharedMemory
        if usesSharedMemoryEmulation {
            // Nothing to adopt: no fd crosses a TCP or vsock connection.
        } else if isRemote, let provided = options.producerProvidedSharedMemory,
           SharedMemoryBuffer.isValid(size: provided.size, pageSize: provided.pageSize) {
            // Mapped (and its seals checked) by the port from the fd the producer sent.
            isSharedMemoryProvidedByProducer = true
            serviceMapping = provided
        } else if let provided = options.producerProvidedSharedMemory,
           SharedMemoryBuffer.isValid(size: provided.size, pageSize: provided.pageSize),
           let duplicate = provided.fileDescriptor.duplicate(),
           let mapping = try? SharedMemoryBuffer.map(duplicate, pageSize: provided.pageSize, requireSeals: true) {
            isSharedMemoryProvidedByProducer = true
            serviceMapping = mapping
            installProducerSide(provided)
        }
    }

    deinit {
        // Releasing the endpoint disconnects, as destroying Perfetto's endpoint does.
        guard connected, let service else { return }
        if eventLoop.inEventLoop {
            // The shared memory goes with this endpoint: what writers handed over (queued for a
            // commit that would no longer find us) and what they finished is taken now.
            commitFromArbiter(completion: nil)
            service.scrapeSharedMemory(of: self)
        }
        let id = self.id
        let serial = self.serial
        let box = UncheckedSendableBox(service)
        eventLoop.execute { box.value.producerDisconnected(id, serial: serial) }
    }

    /// Sets up the shared memory on first use by a session (Perfetto creates it lazily).
    /// Returns false if it could not be created.
    func ensureSharedMemory(defaultSize: Int, defaultPageSize: Int) -> Bool {
        if serviceMapping != nil || emulatedPageSize != nil { return true }
        // As traced: hints past the largest sizes are lowered to them; a layout still invalid
        // (a page size that is no power-of-two number of 4 KiB pages, a size that is no
        // multiple of it) gets the defaults.
        var pageSize = min(pageSizeHint == 0 ? defaultPageSize : pageSizeHint, SharedMemoryABI.maxServicePageSize)
        var size = min(sizeHint == 0 ? defaultSize : sizeHint, SharedMemoryABI.maxBufferSize)
        if !SharedMemoryBuffer.isValid(size: size, pageSize: pageSize) {
            pageSize = defaultPageSize
            size = defaultSize
        }
        if usesSharedMemoryEmulation {
            // The producer keeps the only buffer; the service just names its page size.
            emulatedPageSize = pageSize
            return true
        }
        if isRemote {
            guard let created = try? SharedMemoryBuffer.create(size: size, pageSize: pageSize) else { return false }
            serviceMapping = created
            return true
        }
        guard let created = try? SharedMemoryBuffer.create(size: size, pageSize: pageSize),
              let duplicate = created.fileDescriptor.duplicate(),
              let producerSide = try? SharedMemoryBuffer.map(duplicate, pageSize: pageSize, requireSeals: true) else {
            return false
        }
        serviceMapping = created
        installProducerSide(producerSide)
        return true
    }

    private func installProducerSide(_ mapping: SharedMemoryBuffer) {
        sharedMemory = mapping
        let loop = eventLoop
        // Weak: writers keep the arbiter alive, and the arbiter must not keep the endpoint
        // (releasing the endpoint is how a producer disconnects).
        let endpoint = UncheckedSendableBox(Weak(self))
        let sink = SharedMemoryArbiter.Sink(
            // In the service's own process a commit is a call, not a message: nothing to batch.
            scheduleCommit: { _, completion in
                loop.execute { endpoint.value.object?.commitFromArbiter(completion: completion) }
            },
            registerWriter: { writer, buffer in
                // At once on the loop: a writer created and used in one turn is known to the
                // service by the time it scrapes (on a flush, a stop or a disconnect).
                loop.runNowOrPost { endpoint.value.object?.registerTraceWriter(writer, targetBuffer: buffer) }
            },
            unregisterWriter: { writer in
                loop.execute { endpoint.value.object?.unregisterTraceWriter(writer) }
            },
            isServiceThread: { loop.inEventLoop })
        sharedMemoryArbiter = SharedMemoryArbiter(buffer: mapping, sink: sink)
    }

    /// Runs `body` after everything already posted to the loop, in particular after commits
    /// the arbiter queued: a producer's "stopped" or "flushed" must not overtake its data, as
    /// it cannot over one IPC channel either. Nothing runs if the producer is disconnected by
    /// then.
    private func inOrder(_ body: @escaping (LocalProducerEndpoint, TracingServiceCore) -> Void) {
        eventLoop.preconditionInEventLoop()
        let endpoint = UncheckedSendableBox(self)
        let work = UncheckedSendableBox(body)
        eventLoop.execute {
            guard endpoint.value.connected, let service = endpoint.value.service else { return }
            work.value(endpoint.value, service)
        }
    }

    // MARK: ProducerEndpoint

    func registerDataSource(_ descriptor: DataSourceDescriptor) {
        register(descriptor) { _ in }
    }

    /// Registers a data source and tells `completion` why the service refused it, if it did:
    /// at once, or, while an earlier request about the same name waits for the commits before
    /// it (an unregistration), after that. (Registering at once there made Register,
    /// Unregister, Register, sent back to back, end unregistered: the second Register was
    /// refused as a duplicate, then the waiting Unregister removed the data source, and every
    /// reply said success.)
    func register(_ descriptor: DataSourceDescriptor, completion: @escaping (String?) -> Void) {
        inOrderForName(descriptor.name, completion) { endpoint in endpoint.register(descriptor) }
    }

    /// Replaces a data source's descriptor, in order with the requests about the same name
    /// before it, and tells `completion` why the service refused it, if it did.
    func update(_ descriptor: DataSourceDescriptor, completion: @escaping (String?) -> Void) {
        inOrderForName(descriptor.name, completion) { endpoint in endpoint.update(descriptor) }
    }

    /// Runs `request` at once when nothing about `name` waits, else after what waits; its answer
    /// goes to `completion`, also when the producer disconnects meanwhile.
    private func inOrderForName(
        _ name: String, _ completion: @escaping (String?) -> Void, _ request: @escaping (LocalProducerEndpoint) -> String?
    ) {
        eventLoop.preconditionInEventLoop()
        guard pendingNameRequests[name] != nil else { return completion(request(self)) }
        pendingNameRequests[name, default: 0] += 1
        // Not `inOrder`: the request answers for itself when the producer is gone by then.
        let endpoint = UncheckedSendableBox(self)
        let work = UncheckedSendableBox((completion, request))
        eventLoop.execute {
            endpoint.value.finishedNameRequest(name)
            work.value.0(work.value.1(endpoint.value))
        }
    }

    private func finishedNameRequest(_ name: String) {
        let waiting = (pendingNameRequests[name] ?? 1) - 1
        pendingNameRequests[name] = waiting > 0 ? waiting : nil
    }

    /// Registers a data source; returns why the service refused it, if it did.
    @discardableResult
    func register(_ descriptor: DataSourceDescriptor) -> String? {
        eventLoop.preconditionInEventLoop()
        guard connected, let service else { return "the producer is disconnected" }
        guard !descriptor.name.isEmpty else { return "a data source needs a name" }
        return service.registerDataSource(descriptor, producer: self)
    }

    func updateDataSource(_ descriptor: DataSourceDescriptor) {
        update(descriptor) { _ in }
    }

    /// Replaces a data source's descriptor; returns why the service refused it, if it did.
    @discardableResult
    func update(_ descriptor: DataSourceDescriptor) -> String? {
        eventLoop.preconditionInEventLoop()
        guard connected, let service else { return "the producer is disconnected" }
        return service.updateDataSource(descriptor, producer: self)
    }

    func unregisterDataSource(named name: String) {
        eventLoop.preconditionInEventLoop()
        pendingNameRequests[name, default: 0] += 1
        inOrder { endpoint, service in
            endpoint.finishedNameRequest(name)
            service.unregisterDataSource(name, producer: endpoint)
        }
    }

    func registerTraceWriter(_ writerID: WriterID, targetBuffer: BufferID) {
        eventLoop.preconditionInEventLoop()
        writers[writerID] = targetBuffer
    }

    func unregisterTraceWriter(_ writerID: WriterID) {
        eventLoop.preconditionInEventLoop()
        writers[writerID] = nil
    }

    func commitData(_ request: CommitDataRequest, completion: (() -> Void)?) {
        inOrder { endpoint, service in endpoint.applyCommit(request, completion: completion, service: service) }
    }

    private func applyCommit(_ request: CommitDataRequest, completion: (() -> Void)?, service: TracingServiceCore) {
        service.commitData(request, from: self)
        completion?()
    }

    /// A commit scheduled by the arbiter: picks up everything batched until now.
    private func commitFromArbiter(completion: (@Sendable () -> Void)?) {
        guard let request = sharedMemoryArbiter?.takePendingCommit() else { return }
        guard !request.chunksToMove.isEmpty || !request.chunksToPatch.isEmpty || request.hasFlushRequestID
            || completion != nil else { return }
        guard connected, let service else { return }
        applyCommit(request, completion: completion, service: service)
    }

    func notifyDataSourceStarted(_ id: DataSourceInstanceID) {
        inOrder { endpoint, service in service.dataSourceStarted(id, producer: endpoint) }
    }

    func notifyDataSourceStopped(_ id: DataSourceInstanceID) {
        inOrder { endpoint, service in service.dataSourceStopped(id, producer: endpoint) }
    }

    func activateTriggers(_ names: [String]) {
        inOrder { endpoint, service in service.activateTriggers(names, producer: endpoint) }
    }

    func sync(_ callback: @escaping () -> Void) {
        inOrder { _, _ in callback() }
    }

    /// Disconnects once the calls already on their way have been applied, as over a socket:
    /// writers' registrations and the commits they handed over before this call (queued on the
    /// loop) land first, then the producer is gone. Called from ProducerPort when a
    /// connection ends, so a last CommitData read in the same turn lands too (for a producer
    /// under emulation it is the only copy of that data).
    func disconnect() {
        eventLoop.preconditionInEventLoop()
        guard connected else { return }
        inOrder { endpoint, service in service.producerDisconnected(endpoint.id, serial: endpoint.serial) }
    }

    /// Called by the service when the producer is gone (disconnect or service shutdown).
    func markDisconnected() {
        connected = false
        sharedMemoryArbiter = nil
    }

    /// The service's reading side of the shared memory.
    var readableSharedMemory: SharedMemoryBuffer? { serviceMapping }
}
