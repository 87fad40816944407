// The service's record of one tracing session: its config, buffers, data source instances,
// pending flushes and timers. Logic lives in TracingServiceCore+Sessions.swift.

import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

/// One data source instance of a session, on one producer.
struct DataSourceInstance {
    enum State { case configured, starting, started, stopping, stopped }

    let id: DataSourceInstanceID
    let producerID: ProducerID
    let name: String
    var config: DataSourceConfig
    var state = State.configured
    let willNotifyOnStart: Bool
    let willNotifyOnStop: Bool
    let noFlush: Bool
    let handlesIncrementalStateClear: Bool
}

final class TracingSession {
    enum State: String {
        case configured = "CONFIGURED"
        case started = "STARTED"
        case disablingWaitingStopAcks = "DISABLING_WAITING_STOP_ACKS"
        case disabled = "DISABLED"
        /// A read-only copy of another session's buffers (CloneSession).
        case clonedReadOnly = "CLONED_READ_ONLY"
    }

    struct PendingFlush {
        var waitingFor: Set<ProducerID>
        var callback: (Bool) -> Void
        var timeout: (any ScheduledTask)?
        /// A producer it waited for disconnected instead of answering: what it had not
        /// committed may be missing, so the flush fails (at once, not at its timeout as in
        /// traced) once the others have answered.
        var producerLeft = false
    }

    let id: TracingSessionID
    /// The consumer connection driving the session; 0 while it is detached.
    var consumerID: UInt64
    let consumerUID: UInt32
    /// Set while detached: the key a consumer of the same uid attaches with.
    var detachKey: String?
    var config: TraceConfig
    var state = State.configured
    let bufferIDs: [BufferID]
    var instances: [DataSourceInstance] = []
    /// Producers that had an instance in the session, those of data sources unregistered since
    /// included: what a flush or the end of the session scrapes.
    var producersWithInstances: Set<ProducerID> = []
    var pendingFlushes: [FlushRequestID: PendingFlush] = [:]
    /// The producer name patterns of this session's config, each compiled once (nil: it does
    /// not compile). A pattern is checked against every producer that registers a data source
    /// the session wants and on every trigger; compiling it each time multiplied a large
    /// config's cost by the producers. Emptied past 1,024 patterns (configs changed again and
    /// again cannot grow it without bound).
    private var namePatterns: [String: ProducerNamePattern?] = [:]
    static let maxCachedNamePatterns = 1024
    /// Matching steps spent per producer, and the answers already known. A config may hold
    /// thousands of patterns, each up to ``ProducerNamePattern/maxMatchSteps`` against a long
    /// name (~11 ms each here): matched one by one, a consumer and a producer together could
    /// hold the service's loop for minutes. Each producer gets ``nameMatchStepsPerProducer``
    /// over the session's life; an answer once known costs nothing again (a producer
    /// registering data sources or activating triggers over and over spends nothing more).
    /// Both emptied past 4,096 entries (a fresh budget is no more than a new connection gets).
    private var nameMatchStepsSpent: [ProducerID: Int] = [:]
    private var nameMatches: [NameMatchKey: Bool] = [:]
    /// Name patterns answered false because their producer had spent its steps.
    private(set) var nameMatchesRefused = 0

    /// A producer's answers are forgotten when it goes (its id may be given again).
    private struct NameMatchKey: Hashable {
        let producer: ProducerID
        let pattern: String
    }

