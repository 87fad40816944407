// The tracing service's security model over real unix sockets (SECURITY.md, "The tracing
// service"): who a peer is comes from the kernel, never from its words; a producer can act only
// on its own data sources, flushes and buffers; limits reach the consumer as the reason tracing
// is disabled. Across uids in one process, see ServiceLimitsTests (direct binding) and the
// tracebox tests (processes of another uid).

import Foundation
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

@testable import TracingAPI

@Suite("Tracing security model on real sockets", .serialized)
final class SecurityModelTests: SocketTracingFixture {
    @Test func aConsumerActsAsTheUidTheKernelReportsWhateverItClaims() throws {
        try withoutLeaks {
            let liar = try RawPortClient(path: consumerPath, service: "ConsumerPort", loop: loop)
            liar.claim(uid: 4242, pid: 1)
            var enable = Perfetto_Protos_EnableTracingRequest()
            enable.traceConfig = config(["nothing"])
            liar.call("EnableTracing", enable)
            let query = liar.call("QueryServiceState", Perfetto_Protos_QueryServiceStateRequest())
            let state = try #require(liar.reply(to: query, as: Perfetto_Protos_QueryServiceStateResponse.self)).serviceState
            #expect(state.tracingSessions.map(\.consumerUid) == [Int32(bitPattern: getuid())])
            #expect(core.sessions.values.map(\.consumerUID) == [getuid()])
            liar.close()
        }
    }

    @Test func aProducerIsStampedWithTheKernelsIdentityWhateverItClaims() throws {
        try withoutLeaks {
            let liar = try RawProducer(path: producerPath, loop: loop, name: "liar", claimedIdentity: (uid: 4242, pid: 1))
            liar.register("liar.source")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["liar.source"]), outputFile: nil)
            let buffer = try #require(liar.waitForStart()).buffer
            // It also writes the trusted fields itself: the packet is dropped.
            var forged: [UInt8] = []
            ProtoEncoding.appendVarintField(3, 0, to: &forged)  // trusted_uid = 0
            liar.place(RawChunks.chunk(writer: 1, id: 0, count: 2, records: [
                SharedMemoryABI.paddedVarint(UInt32(forged.count)) + forged, RawChunks.record("liar says hello"),
            ]), page: 0)
            liar.commitAndWait([RawChunks.move(page: 0, buffer: buffer)])
            var state: TracingServiceState?
            consumer.endpoint.queryServiceState(sessionsOnly: false) { _, value in state = value }
            run(until: { state != nil })
            let producer = try #require(state?.producers.first { $0.name == "liar" })
            #expect(UInt32(bitPattern: producer.uid) == getuid())
            #expect(producer.pid == getpid())
            stopAndRead(consumer)
            let packets = consumer.producerPackets()
            #expect(packets.map(\.forTesting.str) == ["liar says hello"])
            #expect(packets.allSatisfy { UInt32(bitPattern: $0.trustedUid) == getuid() && $0.trustedPid == getpid() })
            #expect(consumer.decodedPackets().last?.traceStats.invalidPackets == 1)
            consumer.endpoint.disconnect()
            liar.close()
        }
    }

    @Test func aProducerCannotAnswerForAnother() throws {
        try withoutLeaks {
            let honest = honestProducer()
            honest.acknowledgesFlushes = false
            honest.notifiesStops = false
            let forger = try RawProducer(path: producerPath, loop: loop, name: "forger")
            forger.register("forger.source")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["honest.source"]) { $0.dataSourceStopTimeoutMs = 60_000 }, outputFile: nil)
            run(until: { honest.started.count == 1 })
            let session = try #require(core.sessions.values.first)
            var flushed: Bool?
            consumer.endpoint.flush(timeoutMs: 60_000, flags: FlushFlags()) { flushed = $0 }
            run(until: { honest.flushRequests.count == 1 })
            // The forger acknowledges every flush and every stop it can guess.
            for id in 1...20 {
                var request = CommitDataRequest()
                request.flushRequestID = UInt64(id)
                forger.client.call("CommitData", request, dropReply: true)
            }
            forger.sync()
            #expect(flushed == nil, "the honest producer's flush still waits for it")
            #expect(session.pendingFlushes.count == 1)
            consumer.endpoint.disableTracing()
            run(until: { honest.stopped.count == 1 })
            for id in 1...20 {
                var stopped = Perfetto_Protos_NotifyDataSourceStoppedRequest()
                stopped.dataSourceID = UInt64(id)
                forger.client.call("NotifyDataSourceStopped", stopped, dropReply: true)
                var started = Perfetto_Protos_NotifyDataSourceStartedRequest()
                started.dataSourceID = UInt64(id)
                forger.client.call("NotifyDataSourceStarted", started, dropReply: true)
            }
            forger.sync()
            #expect(session.state == .disablingWaitingStopAcks, "the honest producer's stop still waits for it")
            #expect(consumer.disabledErrors.isEmpty)
            // Its commands never name another producer's instances either: it has none.
            #expect(forger.commands.isEmpty)
            honest.endpoint.notifyDataSourceStopped(honest.started[0].id)
            run(until: { consumer.disabledErrors == [""] })
            consumer.endpoint.disconnect()
            forger.close()
            honest.endpoint.disconnect()
        }
    }

    @Test func limitsReachTheConsumerAsTheReasonTracingIsDisabled() throws {
        try withoutLeaks {
            // Over a socket the reply to EnableTracing carries the reason.
            let raw = try RawPortClient(path: consumerPath, service: "ConsumerPort", loop: loop)
            var enable = Perfetto_Protos_EnableTracingRequest()
            enable.traceConfig = config(["x"]) { $0.buffers[0].sizeKb = UInt32.max }
            let id = raw.call("EnableTracing", enable)
            let response = try #require(raw.reply(to: id, as: Perfetto_Protos_EnableTracingResponse.self))
            #expect(response.disabled)
            #expect(response.error == "buffer 0 is too large: size_kb = \(UInt32.max) is 4 GiB or more")
            raw.close()

            // Every consumer of this process is one uid, the kernel's: five sessions, then no more.
            var consumers: [RecordingConsumer] = []
            for _ in 0..<6 {
                let consumer = consumer()
                consumer.endpoint.enableTracing(config(["x"]), outputFile: nil)
                consumers.append(consumer)
            }
            run(until: { consumers[5].disabledErrors.count == 1 })
            #expect(consumers[5].disabledErrors == ["too many concurrent tracing sessions for uid \(getuid()) (5, the limit is 5)"])
            #expect(consumers.prefix(5).allSatisfy { $0.disabledErrors.isEmpty })
            for consumer in consumers { consumer.endpoint.disconnect() }
        }
    }
}
