// The tracing soak: `tracebox traced`, producer processes writing from several threads without
// pause (`tracebox producer --continuous`), and four consumers in this process that, round
// after round, start a session, read it while it runs, clone it (CloneSession) and read the
// copy, then stop it and read the rest. Afterwards:
//
// * every packet is accounted for: the producers say on exit how many packets they wrote into
//   each session; each session's reads hold them all, or the session's trace stats count
//   losses (chunks overwritten or discarded, writers' drop markers). In the reads, every
//   sequence counts up from 0 with each gap flagged (previous_packet_dropped) on the packet
//   after it, and ends with the writer's last packet unless the stats count losses;
// * the service's open descriptors and resident memory do not grow: both are sampled when no
//   session exists (after a round), once a quarter of the way in and once at the end; the late
//   descriptor count may not exceed the early one, and the late RSS may exceed the early one
//   by at most a quarter or 8 MiB, whichever is more.
//
// CI runs a short form (4 producers x 2 threads, 15 s). `scripts/soak-tracing.sh [seconds]`
// runs the full one (PERFETTO_TRACING_SOAK=full: 16 producers x 4 threads, 180 s by default)
// and prints its figures.

import Foundation
import Glibc
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport
import TracingAPI

@Suite("tracing soak", .serialized)
final class TracingSoakTests: TraceboxFixture {
    let directory = TemporaryDirectory()

    deinit { directory.remove() }

    struct Scale {
        var seconds: Double
        var producers: Int
        var threads: Int
        var intervalMicroseconds: Int
        var consumers = 4

        static var current: Scale {
            let environment = ProcessInfo.processInfo.environment
            let full = environment["PERFETTO_TRACING_SOAK"] == "full"
            var scale = full
                ? Scale(seconds: 180, producers: 16, threads: 4, intervalMicroseconds: 2000)
                : Scale(seconds: 15, producers: 4, threads: 2, intervalMicroseconds: 1000)
            if let seconds = environment["PERFETTO_TRACING_SOAK_SECONDS"].flatMap(Double.init) { scale.seconds = seconds }
            return scale
        }
    }

    static var verbose: Bool { ProcessInfo.processInfo.environment["PERFETTO_TRACING_SOAK"] != nil }
    /// Built with AddressSanitizer (`scripts/sanitize.sh address`), as the service spawned from
    /// the same build is: it keeps freed memory in quarantine (256 MB by default), so the
    /// service's resident memory grows whatever the service does.
    static let underAddressSanitizer = dlsym(nil, "__asan_init") != nil

