// tracebox perfetto: records a trace through ConsumerPort (Perfetto's `perfetto` command), or
// prints the service's state. With write_into_file the output file's fd goes to the service
// with EnableTracing and the service writes into it; otherwise the trace is read back with
// ReadBuffers when tracing stops. Ctrl-C stops early and keeps what was recorded.

import ArgumentParser
import IPCProtocol
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

struct PerfettoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perfetto",
        abstract: "Record a trace, or query the tracing service (Perfetto's perfetto command).")

    @Option(name: [.customShort("c"), .customLong("config")], help: "Trace config file (- for stdin): a binary TraceConfig, or text with --txt.")
    var config: String?

    @Flag(help: "The config is in Perfetto's text format.")
    var txt = false

    @Option(name: [.customShort("o"), .customLong("out")], help: "Where the trace goes (- for stdout).")
    var out: String?

    @Option(name: [.customShort("t"), .customLong("time")], help: "Duration (10s, 500ms, 1m): overrides duration_ms.")
    var time: String?

    @Option(name: [.customShort("b"), .customLong("buffer")], help: "Size of the first buffer (64mb, 512kb): overrides its size_kb.")
    var buffer: String?

    @Flag(help: "Print the service's producers, data sources and sessions.")
    var query = false

    @Flag(name: .customLong("query-raw"), help: "Write the TracingServiceState message, binary, to stdout.")
    var queryRaw = false

    @Option(help: "IPC backend: unix (epoll) or libuv.")
    var backend: BackendChoice = .unix

    func validate() throws {
        if !query && !queryRaw {
            guard config != nil else { throw ValidationError("a recording needs -c CONFIG (or use --query)") }
            guard out != nil else { throw ValidationError("a recording needs -o FILE (- for stdout)") }
        }
    }

    func run() throws {
        let runner = try CommandLoop(backend: backend)
        let address = TracingSocketNames.consumer
        let service = SystemTracingService(
            producerBackend: .transport(runner.transport, address: TracingSocketNames.producer),
            consumerBackend: .transport(runner.transport, address: address))
        let session = ConsumerSession()
        session.endpoint = service.connectConsumer(session, uid: getuid())
        // A service that accepts but never answers is given up on, as one that stops answering later.
        runner.run(until: { session.connected || session.disconnected }, timeout: Self.serviceAnswerTimeout)
        guard session.connected else {
            printError("tracebox perfetto: " + Self.describeUnreachable(address, error: (session.endpoint as? RemoteConsumerEndpoint)?.connectionError))
            throw ExitCode.failure
        }
        if query || queryRaw {
            try runQuery(session, runner)
        } else {
            try record(session, runner)
        }
    }

    // MARK: Query

    private func runQuery(_ session: ConsumerSession, _ runner: CommandLoop) throws {
        var answer: (success: Bool, state: TracingServiceState)?
        session.endpoint.queryServiceState(sessionsOnly: false) { success, value in answer = (success, value) }
        runner.run(until: { answer != nil || session.disconnected }, timeout: Self.serviceAnswerTimeout)
        guard let answer else {
            printError(session.disconnected ? "tracebox perfetto: the service went away"
                : "tracebox perfetto: the service did not answer the query within \(Self.serviceAnswerTimeout)")
            throw ExitCode.failure
        }
        // A failed query is not an empty service.
        guard answer.success else {
            printError("tracebox perfetto: the service did not answer the query (it failed it, or its reply does not decode or passes its bound)")
            throw ExitCode.failure
        }
        let state = answer.state
        if queryRaw {
            let bytes: [UInt8] = try state.serializedBytes()
            try writeAll(bytes, to: STDOUT_FILENO)
        } else {
            say(ServiceStateReport(state).text)
        }
    }

    // MARK: Recording

    private func record(_ session: ConsumerSession, _ runner: CommandLoop) throws {
        var traceConfig = try loadConfig()
        let outputFD = try openOutput()
        defer { if outputFD != STDOUT_FILENO { close(outputFD) } }
        let duration = traceConfig.durationMs
        let fileFD = traceConfig.writeIntoFile ? ScopedFD(fcntl(outputFD, F_DUPFD_CLOEXEC, 0)) : nil
        if traceConfig.writeIntoFile && traceConfig.fileWritePeriodMs == 0 { traceConfig.fileWritePeriodMs = 1000 }
        session.endpoint.enableTracing(traceConfig, outputFile: fileFD)
        fileFD?.close()

        var interrupted = false
        runner.onTerminationSignal {
            guard !interrupted else { return }
            interrupted = true
            session.endpoint.disableTracing()
        }
        let progress = isatty(STDERR_FILENO) == 1 ? Progress(durationMs: duration, outputFD: traceConfig.writeIntoFile ? outputFD : nil) : nil
        progress?.start(on: runner.loop, session: session)
        let ended = { session.disabledError != nil || session.disconnected }
        if duration > 0 {
            // A service that does not end the session when it should is asked to, then given up.
            let deadline = Duration.milliseconds(Int64(duration)) + Self.serviceAnswerTimeout
            if !runner.run(until: ended, timeout: deadline) {
                printError("tracebox perfetto: the service did not end the session \(Self.serviceAnswerTimeout) after its duration; stopping it")
                session.endpoint.disableTracing()
                guard runner.run(until: ended, timeout: Self.serviceAnswerTimeout) else {
                    printError("tracebox perfetto: the service did not stop the session either; giving up")
                    throw ExitCode.failure
                }
            }
        } else {
            runner.run(until: ended)  // until the service ends it, or SIGINT / SIGTERM asks it to
        }
        progress?.stop()
        // Lost service: the session ended with it (its disabled error says so too); one line.
        if session.disconnected {
            printError("tracebox perfetto: the tracing service went away during the recording")
            throw ExitCode.failure
        }
        if let error = session.disabledError, !error.isEmpty {
            printError("tracebox perfetto: tracing stopped with an error: \(error)")
        }

        var packets = 0
        var bytes = 0
        var stats: TraceStats?
        if traceConfig.writeIntoFile {
            session.endpoint.getTraceStats()
            runner.run(until: { session.stats != nil || session.disconnected }, timeout: .seconds(5))
            stats = session.stats
            // Counted by the packets' headers: the file may be larger than memory.
            if outputFD != STDOUT_FILENO {
                do {
                    (packets, bytes) = try TraceFile.countPackets(inFile: outputFD)
                } catch {
                    printError("tracebox perfetto: the file the service wrote is not a trace: \(error.message)")
                    throw ExitCode.failure
                }
            }
        } else {
            let output = TraceOutput(fd: outputFD)
            session.output = output
            session.endpoint.readBuffers()
            // A read takes as long as the trace is large; a service that sends nothing for
            // `serviceAnswerTimeout` has stopped sending.
            var lastProgress = (count: session.batchesReceived, at: ContinuousClock.now)
            while !runner.run(until: { session.readFinished || session.disconnected }, timeout: .seconds(1)) {
                if session.batchesReceived != lastProgress.count {
                    lastProgress = (session.batchesReceived, ContinuousClock.now)
                } else if ContinuousClock.now - lastProgress.at > Self.serviceAnswerTimeout {
                    session.readError = "the service sent nothing for \(Self.serviceAnswerTimeout)"
                    break
                }
            }
            output.flush()
            if let error = output.error {
                printError("tracebox perfetto: cannot write \(out == "-" ? "stdout" : out!): \(error)")
                throw ExitCode.failure
            }
            // What was written is kept, but a read that ended early is not a complete trace.
            if let error = session.readError ?? (session.readFinished ? nil : "the tracing service went away") {
                printError("tracebox perfetto: the trace is incomplete (\(output.packets) packets written): \(error)")
                throw ExitCode.failure
            }
            packets = output.packets
            bytes = output.bytes
            stats = output.traceStats
        }
        // Waits for the reply (a round trip): the connection closes at exit, and would drop
        // the request if it had not left yet. The service frees them then anyway, so a slow
        // answer is not waited for long.
        var freed = false
        session.endpoint.freeBuffers { _ in freed = true }
        runner.run(until: { freed || session.disconnected }, timeout: .seconds(1))
        let target = out == "-" ? "stdout" : out!
        printError("tracebox perfetto: \(packets) packets, \(bytes) bytes written to \(target)" + Losses(stats).summary)
        guard session.disabledError?.isEmpty ?? false else { throw ExitCode.failure }
    }

    /// Why no session could start at `address`, for people.
    static func describeUnreachable(_ address: String, error: IPCError?) -> String {
        guard let error else {
            return "the tracing service at \(address) accepted the connection but did not answer within \(serviceAnswerTimeout)"
        }
        if error.meansNothingListens {
            return "no tracing service is listening at \(address); start one with `tracebox traced`"
        }
        return "cannot use the tracing service at \(address): \(error.message)"
    }

    /// How long the service may take to answer a query, to end a session after its duration,
    /// or to send the next part of a read, before the command gives up with an error.
    static let serviceAnswerTimeout: Duration = .seconds(30)

    private func loadConfig() throws -> TraceConfig {
        let path = config!
        let bytes: [UInt8]
        do {
            bytes = path == "-" ? try readAll(STDIN_FILENO) : try readFile(path)
        } catch {
            printError("tracebox perfetto: cannot read \(path): \(error)")
            throw ExitCode.failure
        }
        var traceConfig: TraceConfig
        if txt {
            do {
                traceConfig = try TraceConfig(textFormat: String(decoding: bytes, as: UTF8.self))
            } catch {
                printError("tracebox perfetto: \(path): \(error)")
                throw ExitCode.failure
            }
        } else {
            do {
                traceConfig = try TraceConfig(serializedBytes: bytes)
            } catch {
                printError("tracebox perfetto: \(path) is not a binary TraceConfig (text configs need --txt)")
                throw ExitCode.failure
            }
        }
        if let time {
            guard let ms = Quantities.milliseconds(time) else { throw ValidationError("-t takes a duration like 10s, 500ms or 1m") }
            traceConfig.durationMs = ms
        }
        if let buffer {
            guard let kb = Quantities.kilobytes(buffer) else { throw ValidationError("-b takes a size like 64mb or 512kb") }
            if traceConfig.buffers.isEmpty { traceConfig.buffers.append(TraceConfig.BufferConfig()) }
            traceConfig.buffers[0].sizeKb = kb
        }
        return traceConfig
    }

    private func openOutput() throws -> Int32 {
        guard let out, out != "-" else { return STDOUT_FILENO }
        let fd = open(out, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            printError("tracebox perfetto: cannot open \(out): \(String(cString: strerror(errno)))")
            throw ExitCode.failure
        }
        return fd
    }
}

