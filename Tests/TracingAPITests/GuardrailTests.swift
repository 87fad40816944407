// traced's config checks besides the limits: the longest duration, `enable_extra_guardrails`,
// and `lockdown_mode` (which only root or the service's own uid may change here). Each was
// ignored before (outside tester, round seven); the messages are traced's.

import IPCInProcess
import IPCProtocol
import Testing

@testable import TracingAPI

@Suite("Guardrails and lockdown", .serialized)
final class GuardrailTests {
    let loop = ManualEventLoop()
    let service: TracingServiceCore

    init() {
        var options = TracingServiceCore.Options()
        options.serviceUID = 1234
        service = TracingServiceCore(eventLoop: loop, options: options)
    }

    private func enable(uid: UInt32 = 1000, _ change: (inout TraceConfig) -> Void) -> (RecordingConsumer, String?) {
        var config = TracingConfigs.config(buffers: [(64, .ringBuffer)])
        change(&config)
        let consumer = RecordingConsumer(service: service, uid: uid)
        consumer.endpoint.enableTracing(config, outputFile: nil)
        loop.runUntilIdle()
        return (consumer, consumer.disabledErrors.first)
    }

    @Test func aTraceOfMoreThanSevenDaysOrOneDayWithGuardrailsIsRefused() {
        #expect(enable { $0.durationMs = 7 * 24 * 3_600_000 }.1 == nil)
        #expect(enable { $0.durationMs = 7 * 24 * 3_600_000 + 1 }.1 == "Requested too long trace (604800001ms  > 604800000 ms)")
        #expect(enable {
            $0.enableExtraGuardrails = true
            $0.durationMs = 24 * 3_600_000 + 1
        }.1 == "Requested too long trace (86400001ms  > 86400000 ms)")
    }

    @Test func extraGuardrailsRefuseWhatTracedRefuses() {
        #expect(enable {
            $0.enableExtraGuardrails = true
            $0.deferredStart = true
        }.1 == "deferred_start=true is not supported in unsupervised traces")
        #expect(enable {
            $0.enableExtraGuardrails = true
            $0.buffers[0].sizeKb = 66
        }.1 == "buffers.size_kb must be a multiple of 4, got 66")
        #expect(enable {
            $0.enableExtraGuardrails = true
            $0.buffers = TracingConfigs.config(buffers: [(65536, .ringBuffer), (65540, .ringBuffer)]).buffers
        }.1 == "Requested too large trace buffer (131076kB  > 131072 kB)")
    }

    @Test func twoGuardrailedSessionsOfOneNameAreFiveMinutesApart() {
        let (first, error) = enable {
            $0.enableExtraGuardrails = true
            $0.uniqueSessionName = "statsd"
        }
        #expect(error == nil)
        first.endpoint.disconnect()
        loop.runUntilIdle()
        #expect(enable {
            $0.enableExtraGuardrails = true
            $0.uniqueSessionName = "statsd"
        }.1?.hasPrefix("A trace with unique session name \"statsd\" began less than 300s ago") == true)
        #expect(enable { $0.uniqueSessionName = "statsd" }.1 == nil, "without guardrails the name is free")
        #expect(enable {
            $0.enableExtraGuardrails = true
            $0.uniqueSessionName = "other"
        }.1 == nil)
    }

    @Test func aProducerNamePatternThatCannotBeUsedIsRefusedNotLeftToMatchNothing() {
        // A data source filtered by it never started, a STOP trigger filtered by it never
        // fired and the whole trace was lost (outside tester, round eight).
        for pattern in ["(f)(o)\\2", "(?=f)oo", "a{1001}", "(unclosed"] {
            let error = enable { $0.dataSources[0].producerNameRegexFilter = ["ok.*", pattern] }.1
            #expect(error?.hasPrefix("producer name pattern \"\(pattern)\" cannot be used") == true, Comment(rawValue: error ?? "accepted"))
        }
        let trigger = enable {
            $0.triggerConfig.triggerMode = .stopTracing
            $0.triggerConfig.triggerTimeoutMs = 1000
            $0.triggerConfig.triggers = [.with { $0.name = "go"; $0.producerNameRegex = "(?!x)" }]
        }.1
        #expect(trigger?.hasPrefix("producer name pattern \"(?!x)\" cannot be used") == true)
        #expect(enable { $0.dataSources[0].producerNameRegexFilter = ["\\w+", ".{0,1000}"] }.1 == nil)
    }

    @Test func lockdownKeepsOtherUidsProducersOutAndOnlyRootOrTheServiceChangesIt() {
        let stranger = RecordingProducer(service: service, name: "stranger", uid: 1000, dataSources: [TracingConfigs.descriptor("test.source")])
        loop.runUntilIdle()
        #expect(enable(uid: 1000) { $0.lockdownMode = .lockdownSet }.1
            == "lockdown_mode may be changed only by root or the service's user (uid 1234)")
        #expect(!service.lockdown)

        let (locker, error) = enable(uid: 0) { $0.lockdownMode = .lockdownSet }
        #expect(error == nil)
        #expect(service.lockdown)
        #expect(stranger.started.isEmpty, "connected before, and still not started")
        locker.endpoint.disconnect()
        loop.runUntilIdle()

        let late = RecordingProducer(service: service, name: "late", uid: 1000, dataSources: [TracingConfigs.descriptor("test.source")])
        let own = RecordingProducer(service: service, name: "own", uid: 1234, dataSources: [TracingConfigs.descriptor("test.source")])
        loop.runUntilIdle()
        #expect(late.disconnects == 1 && late.connects == 0, "refused at connection")
        #expect(own.connects == 1)
        let (_, ownSession) = enable(uid: 1000) { _ in }
        #expect(ownSession == nil)
        #expect(own.started.count == 1)
        #expect(stranger.started.isEmpty)

        #expect(enable(uid: 1234) { $0.lockdownMode = .lockdownClear }.1 == nil)
        #expect(!service.lockdown)
        let after = RecordingProducer(service: service, name: "after", uid: 1000, dataSources: [TracingConfigs.descriptor("test.source")])
        loop.runUntilIdle()
        #expect(after.connects == 1)
    }
}
