// ConsumerPort, the consumer's side (Perfetto's ConsumerIPCClientImpl): a ConsumerEndpoint that
// drives a tracing service in another process, ours or the real traced.
//
// Calls made before the port is bound wait for it, in order. EnableTracing's reply comes when
// tracing stops and becomes `onTracingDisabled` (a rejection too: the service went away).
// ReadBuffers slices are glued back into packets. When the connection ends, the consumer is
// told once and every pending callback runs once with a failure; the endpoint does not
// reconnect (a session does not survive its consumer's connection unless detached).

import IPCProtocol

/// A consumer's endpoint on a tracing service in another process, over ConsumerPort.
///
/// Usually made by ``SystemTracingService/connectConsumer(_:uid:)``. Loop-bound: use it on the
/// loop of its backend; the consumer's callbacks arrive there.
public final class RemoteConsumerEndpoint: ConsumerEndpoint {
    public let eventLoop: any IPCEventLoop
    private weak var consumer: (any Consumer)?
    private let client: IPCClient
    private let port = Perfetto_Protos_ConsumerPortProxy()
    /// Calls made before the port was bound.
    private var waiting: [(Perfetto_Protos_ConsumerPortProxy) -> Void] = []
    private var ended = false
    private var reassembler = TracePacketReassembler()
    /// Failure handlers of calls waiting for a reply, run once if the connection ends first.
    private var pendingFailures: [UInt64: () -> Void] = [:]
    private var nextCallID: UInt64 = 1

    /// Connects `consumer` to the service at `backend`. Loop-only (the backend's loop).
    public init(consumer: any Consumer, backend: IPCBackend) {
        eventLoop = backend.eventLoop
        eventLoop.preconditionInEventLoop()
        self.consumer = consumer
        client = IPCClient(backend: backend)
        port.onConnect = { [weak self] in self?.bound() }
        port.onConnectionFailed = { [weak self] _ in self?.connectionEnded() }
        port.onDisconnect = { [weak self] _ in self?.connectionEnded() }
        client.bind(port)
    }

    /// Whether the port is bound and the connection up.
    public var isConnected: Bool { port.isBound && !ended }

    /// Why the connection failed or ended, once it has: nothing listening, the service refused
    /// ConsumerPort, a frame that broke the protocol, the peer gone.
    public var connectionError: IPCError? { port.lastError }

    private func bound() {
        consumer?.onConnect()
        let calls = waiting
        waiting = []
        for call in calls { call(port) }
    }

    private func connectionEnded() {
        guard !ended else { return }
        ended = true
        waiting = []
        reassembler.reset()
        let failures = pendingFailures
        pendingFailures = [:]
        for (_, fail) in failures.sorted(by: { $0.key < $1.key }) { fail() }
        consumer?.onDisconnect()
    }

    /// Runs `call` once the port is bound (at once if it is). Dropped once disconnected.
    private func whenBound(_ call: @escaping (Perfetto_Protos_ConsumerPortProxy) -> Void) {
        eventLoop.preconditionInEventLoop()
        guard !ended else { return }
        if port.isBound { call(port) } else { waiting.append(call) }
    }

    /// Registers `onFailure` to run if the connection ends before the reply; the returned
    /// function takes it back (call it with the reply's error when the reply arrives). Neither
    /// runs twice. A reply rejected because the connection ended (which the client delivers
    /// before it reports the disconnection) ends the connection here first, so the call fails
    /// as every other pending one does and the consumer hears of the loss once, in one form.
    private func expectReply(onFailure: @escaping () -> Void) -> (IPCError?) -> Bool {
        let id = nextCallID
        nextCallID += 1
        pendingFailures[id] = onFailure
        return { [weak self] error in
            guard let self else { return false }
            if error?.code == .disconnected { self.connectionEnded() }
            return self.pendingFailures.removeValue(forKey: id) != nil
        }
    }

    private func failLater(_ body: @escaping () -> Void) {
        eventLoop.execute { [body = UncheckedSendableBox(body)] in body.value() }
    }

    // MARK: ConsumerEndpoint