/// The consumer a command drives: remembers what the service said.
final class ConsumerSession: Consumer {
    var endpoint: (any ConsumerEndpoint)!
    /// Where trace data goes as it arrives; without one, it is kept in `packets`.
    var output: TraceOutput?
    private(set) var connected = false
    private(set) var disconnected = false
    private(set) var disabledError: String?
    private(set) var packets: [TracePacketData] = []
    private(set) var readFinished = false
    /// Why the read ended early, if it did.
    var readError: String?
    /// Batches of trace data received so far.
    private(set) var batchesReceived = 0
    private(set) var stats: TraceStats?

    func onConnect() { connected = true }
    func onDisconnect() { disconnected = true }
    func onTracingDisabled(error: String) { disabledError = error }
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        batchesReceived += 1
        if let output {
            output.append(packets)
        } else {
            self.packets.append(contentsOf: packets)
        }
        if !hasMore { readFinished = true }
    }
    func onTraceDataFailed(error: String) { readError = error }
    func onTraceStats(success: Bool, _ stats: TraceStats) { self.stats = stats }
}

/// The trace stats the service appends at the end of a read.
func lastTraceStats(in packets: [TracePacketData]) -> TraceStats? {
    for packet in packets.reversed() {
        if case .traceStats(let stats)? = (try? packet.decode())?.data { return stats }
    }
    return nil
}

