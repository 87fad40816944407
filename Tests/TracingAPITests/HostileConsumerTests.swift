// Hostile consumers against our service on real unix sockets: one that asks for a big read and
// never reads its socket, and write_into_file outputs that cannot take the trace (read-only, a
// pipe nobody drains, a pipe whose reader is gone, a full device). The service never blocks on
// any of them: the offender is dropped or its session ends with an error, while another
// consumer's session records everything, and no descriptor stays behind.

import Foundation
import Glibc
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

@testable import TracingAPI

@Suite("Hostile consumers on real sockets", .serialized)
final class HostileConsumerTests: SocketTracingFixture {
    /// A producer of "bulk.source" that writes only when told, and an honest one beside it.
    private func bulkProducer() -> RecordingProducer {
        let producer = RecordingProducer(
            service: clients, name: "bulk", dataSources: [TracingConfigs.descriptor("bulk.source", willNotifyOnStop: true)])
        run(until: { self.core.connectedProducers.contains { $0.dataSources["bulk.source"] != nil } })
        return producer
    }

    /// Has `producer` write `rounds` rounds of 64 packets of about 1 KiB, each round committed
    /// (the shared memory is smaller than what is written in all).
    private func write(_ producer: RecordingProducer, rounds: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let writer = producer.writers.values.first else {
            Issue.record("the bulk producer was not started", sourceLocation: sourceLocation)
            return
        }
        let padding = String(repeating: "b", count: 1000)
        let committed = Counter()
        for round in 0..<rounds {
            for index in 0..<64 { writer.writeTestPacket(timestamp: UInt64(round * 64 + index), "bulk \(round * 64 + index) \(padding)") }
            writer.flush { committed.increment() }
            run(until: { committed.value == round + 1 }, "round \(round) was never committed", sourceLocation: sourceLocation)
        }
    }

    private func fileConfig(_ sources: [String], periodMs: UInt32 = 100) -> TraceConfig {
        config(sources) {
            $0.buffers[0].sizeKb = 4096
            $0.writeIntoFile = true
            $0.fileWritePeriodMs = periodMs
        }
    }

    // MARK: Never reading

