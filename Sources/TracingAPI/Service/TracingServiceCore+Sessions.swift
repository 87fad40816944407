// Session lifecycle: enable -> (deferred) start -> optional automatic stop after duration_ms
// -> disable (stop instances, wait for acks up to data_source_stop_timeout_ms) -> tracing
// disabled; flushes through producers with a timeout; reading and write-into-file.

import CPerfettoIPCLinux
import IPCProtocol

extension TracingServiceCore {
    // MARK: Enable

    func enableTracing(_ config: TraceConfig, outputFile: ScopedFD?, consumer: LocalConsumerEndpoint) {
        var namePatterns: [String: ProducerNamePattern] = [:]
        if let error = validate(config, outputFile: outputFile, consumer: consumer, namePatterns: &namePatterns) {
            post { [weak client = consumer.consumer] in client?.onTracingDisabled(error: error) }
            return
        }
        var traceFilter: TraceFilter?
        if config.hasTraceFilter {
            switch TraceFilter.load(config.traceFilter) {
            case .success(let loaded): traceFilter = loaded
            case .failure(let failure):
                post { [weak client = consumer.consumer] in client?.onTracingDisabled(error: failure.message) }
                return
            }
        }
        var output: TraceFileOutput?
        if config.writeIntoFile, let outputFile {
            switch TraceFileOutput.open(outputFile, loop: eventLoop, stallTimeout: options.outputFileStallTimeout) {
            case .success(let opened): output = opened
            case .failure(let failure):
                post { [weak client = consumer.consumer] in client?.onTracingDisabled(error: failure.message) }
                return
            }
        }
        var bufferIDs: [BufferID] = []
        for bufferConfig in config.buffers {
            guard let id = allocateBufferID() else { break }
            let policy: TraceBuffer.FillPolicy = bufferConfig.fillPolicy == .discard ? .discard : .ringBuffer
            buffers[id] = TraceBuffer(capacity: Int(bufferConfig.sizeKb) * 1024, policy: policy)
            bufferIDs.append(id)
        }
        let session = TracingSession(
            id: nextSessionID, consumerID: consumer.connectionID, consumerUID: consumer.uid, config: config,
            bufferIDs: bufferIDs)
        nextSessionID += 1
        session.traceFilter = traceFilter
        session.adoptNamePatterns(namePatterns)
        sessions[session.id] = session
        consumer.sessionID = session.id
        if let output {
            session.outputFile = output
            let sessionID = session.id
            // A write that fails later (a reader gone, a stall) ends the session.
            output.onFailure = { [weak self] error in
                guard let self, let session = self.sessions[sessionID] else { return }
                if session.fileError == nil { session.fileError = error }
                self.post { [weak self] in
                    guard let self, let session = self.sessions[sessionID] else { return }
                    self.disable(session)
                }
            }
        }

        for entry in config.dataSources where !entry.config.name.isEmpty {
            for producer in connectedProducers where producer.dataSources[entry.config.name] != nil {
                guard matches(entry, producer: producer, in: session) else { continue }
                setUpInstance(entry, producer: producer, session: session)
            }
        }
        session.durationMs = session.triggerMode == .stopTracing || session.triggerMode == .cloneSnapshot
            ? config.triggerConfig.triggerTimeoutMs : config.durationMs
        armTriggers(of: session)
        if !config.deferredStart && session.triggerMode != .startTracing { startSession(session) }
    }

    /// Why `config` cannot be a session of `consumer`, or nil; `namePatterns` gets its producer
    /// name patterns, compiled (the session keeps them rather than compiling them again).
    private func validate(
        _ config: TraceConfig, outputFile: ScopedFD?, consumer: LocalConsumerEndpoint,
        namePatterns: inout [String: ProducerNamePattern]
    ) -> String? {
        if consumer.sessionID != nil { return "the consumer is already tracing" }
        if let error = sessionLimitError(uid: consumer.uid) { return error }
        if config.buffers.isEmpty { return "the trace config has no buffers" }
        if let error = durationError(config) ?? triggerConfigError(config) ?? namePatternError(config, compiled: &namePatterns) {
            return error
        }
        if config.buffers.count > options.maxBuffersPerSession {
            return "too many buffers configured (\(config.buffers.count), the limit is \(options.maxBuffersPerSession))"
        }
        if config.buffers.contains(where: { $0.sizeKb == 0 }) { return "a buffer has size_kb = 0" }
        for (index, buffer) in config.buffers.enumerated() where UInt64(buffer.sizeKb) * 1024 > UInt64(UInt32.max) {
            return "buffer \(index) is too large: size_kb = \(buffer.sizeKb) is 4 GiB or more"
        }
        if let error = bufferMemoryError(adding: config.buffers.reduce(0) { $0 + Int($1.sizeKb) * 1024 }, uid: consumer.uid) {
            return error
        }
        if config.buffers.count > Int(BufferID.max) - buffers.count { return "too many buffers" }
        for entry in config.dataSources where entry.config.targetBuffer >= UInt32(config.buffers.count) {
            return "data source \"\(entry.config.name)\" targets buffer \(entry.config.targetBuffer), "
                + "but the config has \(config.buffers.count)"
        }
        if !config.uniqueSessionName.isEmpty,
           sessions.values.contains(where: { $0.config.uniqueSessionName == config.uniqueSessionName }) {
            return "a session named \"\(config.uniqueSessionName)\" is already running"
        }
        if config.writeIntoFile && (outputFile == nil || outputFile!.rawValue < 0) {
            return "write_into_file is set but no output file was passed"
        }
        // Last: these record the session's start, or change the lockdown, when they pass.
        return guardrailError(config) ?? lockdownError(config, uid: consumer.uid)
    }

