// Faults with real processes on real sockets: the service SIGKILLed in the middle of a session
// (consumers hear it once; producers stop their writers within their stall policy, wait, and
// come back to the next service), and producers SIGKILLed in the middle of writing (what they
// committed and what the service scraped from their shared memory is in the trace).

import Foundation
import Glibc
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport
import TracingAPI

@Suite("tracebox under faults", .serialized)
final class ServiceFaultTests: TraceboxFixture {
    let directory = TemporaryDirectory()

    deinit { directory.remove() }

    /// `perfetto --query` until it lists `count` test data sources.
    private func waitForTestSources(_ count: Int, name: String) -> Bool {
        poll(seconds: 20) {
            guard let query = try? self.start(["perfetto", "--query"], name: name), query.wait() == 0 else { return false }
            return registeredTestSources(query.standardOutput) == count
        }
    }

    private func occurrences(of text: String, in output: String) -> Int {
        output.components(separatedBy: text).count - 1
    }

    @Test func aServiceKilledMidSessionIsReportedOnceAndItsProducersComeBackToTheNextOne() throws {
        let first = try startService(name: "traced-1")
        // Writers that give up on a full shared memory after 200 ms.
        let producers = try (0..<2).map {
            try start(["producer", "--continuous", "--threads", "2", "-p", "64", "--stall-ms", "200", "--name", "p\($0)"], name: "producer-\($0)")
        }
        #expect(waitForTestSources(2, name: "query-1"), "the producers never registered")

        // Two sessions: one recorded by `tracebox perfetto`, one by a consumer in this process.
        let long = try config("""
            buffers { size_kb: 4096 }
            data_sources { config { name: "tracebox.test" } }
            duration_ms: 600000
            """, name: "long.txt")
        let recorder = try start(["perfetto", "-c", long, "--txt", "-o", directory.path + "/lost.pftrace"], name: "perfetto-1")
        let loop = try EpollEventLoop()
        let consumer = TestConsumer(loop: loop, transport: UnixSocketTransport(loop: loop), address: consumerSocket)
        consumer.endpoint.enableTracing(.testSource(bufferKb: 4096), outputFile: nil)
        #expect(loop.run(until: { consumer.connects == 1 }, timeout: .seconds(20)))
        // Both producers write into both sessions.
        #expect(poll(seconds: 20) {
            producers.allSatisfy { self.occurrences(of: "writing into instance", in: $0.standardOutput) == 2 }
        }, "the producers never started writing")

        first.kill9()

        #expect(recorder.wait() == 1)
        let said = recorder.standardError.split(separator: "\n")
        #expect(said == ["tracebox perfetto: the tracing service went away during the recording"], Comment(rawValue: recorder.standardError))
        #expect(loop.run(until: { consumer.disconnects > 0 }, timeout: .seconds(20)))
        // Calls after the loss fail at once; the loss is not reported again.
        consumer.endpoint.readBuffers()
        consumer.endpoint.getTraceStats()
        consumer.endpoint.disableTracing()
        #expect(loop.run(until: { consumer.readsFinished == 1 }, timeout: .seconds(20)))
        _ = loop.run(until: { false }, timeout: .milliseconds(50))
        #expect(consumer.disconnects == 1)
        #expect(consumer.disabled == ["the tracing service went away"])
        #expect(consumer.packets.isEmpty)

        // The producers close their writers (none stuck beyond its stall policy) and stay.
        #expect(poll(seconds: 20) {
            producers.allSatisfy { $0.standardOutput.contains("writers closed after losing the service") }
        }, "writers still busy: \(producers.map(\.standardOutput))")
        #expect(producers.allSatisfy { $0.exitStatus == nil && $0.killedBySignal == nil })
        // One is told to quit while there is no service: it ends, its threads joined.
        producers[1].signal(SIGTERM)
        #expect(producers[1].wait() == 0, Comment(rawValue: producers[1].standardError))
        #expect(producers[1].standardOutput.contains("wrote 0 packets into 0 instances"), Comment(rawValue: producers[1].standardOutput))

        // A new service on the same sockets (the old files are stale): the other producer comes
        // back by itself, and a session records everything it writes.
        let second = try startService(name: "traced-2")
        defer { second.signal(SIGTERM); second.wait() }
        #expect(waitForTestSources(1, name: "query-2"), "the producer did not come back")
        let out = directory.path + "/second.pftrace"
        let short = try config("""
            buffers { size_kb: 8192 }
            data_sources { config { name: "tracebox.test" } }
            duration_ms: 1000
            """, name: "short.txt")
        let again = try start(["perfetto", "-c", short, "--txt", "-o", out], name: "perfetto-2")
        #expect(again.wait() == 0, Comment(rawValue: again.standardError))
        #expect(again.standardError.contains("nothing lost"), Comment(rawValue: again.standardError))
        producers[0].signal(SIGTERM)
        #expect(producers[0].wait() == 0)

        let account = TraceAccount(try trace(out))
        #expect(account.problems.isEmpty, Comment(rawValue: account.problems.joined(separator: "\n")))
        let sequences = account.sequences(of: producers[0].pid)
        #expect(sequences.count == 2, "one sequence per writer thread")
        #expect(sequences.allSatisfy { $0.ended != nil && $0.ended! > 0 && $0.missing == 0 }, "\(sequences)")
        // What the producer says it wrote in the session it finished is what the trace holds.
        let written = sequences.reduce(0) { $0 + Int($1.ended ?? 0) }
        #expect(producers[0].standardOutput.contains("wrote \(written) packets into 1 instances"), Comment(rawValue: producers[0].standardOutput))
    }

    @Test func producersKilledWhileWritingKeepWhatTheyCommittedAndWhatWasScraped() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        // One writes 300 packets per thread (dozens of chunks, most committed), then freezes
        // with its last chunks never committed; the other writes until it is killed.
        let frozen = try start(
            ["producer", "--continuous", "--threads", "3", "-p", "200", "--stop-after", "300", "--name", "frozen"], name: "frozen")
        let running = try start(["producer", "--continuous", "--threads", "2", "-p", "200", "--name", "running"], name: "running")
        #expect(waitForTestSources(2, name: "query"), "the producers never registered")

        let loop = try EpollEventLoop()
        let consumer = TestConsumer(loop: loop, transport: UnixSocketTransport(loop: loop), address: consumerSocket)
        consumer.endpoint.enableTracing(.testSource(bufferKb: 16384), outputFile: nil)
        // The loop runs meanwhile, so that the session starts.
        let stopped = poll(seconds: 30) {
            _ = loop.run(until: { false }, timeout: .milliseconds(2))
            return frozen.waitUntilStopped(seconds: 0)
        }
        #expect(stopped, "the frozen producer never got to write: \(frozen.standardError)")
        // The running one has had chunks committed (the service holds more than the frozen
        // one's): then both die.
        var enough = false
        let deadline = Date().addingTimeInterval(30)
        while !enough && Date() < deadline {
            let asked = consumer.stats.count
            consumer.endpoint.getTraceStats()
            _ = loop.run(until: { consumer.stats.count > asked }, timeout: .seconds(5))
            enough = (consumer.stats.last?.bufferStats.first?.chunksWritten ?? 0) >= 100
        }
        #expect(enough, "chunks never committed: \(consumer.stats.last.map { "\($0)" } ?? "no stats")")
        frozen.kill9()
        running.kill9()

        consumer.endpoint.disableTracing()
        #expect(loop.run(until: { !consumer.disabled.isEmpty }, timeout: .seconds(30)))
        let account = TraceAccount(try consumer.read(on: loop))
        #expect(account.problems.isEmpty, Comment(rawValue: account.problems.joined(separator: "\n")))
        #expect(account.countedLosses == 0, "\(account.stats.map { "\($0)" } ?? "no stats")")

        // Every packet the frozen one wrote, the last chunk of each thread by scraping.
        let frozenSequences = account.sequences(of: frozen.pid)
        #expect(frozenSequences.count == 3)
        #expect(frozenSequences.allSatisfy { $0.delivered == 300 && $0.reached == 300 && $0.ended == nil }, "\(frozenSequences)")
        // The one killed mid-write: from its first packet on, nothing missing.
        let runningSequences = account.sequences(of: running.pid)
        #expect(runningSequences.count == 2)
        #expect(runningSequences.allSatisfy { $0.delivered > 0 && $0.missing == 0 && $0.ended == nil }, "\(runningSequences)")
    }
}
