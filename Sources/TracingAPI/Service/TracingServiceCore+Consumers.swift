// What a consumer can do to its session besides running it: detach from it (the session
// outlives the consumer's connection) and attach to it again from another connection of the
// same uid, by key; change which producers its data sources run on.

import IPCProtocol

extension TracingServiceCore {
    /// Detaches `consumer` from its session under `key`. Fails when it has no session or its
    /// uid already has a session detached under that key (Perfetto's rules).
    func detach(consumer: LocalConsumerEndpoint, key: String) -> Bool {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }) else { return false }
        let taken = sessions.values.contains { $0.detachKey == key && $0.consumerUID == consumer.uid }
        guard !taken else { return false }
        session.detachKey = key
        session.consumerID = 0
        consumer.sessionID = nil
        return true
    }

    /// Attaches `consumer` to the session its uid detached under `key`; returns the session's
    /// config, or nil when the consumer has a session already or there is no such session.
    func attach(consumer: LocalConsumerEndpoint, key: String) -> TraceConfig? {
        guard consumer.sessionID == nil,
              let session = sessions.values.first(where: { $0.detachKey == key && $0.consumerUID == consumer.uid })
        else { return nil }
        session.detachKey = nil
        session.consumerID = consumer.connectionID
        consumer.sessionID = session.id
        return session.config
    }

    /// Takes the new producer filters of the session's data sources (the only change Perfetto
    /// applies) and sets up instances on producers that match now.
    func changeTraceConfig(consumer: LocalConsumerEndpoint, _ newConfig: TraceConfig) {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }),
              session.state == .configured || session.state == .started else { return }
        for newEntry in newConfig.dataSources {
            guard let index = session.config.dataSources.firstIndex(where: { $0.config.name == newEntry.config.name })
            else { continue }
            session.config.dataSources[index].producerNameFilter = newEntry.producerNameFilter
            session.config.dataSources[index].producerNameRegexFilter = newEntry.producerNameRegexFilter
            let entry = session.config.dataSources[index]
            for producer in connectedProducers where producer.dataSources[entry.config.name] != nil {
                let running = session.instances.contains {
                    $0.producerID == producer.id && $0.name == entry.config.name && $0.state != .stopped
                }
                guard !running, matches(entry, producer: producer, in: session) else { continue }
                setUpInstance(entry, producer: producer, session: session)
                if session.state == .started, let last = session.instances.indices.last {
                    startInstance(at: last, of: session)
                }
            }
        }
    }
}

extension TracingServiceCore {
    /// The session id that asks CloneSession for the session a bug report should carry
    /// (Perfetto's `kBugreportSessionId`).
    static let bugreportSessionID = TracingSessionID.max

    /// CloneSession: flushes the source session, then gives `consumer` a read-only session
    /// holding a copy of its buffers. The source goes on recording.
    func cloneSession(
        consumer: LocalConsumerEndpoint, _ request: CloneSessionRequest, outputFile: ScopedFD?,
        _ callback: @escaping (CloneSessionResponse) -> Void
    ) {
        func fail(_ error: String) {
            var response = CloneSessionResponse()
            response.success = false
            response.error = error
            post { callback(response) }
        }
        guard consumer.sessionID == nil else { return fail("the consumer already has a tracing session") }
        let source: TracingSession?
        switch request.selector {
        case .sessionID(Self.bugreportSessionID)?:
            // Perfetto's older bug-report protocol: the started session with the highest
            // bugreport_score (above 0), the first of equals.
            source = sessions.values.sorted { $0.id < $1.id }
                .filter { $0.config.bugreportScore > 0 && $0.state == .started }
                .reduce(nil) { best, session in
                    (best?.config.bugreportScore ?? 0) >= session.config.bugreportScore ? best : session
                }
            guard source != nil else { return fail("No tracing sessions eligible for bugreport found") }
        case .sessionID(let id)?: source = sessions[id]
        case .uniqueSessionName(let name)?:
            source = name.isEmpty ? nil : sessions.values.first { $0.config.uniqueSessionName == name }
        case nil: source = nil
        }
        guard let source, source.state != .clonedReadOnly else { return fail("Tracing session not found") }
        // Only the uid that started a session (or root) may copy what it recorded.
        guard source.isVisible(to: consumer.uid) else {
            return fail("the session belongs to another user")
        }
        // A clone is a session of the cloning uid, and its buffers count: the same limits.
        if let error = cloneLimitError(source, for: consumer) { return fail(error) }
        // A session written into a file is cloned into a file (what the file holds is no longer
        // in its buffers), as traced does; another session's clone is read back.
        var output: TraceFileOutput?
        if source.outputFile != nil {
            guard let outputFile else {
                return fail("Failed to clone 'write_into_file' session: a file descriptor is required to copy existing file")
            }
            switch TraceFileOutput.open(outputFile, loop: eventLoop, stallTimeout: options.outputFileStallTimeout) {
            case .success(let opened): output = opened
            case .failure(let failure): return fail("Failed to clone 'write_into_file' session: \(failure.message)")
            }
        }
        let sourceID = source.id
        let finish: (Bool) -> Void = { [weak self, weak consumer] _ in
            func failClosing(_ error: String) {
                output?.close()
                fail(error)
            }
            guard let self, let consumer else { return failClosing("the consumer is gone") }
            guard let source = self.sessions[sourceID] else { return failClosing("the session ended while it was cloned") }
            guard consumer.sessionID == nil else { return failClosing("the consumer already has a tracing session") }
            if let error = self.cloneLimitError(source, for: consumer) { return failClosing(error) }
            // The file first, then the buffers, in the same turn: nothing is in both or neither.
            if let output {
                guard let sourceFile = source.outputFile else { return failClosing("the session's output file is gone") }
                if let error = sourceFile.copyContents(into: output) {
                    return failClosing("Failed to clone 'write_into_file' session: failed to copy existing file: \(error)")
                }
            }
            let skipFilter = request.sessionID == Self.bugreportSessionID || request.skipTraceFilter
            callback(self.snapshot(source, for: consumer, skipTraceFilter: skipFilter, outputFile: output))
        }
        if source.state == .started {
            flush(source, timeoutMs: source.flushTimeoutMs, flags: FlushFlags(), finish)
        } else {
            post { finish(true) }
        }
    }