    /// The matching work one producer may cost a session: ~8 ms of the loop at worst here,
    /// where a connection that registers a data source costs the service a fraction of a
    /// millisecond anyway. An honest pattern against an honest name takes a few hundred steps.
    static let nameMatchStepsPerProducer = 1_000_000
    /// What looking a pattern up costs besides its length, in steps.
    static let nameMatchLookupSteps = 100
    /// Trusted packet sequence ids, by producer connection and writer. A producer's are
    /// forgotten once the session's buffers keep nothing of it (it left, and what it wrote was
    /// read or overwritten): one reconnecting again and again with thousands of writers grew the
    /// table for as long as the session lasted.
    private var sequenceIDs: [ProducerSerial: [UInt16: UInt32]] = [:]
    private var nextSequenceID: UInt32 = TracingSession.firstProducerSequenceID
    /// The config's trace filter, compiled; packets are read out through it.
    var traceFilter: TraceFilter?
    /// What went through the filter, as the trace stats report it: packets and bytes in, bytes
    /// out, packets that did not parse (each read out empty).
    var filterStats = TraceStats.FilterStats()
    /// How packets are compressed as they are read out (the config's `compression`), if at all.
    let compression: TraceCompression?
    var configEmitted = false
    /// Machines whose relay's system info / clock sync is in this session's trace already.
    var machinesWithSystemInfo: Set<UInt32> = []
    var machinesWithClockSync: Set<UInt32> = []
    var outputFile: TraceFileOutput?
    var bytesWrittenIntoFile: UInt64 = 0
    /// One-shot timers (duration, stop triggers).
    var timers: [any ScheduledTask] = []
    enum RepeatingTimer { case fileWrite, periodicFlush, incrementalStateClear, snapshot }
    /// Whether the next read carries a clock snapshot and the trace stats: the first read, the
    /// first after each snapshot interval (10 s unless `builtin_data_sources` says), and every
    /// read once the session is no longer running, as in traced. A file written every 100 ms
    /// took two such packets per write.
    var periodicPacketsDue = true
    var repeatingTimers: [RepeatingTimer: any ScheduledTask] = [:]
    var stopTimeout: (any ScheduledTask)?
    var allDataSourcesStartedNotified = false
    /// Triggers taken (at most `maxReceivedTriggersPerSession`), and how many of them the
    /// trace has had.
    var receivedTriggers: [ReceivedTrigger] = []
    var triggersEmitted = 0
    /// CLONE_SNAPSHOT notifications waiting for their trigger's delay.
    var pendingCloneNotifications = 0
    /// How long the session runs once started (0: until stopped): `duration_ms`, or a STOP or
    /// CLONE session's trigger_timeout_ms, or a START trigger's stop_delay_ms.
    var durationMs: UInt32 = 0
    var startRealtimeNanoseconds: Int64 = 0
    /// Packets of this session dropped because they set reserved fields or did not parse.
    var invalidPackets: UInt64 = 0
    /// Why writing into the output file failed, reported with tracing disabled.
    var fileError: String?
    /// Service events (tracing started, all data sources started, flushed, disabled) with their
    /// boot-time timestamps, written into the trace at the next read, as Perfetto does.
    private var serviceEvents: [(timestamp: UInt64, event: Perfetto_Protos_TracingServiceEvent)] = []

    /// Takes the config's patterns compiled when it was checked, as far as the cache holds.
    func adoptNamePatterns(_ compiled: [String: ProducerNamePattern]) {
        for (text, pattern) in compiled.prefix(Self.maxCachedNamePatterns) { namePatterns[text] = pattern }
    }

    /// `text` compiled as a producer name pattern, from the session's cache.
    func namePattern(_ text: String) -> ProducerNamePattern? {
        if let compiled = namePatterns[text] { return compiled }
        if namePatterns.count >= Self.maxCachedNamePatterns { namePatterns.removeAll() }
        let compiled = ProducerNamePattern(text)
        namePatterns[text] = compiled
        return compiled
    }

    /// Whether `producer`'s name matches the pattern `text` as a whole. A pattern that does not
    /// compile matches nothing; nor does any pattern not yet answered once the producer has
    /// spent its matching steps (``nameMatchStepsPerProducer``): past that, every new answer
    /// is false at once.
    func producerName(of producer: LocalProducerEndpoint, matches text: String) -> Bool {
        let key = NameMatchKey(producer: producer.id, pattern: text)
        if let known = nameMatches[key] { return known }
        if nameMatchStepsSpent.count >= 4096 { nameMatchStepsSpent.removeAll() }
        let spent = nameMatchStepsSpent[producer.id, default: 0]
        guard spent < Self.nameMatchStepsPerProducer else {
            nameMatchesRefused += 1
            return false
        }
        // Looking a pattern up (or compiling it) is charged too, so that thousands of tiny
        // patterns cost a producer its steps as well.
        let budget = Self.nameMatchStepsPerProducer - spent
        var stepsLeft = budget - (Self.nameMatchLookupSteps + text.utf8.count)
        var matched: Bool? = false
        if stepsLeft < 0 {
            matched = nil
        } else if let pattern = namePattern(text) {
            matched = pattern.wholeMatch(producer.name, stepsLeft: &stepsLeft)
        }
        guard let matched else {
            nameMatchStepsSpent[producer.id] = Self.nameMatchStepsPerProducer
            nameMatchesRefused += 1
            return false
        }
        nameMatchStepsSpent[producer.id] = spent + budget - stepsLeft
        if nameMatches.count >= 4096 { nameMatches.removeAll() }
        nameMatches[key] = matched
        return matched
    }

