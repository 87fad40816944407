// Trace triggers, as Perfetto's service runs them (tracing_service_impl.cc: EnableTracing,
// ActivateTriggers, OnStartTriggersTimeout, ReadBuffers, MaybeEmitReceivedTriggers):
// * a config with a trigger mode must give a trigger_timeout_ms in (0, 7 days], no
//   duration_ms, unique trigger names, and no write_into_file in STOP or CLONE mode;
// * START_TRACING: data sources are set up but not started until a trigger arrives; the session
//   then runs for the trigger's stop_delay_ms (0: until stopped). No trigger within the timeout
//   disables the session, with nothing to read;
// * STOP_TRACING: the session runs at once and ends trigger_timeout_ms later unless a trigger
//   came first; the first trigger ends it after its stop_delay_ms. Without a trigger the session
//   keeps its data to itself: a read returns nothing at all;
// * CLONE_SNAPSHOT: the session runs like STOP_TRACING but is read only through CloneSession; a
//   trigger tells the consumer (ObservableEvents.clone_trigger_hit, if it observes them) after
//   the trigger's stop_delay_ms;
// * every trigger a session takes is written into its trace (TracePacket.trigger) with the
//   name the producer gave and the uid the kernel gave it: triggers may come from any uid, so
//   the owner can see who stopped or cloned the recording;
// * skip_probability drops that share of a trigger's activations; max_per_24_h ignores a
//   trigger once it was taken that many times in the last 24 hours (by any session: the
//   history is the service's, per trigger name, as traced keeps it);
// * a name named twice in one request is taken twice (up to what a session keeps);
// * CloneSession moves the triggers taken to the copy: the source then reads as if it had taken
//   none, and a later copy holds only those taken since.
// Any producer may send any trigger, as in Perfetto; `producer_name_regex` filters by the
// producer's own word for its name, which is no authentication.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// A trigger a session took, kept to be written into its trace.
struct ReceivedTrigger {
    let bootTimeNanoseconds: UInt64
    let name: String
    let producerName: String
    let producerUID: UInt32
    let stopDelayMs: UInt32
}

extension TracingServiceCore {
    /// Triggers kept per session to be written into its trace; a producer repeating a trigger
    /// for ever adds nothing past them (they still act).
    static let maxReceivedTriggersPerSession = 1000
    /// clone_trigger_hit notifications that may wait for their delay at once, per session.
    static let maxPendingCloneNotifications = 16

    /// Why `config`'s triggers cannot run (Perfetto's checks and messages), or nil.
    func triggerConfigError(_ config: TraceConfig) -> String? {
        guard config.hasTriggerConfig else { return nil }
        let triggers = config.triggerConfig
        // (An unknown mode, from a newer config, reads as unspecified: proto2 keeps it aside.)
        guard triggers.triggerMode != .unspecified else { return nil }
        if triggers.triggerTimeoutMs == 0 || triggers.triggerTimeoutMs > Self.maxDurationMs(config) {
            return "Traces with triggers must provide a positive trigger_timeout_ms < 7 days "
                + "(received \(triggers.triggerTimeoutMs) ms)"
        }
        if config.durationMs != 0 {
            return "duration_ms was set, this must not be set for traces with triggers."
        }
        if triggers.triggerMode != .startTracing && config.writeIntoFile {
            return "Specifying trigger mode STOP_TRACING/CLONE_SNAPSHOT and write_into_file together is unsupported"
        }
        var names = Set<String>()
        for trigger in triggers.triggers where !names.insert(trigger.name).inserted {
            return "Duplicate trigger name: \(trigger.name)"
        }
        return nil
    }

    /// Arms a new session's triggers: a START_TRACING session is disabled if no trigger came
    /// within its timeout. (STOP and CLONE sessions end at their timeout through
    /// `TracingSession.durationMs`.)
    func armTriggers(of session: TracingSession) {
        guard session.triggerMode == .startTracing else { return }
        let timeout = Duration.milliseconds(Int64(session.config.triggerConfig.triggerTimeoutMs))
        scheduleOnce(session, after: timeout) { service, session in
            if session.state == .configured { service.disable(session) }
        }
    }

    /// Takes each name of a request in its order, a name named twice twice, as traced does
    /// (each counts towards `max_per_24_h` and is written into the trace).
    func activateTriggers(_ names: [String], producer: LocalProducerEndpoint) {
        // The sessions' triggers each name asks for, found in one pass over the sessions (a
        // request may name tens of thousands of triggers; a name no session wants costs one
        // lookup).
        var asked: [String: [(session: TracingSession, trigger: TraceConfig.TriggerConfig.Trigger)]] = [:]
        for session in sessions.values.sorted(by: { $0.id < $1.id })
        where session.triggerMode != .unspecified && session.state != .clonedReadOnly {
            for trigger in session.config.triggerConfig.triggers {
                asked[trigger.name, default: []].append((session, trigger))
            }
        }
        guard !asked.isEmpty else { return }
        // A name repeated past what a session keeps adds nothing to any trace: it is passed over
        // (traced takes every repetition; a request of a million would hold the loop).
        var repetitions: [String: Int] = [:]
        for name in names {
            guard let wanting = asked[name] else { continue }
            repetitions[name, default: 0] += 1
            guard repetitions[name]! <= Self.maxReceivedTriggersPerSession else { continue }
            let now = ServiceClock.nanoseconds(CLOCK_BOOTTIME)
            let takenRecently = triggerHistory.count(of: name, now: now)
            var taken = false
            for (session, trigger) in wanting {
                // A pattern that does not compile matches nothing.
                if !trigger.producerNameRegex.isEmpty,
                   !session.producerName(of: producer, matches: trigger.producerNameRegex) {
                    continue
                }
                if trigger.maxPer24H > 0 && takenRecently >= Int(trigger.maxPer24H) { continue }
                if trigger.skipProbability > 0, Double.random(in: 0..<1) < trigger.skipProbability { continue }
                taken = true
                take(trigger, from: producer, in: session)
            }
            if taken { triggerHistory.record(name, now: now) }
        }
    }

