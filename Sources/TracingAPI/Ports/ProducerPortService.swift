// ProducerPort, the daemon side (Perfetto's ProducerIPCService): serves producers in other
// processes in front of a TracingServiceCore.
//
// Contract, as traced keeps it:
// * InitializeConnection comes first; every other method before it is rejected, and so is a
//   second InitializeConnection on the same connection;
// * who the producer is (uid, pid) comes from the connection (SO_PEERCRED on unix sockets),
//   never from the producer's words;
// * a producer-provided shared memory (startup tracing) arrives as the fd of
//   InitializeConnection and is adopted only if it is sealed and its layout is valid;
//   otherwise the service creates its own when the first session needs it;
// * the service's commands travel on the GetAsyncCommand stream (has_more = true), the shared
//   memory's fd with `setup_tracing`; a newer GetAsyncCommand replaces the older one;
// * a producer that disconnects has its instances stopped and its shared memory released;
// * a producer on a TCP or vsock connection (another machine, or a relay) cannot map shared
//   memory: it is told `use_shmem_emulation`, gets `setup_tracing` without an fd, and sends its
//   chunks inside CommitData; its packets carry its machine's id.

import IPCProtocol

/// Serves `ProducerPort` for a ``TracingServiceCore``: one per producer address (client ids
/// are per host, as in traced, which has one per socket).
///
/// ```swift
/// let host = try IPCHost(backend: .unixSocket("/tmp/perfetto-producer", loop: loop))
/// host.expose(ProducerPortService(service: core))
/// ```
///
/// Loop-bound: the service's loop must be the host's.
public final class ProducerPortService: Perfetto_Protos_ProducerPortHandler {
    /// The service the producers are connected to.
    public let service: TracingServiceCore
    private var producers: [UInt64: ProducerPortConnection] = [:]

    /// A port in front of `service`; expose it on an ``IPCHost`` that runs on the service's loop.
    public init(service: TracingServiceCore) {
        self.service = service
    }

    /// Producers connected through this port (initialized connections).
    public var connectedProducerCount: Int { producers.count }

    /// Commands waiting for each producer's stream (at most its setup_tracing), and those dropped
    /// because it had not asked for the stream.
    var commandBacklogs: [(queued: Int, dropped: Int)] {
        producers.values.map { ($0.queuedCommandCount, $0.droppedCommands) }
    }

    private func producer(
        for context: IPCCallContext, _ method: String, rejecting reply: Deferred<some Any>
    ) -> ProducerPortConnection? {
        if let producer = producers[context.client.clientID] { return producer }
        reply.reject(IPCError(.protocolViolation, "\(method) before InitializeConnection"))
        return nil
    }

    // MARK: ProducerPort

    public func initializeConnection(
        _ request: Perfetto_Protos_InitializeConnectionRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_InitializeConnectionResponse>
    ) {
        let client = context.client
        let receivedFD = context.takeReceivedFileDescriptor()
        guard producers[client.clientID] == nil else {
            reply.reject(IPCError(.protocolViolation, "InitializeConnection was already called"))
            return
        }
        var options = ProducerConnectionOptions(
            name: request.producerName,
            identity: PeerIdentity(uid: client.uid, pid: client.pid, remoteAddress: client.remoteAddress),
            sharedMemorySizeHint: Int(request.sharedMemorySizeHintBytes),
            sharedMemoryPageSizeHint: Int(request.sharedMemoryPageSizeHintBytes),
            sdkVersion: request.sdkVersion)
        options.isRemote = true
        options.machineID = client.machineID
        options.machineName = client.machineName ?? ""
        // Decided by the connection, as traced decides by the socket: no fd crosses TCP or vsock.
        let emulatesSharedMemory = client.remoteAddress != nil
        options.usesSharedMemoryEmulation = emulatesSharedMemory
        options.scrapesSharedMemory = request.smbScrapingMode != .smbScrapingDisabled
        if request.producerProvidedShmem, let receivedFD, !emulatesSharedMemory {
            // Perfetto falls back to a buffer of its own when the producer's cannot be used.
            options.producerProvidedSharedMemory = try? SharedMemoryBuffer.map(
                receivedFD, pageSize: Int(request.sharedMemoryPageSizeHintBytes), requireSeals: true)
        }
        let connection = ProducerPortConnection(clientID: client.clientID)
        guard let endpoint = service.connectRemoteProducer(connection, options: options) else {
            reply.reject(IPCError(.remoteFailure, "the service has too many producers"))
            return
        }
        connection.endpoint = endpoint
        producers[client.clientID] = connection
        var response = Perfetto_Protos_InitializeConnectionResponse()
        response.usingShmemProvidedByProducer = endpoint.isSharedMemoryProvidedByProducer
        response.directSmbPatchingSupported = true
        response.useShmemEmulation = emulatesSharedMemory
        reply.resolve(response)
    }

