// What one consumer (or one uid) may ask of the service: Perfetto's session limits (15 in all,
// 5 per uid), buffers that fit in 32 bits, a bound on the buffer memory of all sessions, a bound
// on pending flushes; and what a consumer may see and touch of other uids' sessions (nothing,
// root aside). The direct binding gives each consumer the uid we choose; ConsumerLimitsOverIPC
// tests check the same answers reach a consumer over a socket, where the uid is the kernel's.

import IPCInProcess
import IPCProtocol
import Foundation
import Testing

@testable import TracingAPI

@Suite("Service limits and uid isolation", .serialized)
final class ServiceLimitsTests {
    let loop = ManualEventLoop()
    var service: TracingServiceCore

    init() {
        service = TracingServiceCore(eventLoop: loop)
    }

    /// A consumer of `uid` that enabled `config`; nil error when the session was accepted.
    private func enable(
        uid: UInt32, _ config: TraceConfig = TracingConfigs.config(buffers: [(64, .ringBuffer)])
    ) -> (consumer: RecordingConsumer, error: String?) {
        let consumer = RecordingConsumer(service: service, uid: uid)
        consumer.endpoint.enableTracing(config, outputFile: nil)
        loop.runUntilIdle()
        return (consumer, consumer.disabledErrors.first)
    }

    @Test func fiveSessionsPerUidAndFifteenInAll() {
        var kept: [RecordingConsumer] = []
        for _ in 0..<5 {
            let (consumer, error) = enable(uid: 1000)
            #expect(error == nil)
            kept.append(consumer)
        }
        let sixth = enable(uid: 1000)
        #expect(sixth.error == "too many concurrent tracing sessions for uid 1000 (5, the limit is 5)")
        // Other uids are not held back by uid 1000.
        for uid: UInt32 in [2000, 2000, 2000, 2000, 2000, 3000, 3000, 3000, 3000, 3000] {
            let (consumer, error) = enable(uid: uid)
            #expect(error == nil, "uid \(uid)")
            kept.append(consumer)
        }
        #expect(service.sessions.count == 15)
        let sixteenth = enable(uid: 4000)
        #expect(sixteenth.error == "too many concurrent tracing sessions (15, the limit is 15)")
        #expect(service.sessions.count == 15)
        // A session that ends makes room again.
        kept[0].endpoint.disconnect()
        loop.runUntilIdle()
        #expect(enable(uid: 1000).error == nil)
    }

    @Test func buffersThatDoNotFitIn32BitsAreRefusedBeforeAnythingIsAllocated() {
        for sizeKb: UInt32 in [UInt32.max, 4 * 1024 * 1024] {
            let (_, error) = enable(uid: 1000, TracingConfigs.config(buffers: [(64, .ringBuffer), (sizeKb, .discard)]))
            #expect(error == "buffer 1 is too large: size_kb = \(sizeKb) is 4 GiB or more")
        }
        #expect(service.buffers.isEmpty)
        #expect(service.sessions.isEmpty)
    }

