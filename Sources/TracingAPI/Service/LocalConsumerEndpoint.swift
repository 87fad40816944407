// A consumer connected directly to the service (the in-process binding). One consumer drives at
// most one tracing session; releasing or disconnecting the endpoint frees that session.

import IPCProtocol

final class LocalConsumerEndpoint: ConsumerEndpoint, @unchecked Sendable {
    // @unchecked Sendable: loop-bound, every entry point checks the loop.
    let uid: UInt32
    weak var consumer: (any Consumer)?
    private weak var service: TracingServiceCore?
    let eventLoop: any IPCEventLoop
    let connectionID: UInt64
    var sessionID: TracingSessionID?
    /// Counts this consumer's ReadBuffers calls: a read in parts stops when a newer one starts.
    var readGeneration: UInt64 = 0
    var observedEvents: Set<ObservableEvents.TypeEnum> = []
    private(set) var connected = true

    init(connectionID: UInt64, uid: UInt32, consumer: any Consumer, service: TracingServiceCore) {
        self.connectionID = connectionID
        self.uid = uid
        self.consumer = consumer
        self.service = service
        self.eventLoop = service.eventLoop
    }

    deinit {
        guard connected, let service else { return }
        let id = connectionID
        let box = UncheckedSendableBox(service)
        eventLoop.execute { box.value.consumerDisconnected(id) }
    }

    private var liveService: TracingServiceCore? {
        eventLoop.preconditionInEventLoop()
        return connected ? service : nil
    }

    func enableTracing(_ config: TraceConfig, outputFile: ScopedFD?) {
        guard let service = liveService else { return }
        service.enableTracing(config, outputFile: outputFile, consumer: self)
    }

    func startTracing() {
        liveService?.startTracing(consumer: self)
    }

    func disableTracing() {
        liveService?.disableTracing(consumer: self)
    }

    func flush(timeoutMs: UInt32, flags: FlushFlags, _ callback: @escaping (Bool) -> Void) {
        guard let service = liveService else {
            eventLoop.execute { [callback = UncheckedSendableBox(callback)] in callback.value(false) }
            return
        }
        service.flush(consumer: self, timeoutMs: timeoutMs, flags: flags, callback)
    }

    func readBuffers() {
        liveService?.readBuffers(consumer: self)
    }

    func freeBuffers(_ done: @escaping (Bool) -> Void) {
        let service = liveService
        service?.freeBuffers(consumer: self)
        let freed = service != nil
        eventLoop.execute { [done = UncheckedSendableBox(done)] in done.value(freed) }
    }

    func getTraceStats() {
        liveService?.traceStats(consumer: self)
    }

    func observeEvents(_ types: [ObservableEvents.TypeEnum]) {
        guard liveService != nil else { return }
        observedEvents = Set(types)
    }

    func queryServiceState(sessionsOnly: Bool, _ callback: @escaping (Bool, TracingServiceState) -> Void) {
        guard let service = liveService else { return }
        let state = service.serviceState(sessionsOnly: sessionsOnly, for: uid)
        service.post { callback(true, state) }
    }

    /// The same state, encoded as a `TracingServiceState` message in parts whose bytes
    /// concatenate to it: what ConsumerPort sends.
    func queryEncodedServiceState(sessionsOnly: Bool, _ callback: @escaping (Bool, [[UInt8]]) -> Void) {
        guard let service = liveService else { return }
        let parts = service.encodedServiceState(sessionsOnly: sessionsOnly, for: uid)
        service.post { callback(parts != nil, parts ?? []) }
    }

    func queryCapabilities(_ callback: @escaping (TracingServiceCapabilities) -> Void) {
        guard let service = liveService else { return }
        var capabilities = TracingServiceCapabilities()
        capabilities.hasQueryCapabilities_p = true
        capabilities.observableEvents = [.dataSourcesInstances, .allDataSourcesStarted]
        capabilities.hasTraceConfigOutputPath_p = false
        capabilities.hasCloneSession_p = true
        service.post { callback(capabilities) }
    }

    func detach(key: String, _ callback: @escaping (Bool) -> Void) {
        let detached = liveService?.detach(consumer: self, key: key) ?? false
        eventLoop.execute { [callback = UncheckedSendableBox(callback)] in callback.value(detached) }
    }

    func attach(key: String, _ callback: @escaping (TraceConfig?) -> Void) {
        let config = liveService?.attach(consumer: self, key: key)
        eventLoop.execute { [callback = UncheckedSendableBox(callback), config = UncheckedSendableBox(config)] in
            callback.value(config.value)
        }
    }

    func cloneSession(
        _ request: CloneSessionRequest, outputFile: ScopedFD?, _ callback: @escaping (CloneSessionResponse) -> Void
    ) {
        guard let service = liveService else {
            var response = CloneSessionResponse()
            response.success = false
            response.error = "the consumer is disconnected"
            eventLoop.execute { [callback = UncheckedSendableBox(callback), response] in callback.value(response) }
            return
        }
        service.cloneSession(consumer: self, request, outputFile: outputFile, callback)
    }

    func changeTraceConfig(_ config: TraceConfig) {
        liveService?.changeTraceConfig(consumer: self, config)
    }

    func disconnect() {
        guard let service = liveService else { return }
        service.consumerDisconnected(connectionID)
    }

    func markDisconnected() { connected = false }
}