/// Losses a recording had, from its buffers' stats. The service-wide counts beside them
/// (`chunks_discarded`, `patches_discarded`: commits of any producer that named no valid
/// chunk or buffer) are not this recording's loss; they stay in the trace's stats.
struct Losses {
    let overwritten: UInt64
    let discarded: UInt64
    let dropped: UInt64

    init(_ stats: TraceStats?) {
        let buffers = stats?.bufferStats ?? []
        overwritten = buffers.reduce(0) { $0 + $1.chunksOverwritten }
        discarded = buffers.reduce(0) { $0 + $1.chunksDiscarded }
        dropped = buffers.reduce(0) { $0 + $1.traceWriterPacketLoss }
    }

    var summary: String {
        var parts: [String] = []
        if overwritten > 0 { parts.append("\(overwritten) chunks overwritten") }
        if discarded > 0 { parts.append("\(discarded) chunks discarded") }
        if dropped > 0 { parts.append("\(dropped) packets dropped by writers") }
        return parts.isEmpty ? ", nothing lost" : "; lost: " + parts.joined(separator: ", ")
    }
}

/// The progress line on a terminal: elapsed / duration, and what has been written so far.
final class Progress {
    private let durationMs: UInt32
    private let outputFD: Int32?
    private var timer: (any ScheduledTask)?
    private var started: UInt64 = 0