    public func enableTracing(_ config: TraceConfig, outputFile: ScopedFD?) {
        let disabled: (String) -> Void = { [weak self] error in self?.consumer?.onTracingDisabled(error: error) }
        guard !ended else {
            failLater { disabled("the tracing service is not connected") }
            return
        }
        let settle = expectReply { disabled("the tracing service went away") }
        whenBound { port in
            var request = Perfetto_Protos_EnableTracingRequest()
            request.traceConfig = config
            port.enableTracing(request, fd: outputFile?.rawValue) { result in
                guard settle(result.error) else { return }
                if let response = result.message {
                    disabled(response.error)
                } else {
                    disabled("EnableTracing was rejected: \(result.error.map { "\($0)" } ?? "no reason")")
                }
            }
        }
    }

    public func startTracing() {
        whenBound { port in port.startTracing(.init(), reply: { _ in }) }
    }

    public func disableTracing() {
        whenBound { port in port.disableTracing(.init(), reply: { _ in }) }
    }

    public func flush(timeoutMs: UInt32, flags: FlushFlags, _ callback: @escaping (Bool) -> Void) {
        guard !ended else { return failLater { callback(false) } }
        let settle = expectReply { callback(false) }
        whenBound { port in
            var request = Perfetto_Protos_FlushRequest()
            request.timeoutMs = timeoutMs
            request.flags = flags.rawValue
            port.flush(request) { result in
                if settle(result.error) { callback(result.isSuccess) }
            }
        }
    }

    public func readBuffers() {
        // A read that fails says why, then ends as every read does (an empty last batch): it
        // once ended only with the empty batch, which looked like a complete trace.
        let fail: (String) -> Void = { [weak self] reason in
            self?.consumer?.onTraceDataFailed(error: reason)
            self?.consumer?.onTraceData([], hasMore: false)
        }
        guard !ended else { return failLater { fail("the connection to the service ended") } }
        let settle = expectReply { fail("the connection to the service ended") }
        whenBound { [weak self] port in
            // The slices are read straight from each reply's bytes: a full buffer is tens of
            // thousands of packets, and a Slice message with its own Data per packet cost more
            // than everything else the client does.
            port.invokeEncoded(
                methodAt: port.methodIndex(named: "ReadBuffers"), Perfetto_Protos_ReadBuffersRequest(),
                replyType: Perfetto_Protos_ReadBuffersResponse.self
            ) { bytes, hasMore, error in
                guard let self else { return }
                guard let bytes, let packets = self.reassembler.append(encoded: bytes) else {
                    let reason = error.map { "the service failed the read: \($0.message)" }
                        ?? "the service sent \(self.reassembler.failure)"
                    self.reassembler.reset()
                    if settle(error ?? IPCError(.protocolViolation, reason)) { fail(reason) }
                    return
                }
                if !hasMore {
                    guard settle(nil) else { return }
                    self.reassembler.reset()
                    self.consumer?.onTraceData(packets, hasMore: false)
                } else if !packets.isEmpty {
                    self.consumer?.onTraceData(packets, hasMore: true)
                }
            }
        }
    }

    public func freeBuffers(_ done: @escaping (Bool) -> Void) {
        guard !ended else { return failLater { done(false) } }
        let settle = expectReply { done(false) }
        whenBound { port in
            port.freeBuffers(.init()) { result in
                if settle(result.error) { done(result.isSuccess) }
            }
        }
    }

    public func getTraceStats() {
        let failed: () -> Void = { [weak self] in self?.consumer?.onTraceStats(success: false, TraceStats()) }
        guard !ended else { return failLater(failed) }
        let settle = expectReply(onFailure: failed)
        whenBound { [weak self] port in
            port.getTraceStats(.init()) { result in
                guard settle(result.error) else { return }
                self?.consumer?.onTraceStats(success: result.isSuccess, result.message?.traceStats ?? TraceStats())
            }
        }
    }

    public func observeEvents(_ types: [ObservableEvents.TypeEnum]) {
        whenBound { [weak self] port in
            var request = Perfetto_Protos_ObserveEventsRequest()
            request.eventsToObserve = types
            port.observeEvents(request) { result in
                // The stream's closing reply (has_more = false) carries nothing.
                guard result.hasMore, let events = result.message?.events else { return }
                self?.consumer?.onObservableEvents(events)
            }
        }
    }

