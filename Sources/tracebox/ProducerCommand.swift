// tracebox producer: a producer for tests and demos. It registers a test data source and
// track_event (category "tracebox"), waits for a session that starts the test data source,
// writes COUNT test packets (and, when the session enables the category, COUNT slices per
// writer thread), answers flushes, and exits once its data source is stopped. With
// --continuous it instead writes from its threads into every running instance until each stops,
// for as many sessions as come, until SIGINT or SIGTERM (ContinuousWriters).

import ArgumentParser
import CPerfettoIPCLinux
import IPCProtocol
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

struct ProducerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "producer",
        abstract: "A producer that writes test packets and track-event slices when a session starts it.")

    @Option(name: .customShort("n"), help: "Packets (and slices per thread) to write.")
    var count = 5

    @Option(name: .customShort("d"), help: "The test data source's name.")
    var dataSource = "tracebox.test"

    @Option(name: .customShort("p"), help: "Bytes of payload (\"x\" repeated) after each packet's text.")
    var payload = 0

    @Option(name: .customShort("t"), help: "Seconds to wait for a session that starts the data source.")
    var timeout = 10

    @Flag(help: "Stay connected after the data source stops, for the next session.")
    var stay = false

    @Option(help: "Threads writing slices (each its own writer and track).")
    var threads = 1

    @Option(help: "IPC backend: unix (epoll) or libuv.")
    var backend: BackendChoice = .unix

    @Flag(help: ArgumentHelp(
        "Write test packets from every --threads thread into every running instance of the data source until it stops, session after session, until SIGINT/SIGTERM (-n is ignored).",
        discussion: "Each thread's packets in an instance are one sequence with seq_value 0, 1, 2, ...; when the instance stops, a last packet has is_last set and counter = how many came before it. On exit it prints how many packets it wrote into each tracing session, and in all."))
    var continuous = false

    @Option(help: "With --continuous: microseconds each thread waits between rounds of packets.")
    var intervalUs = 1000

    @Option(help: "With --continuous: milliseconds a writer waits for a free shared-memory chunk before dropping the packet (its stall policy).")
    var stallMs = 1000

    /// For tests of producers killed mid-write: with --continuous, each thread writes this
    /// many packets into each instance, then the process stops itself (SIGSTOP), its last
    /// chunks complete or not but never committed.
    @Option(help: .hidden)
    var stopAfter: Int?

    @Option(help: .hidden)
    var name = "tracebox.producer"

    /// For tests of shared-memory scraping: write the packets, commit nothing, and stop the
    /// process (SIGSTOP) so it can be killed with finished chunks never committed.
    @Flag(help: .hidden)
    var stopBeforeCommit = false

    func run() throws {
        let runner = try CommandLoop(backend: backend)
        let service = SystemTracingService(
            producerBackend: .transport(runner.transport, address: TracingSocketNames.producer),
            consumerBackend: .transport(runner.transport, address: TracingSocketNames.consumer))
        let producer = TestProducer(
            settings: .init(
                dataSource: dataSource, count: count, payload: payload, threads: max(threads, 1),
                stopBeforeCommit: stopBeforeCommit))
        producer.endpoint = service.connectProducer(producer, options: ProducerConnectionOptions(name: name))
        producer.endpoint.registerDataSource(producer.testDescriptor)
        producer.endpoint.registerDataSource(producer.trackEventDescriptor)
        var quit = false
        runner.onTerminationSignal { quit = true }

        if continuous {
            let writers = ContinuousWriters(
                settings: .init(
                    threads: max(threads, 1), payload: payload, interval: .microseconds(max(intervalUs, 0)),
                    stopAfter: stopAfter),
                loop: runner.loop)
            producer.continuous = writers
            producer.stallTimeout = .milliseconds(max(stallMs, 0))
            writers.startThreads()
            runner.run(until: { quit })
            // The threads write each instance's last packet; a service that frees no chunk makes
            // that wait for the stall timeout per instance. A second signal ends it at once.
            runner.endOnNextTerminationSignal()
            writers.shutDown()
            // What the threads committed last goes out before the connection closes.
            var synced = false
            producer.endpoint.sync { synced = true }
            runner.run(until: { synced }, timeout: .seconds(2))
            let totals = writers.totals
            for (session, written) in totals.writtenPerSession.sorted(by: { $0.key < $1.key }) {
                say("tracebox producer: session \(session): \(written) packets")
            }
            say("tracebox producer: wrote \(totals.written) packets into \(totals.instances) instances, \(totals.dropped) dropped by writers; "
                + "\(totals.abandoned) in instances lost with the service; longest write \(totals.longestWrite / 1_000_000) ms")
            producer.continuous = nil  // our own disconnection is no lost service
            producer.endpoint.disconnect()
            return
        }

        let deadline = Duration.seconds(timeout)
        guard runner.run(until: { producer.startedTestSource || quit }, timeout: deadline), !quit else {
            if !quit {
                printError("tracebox producer: no session started \(dataSource) within \(timeout)s"
                    + (producer.everConnected ? "" : " (\(Self.whyNotConnected(producer.endpoint)))"))
            }
            throw ExitCode.failure
        }
        repeat {
            runner.run(until: { producer.stoppedTestSource || quit })
            guard stay, !quit else { break }
            producer.stoppedTestSource = false
            runner.run(until: { producer.startedTestSource || quit })
        } while !quit
        producer.endpoint.disconnect()
    }
}