    @Test func producersWriteWhileConsumersStartReadCloneAndStopSessions() throws {
        let scale = Scale.current
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let producers = try (0..<scale.producers).map {
            try start(
                ["producer", "--continuous", "--threads", "\(scale.threads)", "-p", "32",
                 "--interval-us", "\(scale.intervalMicroseconds)", "--name", "soak-\($0)"],
                name: "producer-\($0)")
        }
        let registered = poll(seconds: 60) {
            guard let query = try? self.start(["perfetto", "--query"], name: "query"), query.wait() == 0 else { return false }
            return registeredTestSources(query.standardOutput) == scale.producers
        }
        try #require(registered, "the producers never all registered")

        let loop = try EpollEventLoop()
        let driver = SoakDriver(
            loop: loop, transport: UnixSocketTransport(loop: loop), address: consumerSocket,
            consumers: scale.consumers, sequencesPerSession: scale.producers * scale.threads)
        let started = Date()
        var early: ProcessSample?
        var samples: [ProcessSample] = []
        var rounds = 0
        while Date().timeIntervalSince(started) < scale.seconds {
            driver.startRound()
            let finished = loop.run(until: { driver.roundFinished }, timeout: .seconds(120))
            rounds += 1
            guard finished else {
                Issue.record("round \(rounds) did not finish: \(driver.stuck)")
                break
            }
            guard let sample = ProcessSample.settled(service.pid) else { break }
            samples.append(sample)
            if early == nil && Date().timeIntervalSince(started) >= scale.seconds / 4 { early = sample }
        }
        let elapsed = Date().timeIntervalSince(started)
        let late = samples.last

        // The producers end their writers and say what they wrote.
        for producer in producers { producer.signal(SIGTERM) }
        var written: UInt64 = 0
        var writtenPerSession: [UInt64: UInt64] = [:]
        var instances = 0
        var droppedByWriters: UInt64 = 0
        var abandoned: UInt64 = 0
        for producer in producers {
            #expect(producer.wait(seconds: 60) == 0, Comment(rawValue: producer.standardError))
            guard let summary = ProducerSummary(producer.standardOutput) else {
                Issue.record("no summary from \(producer.name): \(producer.standardOutput)")
                continue
            }
            written += summary.written
            writtenPerSession.merge(summary.perSession, uniquingKeysWith: +)
            instances += summary.instances
            droppedByWriters += summary.dropped
            abandoned += summary.abandoned
        }

        driver.account(writtenPerSession)
        let totals = driver.totals
        let report = """
            tracing soak: \(scale.producers) producers x \(scale.threads) threads (a round of packets every \(scale.intervalMicroseconds) us), \
            \(scale.consumers) consumers, \(format(elapsed)) s, \(rounds) rounds
              sessions: \(totals.sessions) recorded, \(totals.clones) cloned and read
              packets written: \(written) (\(droppedByWriters) of them dropped by writers), in \(instances) data source instances
              delivered: \(totals.delivered), lost: \(totals.lost) (in \(totals.sessionsWithLosses) sessions, each counting losses in its trace stats: \
            \(totals.chunksOverwritten) chunks overwritten, \(totals.chunksDiscarded) discarded, \(totals.writerPacketLoss) writer drop markers; \
            the service discarded \(totals.serviceChunksDiscarded) chunks outside buffers)
              clones: \(totals.clonePackets) packets read
              service fds: \(early.map { "\($0.fds)" } ?? "?") at \(early.map { format($0.seconds(since: started)) } ?? "?") s, \
            \(late.map { "\($0.fds)" } ?? "?") at the end; RSS: \(early.map { "\($0.rssKb) KiB" } ?? "?"), \(late.map { "\($0.rssKb) KiB" } ?? "?")
              RSS after each round (KiB): \(samples.map { "\($0.rssKb)" }.joined(separator: " "))
            """
        if Self.verbose { print(report) }
        let context = Comment(rawValue: report)

        #expect(driver.problems.isEmpty, Comment(rawValue: driver.problems.prefix(20).joined(separator: "\n") + "\n" + report))
        #expect(rounds >= 2, context)
        #expect(totals.sessions == rounds * scale.consumers, context)
        #expect(instances == totals.sessions * scale.producers, "every session had an instance of every producer, each ended: \(report)")
        #expect(totals.delivered + totals.lost == written, context)
        #expect(abandoned == 0, context)
        if let early, let late {
            #expect(late.fds <= early.fds, context)
            if !Self.underAddressSanitizer {
                #expect(late.rssKb <= early.rssKb + max(early.rssKb / 4, 8 * 1024), context)
            }
        } else {
            Issue.record("no samples of the service: \(report)")
        }
    }

    private func format(_ value: Double) -> String { String(format: "%.1f", value) }
}

/// The service's open descriptors and resident memory.
struct ProcessSample {
    var fds: Int
    var rssKb: Int
    var taken: Date

    func seconds(since start: Date) -> Double { taken.timeIntervalSince(start) }

    static func take(_ pid: pid_t) -> ProcessSample? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        return ProcessSample(fds: entries.count, rssKb: kb, taken: Date())
    }

    /// A sample once the descriptor count has held still for a while (the service closes the
    /// connections of departed consumers on its own time), or the last one after 5 s.
    static func settled(_ pid: pid_t) -> ProcessSample? {
        var last = take(pid)
        var steady = 0
        _ = poll(seconds: 5) {
            let now = take(pid)
            steady = now?.fds == last?.fds ? steady + 1 : 0
            last = now
            return steady >= 25
        }
        return last
    }
}

