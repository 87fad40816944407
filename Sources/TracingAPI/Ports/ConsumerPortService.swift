// ConsumerPort, the daemon side (Perfetto's ConsumerIPCService): consumers in other processes
// drive sessions of a TracingServiceCore.
//
// Contract, as traced keeps it:
// * a consumer is connected on its first request, acting for the uid the kernel reports;
// * EnableTracing's reply is withheld until tracing stops: {disabled, error} (a config error
//   is such a reply too, not a rejection); with write_into_file its fd is the output file;
// * ReadBuffers streams slices, never more than a frame holds; a packet may span replies
//   (`last_slice_for_packet` glues it); has_more = false only on the last reply. Replies go
//   to the connection only while what it has queued is small (the consumer takes them), so a
//   read of any size never passes the connection's send-queue bound;
// * QueryServiceState streams chunks, each a valid TracingServiceState, that concatenate to
//   the whole; ObserveEvents is a stream a newer request (or an empty one) closes;
// * a consumer that disconnects frees its session unless it detached; detaching leaves its
//   EnableTracing reply pending (traced neither resolves nor rejects it).

import IPCProtocol

/// Serves `ConsumerPort` for a ``TracingServiceCore``: expose it on the consumer address.
///
/// ```swift
/// let host = try IPCHost(backend: .unixSocket("/tmp/perfetto-consumer", loop: loop))
/// host.expose(ConsumerPortService(service: core))
/// ```
///
/// Loop-bound: the service's loop must be the host's.
public final class ConsumerPortService: Perfetto_Protos_ConsumerPortHandler {
    /// The service the consumers drive.
    public let service: TracingServiceCore
    private var consumers: [UInt64: ConsumerPortConnection] = [:]

    /// A port in front of `service`; expose it on an ``IPCHost`` that runs on the service's loop.
    public init(service: TracingServiceCore) {
        self.service = service
    }

    /// Consumers connected through this port.
    public var connectedConsumerCount: Int { consumers.count }

    /// The consumer of this call, connected on its first request.
    private func consumer(_ context: IPCCallContext) -> ConsumerPortConnection {
        let client = context.client
        if let consumer = consumers[client.clientID] { return consumer }
        let consumer = ConsumerPortConnection(eventLoop: service.eventLoop)
        // No uid (an in-memory peer that reports none) is treated as nobody, never as root.
        consumer.endpoint = service.connectLocalConsumer(consumer, uid: client.uid ?? UInt32(bitPattern: -2))
        consumers[client.clientID] = consumer
        return consumer
    }

    // MARK: ConsumerPort

    public func enableTracing(
        _ request: Perfetto_Protos_EnableTracingRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_EnableTracingResponse>
    ) {
        let consumer = consumer(context)
        if request.attachNotificationOnly {
            // An attached consumer re-arms the notification of the session it took over.
            consumer.enableReply = reply
            return
        }
        let outputFile = request.traceConfig.writeIntoFile ? context.takeReceivedFileDescriptor() : nil
        consumer.enableReply = reply
        consumer.endpoint.enableTracing(request.traceConfig, outputFile: outputFile)
    }

    public func disableTracing(
        _ request: Perfetto_Protos_DisableTracingRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_DisableTracingResponse>
    ) {
        consumer(context).endpoint.disableTracing()
        reply.resolve(.init())
    }

    public func readBuffers(
        _ request: Perfetto_Protos_ReadBuffersRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_ReadBuffersResponse>
    ) {
        let consumer = consumer(context)
        consumer.stopReading()
        consumer.readReply = reply
        consumer.endpoint.readBuffers()
    }

    public func freeBuffers(
        _ request: Perfetto_Protos_FreeBuffersRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_FreeBuffersResponse>
    ) {
        consumer(context).endpoint.freeBuffers()
        reply.resolve(.init())
    }

    public func flush(
        _ request: Perfetto_Protos_FlushRequest, context: IPCCallContext, reply: Deferred<Perfetto_Protos_FlushResponse>
    ) {
        consumer(context).endpoint.flush(timeoutMs: request.timeoutMs, flags: FlushFlags(rawValue: request.flags)) {
            succeeded in
            if succeeded { reply.resolve(.init()) } else { reply.reject(IPCError(.remoteFailure, "the flush failed")) }
        }
    }

    public func startTracing(
        _ request: Perfetto_Protos_StartTracingRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_StartTracingResponse>
    ) {
        consumer(context).endpoint.startTracing()
        reply.resolve(.init())
    }

    public func changeTraceConfig(
        _ request: Perfetto_Protos_ChangeTraceConfigRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_ChangeTraceConfigResponse>
    ) {
        consumer(context).endpoint.changeTraceConfig(request.traceConfig)
        reply.resolve(.init())
    }