extension ProducerCommand {
    /// Why a producer never got connected, for people: nothing listening, or what the service
    /// did (refused ProducerPort or InitializeConnection, sent what breaks the protocol).
    static func whyNotConnected(_ endpoint: any ProducerEndpoint) -> String {
        let address = TracingSocketNames.producer
        guard let error = (endpoint as? RemoteProducerEndpoint)?.connectionError else {
            return "the tracing service at \(address) did not accept this producer"
        }
        if error.meansNothingListens {
            return "no tracing service at \(address)"
        }
        return "the tracing service at \(address): \(error.message)"
    }
}

/// The producer behind `tracebox producer` (and the demo's producer process).
final class TestProducer: Producer {
    /// Instances of the test data source written at once (Perfetto's SDK allows 8 per data
    /// source); a service that starts more gets none written, and its stop is answered at once.
    static let maxInstances = 8

    struct Settings {
        var dataSource: String
        var count: Int
        var payload: Int
        var threads: Int
        var stopBeforeCommit = false
    }

    static let category = "tracebox"

    let settings: Settings
    var endpoint: (any ProducerEndpoint)!
    private(set) var everConnected = false
    private(set) var startedTestSource = false
    var stoppedTestSource = false
    private var writers: [DataSourceInstanceID: [TraceWriter]] = [:]
    private var testInstance: DataSourceInstanceID?
    /// With --continuous: the threads that write into every instance of the test data source.
    var continuous: ContinuousWriters?
    var stallTimeout: Duration = .seconds(1)

    init(settings: Settings) {
        self.settings = settings
    }

    var testDescriptor: DataSourceDescriptor {
        var descriptor = DataSourceDescriptor()
        descriptor.name = settings.dataSource
        descriptor.willNotifyOnStop = true
        return descriptor
    }

    var trackEventDescriptor: DataSourceDescriptor {
        var descriptor = DataSourceDescriptor()
        descriptor.name = "track_event"
        descriptor.willNotifyOnStop = true
        var category = Perfetto_Protos_TrackEventCategory()
        category.name = Self.category
        category.description_p = "tracebox producer slices"
        var events = Perfetto_Protos_TrackEventDescriptor()
        events.availableCategories = [category]
        descriptor.trackEventDescriptor = events
        return descriptor
    }