    public func registerDataSource(
        _ request: Perfetto_Protos_RegisterDataSourceRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_RegisterDataSourceResponse>
    ) {
        guard let producer = producer(for: context, "RegisterDataSource", rejecting: reply) else { return }
        producer.endpoint.register(request.dataSourceDescriptor) { error in
            var response = Perfetto_Protos_RegisterDataSourceResponse()
            if let error { response.error = error }
            reply.resolve(response)
        }
    }

    public func unregisterDataSource(
        _ request: Perfetto_Protos_UnregisterDataSourceRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_UnregisterDataSourceResponse>
    ) {
        guard let producer = producer(for: context, "UnregisterDataSource", rejecting: reply) else { return }
        producer.endpoint.unregisterDataSource(named: request.dataSourceName)
        reply.resolve(.init())
    }

    public func commitData(
        _ request: Perfetto_Protos_CommitDataRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_CommitDataResponse>
    ) {
        guard let producer = producer(for: context, "CommitData", rejecting: reply) else { return }
        // Only a caller that bound a callback gets a reply (drop_reply otherwise): no wake-up
        // of the producer for nothing.
        guard reply.isBound else {
            producer.endpoint.commitData(request, completion: nil)
            return
        }
        producer.endpoint.commitData(request) { reply.resolve(.init()) }
    }

    public func getAsyncCommand(
        _ request: Perfetto_Protos_GetAsyncCommandRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_GetAsyncCommandResponse>
    ) {
        guard let producer = producer(for: context, "GetAsyncCommand", rejecting: reply) else { return }
        producer.bindCommands(reply)
    }

    public func registerTraceWriter(
        _ request: Perfetto_Protos_RegisterTraceWriterRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_RegisterTraceWriterResponse>
    ) {
        guard let producer = producer(for: context, "RegisterTraceWriter", rejecting: reply) else { return }
        if let writer = WriterID(exactly: request.traceWriterID), let buffer = BufferID(exactly: request.targetBuffer) {
            producer.endpoint.registerTraceWriter(writer, targetBuffer: buffer)
        }
        reply.resolve(.init())
    }

    public func unregisterTraceWriter(
        _ request: Perfetto_Protos_UnregisterTraceWriterRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_UnregisterTraceWriterResponse>
    ) {
        guard let producer = producer(for: context, "UnregisterTraceWriter", rejecting: reply) else { return }
        if let writer = WriterID(exactly: request.traceWriterID) { producer.endpoint.unregisterTraceWriter(writer) }
        reply.resolve(.init())
    }

    public func notifyDataSourceStarted(
        _ request: Perfetto_Protos_NotifyDataSourceStartedRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_NotifyDataSourceStartedResponse>
    ) {
        guard let producer = producer(for: context, "NotifyDataSourceStarted", rejecting: reply) else { return }
        producer.endpoint.notifyDataSourceStarted(request.dataSourceID)
        reply.resolve(.init())
    }

    public func notifyDataSourceStopped(
        _ request: Perfetto_Protos_NotifyDataSourceStoppedRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_NotifyDataSourceStoppedResponse>
    ) {
        guard let producer = producer(for: context, "NotifyDataSourceStopped", rejecting: reply) else { return }
        producer.endpoint.notifyDataSourceStopped(request.dataSourceID)
        reply.resolve(.init())
    }

    public func activateTriggers(
        _ request: Perfetto_Protos_ActivateTriggersRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_ActivateTriggersResponse>
    ) {
        guard let producer = producer(for: context, "ActivateTriggers", rejecting: reply) else { return }
        producer.endpoint.activateTriggers(request.triggerNames)
        reply.resolve(.init())
    }