    @Test func theBuffersOfAllSessionsStayUnderTheServiceLimit() {
        // 4 GiB less 1 KiB fits in 32 bits, but not in the default 1 GiB of one uid.
        let huge = enable(uid: 1000, TracingConfigs.config(buffers: [(4 * 1024 * 1024 - 1, .ringBuffer)]))
        #expect(huge.error?.hasPrefix("the trace buffers would take 4194303 KiB, more than uid 1000 may have") == true)
        #expect(service.buffers.isEmpty)

        var options = TracingServiceCore.Options()
        options.maxBufferBytesPerUID = 3 << 20
        options.maxTotalBufferBytes = 4 << 20
        service = TracingServiceCore(eventLoop: loop, options: options)
        let first = enable(uid: 1000, TracingConfigs.config(buffers: [(2048, .ringBuffer), (1024, .discard)]))
        #expect(first.error == nil)
        // The uid's share is spent; another uid still has room, up to what is left of the total.
        #expect(enable(uid: 1000, TracingConfigs.config(buffers: [(64, .ringBuffer)])).error
            == "the trace buffers would take 64 KiB, more than uid 1000 may have (3072 KiB, 3072 KiB in use)")
        let second = enable(uid: 2000, TracingConfigs.config(buffers: [(2048, .ringBuffer)]))
        #expect(second.error == "the trace buffers would take 2048 KiB, more than the service allows (4096 KiB in all, 3072 KiB in use)")
        let fits = enable(uid: 2000, TracingConfigs.config(buffers: [(1024, .ringBuffer)]))
        #expect(fits.error == nil)
        // A clone counts as much as its original, for the uid that clones.
        let cloner = RecordingConsumer(service: service, uid: 1000)
        var request = CloneSessionRequest()
        request.sessionID = 1
        var cloned: CloneSessionResponse?
        cloner.endpoint.cloneSession(request) { cloned = $0 }
        drive(loop, until: { cloned != nil })
        #expect(cloned?.success == false)
        #expect(cloned?.error.hasPrefix("the trace buffers would take 3072 KiB, more than uid 1000 may have") == true)
        // Root is never locked out by other uids: its share is its own.
        let root = enable(uid: 0, TracingConfigs.config(buffers: [(3072, .ringBuffer)]))
        #expect(root.error == nil)
        let rootClone = RecordingConsumer(service: service, uid: 0)
        var rootCloned: CloneSessionResponse?
        rootClone.endpoint.cloneSession(request) { rootCloned = $0 }
        drive(loop, until: { rootCloned != nil })
        #expect(rootCloned?.error.hasPrefix("the trace buffers would take 3072 KiB, more than uid 0 may have") == true)
        // Freed buffers make room.
        first.consumer.endpoint.freeBuffers()
        loop.runUntilIdle()
        #expect(enable(uid: 3000, TracingConfigs.config(buffers: [(3072, .ringBuffer)])).error == nil)
        withExtendedLifetime((first, fits, root, cloner)) {}
    }

    @Test func buffersAreNotAllocatedUpFront() throws {
        // A session of 512 MiB costs nothing until data arrives.
        let (consumer, error) = enable(uid: 1000, TracingConfigs.config(buffers: [(512 * 1024, .ringBuffer)]))
        #expect(error == nil)
        let buffer = try #require(service.buffers.values.first)
        #expect(buffer.capacity == 512 << 20)
        #expect(buffer.usedBytes == 0)
        withExtendedLifetime(consumer) {}
    }

    @Test func moreThan128BuffersAreRefused() {
        let buffers = [(sizeKb: UInt32, policy: TraceConfig.BufferConfig.FillPolicy)](repeating: (4, .ringBuffer), count: 129)
        let (_, error) = enable(uid: 1000, TracingConfigs.config(buffers: buffers, dataSources: []))
        #expect(error == "too many buffers configured (129, the limit is 128)")
        #expect(service.buffers.isEmpty)
    }

    @Test func clonesCountAgainstTheCloningUid() {
        var kept: [RecordingConsumer] = []
        for _ in 0..<5 { kept.append(enable(uid: 1000).consumer) }
        let cloner = RecordingConsumer(service: service, uid: 1000)
        var request = CloneSessionRequest()
        request.sessionID = 1
        var cloned: CloneSessionResponse?
        cloner.endpoint.cloneSession(request) { cloned = $0 }
        drive(loop, until: { cloned != nil })
        #expect(cloned?.success == false)
        #expect(cloned?.error == "too many concurrent tracing sessions for uid 1000 (5, the limit is 5)")
        // Root may clone it: its own count is not reached.
        let root = RecordingConsumer(service: service, uid: 0)
        cloned = nil
        root.endpoint.cloneSession(request) { cloned = $0 }
        drive(loop, until: { cloned != nil })
        #expect(cloned?.success == true)
    }

    @Test func aConsumerCannotPileUpFlushesOfProducersThatNeverAnswer() {
        var options = TracingServiceCore.Options()
        options.maxPendingFlushesPerSession = 3
        service = TracingServiceCore(eventLoop: loop, options: options)
        let producer = RecordingProducer(service: service, name: "mute", dataSources: [TracingConfigs.descriptor("test.source")])
        producer.acknowledgesFlushes = false
        let (consumer, _) = enable(uid: 1000)
        drive(loop, until: { producer.started.count == 1 })
        var results: [Bool] = []
        for _ in 0..<5 { consumer.endpoint.flush(timeoutMs: 60_000, flags: FlushFlags()) { results.append($0) } }
        loop.runUntilIdle()
        #expect(results == [false, false], "the 4th and 5th fail at once")
        #expect(service.sessions.values.first?.pendingFlushes.count == 3)
        loop.advanceTime(by: .seconds(60))
        #expect(results == [false, false, false, false, false], "the others by their timeout")
    }

    @Test func matchingProducerNamesCostsEachProducerABoundedAmountOfWork() throws {
        // Ten patterns that each take over a quarter of a producer's budget against a long name,
        // then a cheap one that matches it. Matched one by one, a config of thousands of such
        // patterns held the loop for minutes; each producer now has a budget, and past it
        // nothing new matches.
        let longName = "x" + String(repeating: "a", count: 497)
        let heavy = (0..<10).map { String(repeating: "(a|b)", count: 150) + "\($0)" }
        let steps = try #require(ProducerNamePattern(heavy[0])).matchSteps(longName)
        let budget = TracingSession.nameMatchStepsPerProducer
        #expect(steps > budget / 4 && steps < budget / 3 - 2_000, "\(steps)")
        var config = TracingConfigs.config()
        config.dataSources[0].producerNameRegexFilter = heavy + ["x.*"]
        let (consumer, error) = enable(uid: 1000, config)
        #expect(error == nil)
        let hostile = RecordingProducer(service: service, name: longName, dataSources: [TracingConfigs.descriptor("test.source")])
        let honest = RecordingProducer(service: service, name: "x-app", dataSources: [TracingConfigs.descriptor("test.source")])
        loop.runUntilIdle()
        let session = try #require(service.sessions.values.first)
        // The long name paid for three heavy matches; the fourth was refused, and with it every
        // pattern after it, the cheap one too.
        #expect(session.nameMatchesRefused == heavy.count - 3 + 1)
        #expect(hostile.started.count == 0)
        // The honest producer's budget is its own: its short name is cheap to match.
        #expect(honest.started.count == 1)
        withExtendedLifetime(consumer) {}
    }

    // MARK: Other uids' sessions

    @Test func theServiceStateShowsAConsumerOnlyTheSessionsOfItsUidAndRootAll() {
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        var named = TracingConfigs.config(buffers: [(64, .ringBuffer)])
        named.uniqueSessionName = "secret-of-1000"
        let mine = enable(uid: 1000, named)
        let theirs = enable(uid: 2000)
        func query(_ uid: UInt32) -> TracingServiceState? {
            let consumer = RecordingConsumer(service: service, uid: uid)
            var state: TracingServiceState?
            consumer.endpoint.queryServiceState(sessionsOnly: false) { _, value in state = value }
            drive(loop, until: { state != nil })
            return state
        }
        let of1000 = query(1000)
        #expect(of1000?.tracingSessions.map(\.consumerUid) == [1000])
        #expect(of1000?.tracingSessions.first?.uniqueSessionName == "secret-of-1000")
        let of2000 = query(2000)
        #expect(of2000?.tracingSessions.map(\.consumerUid) == [2000])
        #expect(query(3000)?.tracingSessions.isEmpty == true)
        #expect(query(0)?.tracingSessions.map(\.consumerUid) == [1000, 2000], "root sees every session")
        // As in Perfetto: producers, data sources and the number of sessions are not per uid.
        #expect(query(3000)?.numSessions == 2)
        #expect(query(3000)?.producers.map(\.name) == ["app"])
        withExtendedLifetime((producer, mine, theirs)) {}
    }

    @Test func anotherUidCannotAttachToOrCloneASession() {
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 1, "private") }
        var config = TracingConfigs.config(buffers: [(64, .ringBuffer)])
        config.uniqueSessionName = "owned"
        let owner = enable(uid: 1000, config).consumer
        drive(loop, until: { producer.started.count == 1 })
        var detached: Bool?
        owner.endpoint.detach(key: "the-key") { detached = $0 }
        drive(loop, until: { detached != nil })
        #expect(detached == true)

        // Another uid knows the key: it attaches to nothing.
        let intruder = RecordingConsumer(service: service, uid: 2000)
        var attached: TraceConfig??
        intruder.endpoint.attach(key: "the-key") { attached = .some($0) }
        drive(loop, until: { attached != nil })
        #expect(attached! == nil)
        // Nor can it copy the session, by name or by id.
        for selector in [CloneSessionRequest.OneOf_Selector.uniqueSessionName("owned"), .sessionID(1)] {
            var request = CloneSessionRequest()
            request.selector = selector
            var cloned: CloneSessionResponse?
            intruder.endpoint.cloneSession(request) { cloned = $0 }
            drive(loop, until: { cloned != nil })
            #expect(cloned?.success == false)
            #expect(cloned?.error == "the session belongs to another user")
        }
        // Nor read it: it has no session of its own.
        intruder.read(on: loop)
        #expect(intruder.producerPackets().isEmpty)

        // Root may copy it; the owner's uid may attach to it.
        let root = RecordingConsumer(service: service, uid: 0)
        var request = CloneSessionRequest()
        request.uniqueSessionName = "owned"
        var cloned: CloneSessionResponse?
        root.endpoint.cloneSession(request) { cloned = $0 }
        drive(loop, until: { cloned != nil })
        #expect(cloned?.success == true)
        let again = RecordingConsumer(service: service, uid: 1000)
        attached = nil
        again.endpoint.attach(key: "the-key") { attached = .some($0) }
        drive(loop, until: { attached != nil })
        #expect(attached??.uniqueSessionName == "owned")
    }

    @Test func cloningTheBugreportSessionIDTakesTheStartedSessionWithTheHighestScore() {
        // Perfetto's older bug-report protocol: session id 2^64 - 1 names the started session
        // with the highest bugreport_score; sessions without a score are never taken.
        func clone(as uid: UInt32) -> CloneSessionResponse? {
            let cloner = RecordingConsumer(service: service, uid: uid)
            var request = CloneSessionRequest()
            request.sessionID = TracingServiceCore.bugreportSessionID
            var cloned: CloneSessionResponse?
            cloner.endpoint.cloneSession(request) { cloned = $0 }
            drive(loop, until: { cloned != nil })
            return cloned
        }
        let unscored = enable(uid: 1000)
        #expect(clone(as: 0)?.error == "No tracing sessions eligible for bugreport found")
        var low = TracingConfigs.config(buffers: [(64, .ringBuffer)])
        low.bugreportScore = 5
        var high = low
        high.bugreportScore = 10
        let (first, second, third) = (enable(uid: 1000, low), enable(uid: 1000, high), enable(uid: 1000, low))
        let cloned = clone(as: 0)
        #expect(cloned?.success == true)
        let clonedConfig = service.sessions.values.first { $0.state == .clonedReadOnly }?.config
        #expect(clonedConfig?.bugreportScore == 10)
        // Another uid is refused, as for any session of another user.
        #expect(clone(as: 2000)?.error == "the session belongs to another user")
        withExtendedLifetime((unscored, first, second, third)) {}
    }
}