    private func cloneLimitError(_ source: TracingSession, for consumer: LocalConsumerEndpoint) -> String? {
        if let error = sessionLimitError(uid: consumer.uid) { return error }
        return bufferMemoryError(adding: source.bufferIDs.reduce(0) { $0 + (buffers[$1]?.capacity ?? 0) }, uid: consumer.uid)
    }

    private func snapshot(
        _ source: TracingSession, for consumer: LocalConsumerEndpoint, skipTraceFilter: Bool, outputFile: TraceFileOutput?
    ) -> CloneSessionResponse {
        var response = CloneSessionResponse()
        var bufferIDs: [BufferID] = []
        for id in source.bufferIDs {
            guard let buffer = buffers[id], let cloneID = allocateBufferID() else { continue }
            buffers[cloneID] = buffer.clone()
            bufferIDs.append(cloneID)
        }
        var config = source.config
        // The copy is written into its file at once, or read through ReadBuffers.
        config.writeIntoFile = outputFile != nil
        let clone = TracingSession(
            id: nextSessionID, consumerID: consumer.connectionID, consumerUID: consumer.uid, config: config,
            bufferIDs: bufferIDs)
        nextSessionID += 1
        clone.state = .clonedReadOnly
        // A copy is read through its source's filter, unless the request skips it (traced's
        // skip_trace_filter: Perfetto's CLI sets it for bug reports; the cloning uid is the
        // session's own, or root, so nothing is shown that uid could not see).
        clone.traceFilter = skipTraceFilter ? nil : source.traceFilter
        // The triggers move to the copy, as in traced: a session snapshotted again and again
        // (CLONE_SNAPSHOT, for hours) would otherwise write every old trigger into each copy
        // and keep them all. The source then reads as if it had taken none.
        clone.receivedTriggers = source.receivedTriggers
        source.receivedTriggers = []
        source.triggersEmitted = 0
        sessions[clone.id] = clone
        consumer.sessionID = clone.id
        response.success = true
        response.uuidMsb = Int64.random(in: .min ... .max)
        response.uuidLsb = Int64.random(in: .min ... .max)
        if let outputFile {
            clone.outputFile = outputFile
            clone.bytesWrittenIntoFile = outputFile.bytesWritten
            // Behind the copy, whether or not the file took it all yet (a pipe).
            drainIntoFile(clone, evenIfPending: true)
            // Written whole before the reply (Perfetto's CLI ends when it comes), and closed once
            // the file took it all: at once for a file, when its reader has read it for a pipe.
            let cloneID = clone.id
            outputFile.whenDrained { [weak self, weak outputFile] in
                outputFile?.close()
                if let self, let clone = self.sessions[cloneID], clone.outputFile === outputFile { clone.outputFile = nil }
            }
            response.wasWriteIntoFile = true
        }
        return response
    }
}