    /// Why a producer-name pattern of `config` cannot be used: one that does not compile would
    /// match nothing, so its data sources (or trigger) would silently never start (or fire).
    /// traced aborts on a pattern it cannot compile; here the config is refused, saying which.
    private func namePatternError(_ config: TraceConfig, compiled: inout [String: ProducerNamePattern]) -> String? {
        let patterns = config.dataSources.flatMap(\.producerNameRegexFilter)
            + config.triggerConfig.triggers.map(\.producerNameRegex).filter { !$0.isEmpty }
        for pattern in patterns where compiled[pattern] == nil {
            if let compiledPattern = ProducerNamePattern(pattern) {
                compiled[pattern] = compiledPattern
                continue
            }
            let shown = pattern.count > 64 ? String(pattern.prefix(64)) + "..." : pattern
            return "producer name pattern \"\(shown)\" cannot be used: a syntax error, or what a linear-time "
                + "matcher (RE2's syntax) does not have: back-references, lookaround, counts above "
                + "\(ProducerNamePattern.maxRepetition), more than \(ProducerNamePattern.maxStates) states"
        }
        return nil
    }

    /// Why `uid` may not have one more session (Perfetto's limits, per uid then in total).
    func sessionLimitError(uid: UInt32) -> String? {
        let ofUID = sessions.values.filter { $0.consumerUID == uid }.count
        if ofUID >= options.maxSessionsPerUID {
            return "too many concurrent tracing sessions for uid \(uid) (\(ofUID), the limit is \(options.maxSessionsPerUID))"
        }
        if sessions.count >= options.maxSessions {
            return "too many concurrent tracing sessions (\(sessions.count), the limit is \(options.maxSessions))"
        }
        return nil
    }

    /// Why buffers of `bytes` more may not be created for `uid`: they would take its sessions'
    /// buffers past ``Options/maxBufferBytesPerUID``, or those of all uids but root past
    /// ``Options/maxTotalBufferBytes``. Checked before anything is allocated.
    func bufferMemoryError(adding bytes: Int, uid: UInt32) -> String? {
        var ofUID = 0
        var ofAllButRoot = 0
        for session in sessions.values {
            let size = session.bufferIDs.reduce(0) { $0 + (buffers[$1]?.capacity ?? 0) }
            if session.consumerUID == uid { ofUID += size }
            if session.consumerUID != 0 { ofAllButRoot += size }
        }
        if bytes > options.maxBufferBytesPerUID - ofUID {
            return "the trace buffers would take \(bytes / 1024) KiB, more than uid \(uid) may have "
                + "(\(options.maxBufferBytesPerUID / 1024) KiB, \(ofUID / 1024) KiB in use)"
        }
        if uid != 0, bytes > options.maxTotalBufferBytes - ofAllButRoot {
            return "the trace buffers would take \(bytes / 1024) KiB, more than the service allows "
                + "(\(options.maxTotalBufferBytes / 1024) KiB in all, \(ofAllButRoot / 1024) KiB in use)"
        }
        return nil
    }

    /// Whether `producer` serves `entry` of `session`: its machine first (as in Perfetto v54 and
    /// later: only this machine's producers, unless the config sets `trace_all_machines` or the
    /// entry names machines, "host" naming this one), then its name. A name pattern that does
    /// not compile matches nothing.
    func matches(_ entry: TraceConfig.DataSource, producer: LocalProducerEndpoint, in session: TracingSession) -> Bool {
        // In lockdown, producers connected before it of other uids are not started either.
        if lockdown && producer.uid != options.serviceUID { return false }
        let isHost = producer.machineID == 0
        if !entry.machineNameFilter.isEmpty {
            guard entry.machineNameFilter.contains(producer.machineName)
                || (isHost && entry.machineNameFilter.contains("host")) else { return false }
        } else if !isHost && !session.config.traceAllMachines {
            return false
        }
        if entry.producerNameFilter.isEmpty && entry.producerNameRegexFilter.isEmpty { return true }
        if entry.producerNameFilter.contains(producer.name) { return true }
        return entry.producerNameRegexFilter.contains { session.producerName(of: producer, matches: $0) }
    }