/// `tracebox producer --continuous`'s last line.
struct ProducerSummary {
    var written: UInt64
    var instances: Int
    var dropped: UInt64
    var abandoned: UInt64
    var perSession: [UInt64: UInt64] = [:]

    init?(_ output: String) {
        for line in output.split(separator: "\n") where line.hasPrefix("tracebox producer: session ") {
            let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { UInt64($0) }
            if numbers.count == 2 { perSession[numbers[0], default: 0] += numbers[1] }
        }
        guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix("tracebox producer: wrote ") }) else { return nil }
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { UInt64($0) }
        guard numbers.count >= 4 else { return nil }
        written = numbers[0]
        instances = Int(numbers[1])
        dropped = numbers[2]
        abandoned = numbers[3]
    }
}

/// Four (or so) consumers, each running one session cycle per round, on the test's loop.
final class SoakDriver {
    struct Totals {
        var sessions = 0
        var clones = 0
        var delivered: UInt64 = 0
        var lost: UInt64 = 0
        var sessionsWithLosses = 0
        var chunksOverwritten: UInt64 = 0
        var chunksDiscarded: UInt64 = 0
        var writerPacketLoss: UInt64 = 0
        /// Chunks the service discarded before any buffer (its own counter, not a session's).
        var serviceChunksDiscarded: UInt64 = 0
        var clonePackets = 0
    }

    let loop: EpollEventLoop
    let transport: any IPCTransport
    let address: String
    let consumers: Int
    let sequencesPerSession: Int
    private(set) var totals = Totals()
    private(set) var problems: [String] = []
    static let packetsPerChunkAtMost: UInt64 = 4096 / 40
    /// What each session's reads held, by the service's session id.
    private var recorded: [UInt64: (name: String, account: TraceAccount)] = [:]
    private var cycles: [SoakCycle] = []
    private var round = 0
    private var random = SplitMix64(seed: 0x50a4_2026)
    /// The service allows 5 sessions per uid: 4 recording, and 1 clone at a time.
    private var cloneBusy = false
    private var cloneQueue: [() -> Void] = []

    init(loop: EpollEventLoop, transport: any IPCTransport, address: String, consumers: Int, sequencesPerSession: Int) {
        self.loop = loop
        self.transport = transport
        self.address = address
        self.consumers = consumers
        self.sequencesPerSession = sequencesPerSession
    }

    var roundFinished: Bool { cycles.allSatisfy(\.finished) }
    var stuck: String { cycles.filter { !$0.finished }.map { "consumer \($0.index) at \($0.step)" }.joined(separator: ", ") }

    /// Consumer 0 records into a small ring buffer (it overwrites), 3 into a small DISCARD one.
    private func config(for index: Int, name: String) -> TraceConfig {
        switch index % 4 {
        case 0: .testSource(bufferKb: 256, name: name)
        case 1: .testSource(bufferKb: 1024, name: name)
        case 2: .testSource(bufferKb: 4096, name: name)
        default: .testSource(bufferKb: 512, discard: true, name: name)
        }
    }

    func startRound() {
        round += 1
        cycles = (0..<consumers).map { index in
            let name = "soak-\(index)-\(round)"
            return SoakCycle(
                index: index, name: name, config: config(for: index, name: name), driver: self,
                firstWait: .milliseconds(Int(random.next() % 600) + 200), secondWait: .milliseconds(Int(random.next() % 600) + 200))
        }
        for cycle in cycles { cycle.start() }
    }

    func withCloneSlot(_ body: @escaping () -> Void) {
        if cloneBusy { cloneQueue.append(body) } else {
            cloneBusy = true
            body()
        }
    }

    func releaseCloneSlot() {
        if cloneQueue.isEmpty {
            cloneBusy = false
        } else {
            cloneQueue.removeFirst()()
        }
    }

    func problem(_ text: String) { problems.append(text) }

    func sessionIDMissing(_ name: String) { problems.append("\(name): not in the service's state") }

