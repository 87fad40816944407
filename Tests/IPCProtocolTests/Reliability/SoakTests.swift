// Many clients, many calls of every kind, random disconnects and reconnects, against one host:
// every call is resolved or rejected exactly once, no reply is lost or duplicated, and
// descriptors and memory come back to where they were.
//
// CI runs a reduced scale. Full scale (200 clients x 2,000 calls): scripts/soak.sh, which sets
// PERFETTO_IPC_SOAK=full.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Synchronization
import Testing
import TestSupport

@Suite("Soak")
struct SoakTests {
    static let full = ProcessInfo.processInfo.environment["PERFETTO_IPC_SOAK"] == "full"

    @Test func manyClientsManyCallsRandomDisconnects() throws {
        let clientCount = Self.full ? 200 : 20
        let callsPerClient = Self.full ? 2000 : 150
        let hostLoop = try EpollEventLoop.startOnNewThread(name: "soak-host")
        defer { hostLoop.shutdown() }
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path + "/soak.sock"
        let hostBox = UncheckedSendableBox(Holder())
        let ready = Atomic<Bool>(false)
        hostLoop.execute {
            let host = try! IPCHost(backend: .unixSocket(path, loop: hostLoop))
            host.expose(EchoServiceImplementation())
            hostBox.value.host = host
            ready.store(true, ordering: .releasing)
        }
        while !ready.load(ordering: .acquiring) { sched_yield() }

        let loop = try EpollEventLoop()
        let soak = Soak(loop: loop, path: path, clients: clientCount, callsPerClient: callsPerClient)
        let baselineFDs = FileDescriptors.openDescriptors().count
        soak.start()
        let finished = loop.run(until: { soak.isFinished }, timeout: Self.full ? .seconds(600) : .seconds(120))
        #expect(finished, "issued \(soak.issued), resolved \(soak.outcomes.count)")
        let rssAfterRun = residentSetKiB()
        soak.tearDown()
        loop.run(until: { false }, timeout: .milliseconds(50))  // let closes settle

        #expect(soak.issued == clientCount * callsPerClient)
        #expect(soak.outcomes.count == soak.issued, "every call resolved or rejected")
        #expect(soak.outcomes.values.allSatisfy { $0 == 1 }, "exactly once")
        #expect(soak.wrongReplies == 0, "replies match their requests")
        #expect(soak.successes > soak.issued / 2, "rejections: \(soak.rejections)")
        #expect(soak.reconnects > 0)
        #expect(FileDescriptors.openDescriptors().count == baselineFDs, "descriptors back to baseline")
        // The warm run's footprint bounds the steady state: tearing down must not add to it.
        #expect(residentSetKiB() <= rssAfterRun + 8 * 1024)
        let hostClients = Atomic<Int>(-1)
        hostLoop.execute {
            hostClients.store(hostBox.value.host?.clientCount ?? -1, ordering: .releasing)
            hostBox.value.host?.close()
            hostBox.value.host = nil
        }
        while hostClients.load(ordering: .acquiring) == -1 { sched_yield() }
        #expect(hostClients.load(ordering: .acquiring) == 0, "the host forgot every client")
    }
}

final class Holder: @unchecked Sendable { var host: IPCHost? }

/// The clients' side of the soak, on one loop.
final class Soak {
    let loop: EpollEventLoop
    let path: String
    let clientCount: Int
    let callsPerClient: Int
    var rng = SplitMix64(seed: 2026)
    var slots: [Slot] = []
    /// Clients and proxies replaced by a reconnect. Kept until the end: releasing a proxy
    /// releases its callbacks unanswered (by design), and the soak counts every callback.
    var retired: [(IPCClient, Pfpeers_EchoServiceProxy)] = []
    var issued = 0
    var outcomes: [Int: Int] = [:]
    var successes = 0
    var wrongReplies = 0
    var reconnects = 0
    var rejections: [String: Int] = [:]
    let memfd = FileDescriptors.memfd(named: "soak", content: [UInt8](repeating: 5, count: 321))