    func setUpInstance(_ entry: TraceConfig.DataSource, producer: LocalProducerEndpoint, session: TracingSession) {
        guard let descriptor = producer.dataSources[entry.config.name],
              Int(entry.config.targetBuffer) < session.bufferIDs.count,
              producer.ensureSharedMemory(
                defaultSize: options.defaultSharedMemorySize, defaultPageSize: options.defaultPageSize) else { return }
        let firstSetup = producer.allowedTargetBuffers.isEmpty && !producer.didSetUpTracing
        let globalBuffer = session.bufferIDs[Int(entry.config.targetBuffer)]
        producer.allowedTargetBuffers.insert(globalBuffer)
        var config = entry.config
        config.targetBuffer = UInt32(globalBuffer)
        // What traced fills in for every instance, each field written even when zero.
        config.tracingSessionID = session.id
        config.traceDurationMs = session.config.durationMs
        config.stopTimeoutMs = session.stopTimeoutMs
        config.enableExtraGuardrails = session.config.enableExtraGuardrails
        config.sessionInitiator = .unspecified
        let instance = DataSourceInstance(
            id: nextInstanceID, producerID: producer.id, name: entry.config.name, config: config,
            willNotifyOnStart: descriptor.willNotifyOnStart, willNotifyOnStop: descriptor.willNotifyOnStop,
            noFlush: descriptor.noFlush, handlesIncrementalStateClear: descriptor.handlesIncrementalStateClear)
        nextInstanceID += 1
        session.instances.append(instance)
        session.producersWithInstances.insert(producer.id)
        let id = instance.id
        if firstSetup {
            producer.didSetUpTracing = true
            post { [weak client = producer.producer] in client?.onTracingSetup() }
        }
        post { [weak client = producer.producer] in client?.setupDataSource(id, config: config) }
    }

    // MARK: Start