    private func take(_ trigger: TraceConfig.TriggerConfig.Trigger, from producer: LocalProducerEndpoint, in session: TracingSession) {
        let received = ReceivedTrigger(
            bootTimeNanoseconds: ServiceClock.nanoseconds(CLOCK_BOOTTIME), name: trigger.name, producerName: producer.name,
            producerUID: producer.uid, stopDelayMs: trigger.stopDelayMs)
        let firstTrigger = session.receivedTriggers.isEmpty
        if session.receivedTriggers.count < Self.maxReceivedTriggersPerSession { session.receivedTriggers.append(received) }
        let sessionID = session.id
        let delay = Duration.milliseconds(Int64(trigger.stopDelayMs))
        switch session.triggerMode {
        case .startTracing:
            guard session.state == .configured else { return }
            session.durationMs = trigger.stopDelayMs
            startSession(session)
        case .stopTracing:
            // One stop per session: a producer repeating the trigger adds nothing.
            guard firstTrigger, session.state == .started else { return }
            scheduleOnce(session, after: delay) { service, session in service.flushAndDisable(session) }
        case .cloneSnapshot:
            // Each activation tells the consumer after its delay, as in Perfetto, but at most
            // `maxPendingCloneNotifications` wait at once: a trigger repeated for ever with a
            // long delay held a timer per activation (1 GB in 7 s for an outside tester; traced's
            // watchdog killed it). The timer finds the session gone if it ended meanwhile.
            guard session.pendingCloneNotifications < Self.maxPendingCloneNotifications else { return }
            session.pendingCloneNotifications += 1
            _ = eventLoop.scheduleTask(after: delay) { [weak self] in
                guard let self, let session = self.sessions[sessionID] else { return }
                session.pendingCloneNotifications -= 1
                var hit = ObservableEvents.CloneTriggerHit()
                hit.tracingSessionID = Int64(session.id)
                hit.triggerName = received.name
                hit.producerName = received.producerName
                hit.producerUid = received.producerUID
                hit.bootTimeNs = received.bootTimeNanoseconds
                hit.triggerDelayMs = UInt64(received.stopDelayMs)
                var events = ObservableEvents()
                events.cloneTriggerHit = hit
                self.deliverEvents(events, type: .cloneTriggerHit, to: session)
            }
        case .unspecified:
            return
        }
    }

    /// The triggers `session` took and has not written into its trace yet, as packets.
    func triggerPackets(_ session: TracingSession) -> [TracePacketData] {
        guard session.triggersEmitted < session.receivedTriggers.count else { return [] }
        let packets = session.receivedTriggers[session.triggersEmitted...].map {
            ServicePackets.trigger($0, uid: options.serviceUID)
        }
        session.triggersEmitted = session.receivedTriggers.count
        return packets
    }
}

/// When each trigger name was taken in the last 24 hours (for `max_per_24_h`). Only names some
/// session wanted are kept, each with at most `maxPerName` times; forgetting the oldest costs
/// O(1) amortized, so a request repeating a name thousands of times stays linear.
struct TriggerHistory {
    static let window: UInt64 = 24 * 3600 * 1_000_000_000
    static let maxPerName = 10_000

    /// Times in the order taken; those before `start` are forgotten.
    private struct Times {
        var list: [UInt64] = []
        var start = 0
        var count: Int { list.count - start }

        mutating func dropOldest(_ n: Int) {
            start += n
            // Compacted once half is forgotten: each time is moved at most once per halving.
            if start > list.count / 2 {
                list.removeFirst(start)
                start = 0
            }
        }
    }

    private var times: [String: Times] = [:]

    /// How many times `name` was taken in the 24 hours before `now` (older ones are dropped).
    mutating func count(of name: String, now: UInt64) -> Int {
        guard let entry = times[name] else { return 0 }
        let expired = entry.list[entry.start...].prefix { now &- $0 >= Self.window }.count
        guard expired > 0 else { return entry.count }
        if expired == entry.count {
            times[name] = nil
            return 0
        }
        times[name]!.dropOldest(expired)
        return times[name]!.count
    }

    mutating func record(_ name: String, now: UInt64) {
        times[name, default: Times()].list.append(now)
        if times[name]!.count > Self.maxPerName { times[name]!.dropOldest(1) }
    }
}