    final class Slot {
        var client: IPCClient
        var proxy: Pfpeers_EchoServiceProxy
        var remaining: Int
        var inFlight = 0
        init(client: IPCClient, proxy: Pfpeers_EchoServiceProxy, remaining: Int) {
            self.client = client
            self.proxy = proxy
            self.remaining = remaining
        }
    }

    init(loop: EpollEventLoop, path: String, clients: Int, callsPerClient: Int) {
        self.loop = loop
        self.path = path
        clientCount = clients
        self.callsPerClient = callsPerClient
    }

    var isFinished: Bool {
        issued == clientCount * callsPerClient && outcomes.count == issued
    }

    func start() {
        for index in 0..<clientCount {
            let (client, proxy) = connect()
            slots.append(Slot(client: client, proxy: proxy, remaining: callsPerClient))
            proxy.onConnect = { [unowned self] in self.pump(index) }
        }
    }

    func tearDown() {
        for slot in slots { slot.client.close() }
        slots.removeAll()
        retired.removeAll()
    }

    private func connect() -> (IPCClient, Pfpeers_EchoServiceProxy) {
        let client = IPCClient(backend: .unixSocket(path, loop: loop))
        let proxy = Pfpeers_EchoServiceProxy()
        client.bind(proxy)
        return (client, proxy)
    }

    /// Keeps up to four calls in flight on slot `index`.
    private func pump(_ index: Int) {
        let slot = slots[index]
        while slot.inFlight < 4, slot.remaining > 0, slot.proxy.isBound {
            slot.remaining -= 1
            slot.inFlight += 1
            issue(on: slot, index: index)
        }
    }

    private func issue(on slot: Slot, index: Int) {
        let id = issued
        issued += 1
        var request = Pfpeers_EchoRequest()
        request.data = Data("call-\(id)".utf8)
        request.seq = UInt32(id)
        let kind = rng.next() % 100
        let proxy = slot.proxy
        let done: (AsyncResult<Pfpeers_EchoReply>) -> Void = { [unowned self] result in
            let success = result.isSuccess
            if let error = result.error { rejections["\(error.code): \(error.message.prefix(60))", default: 0] += 1 }
            outcomes[id, default: 0] += 1
            if success { successes += 1 }
            slot.inFlight -= 1
            afterCall(index)
        }
        if kind < 25 {
            let count = UInt32(1 + rng.next() % 5)
            request.count = count
            var expectedIndex: UInt32 = 0
            proxy.streamEcho(request) { [unowned self] result in
                if let message = result.message {
                    if message.index != expectedIndex || message.seq != UInt32(id) { wrongReplies += 1 }
                    expectedIndex += 1
                }
                if !result.hasMore {
                    if result.isSuccess && expectedIndex != count { wrongReplies += 1 }
                    done(result)
                }
            }
        } else {
            let withFD = kind >= 85
            if withFD && kind % 2 == 0 { request.wantFd = true }
            let sendFD = withFD && kind % 2 == 1
            proxy.echo(request, fd: sendFD ? memfd.rawValue : nil) { [unowned self] result in
                if let message = result.message {
                    if message.seq != UInt32(id) || message.data != request.data { wrongReplies += 1 }
                    if sendFD && message.receivedFdSize != 321 { wrongReplies += 1 }
                    if request.wantFd && result.fileDescriptor == nil { wrongReplies += 1 }
                }
                done(result)
            }
        }
    }

    /// After a call: sometimes drop the connection (its other calls are rejected) and
    /// reconnect; then keep the slot busy.
    private func afterCall(_ index: Int) {
        let slot = slots[index]
        if rng.next() % 100 == 0, slot.proxy.isBound {
            reconnects += 1
            slot.client.close()  // rejects what is in flight on it, each exactly once
            retired.append((slot.client, slot.proxy))
            let (client, proxy) = connect()
            slot.client = client
            slot.proxy = proxy
            proxy.onConnect = { [unowned self] in self.pump(index) }
            return
        }
        pump(index)
    }
}

/// This process's resident set size in KiB.
func residentSetKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return 0 }
    return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
}
