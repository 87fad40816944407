// write_into_file: the service drains the session into the consumer's file descriptor every
// file_write_period_ms, never past max_file_size_bytes, and the result is a Perfetto trace file.

import IPCInProcess
import IPCProtocol
import TestSupport
import Foundation
import Testing

@testable import TracingAPI

@Suite("write_into_file", .serialized)
final class WriteIntoFileTests {
    var loop: ManualEventLoop!
    var service: TracingServiceCore!

    init() {
        loop = ManualEventLoop()
        service = TracingServiceCore(eventLoop: loop)
    }


    private func fileConfig(periodMs: UInt32, maxSize: UInt64 = 0) -> TraceConfig {
        var config = TracingConfigs.config()
        config.writeIntoFile = true
        config.fileWritePeriodMs = periodMs
        if maxSize > 0 { config.maxFileSizeBytes = maxSize }
        return config
    }

    @Test func periodicDrainsIntoAMemfd() throws {
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        let consumer = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        consumer.endpoint.enableTracing(fileConfig(periodMs: 1_000), outputFile: file.duplicate())
        drive(loop, until: { producer.writers.count == 1 })
        let writer = producer.writers.values.first!

        writer.writeTestPacket(timestamp: 1, "first period")
        writer.flush()
        loop.runUntilIdle()
        #expect(FileDescriptors.content(of: file.rawValue) == [], "nothing before the first period")
        loop.advanceTime(by: .milliseconds(1_000))
        let afterFirst = try TraceFile.decodePackets(FileDescriptors.content(of: file.rawValue)).map { try $0.decode() }
        #expect((afterFirst.filter { $0.trustedPacketSequenceID == 2 }.map(\.forTesting.str)) == ["first period"])
        #expect(afterFirst.first?.hasTraceConfig ?? false)

        writer.writeTestPacket(timestamp: 2, "second period")
        writer.flush()
        loop.advanceTime(by: .milliseconds(1_000))
        writer.writeTestPacket(timestamp: 3, "at the stop")
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })

        let bytes = FileDescriptors.content(of: file.rawValue)
        let trace = try Perfetto_Protos_Trace(serializedBytes: bytes)
        let texts = trace.packet.filter { $0.trustedPacketSequenceID == 2 }.map(\.forTesting.str)
        #expect(texts == ["first period", "second period", "at the stop"])
        #expect(trace.packet.filter(\.hasTraceConfig).count == 1, "the config is written once")

        // Reading a file-backed session returns no producer data: the file has it all.
        consumer.read(on: loop)
        #expect(consumer.producerPackets() == [])
    }

    @Test func theStatsAndAClockSnapshotAreWrittenOncePerSnapshotIntervalNotPerWrite() throws {
        // Every 100 ms write carried both (outside tester, round seven): 10 of each a second.
        // As in traced: at the first write, every 10 s, and at the end.
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        let consumer = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        consumer.endpoint.enableTracing(fileConfig(periodMs: 100), outputFile: file.duplicate())
        drive(loop, until: { producer.writers.count == 1 })
        for second in 0..<12 {
            for tick in 0..<10 {
                producer.writers.values.first!.writeTestPacket(timestamp: UInt64(second * 10 + tick), "tick")
                producer.writers.values.first!.flush()
                loop.advanceTime(by: .milliseconds(100))
            }
        }
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })
        let trace = try Perfetto_Protos_Trace(serializedBytes: FileDescriptors.content(of: file.rawValue))
        #expect(trace.packet.filter { $0.forTesting.str == "tick" }.count == 120)
        // 12 s of writes: the first write, the one after 10 s, and the last.
        #expect(trace.packet.filter(\.hasTraceStats).count == 3)
        #expect(trace.packet.filter(\.hasClockSnapshot).count == 3)
        #expect(trace.packet.last?.hasTraceStats == true, "the stats close the trace")
    }

    @Test func aCloneAppendingToItsSourcesOwnFileCopiesWhatTheFileHadAndEnds() throws {
        // The copy read on while it appended to what it read: the service's loop was held and
        // the disk filled at 1 GB/s (outside tester, round eight).
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        let owner = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        var config = fileConfig(periodMs: 100)
        config.uniqueSessionName = "same"
        owner.endpoint.enableTracing(config, outputFile: file.duplicate())
        drive(loop, until: { producer.writers.count == 1 })
        producer.writers.values.first!.writeTestPacket(timestamp: 1, "in the file")
        producer.writers.values.first!.flush()
        loop.advanceTime(by: .milliseconds(100))
        let before = FileDescriptors.content(of: file.rawValue).count
        #expect(before > 0)

        let appending = open("/proc/self/fd/\(file.rawValue)", O_WRONLY | O_APPEND | O_CLOEXEC)
        #expect(appending >= 0)
        let cloner = RecordingConsumer(service: service)
        var request = CloneSessionRequest()
        request.uniqueSessionName = "same"
        var cloned: CloneSessionResponse?
        cloner.endpoint.cloneSession(request, outputFile: ScopedFD(appending)) { cloned = $0 }
        drive(loop, until: { cloned != nil })
        #expect(cloned?.success == true)
        let after = FileDescriptors.content(of: file.rawValue).count
        #expect(after >= 2 * before && after < 2 * before + 4096, "the file once more, and the clone's few packets")
        owner.endpoint.disableTracing()
        drive(loop, until: { owner.disabledErrors == [""] })
    }

    /// Flush requests a producer receives in `seconds` of a file-backed session with
    /// flush_period_ms 1 and `mode`, its file written every `periodMs`.
    private func flushesReceived(
        mode: TraceConfig.WriteFlushMode, periodMs: UInt32, seconds: Int
    ) -> Int {
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        var config = fileConfig(periodMs: periodMs)
        config.flushPeriodMs = 1
        config.writeFlushMode = mode
        consumer.endpoint.enableTracing(config, outputFile: file.duplicate())
        drive(loop, until: { producer.started.count == 1 })
        for _ in 0..<(seconds * 10) { loop.advanceTime(by: .milliseconds(100)) }
        consumer.endpoint.disconnect()
        producer.endpoint.disconnect()
        loop.runUntilIdle()
        return producer.flushRequests.count
    }

    @Test func aFileBackedSessionFlushesAsPerfettoDecides() {
        // AUTO (and unset): flush_period_ms is ignored; every 5 s while the file is written at
        // least that often, before each write otherwise.
        #expect(flushesReceived(mode: .writeFlushAuto, periodMs: 1_000, seconds: 10) == 2)
        #expect(flushesReceived(mode: .writeFlushUnspecified, periodMs: 1_000, seconds: 10) == 2)
        #expect(flushesReceived(mode: .writeFlushAuto, periodMs: 6_000, seconds: 12) == 2)
        // ENABLED: before each write, written at most every 100 ms (asked for every 10).
        #expect(flushesReceived(mode: .writeFlushEnabled, periodMs: 10, seconds: 1) == 10)
        // DISABLED: flush_period_ms, as asked.
        #expect(flushesReceived(mode: .writeFlushDisabled, periodMs: 1_000, seconds: 1) > 500)
    }

    @Test func aFlushBeforeAWriteBringsWhatTheWritersHeldIntoThatWrite() throws {
        // ENABLED: the writers' last packets are in the file after the first period, though
        // they were never flushed by the app (the flush asked for them first).
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        var config = fileConfig(periodMs: 1_000)
        config.writeFlushMode = .writeFlushEnabled
        consumer.endpoint.enableTracing(config, outputFile: file.duplicate())
        drive(loop, until: { producer.writers.count == 1 })
        producer.writers.values.first!.writeTestPacket(timestamp: 1, "held by the writer")
        loop.advanceTime(by: .milliseconds(1_000))
        loop.runUntilIdle()
        let packets = try TraceFile.decodePackets(FileDescriptors.content(of: file.rawValue)).map { try $0.decode() }
        #expect(packets.filter { $0.trustedPacketSequenceID == 2 }.map(\.forTesting.str) == ["held by the writer"])
        withExtendedLifetime(consumer) {}
    }

    @Test func aTraceFileIsCountedByItsPacketHeaders() throws {
        // Packets small and large, so that headers fall across the 64 KiB reading window and
        // past it: the count is what decoding the whole file finds.
        let sizes = (0..<5_000).map { $0 % 7 == 0 ? 300 : $0 % 3 } + [200_000] + (0..<3_000).map { $0 % 130 }
        let trace = TraceFile.encode(sizes.enumerated().map { index, size in
            TracePacketData(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index) })
        })
        let file = FileDescriptors.memfd(named: "trace", content: trace)
        let counted = try TraceFile.countPackets(inFile: file.rawValue)
        let decoded = try TraceFile.decodePackets(trace)
        #expect(counted.packets == sizes.count && counted.packets == decoded.count)
        #expect(counted.bytes == trace.count)
        // Cut short, or not a trace at all: an error, not a count.
        for bytes in [Array(trace.dropLast()), [0x12, 0x00]] {
            let bad = FileDescriptors.memfd(named: "bad", content: bytes)
            #expect(throws: TracingError.self) { try TraceFile.countPackets(inFile: bad.rawValue) }
        }
    }

    @Test func maximumFileSizeIsHonouredAndEndsTheSession() throws {
        let producer = RecordingProducer(
            service: service, name: "app", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        let consumer = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        let limit: UInt64 = 4_000
        consumer.endpoint.enableTracing(fileConfig(periodMs: 100, maxSize: limit), outputFile: file.duplicate())
        drive(loop, until: { producer.writers.count == 1 })
        let writer = producer.writers.values.first!
        for round in 0..<20 {
            for index in 0..<10 { writer.writeTestPacket(timestamp: UInt64(index), "round \(round) packet \(index)") }
            writer.flush()
            loop.advanceTime(by: .milliseconds(100))
            if !consumer.disabledErrors.isEmpty { break }
        }
        drive(loop, until: { consumer.disabledErrors == [""] }, "reaching the limit ends the session")
        let bytes = FileDescriptors.content(of: file.rawValue)
        #expect(UInt64(bytes.count) <= limit)
        #expect(bytes.count > 1_000)
        #expect(throws: Never.self, "the file ends on a packet boundary") { try TraceFile.decodePackets(bytes) }
    }

    @Test func fileDescriptorIsClosedWhenTheSessionEnds() throws {
        let consumer = RecordingConsumer(service: service)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        let handedOver = try #require(file.duplicate())
        let handedOverFD = handedOver.rawValue
        consumer.endpoint.enableTracing(fileConfig(periodMs: 100), outputFile: handedOver)
        loop.runUntilIdle()
        #expect(FileDescriptors.openDescriptors().contains(handedOverFD))
        consumer.endpoint.disableTracing()
        drive(loop, until: { consumer.disabledErrors == [""] })
        #expect(!FileDescriptors.openDescriptors().contains(handedOverFD))
    }
}