    public func queryServiceState(sessionsOnly: Bool, _ callback: @escaping (Bool, TracingServiceState) -> Void) {
        guard !ended else { return failLater { callback(false, TracingServiceState()) } }
        let settle = expectReply { callback(false, TracingServiceState()) }
        whenBound { port in
            var request = Perfetto_Protos_QueryServiceStateRequest()
            request.sessionsOnly = sessionsOnly
            var merged: [UInt8] = []
            port.queryServiceState(request) { result in
                guard let response = result.message else {
                    if settle(result.error) { callback(false, TracingServiceState()) }
                    return
                }
                if merged.isEmpty && !result.hasMore {
                    // The usual case: the whole state in one reply, already decoded.
                    if settle(result.error) { callback(true, response.serviceState) }
                    return
                }
                guard let chunk: [UInt8] = try? response.serviceState.serializedBytes() else {
                    if settle(result.error) { callback(false, TracingServiceState()) }
                    return
                }
                // Each chunk is a part of one message: concatenated, their bytes parse as the whole.
                // At most `maxMergedServiceStateSize`: a service that never ends the reply must
                // not grow this process's memory without bound.
                guard merged.count + chunk.count <= Self.maxMergedServiceStateSize else {
                    if settle(IPCError(.protocolViolation, "QueryServiceState reply past its bound")) {
                        callback(false, TracingServiceState())
                    }
                    return
                }
                merged.append(contentsOf: chunk)
                guard !result.hasMore, settle(result.error) else { return }
                if let state = try? TracingServiceState(serializedBytes: merged) {
                    callback(true, state)
                } else {
                    callback(false, TracingServiceState())
                }
            }
        }
    }

    /// The largest service state a query glues from its reply's parts (64 MiB; a state of ten
    /// thousand data sources is a few megabytes).
    static let maxMergedServiceStateSize = 64 * 1024 * 1024

    public func queryCapabilities(_ callback: @escaping (TracingServiceCapabilities) -> Void) {
        guard !ended else { return failLater { callback(TracingServiceCapabilities()) } }
        let settle = expectReply { callback(TracingServiceCapabilities()) }
        whenBound { port in
            port.queryCapabilities(.init()) { result in
                if settle(result.error) { callback(result.message?.capabilities ?? TracingServiceCapabilities()) }
            }
        }
    }

    public func detach(key: String, _ callback: @escaping (Bool) -> Void) {
        guard !ended else { return failLater { callback(false) } }
        let settle = expectReply { callback(false) }
        whenBound { port in
            var request = Perfetto_Protos_DetachRequest()
            request.key = key
            port.detach(request) { result in
                if settle(result.error) { callback(result.isSuccess) }
            }
        }
    }

    public func attach(key: String, _ callback: @escaping (TraceConfig?) -> Void) {
        guard !ended else { return failLater { callback(nil) } }
        let settle = expectReply { callback(nil) }
        whenBound { [weak self] port in
            var request = Perfetto_Protos_AttachRequest()
            request.key = key
            port.attach(request) { result in
                guard settle(result.error) else { return }
                guard let config = result.message?.traceConfig else { return callback(nil) }
                // As Perfetto's client does: be told again when the attached session stops.
                self?.armTracingDisabledNotification()
                callback(config)
            }
        }
    }

    private func armTracingDisabledNotification() {
        let disabled: (String) -> Void = { [weak self] error in self?.consumer?.onTracingDisabled(error: error) }
        let settle = expectReply { disabled("the tracing service went away") }
        whenBound { port in
            var request = Perfetto_Protos_EnableTracingRequest()
            request.attachNotificationOnly = true
            port.enableTracing(request) { result in
                guard settle(result.error) else { return }
                disabled(result.message?.error ?? "EnableTracing was rejected")
            }
        }
    }

    public func cloneSession(
        _ request: CloneSessionRequest, outputFile: ScopedFD?, _ callback: @escaping (CloneSessionResponse) -> Void
    ) {
        let failed: (String) -> Void = { error in
            var response = CloneSessionResponse()
            response.success = false
            response.error = error
            callback(response)
        }
        guard !ended else { return failLater { failed("the tracing service is not connected") } }
        let settle = expectReply { failed("the tracing service went away") }
        whenBound { port in
            // The file goes along with the request, as Perfetto's CLI sends it: the service
            // uses it only for a session that writes into a file.
            port.cloneSession(request, fd: outputFile?.rawValue) { result in
                guard settle(result.error) else { return }
                if let response = result.message { callback(response) } else { failed("CloneSession was rejected") }
            }
        }
    }

    public func changeTraceConfig(_ config: TraceConfig) {
        whenBound { port in
            var request = Perfetto_Protos_ChangeTraceConfigRequest()
            request.traceConfig = config
            port.changeTraceConfig(request, reply: { _ in })
        }
    }

    public func disconnect() {
        eventLoop.preconditionInEventLoop()
        client.close()
    }
}