    func startTracing(consumer: LocalConsumerEndpoint) {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }), session.state == .configured else { return }
        startSession(session)
    }

    func startSession(_ session: TracingSession) {
        session.state = .started
        session.startRealtimeNanoseconds = Int64(ServiceClock.realtimeNanoseconds())
        session.recordServiceEvent { $0.tracingStarted = true }
        for index in session.instances.indices { startInstance(at: index, of: session) }
        if session.durationMs > 0 {
            scheduleOnce(session, after: .milliseconds(Int64(session.durationMs))) { service, session in
                guard session.state == .started else { return }
                // A STOP trigger taken in time ends the session itself, after its own delay.
                if session.triggerMode == .stopTracing && !session.receivedTriggers.isEmpty { return }
                service.flushAndDisable(session)
            }
        }
        let snapshotInterval = session.config.builtinDataSources.snapshotIntervalMs
        scheduleRepeating(session, .snapshot, every: .milliseconds(Int64(snapshotInterval > 0 ? snapshotInterval : 10_000))) { _, session in
            session.periodicPacketsDue = true
        }
        let flushing = FlushStrategy(session.config)
        if session.isWritingIntoFile {
            let period = FlushStrategy.fileWritePeriodMs(session.config)
            scheduleRepeating(session, .fileWrite, every: .milliseconds(Int64(period))) { service, session in
                guard flushing == .beforeEachWrite else { return service.drainIntoFile(session) }
                // Flushed first, written when the flush is answered (or timed out).
                let sessionID = session.id
                service.flush(session, timeoutMs: session.flushTimeoutMs, flags: FlushFlags()) { [weak service] _ in
                    guard let service, let session = service.sessions[sessionID], session.state == .started else { return }
                    service.drainIntoFile(session)
                }
            }
        }
        let clearPeriod = session.config.incrementalStateConfig.clearPeriodMs_p
        if clearPeriod > 0 {
            scheduleRepeating(session, .incrementalStateClear, every: .milliseconds(Int64(clearPeriod))) { service, session in
                service.clearIncrementalState(session)
            }
        }
        if case .periodic(let periodMs) = flushing {
            scheduleRepeating(session, .periodicFlush, every: .milliseconds(Int64(periodMs))) { service, session in
                service.flush(session, timeoutMs: session.flushTimeoutMs, flags: FlushFlags()) { _ in }
            }
        }
        maybeNotifyAllDataSourcesStarted(session)
    }

    /// Runs `body` once after `delay`, if the session still exists; the timer is cancelled with
    /// the session.
    func scheduleOnce(
        _ session: TracingSession, after delay: Duration, _ body: @escaping (TracingServiceCore, TracingSession) -> Void
    ) {
        let sessionID = session.id
        session.timers.append(eventLoop.scheduleTask(after: delay) { [weak self] in
            guard let self, let session = self.sessions[sessionID] else { return }
            body(self, session)
        })
    }

    /// Runs `body` every `period` while the session is started. One timer per purpose: each
    /// tick replaces the last, so a long session does not pile up timers.
    private func scheduleRepeating(
        _ session: TracingSession, _ purpose: TracingSession.RepeatingTimer, every period: Duration,
        _ body: @escaping (TracingServiceCore, TracingSession) -> Void
    ) {
        let sessionID = session.id
        session.repeatingTimers[purpose] = eventLoop.scheduleTask(after: period) { [weak self] in
            guard let self, let session = self.sessions[sessionID], session.state == .started else { return }
            body(self, session)
            guard session.state == .started else { return }
            self.scheduleRepeating(session, purpose, every: period, body)
        }
    }

    func startInstance(at index: Int, of session: TracingSession) {
        let instance = session.instances[index]
        guard instance.state == .configured, let producer = producer(instance.producerID) else { return }
        session.instances[index].state = instance.willNotifyOnStart ? .starting : .started
        let (id, config) = (instance.id, instance.config)
        post { [weak client = producer.producer] in client?.startDataSource(id, config: config) }
        if !instance.willNotifyOnStart {
            notifyInstanceStateChange(session, instance: session.instances[index], producerName: producer.name)
        }
    }

    func dataSourceStarted(_ id: DataSourceInstanceID, producer: LocalProducerEndpoint) {
        acknowledge(id, producer: producer, from: .starting, to: .started, then: maybeNotifyAllDataSourcesStarted)
    }

    /// A producer acknowledged a start or stop of its instance `id`: move the instance on, tell
    /// observers, then let the session react. Acknowledgements for other states are ignored.
    private func acknowledge(
        _ id: DataSourceInstanceID, producer: LocalProducerEndpoint, from: DataSourceInstance.State,
        to: DataSourceInstance.State, then: (TracingSession) -> Void
    ) {
        for session in sessions.values {
            guard let index = session.instances.firstIndex(where: { $0.id == id && $0.producerID == producer.id }),
                  session.instances[index].state == from else { continue }
            session.instances[index].state = to
            notifyInstanceStateChange(session, instance: session.instances[index], producerName: producer.name)
            then(session)
        }
    }

    private func maybeNotifyAllDataSourcesStarted(_ session: TracingSession) {
        guard !session.allDataSourcesStartedNotified, session.state == .started,
              !session.instances.contains(where: { $0.state == .starting || $0.state == .configured }) else { return }
        session.allDataSourcesStartedNotified = true
        session.recordServiceEvent { $0.allDataSourcesStarted = true }
        var events = ObservableEvents()
        events.allDataSourcesStarted = true
        deliverEvents(events, type: .allDataSourcesStarted, to: session)
    }

    private func notifyInstanceStateChange(
        _ session: TracingSession, instance: DataSourceInstance, producerName: String
    ) {
        var change = ObservableEvents.DataSourceInstanceStateChange()
        change.producerName = producerName
        change.dataSourceName = instance.name
        change.state = instance.state == .started ? .started : .stopped
        var events = ObservableEvents()
        events.instanceStateChanges = [change]
        deliverEvents(events, type: .dataSourcesInstances, to: session)
    }

    func deliverEvents(_ events: ObservableEvents, type: ObservableEvents.TypeEnum, to session: TracingSession) {
        guard let endpoint = consumer(session.consumerID), endpoint.observedEvents.contains(type) else { return }
        post { [weak client = endpoint.consumer] in client?.onObservableEvents(events) }
    }

    // MARK: Disable

    func disableTracing(consumer: LocalConsumerEndpoint) {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }) else { return }
        disable(session)
    }

    /// What `duration_ms` and stop triggers do: flush, then disable whatever the flush outcome.
    func flushAndDisable(_ session: TracingSession) {
        let sessionID = session.id
        flush(session, timeoutMs: session.flushTimeoutMs, flags: FlushFlags()) { [weak self] _ in
            guard let self, let session = self.sessions[sessionID] else { return }
            self.disable(session)
        }
    }

    func disable(_ session: TracingSession) {
        guard session.state == .configured || session.state == .started else { return }
        session.cancelTimers()
        session.state = .disablingWaitingStopAcks
        for index in session.instances.indices { stopInstance(at: index, of: session) }
        if session.instances.contains(where: { $0.state == .stopping }) {
            let sessionID = session.id
            session.stopTimeout = eventLoop.scheduleTask(after: .milliseconds(Int64(session.stopTimeoutMs))) {
                [weak self] in
                guard let self, let session = self.sessions[sessionID] else { return }
                // Producers that did not acknowledge in time are given up on.
                for index in session.instances.indices where session.instances[index].state == .stopping {
                    session.instances[index].state = .stopped
                }
                self.maybeFinishDisabling(session)
            }
        }
        maybeFinishDisabling(session)
    }

    /// Stops the instance at `index`: it waits for the producer's acknowledgement if its data
    /// source asked for that (`will_notify_on_stop`), unless `immediately`.
    func stopInstance(at index: Int, of session: TracingSession, immediately: Bool = false) {
        let instance = session.instances[index]
        guard instance.state != .stopped, instance.state != .stopping else { return }
        guard let producer = producer(instance.producerID) else {
            session.instances[index].state = .stopped
            return
        }
        let wasSetUpOnly = instance.state == .configured
        session.instances[index].state = instance.willNotifyOnStop && !wasSetUpOnly && !immediately ? .stopping : .stopped
        let id = instance.id
        post { [weak client = producer.producer] in client?.stopDataSource(id) }
        if session.instances[index].state == .stopped, !wasSetUpOnly {
            notifyInstanceStateChange(session, instance: session.instances[index], producerName: producer.name)
        }
    }

    /// A data source was unregistered: its instances in `session` are stopped and forgotten at
    /// once, without waiting for the producer to acknowledge the stop (Perfetto stops them with
    /// `disable_immediately`). Kept, they piled up: a producer registering and unregistering a
    /// data source in a loop left one more instance in a running session every time, and every
    /// later unregistration walked them all.
    func removeInstances(named name: String, of producer: LocalProducerEndpoint, from session: TracingSession) {
        var removed = false
        for index in session.instances.indices
        where session.instances[index].producerID == producer.id && session.instances[index].name == name {
            stopInstance(at: index, of: session, immediately: true)
            removed = true
        }
        guard removed else { return }
        session.instances.removeAll { $0.producerID == producer.id && $0.name == name }
        maybeNotifyAllDataSourcesStarted(session)
        maybeFinishDisabling(session)
    }

    func dataSourceStopped(_ id: DataSourceInstanceID, producer: LocalProducerEndpoint) {
        acknowledge(id, producer: producer, from: .stopping, to: .stopped, then: maybeFinishDisabling)
    }

    func maybeFinishDisabling(_ session: TracingSession) {
        guard session.state == .disablingWaitingStopAcks,
              !session.instances.contains(where: { $0.state == .stopping }) else { return }
        session.stopTimeout?.cancel()
        session.stopTimeout = nil
        session.state = .disabled
        scrapeSharedMemory(for: session)
        session.recordServiceEvent { $0.tracingDisabled = true }
        let sessionID = session.id
        finishWritingIntoFile(session) { [weak self] in
            guard let self, let session = self.sessions[sessionID], let endpoint = self.consumer(session.consumerID) else {
                return
            }
            let error = session.fileError ?? ""
            self.post { [weak client = endpoint.consumer] in client?.onTracingDisabled(error: error) }
        }
    }

    /// Writes the rest of a write_into_file session once the file has taken what waits, closes
    /// it, then runs `then` (at once for other sessions). A file that takes nothing more fails
    /// by its stall timeout, so this ends; `then` is not run if the session is freed meanwhile.
    private func finishWritingIntoFile(_ session: TracingSession, then: @escaping () -> Void) {
        guard let output = session.outputFile else { return then() }
        let sessionID = session.id
        output.whenDrained { [weak self] in
            guard let self, let session = self.sessions[sessionID] else { return }
            self.drainIntoFile(session)
            output.whenDrained { [weak self] in
                guard let self, let session = self.sessions[sessionID] else { return }
                if let error = output.error, session.fileError == nil { session.fileError = error }
                output.close()
                session.outputFile = nil
                then()
            }
        }
    }

    // MARK: Flush

    func flush(consumer: LocalConsumerEndpoint, timeoutMs: UInt32, flags: FlushFlags, _ callback: @escaping (Bool) -> Void) {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }) else {
            post { callback(false) }
            return
        }
        flush(session, timeoutMs: timeoutMs == 0 ? session.flushTimeoutMs : timeoutMs, flags: flags, callback)
    }

    func flush(_ session: TracingSession, timeoutMs: UInt32, flags: FlushFlags, _ callback: @escaping (Bool) -> Void) {
        flushesRequested += 1
        // A consumer asking again and again of producers that never answer must not make the
        // service keep a flush (and its timer) per request.
        guard session.pendingFlushes.count < options.maxPendingFlushesPerSession else {
            flushesFailed += 1
            post { callback(false) }
            return
        }
        let id = nextFlushID
        nextFlushID += 1
        var perProducer: [ProducerID: [DataSourceInstanceID]] = [:]
        for instance in session.instances where instance.state == .started && !instance.noFlush {
            perProducer[instance.producerID, default: []].append(instance.id)
        }
        let targets = perProducer.filter { producer($0.key) != nil }
        guard !targets.isEmpty else {
            scrapeSharedMemory(for: session)
            flushesSucceeded += 1
            post { callback(true) }
            return
        }
        let sessionID = session.id
        let timeout = eventLoop.scheduleTask(after: .milliseconds(Int64(timeoutMs))) { [weak self] in
            guard let self, let session = self.sessions[sessionID],
                  let pending = session.pendingFlushes.removeValue(forKey: id) else { return }
            self.scrapeSharedMemory(for: session)
            self.flushesFailed += 1
            pending.callback(false)
        }
        session.pendingFlushes[id] = TracingSession.PendingFlush(
            waitingFor: Set(targets.keys), callback: callback, timeout: timeout)
        for (producerID, instances) in targets.sorted(by: { $0.key < $1.key }) {
            guard let endpoint = producer(producerID) else { continue }
            post { [weak client = endpoint.producer] in client?.flush(id, dataSources: instances, flags: flags) }
        }
    }

    func flushAcknowledged(_ id: FlushRequestID, producer: ProducerID) {
        for session in sessions.values { flushAcknowledged(id, producer: producer, in: session) }
    }

    /// `producer` answered flush `id` of `session` (if that session waits for it).
    func flushAcknowledged(_ id: FlushRequestID, producer: ProducerID, in session: TracingSession) {
        guard var pending = session.pendingFlushes[id], pending.waitingFor.remove(producer) != nil else { return }
        if pending.waitingFor.isEmpty {
            session.pendingFlushes[id] = nil
            scrapeSharedMemory(for: session)
            pending.timeout?.cancel()
            let succeeded = !pending.producerLeft
            if succeeded {
                session.recordServiceEvent { $0.allDataSourcesFlushed = true }
                flushesSucceeded += 1
            } else {
                flushesFailed += 1
            }
            let callback = pending.callback
            post { callback(succeeded) }
        } else {
            session.pendingFlushes[id] = pending
        }
    }

    /// Asks producers to drop their incremental state (interning tables and the like) for the
    /// instances that handle it, as `incremental_state_config.clear_period_ms` wants.
    func clearIncrementalState(_ session: TracingSession) {
        var perProducer: [ProducerID: [DataSourceInstanceID]] = [:]
        for instance in session.instances where instance.state == .started && instance.handlesIncrementalStateClear {
            perProducer[instance.producerID, default: []].append(instance.id)
        }
        for (producerID, instances) in perProducer.sorted(by: { $0.key < $1.key }) {
            guard let endpoint = producer(producerID) else { continue }
            post { [weak client = endpoint.producer] in client?.clearIncrementalState(instances) }
        }
    }

    // MARK: Reading

    func readBuffers(consumer: LocalConsumerEndpoint) {
        // A session waiting for its trigger returns nothing at all, not even the service's own
        // packets (Perfetto's promise for STOP_TRACING sessions that time out).
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }), !session.isWaitingForTrigger else {
            post { [weak client = consumer.consumer] in client?.onTraceData([], hasMore: false) }
            return
        }
        consumer.readGeneration &+= 1
        // A read takes what the buffers hold now: on a session whose producers write faster than
        // it reads, it still ends (what comes meanwhile waits for the next read).
        let heldBytes = session.bufferIDs.reduce(0) { $0 + (buffers[$1]?.usedBytes ?? 0) }
        readPart(of: session.id, for: consumer, generation: consumer.readGeneration, first: true, remaining: heldBytes)
    }

    /// Reads the next part of the session's buffers for `consumer` and posts it; posts the
    /// part after it unless this one read everything, or the `remaining` chunk bytes the read
    /// started with (then the stats close the read).
    private func readPart(
        of sessionID: TracingSessionID, for consumer: LocalConsumerEndpoint, generation: UInt64, first: Bool,
        remaining: Int
    ) {
        // A newer ReadBuffers of this consumer goes on from where this one stopped.
        guard consumer.readGeneration == generation else { return }
        guard let session = sessions[sessionID], consumer.sessionID == sessionID else {
            post { [weak client = consumer.consumer] in client?.onTraceData([], hasMore: false) }
            return
        }
        var packets: [TracePacketParts] = []
        var complete = true
        var left = remaining
        // A session written into a file is read by the file writer only, as in Perfetto.
        if !session.isWritingIntoFile {
            if first { packets = leadingPackets(session).map(TracePacketParts.init) }
            let partBytes = session.compression == nil ? readPartChunkBytes : min(readPartChunkBytes, compressedReadPartChunkBytes)
            let part = appendBufferPackets(session, into: &packets, maxChunkBytes: max(1, min(partBytes, remaining)))
            left -= part.chunkBytes
            complete = part.complete || left <= 0
            packets = finishedForReading(packets, of: session, closingTheRead: complete)
        }
        let readNext: () -> Void = { [weak self, weak consumer] in
            guard let self, let consumer, consumer.connected else { return }
            self.readPart(of: sessionID, for: consumer, generation: generation, first: false, remaining: left)
        }
        post { [weak self, weak client = consumer.consumer] in
            guard let self, let client else { return }
            // The next part once this one is on its way: at once for a consumer in this
            // process, when the connection has taken it for one over ConsumerPort (reading on
            // ahead of the socket would only pile the whole buffer up in memory first).
            if let paced = client as? PacedTraceDataConsumer {
                paced.onTracePackets(packets, hasMore: !complete)
                if !complete { paced.whenReadyForMoreTraceData(readNext) }
                return
            }
            let batches = TraceDataBatches(packets)
            for (index, batch) in batches.enumerated() {
                client.onTraceData(batch, hasMore: !complete || index < batches.count - 1)
            }
            if !complete { self.post(readNext) }
        }
    }

    /// Everything readable now: service packets, then producers' packets stamped with trusted
    /// fields, then the stats (when due); filtered and compressed as the session's config asks.
    func collectPackets(_ session: TracingSession) -> [TracePacketParts] {
        var packets = leadingPackets(session).map(TracePacketParts.init)
        _ = appendBufferPackets(session, into: &packets, maxChunkBytes: .max)
        return finishedForReading(packets, of: session, closingTheRead: true)
    }

    /// What every read (ReadBuffers part or file write) does to the packets it took, in
    /// traced's order: the trace filter, then the stats if this closes the read and they are
    /// due, then compression.
    private func finishedForReading(
        _ packets: [TracePacketParts], of session: TracingSession, closingTheRead: Bool
    ) -> [TracePacketParts] {
        var packets = packets
        applyTraceFilter(of: session, to: &packets)
        if closingTheRead { appendStatsIfDue(session, to: &packets) }
        if let compression = session.compression { return compression.compress(packets) }
        return packets
    }

    /// Whether a read of `session` now carries a clock snapshot and the stats.
    private func periodicPacketsDue(_ session: TracingSession) -> Bool {
        session.periodicPacketsDue || session.state != .started
    }

    /// The stats, last, when they are due (they close the read that carries them).
    private func appendStatsIfDue(_ session: TracingSession, to packets: inout [TracePacketParts]) {
        guard periodicPacketsDue(session) else { return }
        session.periodicPacketsDue = false
        packets.append(TracePacketParts(ServicePackets.traceStats(traceStats(for: session), uid: options.serviceUID)))
    }

    /// The service's packets that open a read: the config (once per session), a clock
    /// snapshot (when due), what relays sent, and the service's events.
    private func leadingPackets(_ session: TracingSession) -> [TracePacketData] {
        var packets: [TracePacketData] = []
        let serviceUID = options.serviceUID
        if !session.configEmitted {
            session.configEmitted = true
            packets.append(ServicePackets.traceConfig(session.config, uid: serviceUID))
        }
        if periodicPacketsDue(session) { packets.append(ServicePackets.clockSnapshot(uid: serviceUID)) }
        packets.append(contentsOf: relayPackets(for: session, uid: serviceUID))
        packets.append(contentsOf: session.takeServiceEvents(uid: serviceUID))
        packets.append(contentsOf: triggerPackets(session))
        return packets
    }

    /// Producers' packets of the session's buffers, stamped with trusted fields, until about
    /// `maxChunkBytes` of chunks per buffer were read. Returns whether every buffer was read
    /// through, and the chunk bytes consumed.
    private func appendBufferPackets(
        _ session: TracingSession, into packets: inout [TracePacketParts], maxChunkBytes: Int
    ) -> (complete: Bool, chunkBytes: Int) {
        var chunkBytes = 0
        for bufferID in session.bufferIDs {
            guard let buffer = buffers[bufferID] else { continue }
            let part = buffer.readPackets(maxChunkBytes: maxChunkBytes)
            packets.reserveCapacity(packets.count + part.packets.count)
            // Packets come sequence by sequence: their trusted fields (which say the sequence,
            // and whether data was lost before the packet) are encoded once per run.
            var lastSequence: SequenceKey?
            var trusted = (afterLoss: TrustedFields(), otherwise: TrustedFields())
            for packet in part.packets {
                let acceptable = packet.storage.withUnsafeBytes { bytes in
                    PacketValidation.isAcceptable(UnsafeRawBufferPointer(rebasing: bytes[packet.body]))
                }
                guard acceptable else {
                    session.invalidPackets += 1
                    continue
                }
                if packet.sequence != lastSequence {
                    lastSequence = packet.sequence
                    let sequenceID = session.sequenceID(for: packet.sequence)
                    let fields = { (dropped: Bool) in
                        TrustedFields(
                            uid: packet.producerUID, sequenceID: sequenceID, pid: packet.producerPID,
                            machineID: packet.machineID, previousPacketDropped: dropped)
                    }
                    trusted = (fields(true), fields(false))
                }
                packets.append(TracePacketParts(
                    storage: packet.storage, body: packet.body,
                    trusted: packet.previousPacketDropped ? trusted.afterLoss : trusted.otherwise))
            }
            chunkBytes += part.chunkBytes
            if !part.complete { return (false, chunkBytes) }
        }
        let bufferIDs = session.bufferIDs
        // Once a read has taken everything, the ids of producers with nothing left go.
        session.forgetGoneProducers { serial in
            bufferIDs.contains { self.buffers[$0]?.holdsSequences(of: serial) == true }
        }
        return (true, chunkBytes)
    }

    /// Runs every packet through the session's trace filter, if it has one (traced's
    /// MaybeFilterPackets; the stats packet, added after, is not filtered). As in traced, the
    /// trace keeps one packet per packet read: one that does not parse becomes empty.
    private func applyTraceFilter(of session: TracingSession, to packets: inout [TracePacketParts]) {
        guard let filter = session.traceFilter else { return }
        var whole: [UInt8] = []
        packets = packets.map { packet in
            whole.removeAll(keepingCapacity: true)
            packet.append(to: &whole)
            session.filterStats.inputPackets += 1
            session.filterStats.inputBytes += UInt64(whole.count)
            guard let kept = whole.withUnsafeBytes(filter.filter) else {
                session.filterStats.errors += 1
                return TracePacketParts(TracePacketData(bytes: []))
            }
            session.filterStats.outputBytes += UInt64(kept.count)
            return TracePacketParts(TracePacketData(bytes: kept))
        }
    }

    func freeBuffers(consumer: LocalConsumerEndpoint) {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }) else { return }
        destroySession(session)
    }

    /// Ends a session for good: stops what still runs, frees its buffers, forgets it.
    func destroySession(_ session: TracingSession) {
        if session.state == .configured || session.state == .started {
            session.cancelTimers()
            session.state = .disablingWaitingStopAcks
            for index in session.instances.indices { stopInstance(at: index, of: session) }
            if session.isWritingIntoFile { drainIntoFile(session) }
        }
        session.cancelTimers()
        session.state = .disabled
        for (_, pending) in session.pendingFlushes {
            pending.timeout?.cancel()
            let callback = pending.callback
            post { callback(false) }
        }
        session.pendingFlushes = [:]
        session.outputFile?.close()
        session.outputFile = nil
        let freed = Set(session.bufferIDs)
        let freedBytes = freed.reduce(0) { $0 + (buffers[$1]?.usedBytes ?? 0) }
        for id in freed { buffers[id] = nil }
        // A buffer's chunks are many small allocations, which malloc keeps for reuse once
        // freed: five 64 MiB sessions left the service at 370 MB with none running (outside
        // tester, round eight). Give the pages back, as traced does after a read.
        if freedBytes >= Self.trimAfterFreeingBytes { CPerfettoIPC_releaseFreeMemory() }
        for producer in connectedProducers { producer.allowedTargetBuffers.subtract(freed) }
        sessions[session.id] = nil
        consumer(session.consumerID)?.sessionID = nil
    }

    func traceStats(consumer: LocalConsumerEndpoint) {
        let session = consumer.sessionID.flatMap { sessions[$0] }
        let stats = traceStats(for: session)
        let success = session != nil
        post { [weak client = consumer.consumer] in client?.onTraceStats(success: success, stats) }
    }

    // MARK: Write into file

    /// Appends what is readable to the session's file, never going past `max_file_size_bytes`;
    /// reaching it ends the session, as in Perfetto. `evenIfPending`: also behind bytes the file
    /// has not taken yet (a clone's only write, which must not stay in its buffers).
    func drainIntoFile(_ session: TracingSession, evenIfPending: Bool = false) {
        // While the file has not taken the last write, the data stays in the buffers; a
        // START_TRACING session never triggered writes nothing.
        guard let file = session.outputFile, file.error == nil, evenIfPending || !file.hasPendingBytes,
              !session.isWaitingForTrigger else { return }
        let limit = session.config.maxFileSizeBytes
        var reachedLimit = false
        var output: [UInt8] = []
        for packet in collectPackets(session) {
            let framed = TraceFile.framedPacketSize(packet.count)
            if limit > 0, session.bytesWrittenIntoFile + UInt64(output.count + framed) > limit {
                reachedLimit = true
                break
            }
            TraceFile.appendFramedPacket(packet, to: &output)
        }
        if file.write(output) {
            session.bytesWrittenIntoFile += UInt64(output.count)
        } else {
            if session.fileError == nil { session.fileError = file.error }
            reachedLimit = true
        }
        if reachedLimit, session.state == .started || session.state == .configured {
            let sessionID = session.id
            post { [weak self] in
                guard let self, let session = self.sessions[sessionID] else { return }
                self.disable(session)
            }
        }
    }
}

/// Splits packets into the batches a consumer receives (bounded by count and bytes).
private func TraceDataBatches(_ packets: [TracePacketParts]) -> [[TracePacketData]] {
    var batches: [[TracePacketData]] = []
    var current: [TracePacketData] = []
    var bytes = 0
    for packet in packets {
        if !current.isEmpty && (current.count >= 256 || bytes + packet.count > 1 << 20) {
            batches.append(current)
            current = []
            bytes = 0
        }
        current.append(packet.joined)
        bytes += packet.count
    }
    batches.append(current)
    return batches
}
