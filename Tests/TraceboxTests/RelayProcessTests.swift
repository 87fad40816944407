// tracebox relay as a user runs it: a host `tracebox traced` also listening on TCP with the
// relay endpoint on, a `tracebox relay` in front of it with its own producer socket (the
// "guest"), a producer on each side, and `tracebox perfetto` recording both machines.

import Foundation
import Glibc
import Testing
import TestSupport
import TracingAPI

@Suite("tracebox relay", .serialized)
final class RelayProcessTests: TraceboxFixture {
    let directory = TemporaryDirectory()

    deinit { directory.remove() }

    /// The id the host derives from the relay's `--machine-id-hint guest-machine`: the low 32
    /// bits of FNV-1a-64, as Perfetto's traced derives it (computed outside this project).
    static let guestMachineID: UInt32 = 2_558_014_163

    /// The host: `tracebox traced` on the unix socket and on a TCP port for relays, with the
    /// relay endpoint on. Returns it and its TCP address.
    private func startHost() throws -> (Subprocess, String) {
        let service = try startService(["--producer-socket", producerSocket + ",127.0.0.1:0", "--enable-relay-endpoint"])
        let tcp = service.standardOutput.split(separator: ",").first { $0.hasPrefix("127.0.0.1:") }?
            .prefix { $0 != " " }.description
        if tcp == nil {
            service.signal(SIGTERM)
            service.wait()
        }
        return (service, try #require(tcp, "traced did not say its TCP address: \(service.standardOutput)"))
    }

    @Test func aGuestsProducerIsRecordedThroughTheRelayWithItsMachine() throws {
        let (service, tcp) = try startHost()
        defer { service.signal(SIGTERM); service.wait() }

        let guestSocket = directory.path + "/guest-producer.sock"
        let relay = try start(
            ["relay", "--relay-socket", tcp, "--producer-socket", guestSocket, "--machine-name", "guest",
             "--machine-id-hint", "guest-machine", "--clock-sync-interval-ms", "100"],
            name: "relay")
        defer { relay.signal(SIGTERM); relay.wait() }
        #expect(poll(seconds: 20) { relay.standardOutput.contains("tracebox relay: producers at") }, Comment(rawValue: relay.standardError))

        let guest = try Subprocess(
            ["producer", "-n", "20", "-d", "guest.test"], environment: ["PERFETTO_PRODUCER_SOCK_NAME": guestSocket],
            directory: directory.path, name: "guest-producer")
        let local = try start(["producer", "-n", "20", "-d", "host.test"], name: "host-producer")
        _ = query(until: "guest.test", name: "query-guest")
        let state = query(until: "host.test", name: "query-host")
        #expect(state.contains("guest.test") && state.contains("host.test"), Comment(rawValue: state))

        let out = directory.path + "/two-machines.pftrace"
        let recorder = try start(
            ["perfetto", "-c", try config("""
                buffers { size_kb: 4096 }
                data_sources { config { name: "guest.test" } }
                data_sources { config { name: "host.test" } }
                trace_all_machines: true
                duration_ms: 1000
                """), "--txt", "-o", out],
            name: "perfetto")
        #expect(recorder.wait() == 0, Comment(rawValue: recorder.standardError))
        #expect(guest.wait() == 0, Comment(rawValue: guest.standardError))
        #expect(local.wait() == 0, Comment(rawValue: local.standardError))

        let packets = try trace(out)
        let tests = packets.filter { if case .forTesting? = $0.data { true } else { false } }
        let fromGuest = tests.filter { $0.trustedPid == guest.pid }
        let fromHost = tests.filter { $0.trustedPid == local.pid }
        #expect(fromGuest.map(\.forTesting.seqValue) == (0..<20).map(UInt32.init), "every packet of the guest")
        #expect(fromHost.map(\.forTesting.seqValue) == (0..<20).map(UInt32.init), "every packet of the host")
        #expect(fromGuest.allSatisfy { $0.machineID == Self.guestMachineID })
        #expect(fromHost.allSatisfy { !$0.hasMachineID })
        let systemInfo = packets.filter { if case .systemInfo? = $0.data { true } else { false } }
        #expect(systemInfo.map(\.machineID) == [Self.guestMachineID], "the guest's SystemInfo, once")
        let clockSync = packets.filter { if case .remoteClockSync? = $0.data { true } else { false } }
        #expect(clockSync.map(\.machineID) == [Self.guestMachineID])
        #expect((clockSync.first?.remoteClockSync.syncedClocks.count ?? 0) >= 2, "a PING and an UPDATE exchange at least")
    }

    @Test func aRelayOutOfDescriptorsSaysSoOnceAndCarriesNewcomersWhenSomeAreFree() throws {
        let (service, tcp) = try startHost()
        defer { service.signal(SIGTERM); service.wait() }
        // 40 descriptors: each producer carried costs the relay two (its own and the host's).
        let guestSocket = directory.path + "/guest-producer.sock"
        let relay = try start(
            ["relay", "--relay-socket", tcp, "--producer-socket", guestSocket], name: "relay",
            wrapper: ["/usr/bin/prlimit", "--nofile=40"])
        defer { relay.signal(SIGTERM); relay.wait() }
        #expect(poll(seconds: 20) { relay.standardOutput.contains("tracebox relay: producers at") }, Comment(rawValue: relay.standardError))
        let warning = "cannot accept new producers on \(guestSocket)"
        var log: String { relay.standardOutput + relay.standardError }
        let descriptors = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(relay.pid)/fd").count) ?? -1 }
        // Counted once the relay is settled (its line to the host is made after it prints where
        // its producers connect): the same count for half a second.
        var idle = descriptors()
        var steadySince = Date()
        #expect(poll(seconds: 20) {
            let now = descriptors()
            if now != idle { (idle, steadySince) = (now, Date()) }
            return Date().timeIntervalSince(steadySince) >= 0.5
        }, "the relay's descriptors never settled")
        var peers = (0..<40).map { _ in FileDescriptors.connectedUnixSocket(path: guestSocket) }
        #expect(poll(seconds: 20) { log.contains(warning) }, Comment(rawValue: log))
        // It tries again ten times a second, and a producer it accepts but cannot carry (no
        // descriptor for the host side) frees one: neither is said again at once.
        #expect(!poll(seconds: 0.5) { log.components(separatedBy: warning).count > 2 }, Comment(rawValue: log))
        #expect(log.components(separatedBy: "cannot carry a producer to the host service").count <= 2, Comment(rawValue: log))

        peers.removeAll()
        // The relay takes the peers still queued (gone: dropped at once) and is back where it was.
        #expect(poll(seconds: 20) { descriptors() == idle }, "the relay kept \(descriptors()) descriptors, \(idle) before")
        let guest = try Subprocess(
            ["producer", "-d", "newcomer.source", "-n", "1"], environment: ["PERFETTO_PRODUCER_SOCK_NAME": guestSocket],
            directory: directory.path, name: "newcomer")
        let state = query(until: "data source newcomer.source", name: "query")
        #expect(state.contains("data source newcomer.source"), Comment(rawValue: log))
        guest.signal(SIGTERM)
        _ = guest.wait()
    }

    @Test func aRelayWithoutAHostSaysHowToNameOne() throws {
        var environment = self.environment
        environment["PERFETTO_RELAY_SOCK_NAME"] = ""
        let relay = try Subprocess(
            ["relay", "--producer-socket", directory.path + "/guest.sock"], environment: environment,
            directory: directory.path, name: "relay")
        #expect(relay.wait() != 0)
        #expect(relay.standardError.contains("--relay-socket"), Comment(rawValue: relay.standardError))
    }
}
