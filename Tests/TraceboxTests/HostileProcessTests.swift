// The tracing service's defences with real processes: who may connect to its socket files, what
// a process of another uid sees and is stamped with, a producer frozen with SIGSTOP in the
// middle of a session (its flush and stop end by their timeouts; everyone else goes on), and
// more peers than the service has descriptors for.

import Foundation
import Glibc
import Testing
import TestSupport
import TracingAPI

@Suite("tracebox against hostile processes", .serialized)
final class HostileProcessTests: TraceboxFixture {
    let directory = TemporaryDirectory()

    deinit { directory.remove() }

    private static func mode(_ path: String) -> (mode: UInt32, group: gid_t)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (UInt32(info.st_mode) & 0o7777, info.st_gid)
    }

    // MARK: Who may connect

    @Test func theSocketsAreOpenToEveryUserUnlessNarrowed() throws {
        let service = try startService()
        #expect(Self.mode(directory.path + "/producer.sock")?.mode == 0o666)
        #expect(Self.mode(directory.path + "/consumer.sock")?.mode == 0o666)
        service.signal(SIGTERM)
        #expect(service.wait() == 0)

        // As Perfetto's traced takes it: <producer group>:<mode>:<consumer group>:<mode>.
        let narrowed = try startService(["--set-socket-permissions", "0:0660:0:0600"], name: "narrowed")
        #expect(Self.mode(directory.path + "/producer.sock").map { $0.mode == 0o660 && $0.group == 0 } == true)
        #expect(Self.mode(directory.path + "/consumer.sock").map { $0.mode == 0o600 && $0.group == 0 } == true)
        narrowed.signal(SIGTERM)
        #expect(narrowed.wait() == 0)

        let wrong = try start(["traced", "--set-socket-permissions", "0:0660:no-such-group-here:0600"], name: "wrong")
        #expect(wrong.wait() == 1)
        #expect(wrong.standardError.hasPrefix("tracebox traced: --set-socket-permissions wants"))
        #expect(wrong.standardError.split(separator: "\n").count == 1)
    }

    // MARK: Other uids

    /// Runs a command as `nobody` (65534): root and setpriv needed.
    static let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    static let canSwitchUser = getuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0

    @Test(.enabled(if: canSwitchUser, "needs root and setpriv"))
    func anotherUidSeesNoneOfOurSessionsAndItsPacketsCarryItsUid() throws {
        // nobody must be able to reach the socket files: their folder is ours, mode 0700.
        chmod(directory.path, 0o755)
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let foreign = try start(["producer", "-d", "nobody.source", "-n", "3", "-t", "60"], name: "nobody-producer", wrapper: Self.asNobody)
        let seen = query(until: "data source nobody.source", name: "root-query-1")
        #expect(seen.contains("uid=65534 pid=\(foreign.pid)"), "the producer is who the kernel says")

        // Root records; nobody's query does not show root's session, root's does.
        let out = directory.path + "/out.pftrace"
        let text = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "nobody.source" } }
            duration_ms: 60000
            unique_session_name: "root-secret"
            """
        let recorder = try start(["perfetto", "-c", try config(text, name: "root.txt"), "--txt", "-o", out], name: "recorder")
        #expect(poll(seconds: 20) { foreign.standardOutput.contains("3 packets written") }, "nobody's producer never wrote")
        let ours = query(until: "name=root-secret", name: "root-query-2")
        #expect(ours.contains("Tracing sessions (1):"))
        let theirs = query(until: "Tracing sessions", name: "nobody-query", wrapper: Self.asNobody)
        #expect(theirs.contains("Tracing sessions (0):"), Comment(rawValue: theirs))
        #expect(!theirs.contains("root-secret"))

        recorder.signal(SIGINT)
        #expect(recorder.wait() == 0, Comment(rawValue: recorder.standardError))
        #expect(foreign.wait() == 0)
        let packets = try trace(out)
        let written = packets.filter { if case .forTesting? = $0.data { true } else { false } }
        #expect(written.count == 3)
        #expect(written.allSatisfy { $0.trustedUid == 65534 && $0.trustedPid == foreign.pid })
    }

    // MARK: A producer frozen mid-session

    @Test func aStoppedProducerHoldsUpFlushAndStopOnlyUntilTheirTimeouts() throws {
        let service = try startService()
        defer { service.signal(SIGTERM); service.wait() }
        let frozen = try start(["producer", "-d", "frozen.source", "--stay", "-t", "60"], name: "frozen")
        defer { frozen.kill9() }
        _ = query(until: "data source frozen.source", name: "query-frozen")
        frozen.signal(SIGSTOP)
        #expect(frozen.waitUntilStopped(), "the producer did not stop")
        let live = try start(["producer", "-d", "live.source", "-n", "5"], name: "live")
        _ = query(until: "data source live.source", name: "query-live")

        // duration 1 s, then a flush the frozen producer never answers (500 ms) and a stop it
        // never acknowledges (500 ms): the recording ends, with everything the live one wrote.
        let out = directory.path + "/out.pftrace"
        let text = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "frozen.source" } }
            data_sources { config { name: "live.source" } }
            duration_ms: 1000
            flush_timeout_ms: 500
            data_source_stop_timeout_ms: 500
            """
        let recorder = try start(["perfetto", "-c", try config(text, name: "frozen.txt"), "--txt", "-o", out], name: "recorder")
        // Meanwhile the service answers others.
        let during = query(until: "Tracing sessions (1):", name: "query-during")
        #expect(during.contains("Tracing sessions (1):"))
        #expect(recorder.wait(seconds: 30) == 0, Comment(rawValue: recorder.standardError))
        #expect(live.wait() == 0)
        let packets = try trace(out)
        let texts = packets.compactMap { packet -> String? in
            if case .forTesting(let test)? = packet.data { return test.str } else { return nil }
        }
        #expect(texts == (0..<5).map { "packet \($0) " })
        let stats = packets.last { if case .traceStats? = $0.data { true } else { false } }?.traceStats
        #expect(stats?.flushesFailed == 1, "the flush failed by its timeout")
        #expect(frozen.exitStatus == nil && frozen.killedBySignal == nil, "still frozen, still connected")

        // Another session goes on as usual while the frozen producer is still there.
        let again = try start(["producer", "-d", "live.source", "-n", "2"], name: "live-2")
        _ = query(until: "data source live.source", name: "query-live-2")
        let second = directory.path + "/second.pftrace"
        let secondText = """
            buffers { size_kb: 1024 }
            data_sources { config { name: "live.source" } }
            duration_ms: 500
            """
        let recorder2 = try start(["perfetto", "-c", try config(secondText, name: "second.txt"), "--txt", "-o", second], name: "recorder-2")
        #expect(recorder2.wait() == 0, Comment(rawValue: recorder2.standardError))
        #expect(again.wait() == 0)
    }

    // MARK: Out of descriptors

    @Test func aServiceOutOfDescriptorsSaysSoOnceAndServesNewcomersWhenSomeAreFree() throws {
        // 40 descriptors: the service's own dozen and fewer than 30 connections.
        let service = try start(["traced"], name: "traced", wrapper: ["/usr/bin/prlimit", "--nofile=40"])
        try #require(poll(seconds: 20) { service.standardOutput.contains("tracebox traced: producers at") })
        let warning = "cannot accept new clients on \(producerSocket)"
        var log: String { service.standardOutput + service.standardError }
        // Connects succeed (the kernel queues them); the service cannot take them all.
        var peers = (0..<60).map { _ in FileDescriptors.connectedUnixSocket(path: producerSocket) }
        #expect(poll(seconds: 20) { log.contains(warning) }, Comment(rawValue: log))
        // It tries again ten times a second meanwhile, and does not say so each time.
        #expect(!poll(seconds: 0.5) { log.components(separatedBy: warning).count > 2 }, Comment(rawValue: log))

        peers.removeAll()
        // The service takes the queued peers (gone: closed at once), and newcomers again.
        let producer = try start(["producer", "-d", "newcomer.source", "-n", "1"], name: "newcomer")
        let state = query(until: "data source newcomer.source", name: "query")
        #expect(state.contains("data source newcomer.source"), Comment(rawValue: log))
        producer.signal(SIGTERM)
        _ = producer.wait()
        service.signal(SIGTERM)
        #expect(service.wait() == 0)
    }
}