    @Test func aConsumerThatNeverReadsItsSocketIsDroppedAndNobodyElseNotices() throws {
        var consumerOptions = ConnectionOptions()
        consumerOptions.maxQueuedSendBytes = 1 << 20
        consumerOptions.sendTimeout = .seconds(3)
        try serve(options: TracingServiceCore.Options(), consumerOptions: consumerOptions)
        try withoutLeaks {
            let bulk = bulkProducer()
            let honest = honestProducer()
            let stuck = try RawPortClient(path: consumerPath, service: "ConsumerPort", loop: loop)
            var small: Int32 = 4096
            setsockopt(stuck.peer.socket.rawValue, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            var enable = Perfetto_Protos_EnableTracingRequest()
            enable.traceConfig = config(["bulk.source"]) { $0.buffers[0].sizeKb = 8192 }
            stuck.call("EnableTracing", enable)
            run(until: { bulk.started.count == 1 })
            write(bulk, rounds: 64)  // about 4 MiB

            let other = consumer()
            other.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })

            // The whole buffer is asked for, and the socket is never read again.
            stuck.call("ReadBuffers", Perfetto_Protos_ReadBuffersRequest())
            run(until: { self.host.consumerPort.connectedConsumerCount == 1 }, "the consumer that does not read was not dropped")
            #expect(core.sessions.count == 1, "its session went with it")

            // Everybody else goes on.
            var state: TracingServiceState?
            other.endpoint.queryServiceState(sessionsOnly: true) { _, value in state = value }
            run(until: { state != nil })
            stopAndRead(other)
            expectComplete(other)
            other.endpoint.disconnect()
            stuck.close()
            bulk.endpoint.disconnect()
            honest.endpoint.disconnect()
        }
    }

    /// A read larger than the connection may queue arrives whole: the service hands replies
    /// to the connection as the consumer takes them (it used to queue them all and drop the
    /// consumer for passing the bound).
    @Test func aReadLargerThanTheSendQueueBoundArrivesWhole() throws {
        var consumerOptions = ConnectionOptions()
        consumerOptions.maxQueuedSendBytes = 1 << 20
        try serve(options: TracingServiceCore.Options(), consumerOptions: consumerOptions)
        withoutLeaks {
            let bulk = bulkProducer()
            let reader = consumer()
            reader.endpoint.enableTracing(config(["bulk.source"]) { $0.buffers[0].sizeKb = 8192 }, outputFile: nil)
            run(until: { bulk.started.count == 1 })
            write(bulk, rounds: 64)  // about 4 MiB, four times the bound

            stopAndRead(reader)
            let texts = texts(reader, "bulk ")
            #expect(texts.count == 64 * 64, "every packet arrives")
            #expect(texts.first?.hasPrefix("bulk 0 ") == true && texts.last?.hasPrefix("bulk 4095 ") == true)
            #expect(host.consumerPort.connectedConsumerCount == 1, "the reader was not dropped")
            reader.endpoint.disconnect()
            bulk.endpoint.disconnect()
        }
    }

    // MARK: write_into_file

    @Test func anOutputFileThatIsNotWritableIsRefused() throws {
        withoutLeaks {
            let path = directory.path + "/read-only.pftrace"
            _ = FileManager.default.createFile(atPath: path, contents: Data())
            let readOnly = ScopedFD(open(path, O_RDONLY | O_CLOEXEC))
            let consumer = consumer()
            consumer.endpoint.enableTracing(fileConfig(["honest.source"]), outputFile: readOnly.duplicate())
            run(until: { consumer.disabledErrors.count == 1 })
            #expect(consumer.disabledErrors == ["the output file is not open for writing"])
            #expect(core.sessions.isEmpty)
            consumer.endpoint.disconnect()
        }
    }

    @Test func aPipeNobodyDrainsEndsItsSessionWithoutStoppingTheService() throws {
        var options = TracingServiceCore.Options()
        options.outputFileStallTimeout = .milliseconds(500)
        try serve(options: options)
        withoutLeaks {
            let (reader, writer) = Self.pipe()
            let bulk = bulkProducer()
            let honest = honestProducer()
            let stuck = consumer()
            stuck.endpoint.enableTracing(fileConfig(["bulk.source"]), outputFile: writer.duplicate())
            writer.close()
            run(until: { bulk.started.count == 1 })
            write(bulk, rounds: 8)  // 512 KiB for a pipe that holds 64 KiB
            run(until: { self.core.sessions.values.contains { $0.outputFile?.hasPendingBytes == true } },
                "the pipe never filled")

            // The pipe is full and nobody reads it: the service still serves everyone.
            let other = consumer()
            var state: TracingServiceState?
            other.endpoint.queryServiceState(sessionsOnly: true) { _, value in state = value }
            run(until: { state != nil }, "the service stopped answering")
            other.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })

            run(until: { stuck.disabledErrors.count == 1 }, "the stalled session never ended")
            #expect(stuck.disabledErrors.first?.hasPrefix("the output file took no data for") == true,
                    Comment(rawValue: stuck.disabledErrors.first ?? ""))
            stopAndRead(other)
            expectComplete(other)
            for consumer in [stuck, other] { consumer.endpoint.disconnect() }
            bulk.endpoint.disconnect()
            honest.endpoint.disconnect()
            withExtendedLifetime(reader) {}
        }
    }

    @Test func aStoppedSessionWaitsForItsFileAndIsToldIfTheServiceShutsDownFirst() {
        withoutLeaks {
            let (reader, writer) = Self.pipe()
            let bulk = bulkProducer()
            let consumer = consumer()
            consumer.endpoint.enableTracing(fileConfig(["bulk.source"]), outputFile: writer.duplicate())
            writer.close()
            run(until: { bulk.started.count == 1 })
            write(bulk, rounds: 8)
            run(until: { self.core.sessions.values.contains { $0.outputFile?.hasPendingBytes == true } })
            consumer.endpoint.disableTracing()
            run(until: { self.core.sessions.values.first?.state == .disabled })
            #expect(consumer.disabledErrors.isEmpty, "not before the file has everything")
            core.shutDown()
            run(until: { consumer.disabledErrors.count == 1 })
            #expect(consumer.disabledErrors == ["the tracing service shut down before the trace file was complete"])
            consumer.endpoint.disconnect()
            bulk.endpoint.disconnect()
            withExtendedLifetime(reader) {}
        }
    }

    @Test func aPipeReadSlowlyGetsTheWholeTrace() throws {
        try withoutLeaks {
            let (reader, writer) = Self.pipe()
            let bulk = bulkProducer()
            let consumer = consumer()
            consumer.endpoint.enableTracing(fileConfig(["bulk.source"]), outputFile: writer.duplicate())
            writer.close()
            run(until: { bulk.started.count == 1 })
            var received: [UInt8] = []
            // The reader takes at most 16 KiB each time the test's loop wakes up, which a
            // ticker makes it do every 2 ms.
            let ticker = Ticker(loop: loop, every: .milliseconds(2))
            defer { ticker.stop() }
            func drain() {
                var chunk = [UInt8](repeating: 0, count: 16 * 1024)
                let count = chunk.withUnsafeMutableBytes { read(reader.rawValue, $0.baseAddress, $0.count) }
                if count > 0 { received += chunk.prefix(count) }
            }
            let padding = String(repeating: "b", count: 1000)
            let writerOfBulk = try #require(bulk.writers.values.first)
            let committed = Counter()
            for round in 0..<8 {
                for index in 0..<64 { writerOfBulk.writeTestPacket(timestamp: 1, "bulk \(round * 64 + index) \(padding)") }
                writerOfBulk.flush { committed.increment() }
                run(until: {
                    drain()
                    return committed.value == round + 1
                })
            }
            consumer.endpoint.disableTracing()
            run(seconds: 20, until: {
                drain()
                return consumer.disabledErrors.count == 1
            }, "tracing never stopped")
            #expect(consumer.disabledErrors == [""])
            // The file is closed: read to its end.
            run(until: {
                let before = received.count
                drain()
                return received.count == before
            })
            let packets = try TraceFile.decodePackets(received).map { try $0.decode() }
            let texts = packets.map(\.forTesting.str).filter { $0.hasPrefix("bulk") }
            #expect(texts == (0..<512).map { "bulk \($0) \(padding)" })
            consumer.endpoint.disconnect()
            bulk.endpoint.disconnect()
        }
    }

    @Test func aCloneIntoAPipeReadAfterTheReplyGetsTheFileAndTheBuffersThenItsEnd() throws {
        // More than a pipe holds: the copy of the file waits for the reader, and what the
        // buffers hold goes behind it, not left in them (nothing would write it later).
        try withoutLeaks {
            let source = FileDescriptors.memfd(named: "source", content: [])
            let bulk = bulkProducer()
            let owner = consumer()
            owner.endpoint.enableTracing(config(["bulk.source"]) {
                $0.buffers[0].sizeKb = 4096
                $0.writeIntoFile = true
                $0.fileWritePeriodMs = 100
                $0.uniqueSessionName = "piped"
            }, outputFile: source.duplicate())
            run(until: { bulk.started.count == 1 })
            write(bulk, rounds: 2)
            run(until: { FileDescriptors.content(of: source.rawValue).count > 100_000 }, "the file was never written")
            write(bulk, rounds: 1)

            let (reader, writer) = Self.pipe()
            let cloner = consumer()
            var request = CloneSessionRequest()
            request.uniqueSessionName = "piped"
            var cloned: CloneSessionResponse?
            cloner.endpoint.cloneSession(request, outputFile: writer.duplicate()) { cloned = $0 }
            writer.close()
            run(until: { cloned != nil })
            #expect(cloned?.success == true && cloned?.wasWriteIntoFile == true, Comment(rawValue: cloned?.error ?? ""))
            var received: [UInt8] = []
            var atEnd = false
            run(seconds: 20, until: {
                var chunk = [UInt8](repeating: 0, count: 64 * 1024)
                let count = chunk.withUnsafeMutableBytes { read(reader.rawValue, $0.baseAddress, $0.count) }
                if count > 0 { received += chunk.prefix(count) }
                atEnd = count == 0
                return atEnd
            }, "the clone's pipe was never closed")
            let texts = try TraceFile.decodePackets(received).map { try $0.decode() }.map(\.forTesting.str).filter { $0.hasPrefix("bulk") }
            // Two rounds from the file, then one more (named as the first) from the buffers.
            let padding = String(repeating: "b", count: 1000)
            #expect(texts == ((0..<128).map { $0 } + (0..<64).map { $0 }).map { "bulk \($0) \(padding)" })
            owner.endpoint.disconnect()
            cloner.endpoint.disconnect()
            bulk.endpoint.disconnect()
        }
    }

    @Test func aPipeWhoseReaderIsGoneEndsItsSessionAndNothingElse() throws {
        withoutLeaks {
            let (reader, writer) = Self.pipe()
            reader.close()
            let honest = honestProducer()
            let consumer = consumer()
            // Writing into it raises SIGPIPE, which would end this very process.
            consumer.endpoint.enableTracing(fileConfig(["honest.source"]), outputFile: writer.duplicate())
            writer.close()
            run(until: { consumer.disabledErrors.count == 1 }, "the session never ended")
            #expect(consumer.disabledErrors == ["writing the trace file failed: Broken pipe"])
            let other = self.consumer()
            other.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 2 })
            stopAndRead(other)
            expectComplete(other)
            for consumer in [consumer, other] { consumer.endpoint.disconnect() }
            honest.endpoint.disconnect()
        }
    }

    @Test func aFullDiskEndsItsSessionWithTheReason() throws {
        try withoutLeaks {
            let full = ScopedFD(open("/dev/full", O_WRONLY | O_CLOEXEC))
            try #require(full.rawValue >= 0)
            let honest = honestProducer()
            let consumer = consumer()
            consumer.endpoint.enableTracing(fileConfig(["honest.source"]), outputFile: full.duplicate())
            full.close()
            run(until: { consumer.disabledErrors.count == 1 }, "the session never ended")
            #expect(consumer.disabledErrors == ["writing the trace file failed: No space left on device"])
            #expect(core.sessions.count == 1, "ended, not freed: the consumer may still read its stats")
            let other = self.consumer()
            other.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 2 })
            stopAndRead(other)
            expectComplete(other)
            for consumer in [consumer, other] { consumer.endpoint.disconnect() }
            honest.endpoint.disconnect()
        }
    }

    /// A pipe: (read end, write end), close-on-exec.
    private static func pipe() -> (ScopedFD, ScopedFD) {
        var ends: [Int32] = [-1, -1]
        precondition(Glibc.pipe(&ends) == 0)
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
        return (ScopedFD(ends[0]), ScopedFD(ends[1]))
    }
}

/// A count bumped from a completion that may run on another thread.
final class Counter: @unchecked Sendable {
    // @unchecked Sendable: guarded by `lock`.
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
    func increment() { lock.lock(); count += 1; lock.unlock() }
}

/// Wakes a loop every `period` until stopped (loop-confined).
final class Ticker {
    private let loop: any IPCEventLoop
    private let period: Duration
    private var task: (any ScheduledTask)?

    init(loop: any IPCEventLoop, every period: Duration) {
        self.loop = loop
        self.period = period
        schedule()
    }

    private func schedule() {
        task = loop.scheduleTask(after: period) { [weak self] in self?.schedule() }
    }

    func stop() {
        task?.cancel()
        task = nil
    }
}
