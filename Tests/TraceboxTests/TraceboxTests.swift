// tracebox as users run it: `traced`, `producer` and `perfetto` as separate processes on real
// unix sockets, every packet accounted for; the error paths a person meets; and the faults
// the tracing system must survive (a producer killed mid-write, a service killed under a
// producer).

import Foundation
import Glibc
import Testing
import TestSupport
import TracingAPI

@Suite("tracebox programs", .serialized)
final class TraceboxTests: TraceboxFixture {
    let directory = TemporaryDirectory()

    deinit { directory.remove() }

    private static let recordingConfig = """
        buffers { size_kb: 4096 }
        data_sources { config { name: "tracebox.test" } }
        data_sources { config { name: "track_event" track_event_config { enabled_categories: "tracebox" } } }
        duration_ms: 1000
        """

    /// `tracebox producer` writing 20 packets of 100 bytes from two threads, once the service
    /// lists its data sources.
    private func startRegisteredProducer(sourceLocation: SourceLocation = #_sourceLocation) throws -> Subprocess {
        let producer = try start(["producer", "-n", "20", "-p", "100", "--threads", "2"], name: "producer")
        #expect(poll(seconds: 20) {
            (try? self.start(["perfetto", "--query"], name: "query")).map { query in
                query.wait() == 0 && query.standardOutput.contains("data source track_event")
            } ?? false
        }, "the producer never registered", sourceLocation: sourceLocation)
        return producer
    }

    @Test(arguments: [false, true])
    func everyPacketTheProducerWroteIsInTheRecording(writeIntoFile: Bool) throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let producer = try startRegisteredProducer()
        let out = directory.path + "/out.pftrace"
        let text = Self.recordingConfig + (writeIntoFile ? "\nwrite_into_file: true\nfile_write_period_ms: 100" : "")
        let recorder = try start(["perfetto", "-c", try config(text), "--txt", "-o", out], name: "perfetto")
        #expect(recorder.wait() == 0, Comment(rawValue: recorder.standardError))
        #expect(producer.wait() == 0, "the producer exits once its data source stops: \(producer.standardError)")

        let packets = try trace(out)
        let tests = packets.filter { if case .forTesting? = $0.data { true } else { false } }
        #expect(tests.map(\.forTesting.str) == (0..<20).map { "packet \($0) " + String(repeating: "x", count: 100) })
        #expect(tests.map(\.forTesting.seqValue) == (0..<20).map(UInt32.init))
        #expect(tests.allSatisfy { UInt32(bitPattern: $0.trustedUid) == getuid() && $0.trustedPid == producer.pid })
        let slices = packets.filter { if case .trackEvent(let event)? = $0.data { event.type == .sliceBegin } else { false } }
        #expect(slices.count == 40, "20 slices from each of 2 threads")
        #expect(recorder.standardError.contains("nothing lost"), Comment(rawValue: recorder.standardError))
    }

    /// Into a pipe the trace goes through a writer thread with a bounded queue (the loop waits
    /// when the reader is slow): every packet arrives, after a reader that starts late too.
    @Test func aRecordingIntoAPipeWithASlowReaderArrivesWhole() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let producer = try startRegisteredProducer()
        let out = directory.path + "/piped.pftrace"
        // sh -c SCRIPT sh TRACEBOX ARGS...: the recorder's stdout is a pipe read a second late.
        let piped = try start(
            ["perfetto", "-c", try config(Self.recordingConfig), "--txt", "-o", "-"], name: "piped",
            wrapper: ["/bin/sh", "-c", "\"$@\" | { sleep 1; cat > '\(out)'; }", "sh"])
        #expect(piped.wait() == 0, Comment(rawValue: piped.standardError))
        #expect(producer.wait() == 0)
        let tests = try trace(out).filter { if case .forTesting? = $0.data { true } else { false } }
        #expect(tests.map(\.forTesting.seqValue) == (0..<20).map(UInt32.init))
        #expect(piped.standardError.contains("written to stdout"), Comment(rawValue: piped.standardError))
    }

    /// The loss `tracebox perfetto` reports is its own session's: chunks the service discarded
    /// from another producer's lying commits are counted service-wide, in every session's stats.
    @Test func anotherProducersDiscardedCommitsAreNotThisRecordingsLoss() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        // A producer commits a chunk of a page it has not got, and waits for Sync's answer.
        let liar = RawFramePeer(socket: FileDescriptors.connectedUnixSocket(path: producerSocket))
        liar.send(TestFrames.bind("ProducerPort", requestID: 1))
        try #require(poll(seconds: 20) { liar.poll() >= 1 })
        let bound = liar.frames[0].msgBindServiceReply
        let methods = Dictionary(uniqueKeysWithValues: bound.methods.map { ($0.name, $0.id) })
        func call(_ method: String, _ arguments: Data, requestID: UInt64) {
            liar.send(TestFrames.invoke(
                serviceID: bound.serviceID, methodID: methods[method] ?? 0, arguments: arguments, requestID: requestID))
        }
        var lie = CommitDataRequest()
        lie.chunksToMove = [.with { $0.page = 9_999; $0.chunk = 0; $0.targetBuffer = 0 }]
        call("InitializeConnection", try Perfetto_Protos_InitializeConnectionRequest.with { $0.producerName = "liar" }.serializedData(), requestID: 2)
        call("CommitData", try lie.serializedData(), requestID: 3)
        call("Sync", try Perfetto_Protos_SyncRequest().serializedData(), requestID: 4)
        #expect(poll(seconds: 20) { liar.poll() >= 4 && liar.frames.contains { $0.requestID == 4 } })

        let producer = try start(["producer", "-n", "3"], name: "producer")
        _ = query(until: "data source tracebox.test", name: "query")
        let out = directory.path + "/out.pftrace"
        let text = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "tracebox.test" } }
            duration_ms: 300
            """
        let recorder = try start(["perfetto", "-c", try config(text), "--txt", "-o", out], name: "perfetto")
        #expect(recorder.wait() == 0, Comment(rawValue: recorder.standardError))
        #expect(producer.wait() == 0)
        let stats = try trace(out).last { if case .traceStats? = $0.data { true } else { false } }?.traceStats
        #expect(stats?.chunksDiscarded == 1, "the liar's chunk, counted service-wide")
        #expect(recorder.standardError.contains("nothing lost"), Comment(rawValue: recorder.standardError))
    }

    @Test func aProducerKilledMidWriteLosesNothingItFinished() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        // 40 packets of ~500 bytes: several complete chunks, none committed, then SIGSTOP.
        let producer = try start(["producer", "-n", "40", "-p", "500", "--stop-before-commit"], name: "producer")
        let out = directory.path + "/out.pftrace"
        let text = """
            buffers { size_kb: 4096 }
            data_sources { config { name: "tracebox.test" } }
            duration_ms: 60000
            """
        let recorder = try start(["perfetto", "-c", try config(text), "--txt", "-o", out], name: "perfetto")
        #expect(producer.waitUntilStopped(), "the producer never got to write")
        producer.kill9()
        recorder.signal(SIGINT)
        #expect(recorder.wait() == 0, Comment(rawValue: recorder.standardError))

        let texts = try trace(out).compactMap { packet -> String? in
            if case .forTesting(let test)? = packet.data { return test.str } else { return nil }
        }
        // Every packet it finished comes from scraping: its writer counts one past them.
        let padding = String(repeating: "x", count: 500)
        #expect(texts == (0..<40).map { "packet \($0) " + padding })
    }

    @Test func aProducerReconnectsWhenItsServiceIsKilledAndAnotherStarts() throws {
        let first = try startService(name: "traced-1")
        let producer = try start(["producer", "--stay", "-t", "60"], name: "producer")
        defer { producer.signal(SIGTERM); producer.wait() }
        let registered = { (name: String) -> Bool in
            (try? self.start(["perfetto", "--query"], name: name)).map {
                $0.wait() == 0 && $0.standardOutput.contains("data source tracebox.test")
            } ?? false
        }
        #expect(poll(seconds: 20) { registered("query-1") })
        first.kill9()
        // The killed service left its socket files: the new one replaces them (stale).
        let second = try startService(name: "traced-2")
        defer { second.signal(SIGTERM); second.wait() }
        #expect(poll(seconds: 20) { registered("query-2") }, "the producer did not come back")
        #expect(producer.exitStatus == nil && producer.killedBySignal == nil, "the producer lived through it")
    }

    @Test func aServiceStoppedWithSIGTERMFinishesItsFilesAndRemovesItsSockets() throws {
        let service = try startService()
        let producer = try start(["producer", "-n", "10", "--stay"], name: "producer")
        defer { producer.signal(SIGTERM); producer.wait() }
        let out = directory.path + "/out.pftrace"
        let text = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "tracebox.test" } }
            write_into_file: true
            file_write_period_ms: 60000
            duration_ms: 60000
            """
        let recorder = try start(["perfetto", "-c", try config(text), "--txt", "-o", out], name: "perfetto")
        #expect(poll(seconds: 20) { producer.standardOutput.contains("10 packets written") }, "the producer never wrote")
        service.signal(SIGTERM)
        #expect(service.wait() == 0)
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/producer.sock"))
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/consumer.sock"))
        recorder.wait()
        let texts = try trace(out).compactMap { packet -> String? in
            if case .forTesting(let test)? = packet.data { return test.str } else { return nil }
        }
        #expect(texts == (0..<10).map { "packet \($0) " }, "written into the file before the service went")
    }

    /// Producer and data source names come from any user's processes: `--query` shows them with
    /// the characters a terminal would act on escaped (retitling, clearing, a faked prompt line).
    @Test func queryShowsNamesFromOtherProcessesWithoutTheirEscapeSequences() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let evilName = "evil\u{1B}]0;OWNED\u{7}\u{1B}[2J\r\nroot# fake\u{202E}"
        let evilSource = "ds\u{1B}[8mhidden\u{1B}[0m\u{8}"
        let producer = try start(["producer", "--name", evilName, "-d", evilSource, "-n", "1"], name: "evil-producer")
        defer { producer.signal(SIGKILL); producer.wait() }
        var output = ""
        #expect(poll(seconds: 20) {
            guard let query = try? self.start(["perfetto", "--query"], name: "query"), query.wait() == 0 else { return false }
            output = query.standardOutput
            return output.contains("data source ds")
        }, "the producer never registered")
        #expect(!output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x0D || $0 == "\u{202E}" })
        #expect(output.contains(#"evil\u{1B}]0;OWNED\u{7}\u{1B}[2J\u{D}\u{A}root# fake\u{202E}"#), Comment(rawValue: output))
        #expect(output.contains(#"data source ds\u{1B}[8mhidden\u{1B}[0m\u{8}"#), Comment(rawValue: output))
        #expect(!output.split(separator: "\n").contains { $0.hasPrefix("root# fake") }, "a name faked a line")
    }

    @Test func errorsAreOneClearLine() throws {
        let noService = try start(["perfetto", "--query"], name: "no-service")
        #expect(noService.wait() == 1)
        #expect(noService.standardError.contains("no tracing service is listening"))
        #expect(noService.standardError.contains("tracebox traced"))

        // Something listens there but hangs up on every client: not "nothing is listening".
        let refusing = FileDescriptors.boundUnixSocket(path: consumerSocket)
        #expect(listen(refusing.rawValue, 4) == 0)
        let refusingFD = refusing.rawValue
        let hangUp = Thread { Glibc.close(accept(refusingFD, nil, nil)) }
        hangUp.start()
        let refused = try start(["perfetto", "--query"], name: "refused")
        #expect(refused.wait() == 1)
        #expect(refused.standardError.contains("cannot use the tracing service at \(consumerSocket)"), Comment(rawValue: refused.standardError))
        #expect(refused.standardError.split(separator: "\n").count == 1)
        refusing.close()
        unlink(consumerSocket)

        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let second = try start(["traced"], name: "second")
        #expect(second.wait() == 1)
        #expect(second.standardError.contains("a service is already running there"))
        #expect(second.standardError.split(separator: "\n").count == 1)

        let bad = try config("buffers { size_kb: 1024 }\ndata_sources {\n  config { name: \"x\" no_such_field: 3 }\n}\n", name: "bad.txt")
        let recorder = try start(["perfetto", "-c", bad, "--txt", "-o", directory.path + "/bad.pftrace"], name: "bad")
        #expect(recorder.wait() == 1)
        #expect(recorder.standardError.contains("line 3: unknown field \"no_such_field\""), Comment(rawValue: recorder.standardError))
    }

    @Test func aTraceThatCannotBeWrittenIsOneClearLineAndAFailure() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let text = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "tracebox.test" } }
            duration_ms: 100
            """
        // Every write to /dev/full fails with ENOSPC, as a full disk does.
        let recorder = try start(["perfetto", "-c", try config(text, name: "full.txt"), "--txt", "-o", "/dev/full"], name: "full")
        #expect(recorder.wait() == 1)
        #expect(recorder.standardError.contains("cannot write /dev/full: write: No space left on device"),
                Comment(rawValue: recorder.standardError))
        #expect(recorder.standardError.split(separator: "\n").count == 1, Comment(rawValue: recorder.standardError))
    }

    @Test func ctrlCEndsARecordingEarlyAndKeepsWhatWasRecorded() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let producer = try start(["producer", "-n", "7"], name: "producer")
        let out = directory.path + "/out.pftrace"
        let text = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "tracebox.test" } }
            duration_ms: 600000
            """
        let recorder = try start(["perfetto", "-c", try config(text), "--txt", "-o", out], name: "perfetto")
        // Once the service has what the producer wrote, interrupt.
        #expect(poll(seconds: 20) { producer.standardOutput.contains("7 packets written") }, "the producer never wrote")
        recorder.signal(SIGINT)
        #expect(recorder.wait() == 0, Comment(rawValue: recorder.standardError))
        #expect(producer.wait() == 0)
        let texts = try trace(out).compactMap { packet -> String? in
            if case .forTesting(let test)? = packet.data { return test.str } else { return nil }
        }
        #expect(texts == (0..<7).map { "packet \($0) " })
    }
}