    func onConnect() { everConnected = true }

    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        let buffer = BufferID(truncatingIfNeeded: config.targetBuffer)
        if config.name == settings.dataSource, let continuous {
            guard continuous.liveInstances < Self.maxInstances else {
                say("tracebox producer: not writing into instance \(id): \(Self.maxInstances) instances are running (the most, as in Perfetto's SDK)")
                return
            }
            var threadWriters: [TraceWriter] = []
            for _ in 0..<settings.threads {
                guard let writer = endpoint.createTraceWriter(targetBuffer: buffer, policy: .stall(timeout: stallTimeout)) else { return }
                threadWriters.append(writer)
            }
            continuous.start(id, session: config.tracingSessionID, writers: threadWriters)
            say("tracebox producer: writing into instance \(id) from \(settings.threads) threads")
        } else if config.name == settings.dataSource {
            testInstance = id
            guard let writer = endpoint.createTraceWriter(targetBuffer: buffer, policy: .stall()) else { return }
            writers[id] = [writer]
            if settings.stopBeforeCommit {
                // After the writer's registration (posted before this) has gone out.
                let work = UncheckedSendableBox((self, writer))
                endpoint.eventLoop.execute {
                    work.value.0.writeTestPackets(work.value.1)
                    raise(SIGSTOP)
                }
                return
            }
            writeTestPackets(writer)
            let count = settings.count
            let name = config.name
            // Said once the service has the packets (the commit is acknowledged).
            writer.flush { say("tracebox producer: \(count) packets written to \(name) (instance \(id))") }
            startedTestSource = true
        } else if config.name == "track_event", Self.enables(config.trackEventConfig) {
            var threadWriters: [TraceWriter] = []
            for _ in 0..<settings.threads {
                // Drop rather than stall: this (the loop's) thread waits for the writer threads,
                // so nothing would commit the chunks a stalled writer waits for.
                guard let writer = endpoint.createTraceWriter(targetBuffer: buffer, policy: .drop) else { return }
                threadWriters.append(writer)
            }
            writers[id] = threadWriters
            writeSlices(threadWriters)
        }
    }

    func stopDataSource(_ id: DataSourceInstanceID) {
        if let continuous, writers[id] == nil {
            continuous.stop(id) { [weak self] in self?.endpoint.notifyDataSourceStopped(id) }
            return
        }
        for writer in writers.removeValue(forKey: id) ?? [] { writer.flush() }
        endpoint.notifyDataSourceStopped(id)
        if id == testInstance { stoppedTestSource = true }
    }

    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        for instance in dataSources { for writer in writers[instance] ?? [] { writer.flush() } }
        guard let continuous else { return endpoint.notifyFlushComplete(id) }
        continuous.flush { [weak self] in self?.endpoint.notifyFlushComplete(id) }
    }

    func onDisconnect() {
        writers = [:]
        guard let continuous else { return }
        let reason = (endpoint as? RemoteProducerEndpoint)?.connectionError.map { ": \($0.message)" } ?? ""
        say("tracebox producer: lost the service\(reason)")
        continuous.stopAll(writeLastPackets: false) {
            let totals = continuous.totals
            say("tracebox producer: writers closed after losing the service (\(totals.abandoned) packets in lost instances; longest write \(totals.longestWrite / 1_000_000) ms)")
        }
    }

    /// The category is on when a pattern of enabled_categories matches it and no exact entry of
    /// disabled_categories names it (the common cases of Perfetto's rules).
    static func enables(_ config: Perfetto_Protos_TrackEventConfig) -> Bool {
        let enabled = config.enabledCategories.contains { $0 == "*" || $0 == category || ($0.hasSuffix("*") && category.hasPrefix($0.dropLast())) }
        return enabled && !config.disabledCategories.contains(category)
    }

    private func writeTestPackets(_ writer: TraceWriter) {
        let padding = String(repeating: "x", count: settings.payload)
        for index in 0..<settings.count {
            var packet = TracePacket()
            packet.timestamp = bootTimeNanoseconds()
            packet.forTesting.str = "packet \(index) " + padding
            packet.forTesting.seqValue = UInt32(truncatingIfNeeded: index)
            packet.forTesting.counter = UInt64(index)
            try? writer.writePacket(packet)
        }
    }

    /// Each writer on a thread of its own: a thread track, then `count` slices on it.
    private func writeSlices(_ threadWriters: [TraceWriter]) {
        let count = settings.count
        var threads: [pthread_t] = []
        for (index, writer) in threadWriters.enumerated() {
            let job = SliceJob(writer: writer, count: count, threadName: "tracebox-\(index)")
            if let thread = spawnThread(job.run) { threads.append(thread) }
        }
        for thread in threads { pthread_join(thread, nil) }
    }
}

/// What one writer thread writes: its track, then slices `event <i>`.
private final class SliceJob: @unchecked Sendable {
    // Unchecked: used by one thread at a time (the one it is handed to).
    let writer: TraceWriter
    let count: Int
    let threadName: String

    init(writer: TraceWriter, count: Int, threadName: String) {
        self.writer = writer
        self.count = count
        self.threadName = threadName
    }

    func run() {
        let tid = Int64(CPerfettoIPC_gettid())
        let trackUUID = UInt64(bitPattern: Int64(getpid()) << 32 | tid)
        var descriptor = TracePacket()
        descriptor.timestamp = bootTimeNanoseconds()
        descriptor.sequenceFlags = 1  // SEQ_INCREMENTAL_STATE_CLEARED
        descriptor.trackDescriptor.uuid = trackUUID
        descriptor.trackDescriptor.thread.pid = getpid()
        descriptor.trackDescriptor.thread.tid = tid
        descriptor.trackDescriptor.thread.threadName = threadName
        try? writer.writePacket(descriptor)
        for index in 0..<count {
            for type in [Perfetto_Protos_TrackEvent.TypeEnum.sliceBegin, .sliceEnd] {
                var packet = TracePacket()
                packet.timestamp = bootTimeNanoseconds()
                packet.sequenceFlags = 2  // SEQ_NEEDS_INCREMENTAL_STATE
                packet.trackEvent.type = type
                packet.trackEvent.trackUuid = trackUUID
                if type == .sliceBegin {
                    packet.trackEvent.name = "event \(index)"
                    packet.trackEvent.categories = [TestProducer.category]
                }
                try? writer.writePacket(packet)
            }
        }
        writer.flush()
    }
}

/// Starts a thread running `body`.
func spawnThread(_ body: @escaping @Sendable () -> Void) -> pthread_t? {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let result = pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    guard result == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        return nil
    }
    return thread
}