    init(durationMs: UInt32, outputFD: Int32?) {
        self.durationMs = durationMs
        self.outputFD = outputFD
    }

    func start(on loop: any IPCEventLoop, session: ConsumerSession) {
        started = monotonicMilliseconds()
        timer = loop.scheduleTask(after: .milliseconds(250)) { [weak self] in self?.tick(loop, session) }
    }

    private func tick(_ loop: any IPCEventLoop, _ session: ConsumerSession) {
        session.endpoint.getTraceStats()
        let elapsed = Double(monotonicMilliseconds() - started) / 1000
        let total = durationMs == 0 ? "until Ctrl-C" : String(format1(Double(durationMs) / 1000)) + "s"
        let buffers = session.stats?.bufferStats ?? []
        var line = "\r\u{1B}[K  recording \(format1(elapsed))s / \(total): "
        line += "\(Quantities.bytes(buffers.reduce(0) { $0 + Int($1.bytesWritten) })) in \(buffers.reduce(0) { $0 + $1.chunksWritten }) chunks"
        if let outputFD {
            var info = stat()
            if fstat(outputFD, &info) == 0 { line += ", \(Quantities.bytes(Int(info.st_size))) in the file" }
        }
        writeError(line)
        timer = loop.scheduleTask(after: .milliseconds(250)) { [weak self] in self?.tick(loop, session) }
    }

    func stop() {
        timer?.cancel()
        writeError("\r\u{1B}[K")
    }
}

/// What `perfetto --query` prints: producers, data sources by producer, sessions. Every name is
/// escaped on its own (``printable(_:)``), so that a newline in one cannot fake a line.
struct ServiceStateReport {
    let text: String

    init(_ state: TracingServiceState) {
        var lines: [String] = []
        lines.append("Service: \(state.tracingServiceVersion.isEmpty ? "unknown version" : printable(state.tracingServiceVersion))")
        lines.append("Producers (\(state.producers.count)):")
        // Grouped once (a service that repeats producer ids must not multiply the output), in
        // the order the service sent them.
        var sourcesByProducer: [Int32: [String]] = [:]
        for source in state.dataSources { sourcesByProducer[source.producerID, default: []].append(source.dsDescriptor.name) }
        for producer in state.producers {
            var line = "  \(producer.id): \(printable(producer.name))  uid=\(producer.uid) pid=\(producer.pid)"
            if !producer.sdkVersion.isEmpty { line += "  sdk=\(printable(producer.sdkVersion))" }
            lines.append(line)
            for name in sourcesByProducer.removeValue(forKey: producer.id) ?? [] {
                lines.append("      data source \(printable(name))")
            }
        }
        lines.append("Tracing sessions (\(state.tracingSessions.count)):")
        for session in state.tracingSessions {
            var line = "  \(session.id): \(printable(session.state))  uid=\(session.consumerUid)"
            line += "  buffers=\(session.bufferSizeKb.map { "\($0)kb" }.joined(separator: ","))"
            line += "  data sources=\(session.numDataSources)"
            if session.durationMs > 0 { line += "  duration=\(session.durationMs)ms" }
            if !session.uniqueSessionName.isEmpty { line += "  name=\(printable(session.uniqueSessionName))" }
            lines.append(line)
        }
        text = lines.joined(separator: "\n")
    }
}