    func cloneRead(_ account: TraceAccount, packets: Int, name: String) {
        totals.clones += 1
        totals.clonePackets += packets
        for problem in account.problems { problems.append("\(name) (clone): \(problem)") }
    }

    func sessionRead(_ account: TraceAccount, name: String, id: UInt64?) {
        totals.sessions += 1
        for problem in account.problems { problems.append("\(name): \(problem)") }
        if let id { recorded[id] = (name, account) }
        let buffers = account.stats?.bufferStats ?? []
        totals.chunksOverwritten += buffers.reduce(0) { $0 + $1.chunksOverwritten }
        totals.chunksDiscarded += buffers.reduce(0) { $0 + $1.chunksDiscarded }
        totals.serviceChunksDiscarded = max(totals.serviceChunksDiscarded, account.stats?.chunksDiscarded ?? 0)
        totals.writerPacketLoss += buffers.reduce(0) { $0 + $1.traceWriterPacketLoss }
    }
}

extension SoakDriver {
    /// Checks each session's reads against what the producers wrote into it.
    func account(_ writtenPerSession: [UInt64: UInt64]) {
        for id in Set(writtenPerSession.keys).subtracting(recorded.keys).sorted() {
            problems.append("session \(id): \(writtenPerSession[id]!) packets written into it, never read")
        }
        for (id, session) in recorded.sorted(by: { $0.key < $1.key }) {
            let written = writtenPerSession[id] ?? 0
            let account = session.account
            let delivered = UInt64(account.delivered)
            totals.delivered += delivered
            guard written >= delivered else {
                problems.append("\(session.name): \(delivered) packets read, \(written) written")
                continue
            }
            let lost = written - delivered
            totals.lost += lost
            let ended = account.sequences.values.filter { $0.ended != nil }
            if UInt64(account.missing) > lost {
                problems.append("\(session.name): the reads miss \(account.missing) packets, more than the \(lost) lost")
            }
            if lost > 0 || ended.count != sequencesPerSession {
                totals.sessionsWithLosses += 1
                if account.countedLosses == 0 {
                    problems.append("\(session.name): \(lost) packets lost, \(ended.count) of \(sequencesPerSession) sequences ended, no loss in the trace stats")
                }
            }
            // Without writers' drops, what is lost went in whole chunks: 4 KiB each (the default
            // page layout), of records at least 40 bytes long.
            if account.writerDropMarkers == 0 && lost > account.lostChunks * Self.packetsPerChunkAtMost {
                problems.append("\(session.name): \(lost) packets lost, more than \(account.lostChunks) chunks lost can hold")
            }
        }
    }
}

/// One consumer's session: start, read while running, clone and read the copy, stop, read the
/// rest, free.
final class SoakCycle: Consumer {
    let index: Int
    let name: String
    private let config: TraceConfig
    private unowned let driver: SoakDriver
    private let firstWait: Duration
    private let secondWait: Duration
    private var endpoint: RemoteConsumerEndpoint?
    private var account = TraceAccount()
    private var readDone: (([TracePacketData]) -> Void)?
    private var received: [TracePacketData] = []
    private(set) var step = "starting"
    private(set) var finished = false
    private var stopped = false
    private var cloneDone = false
    private var timer: (any ScheduledTask)?
    /// The service's id of the session (from its state), which producers report counts by.
    private var sessionID: UInt64?

    init(index: Int, name: String, config: TraceConfig, driver: SoakDriver, firstWait: Duration, secondWait: Duration) {
        self.index = index
        self.name = name
        self.config = config
        self.driver = driver
        self.firstWait = firstWait
        self.secondWait = secondWait
    }

    func start() {
        step = "enabling"
        let endpoint = RemoteConsumerEndpoint(consumer: self, backend: .transport(driver.transport, address: driver.address))
        self.endpoint = endpoint
        endpoint.enableTracing(config, outputFile: nil)
        timer = driver.loop.scheduleTask(after: firstWait) { [weak self] in self?.findSession() }
    }