    public func sync(
        _ request: Perfetto_Protos_SyncRequest, context: IPCCallContext, reply: Deferred<Perfetto_Protos_SyncResponse>
    ) {
        guard let producer = producer(for: context, "Sync", rejecting: reply) else { return }
        producer.endpoint.sync { reply.resolve(.init()) }
    }

    public func updateDataSource(
        _ request: Perfetto_Protos_UpdateDataSourceRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_UpdateDataSourceResponse>
    ) {
        guard let producer = producer(for: context, "UpdateDataSource", rejecting: reply) else { return }
        producer.endpoint.update(request.dataSourceDescriptor) { _ in reply.resolve(.init()) }
    }

    public func clientDidDisconnect(_ client: IPCClientInfo) {
        guard let producer = producers.removeValue(forKey: client.clientID) else { return }
        producer.closeCommands()
        producer.endpoint.disconnect()
    }
}

/// One producer served over ProducerPort: the service's callbacks become commands on its
/// GetAsyncCommand stream.
final class ProducerPortConnection: Producer {
    typealias Command = Perfetto_Protos_GetAsyncCommandResponse

    let clientID: UInt64
    /// The service's side of this producer (set right after connecting).
    var endpoint: LocalProducerEndpoint!
    private var commands: Deferred<Command>?
    /// The last `setup_tracing` (with the shared memory's fd) produced before the producer asked
    /// for the stream, sent when it does. Every other command produced meanwhile is dropped, as
    /// traced drops them: the SDK asks for the stream right after InitializeConnection, before
    /// it registers anything, and what a dropped command asked for ends by the service's own
    /// timeouts (a flush, a start, a stop). Queued, they grew the service's memory for as long as
    /// a producer that never asked (or asked with drop_reply) stayed connected.
    private var pendingSetup: (command: Command, fd: ScopedFD?)?
    /// Commands dropped because the producer had not asked for its stream.
    private(set) var droppedCommands = 0
    var queuedCommandCount: Int { pendingSetup == nil ? 0 : 1 }

    init(clientID: UInt64) {
        self.clientID = clientID
    }

    func bindCommands(_ stream: Deferred<Command>) {
        // A newer stream replaces the older one (which is rejected as it is released).
        commands = stream
        if let setup = pendingSetup {
            pendingSetup = nil
            send(setup.command, fd: setup.fd)
        }
    }

    func closeCommands() {
        commands = nil
        pendingSetup = nil
    }

    private func send(_ command: Command, fd: ScopedFD? = nil) {
        guard let commands, commands.isBound else {
            if case .setupTracing? = command.cmd {
                pendingSetup = (command, fd)  // a newer one replaces it (its fd closes as it goes)
            } else {
                droppedCommands += 1
            }
            return
        }
        commands.resolve(command, hasMore: true, fileDescriptor: fd)
    }

    // MARK: Producer (the service's callbacks)

    func onTracingSetup() {
        var command = Command()
        var setup = Command.SetupTracing()
        var fd: ScopedFD?
        if let pageSize = endpoint.emulatedPageSize {
            // The producer lays out a buffer of its own with this page size; no fd.
            setup.sharedBufferPageSizeKb = UInt32(pageSize / 1024)
        } else if !endpoint.isSharedMemoryProvidedByProducer, let memory = endpoint.readableSharedMemory {
            setup.sharedBufferPageSizeKb = UInt32(memory.pageSize / 1024)
            fd = memory.fileDescriptor.duplicate()
        }
        command.setupTracing = setup
        send(command, fd: fd)
    }

    func setupDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        var command = Command()
        command.setupDataSource.newInstanceID = id
        command.setupDataSource.config = config
        send(command)
    }

    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        var command = Command()
        command.startDataSource.newInstanceID = id
        command.startDataSource.config = config
        send(command)
    }

    func stopDataSource(_ id: DataSourceInstanceID) {
        var command = Command()
        command.stopDataSource.instanceID = id
        send(command)
    }

    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        var command = Command()
        command.flush.dataSourceIds = dataSources
        command.flush.requestID = id
        command.flush.flags = flags.rawValue
        send(command)
    }

    func clearIncrementalState(_ dataSources: [DataSourceInstanceID]) {
        var command = Command()
        command.clearIncrementalState_p.dataSourceIds = dataSources
        send(command)
    }
}