    /// `producer` is gone: its matching answers and steps are forgotten.
    func forgetNameMatches(of producer: ProducerID) {
        nameMatchStepsSpent[producer] = nil
        if !nameMatches.isEmpty { nameMatches = nameMatches.filter { $0.key.producer != producer } }
    }

    /// The sequence id the service stamps on its own packets.
    static let servicePacketSequenceID: UInt32 = 1
    static let firstProducerSequenceID: UInt32 = 2

    /// The config's trigger mode (unspecified without triggers).
    var triggerMode: TraceConfig.TriggerConfig.TriggerMode {
        config.hasTriggerConfig ? config.triggerConfig.triggerMode : .unspecified
    }

    /// Whether a read must return nothing at all: a session with triggers that took none yet
    /// (its data is only for a trigger to release), or one read only by cloning it. Clones are
    /// read whatever their source took.
    var isWaitingForTrigger: Bool {
        guard state != .clonedReadOnly else { return false }
        if triggerMode == .cloneSnapshot { return true }
        return !config.triggerConfig.triggers.isEmpty && receivedTriggers.isEmpty
    }

    init(id: TracingSessionID, consumerID: UInt64, consumerUID: UInt32, config: TraceConfig, bufferIDs: [BufferID]) {
        self.id = id
        self.consumerID = consumerID
        self.consumerUID = consumerUID
        self.config = config
        self.bufferIDs = bufferIDs
        compression = TraceCompression(config)
    }

    /// The trusted packet sequence id of a writer: assigned on first sight, stable afterwards.
    func sequenceID(for key: SequenceKey) -> UInt32 {
        if let id = sequenceIDs[key.producer]?[key.writerID] { return id }
        let id = nextSequenceID
        nextSequenceID &+= 1
        sequenceIDs[key.producer, default: [:]][key.writerID] = id
        return id
    }

    /// Writer sequences that have an id, for tests.
    var sequenceIDCount: Int { sequenceIDs.values.reduce(0) { $0 + $1.count } }

    /// Forgets the ids of producers of whom no buffer keeps anything (`stillHeld`): nothing
    /// more can be read under them. Ids are never given again, so none can be confused.
    func forgetGoneProducers(stillHeld: (ProducerSerial) -> Bool) {
        for serial in sequenceIDs.keys where !stillHeld(serial) {
            sequenceIDs[serial] = nil
        }
    }

    var isWritingIntoFile: Bool { config.writeIntoFile }

    /// Whether a consumer of `uid` may see and copy this session: its own uid, or root
    /// (Perfetto's `IsCloneAllowed`).
    func isVisible(to uid: UInt32) -> Bool { uid == 0 || uid == consumerUID }

    func recordServiceEvent(_ fill: (inout Perfetto_Protos_TracingServiceEvent) -> Void) {
        var event = Perfetto_Protos_TracingServiceEvent()
        fill(&event)
        serviceEvents.append((ServiceClock.nanoseconds(CLOCK_BOOTTIME), event))
    }

    func takeServiceEvents(uid: UInt32) -> [TracePacketData] {
        defer { serviceEvents = [] }
        return serviceEvents.map { ServicePackets.serviceEvent($0.event, timestamp: $0.timestamp, uid: uid) }
    }

    func cancelTimers() {
        for timer in timers { timer.cancel() }
        timers = []
        for timer in repeatingTimers.values { timer.cancel() }
        repeatingTimers = [:]
        stopTimeout?.cancel()
        stopTimeout = nil
    }

    var flushTimeoutMs: UInt32 { config.flushTimeoutMs == 0 ? 5000 : config.flushTimeoutMs }
    var stopTimeoutMs: UInt32 { config.dataSourceStopTimeoutMs == 0 ? 5000 : config.dataSourceStopTimeoutMs }
}