    private func findSession() {
        step = "finding the session"
        endpoint?.queryServiceState(sessionsOnly: true) { [weak self] _, state in
            guard let self else { return }
            self.sessionID = state.tracingSessions.first { $0.uniqueSessionName == self.name }?.id
            if self.sessionID == nil { self.driver.sessionIDMissing(self.name) }
            self.readWhileRunning()
        }
    }

    private func readWhileRunning() {
        step = "reading while running"
        read { [weak self] packets in
            guard let self else { return }
            self.add(packets)
            self.step = "waiting to clone"
            self.driver.withCloneSlot { [weak self] in self?.cloneAndRead() }
        }
    }

    private func cloneAndRead() {
        step = "cloning"
        let copy = CloneReader(name: name, driver: driver) { [weak self] in
            guard let self else { return }
            self.driver.releaseCloneSlot()
            self.step = "recording on"
            self.timer = self.driver.loop.scheduleTask(after: self.secondWait) { [weak self] in self?.stop() }
        }
        copy.start()
    }

    private func stop() {
        step = "stopping"
        endpoint?.disableTracing()
    }

    private func read(_ done: @escaping ([TracePacketData]) -> Void) {
        received = []
        readDone = done
        endpoint?.readBuffers()
    }

    private func add(_ packets: [TracePacketData]) {
        do {
            account.add(try packets.map { try $0.decode() })
        } catch {
            driver.problem("\(name): a packet does not decode: \(error)")
        }
    }

    // MARK: Consumer

    func onTracingDisabled(error: String) {
        guard !stopped else { return driver.problem("\(name): told twice that tracing stopped") }
        stopped = true
        if !error.isEmpty { driver.problem("\(name): tracing stopped with \"\(error)\"") }
        step = "reading the rest"
        read { [weak self] packets in
            guard let self else { return }
            self.add(packets)
            self.driver.sessionRead(self.account, name: self.name, id: self.sessionID)
            self.step = "done"
            self.finished = true
            self.endpoint?.freeBuffers()
            self.endpoint?.disconnect()
            self.endpoint = nil
        }
    }

    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        received.append(contentsOf: packets)
        guard !hasMore, let done = readDone else { return }
        readDone = nil
        done(received)
    }

    func onDisconnect() {
        guard !finished else { return }
        driver.problem("\(name): disconnected at \(step)")
    }
}

/// A second consumer that clones a session by name, reads the copy and leaves.
final class CloneReader: Consumer {
    private let name: String
    private unowned let driver: SoakDriver
    private var endpoint: RemoteConsumerEndpoint?
    private var received: [TracePacketData] = []
    private let done: () -> Void
    private var keepAlive: CloneReader?

    init(name: String, driver: SoakDriver, done: @escaping () -> Void) {
        self.name = name
        self.driver = driver
        self.done = done
    }

    func start() {
        keepAlive = self  // alive until it has read
        let endpoint = RemoteConsumerEndpoint(consumer: self, backend: .transport(driver.transport, address: driver.address))
        self.endpoint = endpoint
        var request = CloneSessionRequest()
        request.uniqueSessionName = name
        endpoint.cloneSession(request) { [weak self] response in
            guard let self else { return }
            guard response.success else {
                self.driver.problem("\(self.name): CloneSession failed: \(response.error)")
                return self.finish()
            }
            self.endpoint?.readBuffers()
        }
    }

    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        received.append(contentsOf: packets)
        guard !hasMore else { return }
        do {
            let decoded = try received.map { try $0.decode() }
            let account = TraceAccount(decoded, continuing: true)
            driver.cloneRead(account, packets: decoded.count, name: name)
        } catch {
            driver.problem("\(name) (clone): a packet does not decode: \(error)")
        }
        finish()
    }

    func onTracingDisabled(error: String) {}

    private func finish() {
        endpoint?.disconnect()
        endpoint = nil
        let done = self.done
        keepAlive = nil
        done()
    }
}

/// A small deterministic generator (the soak's waits are the same from run to run).
struct SplitMix64 {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