    public func detach(
        _ request: Perfetto_Protos_DetachRequest, context: IPCCallContext, reply: Deferred<Perfetto_Protos_DetachResponse>
    ) {
        let consumer = consumer(context)
        consumer.endpoint.detach(key: request.key) { detached in
            guard detached else { return reply.reject(IPCError(.remoteFailure, "cannot detach")) }
            // The session goes on without this consumer. Its EnableTracing reply stays pending,
            // as in traced: released here, it rejected itself, and Perfetto's `perfetto
            // --detach` took that rejection for a failed session and deleted its output file,
            // which the session went on writing into.
            reply.resolve(.init())
        }
    }

    public func attach(
        _ request: Perfetto_Protos_AttachRequest, context: IPCCallContext, reply: Deferred<Perfetto_Protos_AttachResponse>
    ) {
        consumer(context).endpoint.attach(key: request.key) { config in
            guard let config else { return reply.reject(IPCError(.remoteFailure, "no session to attach to")) }
            var response = Perfetto_Protos_AttachResponse()
            response.traceConfig = config
            reply.resolve(response)
        }
    }

    public func getTraceStats(
        _ request: Perfetto_Protos_GetTraceStatsRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_GetTraceStatsResponse>
    ) {
        let consumer = consumer(context)
        consumer.statsReplies.append(reply)
        consumer.endpoint.getTraceStats()
    }

    public func observeEvents(
        _ request: Perfetto_Protos_ObserveEventsRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_ObserveEventsResponse>
    ) {
        let consumer = consumer(context)
        consumer.closeObservedEvents()
        consumer.endpoint.observeEvents(request.eventsToObserve)
        if request.eventsToObserve.isEmpty {
            reply.resolve(.init(), hasMore: false)
        } else {
            consumer.eventsReply = reply
        }
    }

    public func queryServiceState(
        _ request: Perfetto_Protos_QueryServiceStateRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_QueryServiceStateResponse>
    ) {
        let consumer = consumer(context)
        consumer.endpoint.queryEncodedServiceState(sessionsOnly: request.sessionsOnly) { [weak consumer] success, parts in
            guard success, let consumer, let chunks = ServiceStateChunks.plan(parts) else { return reply.reject() }
            // Paced like a read: producers may register tens of megabytes of descriptors, and
            // a state queued whole passed the send-queue bound, which cost the asking consumer
            // its connection (every full query failed, root's too). The chunks are copied
            // from the encoded state as each is sent.
            consumer.sendPaced(chunks, of: parts, from: 0, to: reply)
        }
    }

    public func queryCapabilities(
        _ request: Perfetto_Protos_QueryCapabilitiesRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_QueryCapabilitiesResponse>
    ) {
        consumer(context).endpoint.queryCapabilities { capabilities in
            var response = Perfetto_Protos_QueryCapabilitiesResponse()
            response.capabilities = capabilities
            reply.resolve(response)
        }
    }

    public func saveTraceForBugreport(
        _ request: Perfetto_Protos_SaveTraceForBugreportRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_SaveTraceForBugreportResponse>
    ) {
        var response = Perfetto_Protos_SaveTraceForBugreportResponse()
        response.success = false
        response.msg = "SaveTraceForBugreport is deprecated: use CloneSession"
        reply.resolve(response)
    }

    public func cloneSession(
        _ request: Perfetto_Protos_CloneSessionRequest, context: IPCCallContext,
        reply: Deferred<Perfetto_Protos_CloneSessionResponse>
    ) {
        // Perfetto's CLI sends its output file with every clone; the service writes into it
        // only when the session it clones writes into a file.
        let outputFile = context.takeReceivedFileDescriptor()
        consumer(context).endpoint.cloneSession(request, outputFile: outputFile) { response in reply.resolve(response) }
    }

    public func clientDidDisconnect(_ client: IPCClientInfo) {
        guard let consumer = consumers.removeValue(forKey: client.clientID) else { return }
        consumer.stopReading()
        consumer.endpoint.disconnect()
    }
}

/// A consumer that passes trace data on at its own pace: the service reads the next part of a
/// ReadBuffers only when it asks for it.
protocol PacedTraceDataConsumer: AnyObject {
    /// Trace data as the service read it, not yet copied out of its buffers (in place of
    /// `Consumer.onTraceData`).
    func onTracePackets(_ packets: [TracePacketParts], hasMore: Bool)

    /// Calls `next` once, when what was handed over so far is on its way (perhaps at once).
    func whenReadyForMoreTraceData(_ next: @escaping () -> Void)
}

/// One consumer served over ConsumerPort: the service's callbacks become replies.
final class ConsumerPortConnection: Consumer, PacedTraceDataConsumer {
    let eventLoop: any IPCEventLoop
    var endpoint: LocalConsumerEndpoint!
    /// EnableTracing's reply, answered when tracing stops.
    var enableReply: Deferred<Perfetto_Protos_EnableTracingResponse>?
    var readReply: Deferred<Perfetto_Protos_ReadBuffersResponse>?
    var eventsReply: Deferred<Perfetto_Protos_ObserveEventsResponse>?
    var statsReplies: [Deferred<Perfetto_Protos_GetTraceStatsResponse>] = []
    /// ReadBuffers replies planned but not handed to the connection yet, from `heldReadIndex`
    /// on, and the packets they slice (encoded straight into each reply's frame as it goes).
    private var heldReadReplies: [ReadBuffersSlicer.Reply] = []
    private var heldPackets: [TracePacketParts] = []
    private var heldReadIndex = 0
    /// Held-back replies wait for the connection to take what it queued (ReplyPacing).
    private var readPacing: ReplyPacing.Wait?
    /// The service's next part of the read, asked for once every held reply is handed over.
    private var readNextPart: (() -> Void)?

    init(eventLoop: any IPCEventLoop) {
        self.eventLoop = eventLoop
    }

    /// Forgets a read in progress (a new ReadBuffers, or the consumer gone).
    func stopReading() {
        readPacing?.cancel()
        readPacing = nil
        heldReadReplies.removeAll()
        heldPackets.removeAll()
        heldReadIndex = 0
        readNextPart = nil
    }

    func whenReadyForMoreTraceData(_ next: @escaping () -> Void) {
        guard readReply != nil else { return }  // the read is over: its rest stays in the buffer
        if heldReadIndex < heldReadReplies.count {
            readNextPart = next
        } else {
            next()
        }
    }

    /// Sends `chunks[index...]` of the service state encoded in `parts`, paced
    /// (``ReplyPacing``).
    func sendPaced(
        _ chunks: [ServiceStateChunks.Chunk], of parts: [[UInt8]], from index: Int,
        to reply: Deferred<Perfetto_Protos_QueryServiceStateResponse>
    ) {
        var index = index
        while index < chunks.count {
            guard ReplyPacing.hasRoom(reply) else {
                let next = index
                ReplyPacing.wait(for: reply, on: eventLoop) { [weak self] in
                    self?.sendPaced(chunks, of: parts, from: next, to: reply)
                }
                return
            }
            let chunk = chunks[index]
            index += 1
            reply.resolve(serializedSize: ServiceStateChunks.encodedSize(of: chunk), hasMore: index < chunks.count) { frame in
                ServiceStateChunks.encode(chunk, of: parts, into: frame)
            }
        }
    }

    func closeObservedEvents() {
        eventsReply?.resolve(.init(), hasMore: false)
        eventsReply = nil
    }

    func onTracingDisabled(error: String) {
        guard let reply = enableReply else { return }
        enableReply = nil
        var response = Perfetto_Protos_EnableTracingResponse()
        response.disabled = true
        if !error.isEmpty { response.error = error }
        reply.resolve(response)
    }

    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        onTracePackets(packets.map(TracePacketParts.init), hasMore: hasMore)
    }

    func onTracePackets(_ packets: [TracePacketParts], hasMore: Bool) {
        guard readReply != nil else { return }
        heldReadReplies.append(contentsOf: ReadBuffersSlicer.plan(packets, firstIndex: heldPackets.count, hasMore: hasMore))
        heldPackets.append(contentsOf: packets)
        if readPacing == nil { sendReadReplies() }
    }

    /// Hands held replies to the connection, paced (``ReplyPacing``).
    private func sendReadReplies() {
        readPacing = nil
        guard let reply = readReply else { return stopReading() }
        while heldReadIndex < heldReadReplies.count {
            guard ReplyPacing.hasRoom(reply) else {
                readPacing = ReplyPacing.wait(for: reply, on: eventLoop) { [weak self] in self?.sendReadReplies() }
                return
            }
            let next = heldReadReplies[heldReadIndex]
            heldReadIndex += 1
            if !next.hasMore { readReply = nil }
            reply.resolve(serializedSize: next.encodedSize, hasMore: next.hasMore) { buffer in
                ReadBuffersSlicer.encode(next, packets: heldPackets, into: buffer)
            }
        }
        heldReadReplies.removeAll()
        heldPackets.removeAll()
        heldReadIndex = 0
        if let next = readNextPart {
            readNextPart = nil
            next()
        }
    }

    func onTraceStats(success: Bool, _ stats: TraceStats) {
        guard !statsReplies.isEmpty else { return }
        let reply = statsReplies.removeFirst()
        guard success else { return reply.reject(IPCError(.remoteFailure, "no tracing session")) }
        var response = Perfetto_Protos_GetTraceStatsResponse()
        response.traceStats = stats
        reply.resolve(response)
    }

    func onObservableEvents(_ events: ObservableEvents) {
        guard let reply = eventsReply else { return }
        var response = Perfetto_Protos_ObserveEventsResponse()
        response.events = events
        reply.resolve(response, hasMore: true)
    }
}
