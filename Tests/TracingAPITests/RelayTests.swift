// Tracing across machines, in one process: a host service serving producers on a unix socket
// and on TCP (RelayPort on), and a relay in front of it whose producers stand for another
// machine's. Everything runs on one EpollEventLoop over real sockets: producers behind the
// relay reach the host through two real connections (unix to the relay, TCP to the host).

import Foundation
import Glibc
import IPCProtocol
import IPCUnixSocket
import Logging
import Testing
import TestSupport

@testable import TracingAPI

final class RelayFixture {
    /// What the relay's machine id derives from, and the id Perfetto derives from it (the low
    /// 32 bits of FNV-1a-64("guest-machine"), computed outside this project).
    static let guestHint = "guest-machine"
    static let guestMachineID: UInt32 = 2_558_014_163

    let loop: EpollEventLoop
    let transport: UnixSocketTransport
    let directory = TemporaryDirectory()
    let hostProducerPath: String
    let consumerPath: String
    let relayPath: String
    /// The host's address for other machines (TCP port 0 until the host resolves it).
    var tcpAddress: String
    /// How the relay reaches that address (vsock: listen on any CID, connect to the local one).
    let relayTarget: (String) -> String
    var core: TracingServiceCore!
    var host: TracingServiceHost!
    var relay: TracingRelay!
    var hostClients: SystemTracingService!
    var guestClients: SystemTracingService!

    init(
        clockSyncInterval: Duration = .milliseconds(20), remoteAddress: String = "127.0.0.1:0",
        relayTarget: @escaping (String) -> String = { $0 }, relayLogger: Logger = .quiet
    ) throws {
        tcpAddress = remoteAddress
        self.relayTarget = relayTarget
        loop = try EpollEventLoop()
        transport = UnixSocketTransport(loop: loop)
        hostProducerPath = directory.path + "/host-producer.sock"
        consumerPath = directory.path + "/consumer.sock"
        relayPath = directory.path + "/guest-producer.sock"
        try startHost()
        var options = TracingRelay.Options()
        options.machineIDHint = Self.guestHint
        options.machineName = "guest"
        options.clockSyncInterval = clockSyncInterval
        options.reconnectPolicy = ReconnectPolicy(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(50))
        options.logger = relayLogger
        relay = try TracingRelay(
            transport: transport, producerAddresses: [relayPath], hostAddress: relayTarget(tcpAddress), options: options)
        hostClients = SystemTracingService(
            transport: transport, producerAddress: hostProducerPath, consumerAddress: consumerPath, reconnectPolicy: .never)
        guestClients = SystemTracingService(
            transport: transport, producerAddress: relayPath, consumerAddress: consumerPath,
            reconnectPolicy: ReconnectPolicy(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(50)))
    }

    deinit {
        relay.close()
        host.close()
        directory.remove()
    }

    /// (Re)starts the host service on the same addresses (the TCP port kept once known).
    func startHost() throws {
        host?.close()
        core = TracingServiceCore(eventLoop: loop)
        host = try TracingServiceHost(
            service: core,
            producerBackends: [.transport(transport, address: hostProducerPath), .transport(transport, address: tcpAddress)],
            consumerBackend: .transport(transport, address: consumerPath), enablesRelayEndpoint: true, logger: .quiet)
        tcpAddress = host.producerAddresses[1]
    }

    @discardableResult
    func run(
        seconds: Int = 10, until condition: () -> Bool, _ message: String = "condition never held",
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        drive(loop, seconds: seconds, until: condition, message, sourceLocation: sourceLocation)
    }

    /// A producer of `source` on `clients` that writes `count` packets "<source> <i>" (of
    /// `payload` more bytes each) when started.
    func producer(
        _ source: String, on clients: SystemTracingService, count: Int, payload: Int = 0,
        options: ProducerConnectionOptions? = nil
    ) -> RecordingProducer {
        let producer = RecordingProducer(
            service: clients, name: source, dataSources: [TracingConfigs.descriptor(source, willNotifyOnStop: true)],
            options: options)
        let filler = String(repeating: "x", count: payload)
        producer.onStart = { _, writer in
            for index in 0..<count { writer.writeTestPacket(timestamp: UInt64(index + 1), "\(source) \(index)\(filler)") }
        }
        run(until: { self.core.connectedProducers.contains { $0.name == source && $0.dataSources[source] != nil } },
            "\(source) never registered")
        return producer
    }

    func consumer() -> RecordingConsumer {
        let consumer = RecordingConsumer(service: hostClients)
        run(until: { consumer.connects == 1 }, "the consumer never connected")
        return consumer
    }

    /// Records `sources` with `configure` applied, stops after every started instance has
    /// started, and reads the trace.
    func record(
        _ sources: [String], expectStarted: Int, configure: (inout TraceConfig) -> Void = { _ in },
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> RecordingConsumer {
        let consumer = consumer()
        var config = TracingConfigs.config(buffers: [(4096, .ringBuffer)], dataSources: sources.map { ($0, 0) })
        configure(&config)
        consumer.endpoint.enableTracing(config, outputFile: nil)
        run(until: { self.core.sessions.values.max { $0.id < $1.id }?.instances.filter { $0.state == .started }.count == expectStarted },
            "not every instance started", sourceLocation: sourceLocation)
        var flushed = false
        consumer.endpoint.flush(timeoutMs: 5000, flags: FlushFlags()) { _ in flushed = true }
        run(until: { flushed }, "the flush never finished", sourceLocation: sourceLocation)
        let disabled = consumer.disabledErrors.count
        consumer.endpoint.disableTracing()
        run(until: { consumer.disabledErrors.count == disabled + 1 }, "tracing never stopped", sourceLocation: sourceLocation)
        consumer.endpoint.readBuffers()
        run(until: { consumer.readsCompleted == 1 }, "the read never finished", sourceLocation: sourceLocation)
        return consumer
    }

    static func texts(_ packets: [TracePacket], _ prefix: String) -> [String] {
        packets.map(\.forTesting.str).filter { $0.hasPrefix(prefix) }.map { String($0.prefix(while: { $0 != "x" })) }
    }

    /// Checks `packets` hold "<source> 0" … "<source> count-1" in order, each once; on failure
    /// says how many are there and the first one out of place (not thousands of lines).
    static func expectAll(
        _ packets: [TracePacket], _ source: String, count: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let found = texts(packets, source)
        let expected = (0..<count).map { "\(source) \($0)" }
        guard found != expected else { return }
        let firstWrong = (0..<min(found.count, expected.count)).first { found[$0] != expected[$0] }
            ?? min(found.count, expected.count)
        let what = firstWrong < found.count ? found[firstWrong] : "nothing"
        Issue.record(
            Comment(rawValue: "\(found.count) of \(count) packets of \(source); first out of place at \(firstWrong): \(what)"),
            sourceLocation: sourceLocation)
    }
}

/// Whether this machine can make a vsock connection to itself (the `vsock_loopback` module).
enum VsockLoopback {
    static let port: UInt32 = 29_000 + UInt32(getpid() % 1000)
    static let works: Bool = {
        guard let loop = try? EpollEventLoop() else { return false }
        let transport = UnixSocketTransport(loop: loop)
        final class Outcome: IPCListenerDelegate, IPCConnectionDelegate {
            var result: Bool?
            var accepted: [any IPCConnection] = []
            let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
            deinit { space.deallocate() }
            func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) { accepted.append(connection) }
            func connectionDidConnect(_ connection: any IPCConnection) { result = true }
            func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) { result = false }
            func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
            func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
            func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {}
        }
        let outcome = Outcome()
        guard let listener = try? transport.listen(
            at: "vsock://\(UInt32.max):\(port + 1)", options: .default, delegate: outcome) else { return false }
        defer { listener.close() }
        let connection = transport.connect(to: "vsock://1:\(port + 1)", options: .default, delegate: outcome)
        defer { connection.close() }
        _ = loop.run(until: { outcome.result != nil }, timeout: .seconds(2))
        return outcome.result == true
    }()
}

@Suite("Tracing across machines: relay and host", .serialized)
struct RelayTests {
    @Test func producersBehindTheRelayAndBesideTheHostShareOneTrace() throws {
        try Self.twoMachinesShareOneTrace(RelayFixture())
    }

    @Test(.enabled(if: VsockLoopback.works, "this machine has no vsock loopback (the vsock_loopback module): the relay was tested over TCP only"))
    func producersBehindARelayOverVsockShareOneTrace() throws {
        try Self.twoMachinesShareOneTrace(RelayFixture(
            remoteAddress: "vsock://\(UInt32.max):\(VsockLoopback.port)",
            relayTarget: { _ in "vsock://1:\(VsockLoopback.port)" }))
    }

    static func twoMachinesShareOneTrace(_ fixture: RelayFixture) throws {
        fixture.run(until: { fixture.relay.clockSyncCount >= 2 }, "the relay never synced its clock")
        let guest = fixture.producer("guest.source", on: fixture.guestClients, count: 300)
        let local = fixture.producer("host.source", on: fixture.hostClients, count: 300)
        let consumer = fixture.record(["guest.source", "host.source"], expectStarted: 2) { $0.traceAllMachines = true }
        let packets = consumer.decodedPackets()

        let guestPackets = packets.filter { $0.forTesting.str.hasPrefix("guest.source") }
        let hostPackets = packets.filter { $0.forTesting.str.hasPrefix("host.source") }
        RelayFixture.expectAll(guestPackets, "guest.source", count: 300)
        RelayFixture.expectAll(hostPackets, "host.source", count: 300)
        #expect(guestPackets.allSatisfy { $0.machineID == RelayFixture.guestMachineID })
        #expect(hostPackets.allSatisfy { !$0.hasMachineID }, "this machine's packets carry no machine id")
        // The guest's producer is a process of this machine to the kernel: the relay passes on
        // its credentials.
        #expect(guestPackets.allSatisfy { $0.trustedPid == getpid() && $0.trustedUid == Int32(bitPattern: getuid()) })

        let endpoint = try #require(guest.endpoint as? RemoteProducerEndpoint)
        #expect(endpoint.usesSharedMemoryEmulation, "behind a relay the host asks for shared-memory emulation")
        let hostSide = try #require(fixture.core.connectedProducers.first { $0.name == "guest.source" })
        #expect(hostSide.readableSharedMemory == nil, "the host keeps no shared memory for a remote producer")
        #expect(hostSide.machineName == "guest")
        #expect((local.endpoint as? RemoteProducerEndpoint)?.usesSharedMemoryEmulation == false)

        let systemInfo = packets.filter { if case .systemInfo? = $0.data { true } else { false } }
        #expect(systemInfo.count == 1)
        #expect(systemInfo.first?.machineID == RelayFixture.guestMachineID)
        #expect(systemInfo.first?.systemInfo.utsname.sysname == "Linux")
        let clockSync = packets.filter { if case .remoteClockSync? = $0.data { true } else { false } }
        #expect(clockSync.count == 1)
        #expect(clockSync.first?.machineID == RelayFixture.guestMachineID)
        let exchanges = clockSync.first?.remoteClockSync.syncedClocks ?? []
        #expect(exchanges.count >= 2)
        for exchange in exchanges {
            let boottime = UInt32(Perfetto_Protos_BuiltinClock.boottime.rawValue)
            let client = exchange.clientClocks.clocks.first { $0.clockID == boottime }?.timestamp ?? 0
            let host = exchange.hostClocks.clocks.first { $0.clockID == boottime }?.timestamp ?? 0
            #expect(client > 0 && host >= client, "the host reads its clock after the relay read its own")
        }
    }

    @Test func remoteDataSourcesRecordOnlyWhenTheConfigAsks() throws {
        let fixture = try RelayFixture()
        let guest = fixture.producer("shared.source", on: fixture.guestClients, count: 5)
        let local = fixture.producer("shared.source", on: fixture.hostClients, count: 5)
        fixture.run(until: { fixture.core.connectedProducers.filter { $0.dataSources["shared.source"] != nil }.count == 2 })

        func machines(_ configure: @escaping (inout TraceConfig) -> Void, started: Int) -> [UInt32] {
            let consumer = fixture.record(["shared.source"], expectStarted: started, configure: configure)
            let result = consumer.producerPackets().filter { $0.forTesting.str.hasPrefix("shared.source") }.map(\.machineID)
            consumer.endpoint.freeBuffers()
            fixture.run(until: { fixture.core.sessions.isEmpty }, "the session was not freed")
            return Array(Set(result)).sorted()
        }
        #expect(machines({ _ in }, started: 1) == [0], "by default only this machine's producers (Perfetto v54+)")
        #expect(machines({ $0.traceAllMachines = true }, started: 2) == [0, RelayFixture.guestMachineID])
        #expect(machines({ $0.dataSources[0].machineNameFilter = ["guest"] }, started: 1) == [RelayFixture.guestMachineID])
        #expect(machines({ $0.dataSources[0].machineNameFilter = ["host"] }, started: 1) == [0], "\"host\" names this machine")
        #expect(guest.started.count == 2 && local.started.count == 3)
    }

    @Test func largeChunksTravelInFramesUnderTheLimit() throws {
        let fixture = try RelayFixture()
        var options = ProducerConnectionOptions(name: "big")
        options.sharedMemoryPageSizeHint = 32 * 1024
        // 200 packets of ~4 KiB, written in one loop turn, fill 25 chunks of 32 KiB: one commit
        // of ~800 KiB, which must leave in frames under 128 KiB or the host drops the producer.
        let guest = fixture.producer("big.source", on: fixture.guestClients, count: 200, payload: 4000, options: options)
        let consumer = fixture.record(["big.source"], expectStarted: 1) {
            $0.traceAllMachines = true
            $0.buffers[0].sizeKb = 32 * 1024
        }
        RelayFixture.expectAll(consumer.producerPackets(), "big.source", count: 200)
        #expect(guest.disconnects == 0, "the host never dropped the producer for an oversized frame")
        let endpoint = try #require(guest.endpoint as? RemoteProducerEndpoint)
        #expect(endpoint.sharedMemory?.pageSize == 32 * 1024)
    }

    @Test func aFlushBringsWhatWritersStillHoldFromBehindTheRelay() throws {
        let fixture = try RelayFixture()
        let guest = fixture.producer("guest.source", on: fixture.guestClients, count: 10)
        guest.flushesWriters = false
        let consumer = fixture.consumer()
        var config = TracingConfigs.config(buffers: [(1024, .ringBuffer)], dataSources: [("guest.source", 0)])
        config.traceAllMachines = true
        consumer.endpoint.enableTracing(config, outputFile: nil)
        fixture.run(until: { !guest.writers.isEmpty })
        var flushed: Bool?
        consumer.endpoint.flush(timeoutMs: 5000, flags: FlushFlags()) { flushed = $0 }
        fixture.run(until: { flushed != nil })
        #expect(flushed == true)
        // Still tracing, the writer never flushed: only the producer's own scrape can bring them.
        consumer.endpoint.readBuffers()
        fixture.run(until: { consumer.readsCompleted == 1 })
        RelayFixture.expectAll(consumer.producerPackets(), "guest.source", count: 10)
    }

    @Test func aRelayThatLosesItsHostReconnectsAndItsProducersCarryOn() throws {
        let fixture = try RelayFixture()
        let guest = fixture.producer("guest.source", on: fixture.guestClients, count: 10)
        fixture.run(until: { fixture.relay.hostConnectionCount == 1 && fixture.relay.clockSyncCount >= 2 })

        try fixture.startHost()
        fixture.run(until: { guest.disconnects == 1 }, "the producer never heard its service went away")
        fixture.run(until: { fixture.relay.hostConnectionCount == 2 }, "the relay never reconnected to the new host")
        fixture.run(until: { fixture.core.connectedProducers.contains { $0.name == "guest.source" && $0.dataSources["guest.source"] != nil } },
            "the producer never came back through the relay")
        let consumer = fixture.record(["guest.source"], expectStarted: 1) { $0.traceAllMachines = true }
        RelayFixture.expectAll(consumer.producerPackets(), "guest.source", count: 10)
        #expect(consumer.producerPackets().allSatisfy { $0.machineID == RelayFixture.guestMachineID })
    }

    /// A host that answers every SyncClock three times (twice with has_more, then a last time),
    /// or, with `ending` false, only ever with has_more.
    final class RepeatingClockHost: Perfetto_Protos_RelayPortHandler {
        var pings = 0
        var updates = 0
        let ending: Bool
        init(ending: Bool) { self.ending = ending }
        func initRelay(
            _ request: Perfetto_Protos_InitRelayRequest, context: IPCCallContext,
            reply: Deferred<Perfetto_Protos_InitRelayResponse>
        ) {
            reply.resolve(Perfetto_Protos_InitRelayResponse())
        }
        func syncClock(
            _ request: Perfetto_Protos_SyncClockRequest, context: IPCCallContext,
            reply: Deferred<Perfetto_Protos_SyncClockResponse>
        ) {
            if request.phase == .ping { pings += 1 } else { updates += 1 }
            reply.resolve(Perfetto_Protos_SyncClockResponse(), hasMore: true)
            reply.resolve(Perfetto_Protos_SyncClockResponse(), hasMore: true)
            if ending { reply.resolve(Perfetto_Protos_SyncClockResponse()) }
        }
    }

    @Test(arguments: [true, false])
    func aHostAnsweringOneClockRequestSeveralTimesStartsOneExchange(ending: Bool) throws {
        let loop = try EpollEventLoop()
        let transport = UnixSocketTransport(loop: loop)
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let service = RepeatingClockHost(ending: ending)
        let host = try IPCHost(transport: transport, listeningAt: directory.path + "/host.sock", logger: .quiet)
        #expect(host.expose(service))
        var options = TracingRelay.Options()
        options.clockSyncInterval = .seconds(3600)  // one PING and one UPDATE in this test
        let relay = try TracingRelay(
            transport: transport, producerAddresses: [directory.path + "/relay.sock"], hostAddress: directory.path + "/host.sock",
            options: options)
        drive(loop, seconds: 10, until: { relay.clockSyncCount == 2 }, "the relay never finished its first clock exchange")
        let turns = LoopTurns(loop: loop)
        turns.start()
        drive(loop, seconds: 10, until: { turns.count == LoopTurns.total })
        // One UPDATE for the PING's first answer; before, each of the three answers sent one,
        // and each of their three answers scheduled a PING of its own.
        #expect(service.pings == 1)
        #expect(service.updates == 1)
        #expect(relay.clockSyncCount == 2)
        relay.close()
        host.close()
    }

    @Test func aRelayThatCannotReachItsHostSaysSoOnceWhileItKeepsTrying() throws {
        let log = LogRecord()
        let fixture = try RelayFixture(relayLogger: log.logger)
        fixture.run(until: { fixture.relay.hostConnectionCount == 1 })
        let host = fixture.tcpAddress
        fixture.host.close()
        // 10 ms, 20 ms, then every 50 ms: some twenty attempts in a second, all refused.
        let start = ContinuousClock.now
        fixture.run(until: { ContinuousClock.now - start > .seconds(1) })
        #expect(log.lines(at: .warning).count == 1, "\(log.all)")
        #expect(log.lines(at: .warning).first?.hasPrefix("warning: lost the host service at \(host): ") == true, "\(log.all)")
        #expect(log.lines(at: .notice).isEmpty)
        // It was trying all along: a host on the same address is found again.
        try fixture.startHost()
        fixture.run(until: { fixture.relay.hostConnectionCount == 2 }, "the relay gave up")
        #expect(log.lines(at: .warning).count == 1, "\(log.all)")
        #expect(log.lines(at: .notice) == ["notice: reached the host service at \(host) again"], "\(log.all)")
    }

    @Test func aRepeatedWarningIsSaidOnceThenEveryIntervalWithItsCount() {
        var warning = RepeatedWarning()
        let start = ContinuousClock.now
        #expect(warning.occurred(now: start) == "")
        #expect(warning.occurred(now: start + .seconds(1)) == nil)
        #expect(warning.occurred(now: start + .seconds(9)) == nil)
        #expect(warning.occurred(now: start + .seconds(10)) == " (and 2 times more since it was last said)")
        #expect(warning.occurred(now: start + .seconds(25)) == "")
    }

    @Test func peerIdentityCountsOnlyOnceAndOnlyAcrossMachines() throws {
        let fixture = try RelayFixture()
        func identity(_ hint: String, pid: Int32) -> IPCFrame {
            var frame = IPCFrame()
            frame.setPeerIdentity.pid = pid
            frame.setPeerIdentity.uid = 4343
            frame.setPeerIdentity.machineIDHint = hint
            frame.setPeerIdentity.machineName = hint
            return frame
        }
        // Over TCP: the first one counts, a second one (a producer behind a relay trying to be
        // someone else) is ignored.
        let tcp = try RawPortClient(
            socket: FileDescriptors.connectedTCPSocket(address: fixture.tcpAddress), service: "ProducerPort",
            loop: fixture.loop, beforeBind: [identity(RelayFixture.guestHint, pid: 4242), identity("intruder", pid: 1)])
        _ = RawProducer(client: tcp, name: "over-tcp")
        // On the unix socket: ignored, the kernel's word stands.
        let unix = try RawPortClient(
            socket: FileDescriptors.connectedUnixSocket(path: fixture.hostProducerPath), service: "ProducerPort",
            loop: fixture.loop, beforeBind: [identity("pretender", pid: 1)])
        _ = RawProducer(client: unix, name: "over-unix")
        fixture.run(until: { fixture.core.connectedProducers.count == 2 })
        let overTCP = try #require(fixture.core.connectedProducers.first { $0.name == "over-tcp" })
        let overUnix = try #require(fixture.core.connectedProducers.first { $0.name == "over-unix" })
        #expect(overTCP.machineID == RelayFixture.guestMachineID)
        #expect(overTCP.machineName == RelayFixture.guestHint)
        #expect(overTCP.pid == 4242 && overTCP.uid == 4343)
        #expect(overUnix.machineID == 0 && overUnix.machineName.isEmpty)
        #expect(overUnix.pid == getpid() && overUnix.uid == getuid())
        tcp.close()
        unix.close()
    }
}

@Suite("CommitData splitting under shared-memory emulation")
struct CommitDataSplittingTests {
    static func move(_ index: Int, bytes: Int) -> CommitDataRequest.ChunksToMove {
        var move = CommitDataRequest.ChunksToMove()
        move.page = UInt32(index)
        move.targetBuffer = 1
        move.data = Data(repeating: UInt8(truncatingIfNeeded: index), count: bytes)
        return move
    }

    @Test func aSmallRequestStaysWhole() {
        var request = CommitDataRequest()
        request.chunksToMove = [Self.move(0, bytes: 4096)]
        request.flushRequestID = 7
        #expect(CommitDataSplitting.split(request) == [request])
    }

    @Test func everyPartFitsInAFrameAndKeepsTheOrder() throws {
        var request = CommitDataRequest()
        request.chunksToMove = (0..<40).map { Self.move($0, bytes: 32 * 1024) }
        var patch = CommitDataRequest.ChunkToPatch()
        patch.writerID = 1
        patch.chunkID = 3
        patch.patches = (0..<2000).map { index in
            var entry = CommitDataRequest.ChunkToPatch.Patch()
            entry.offset = UInt32(index)
            entry.data = Data([1, 2, 3, 4])
            return entry
        }
        request.chunksToPatch = Array(repeating: patch, count: 10)
        request.flushRequestID = 42
        let parts = CommitDataSplitting.split(request)
        #expect(parts.count > 10)
        for part in parts {
            var frame = IPCFrame()
            frame.requestID = 1_000_000
            frame.msgInvokeMethod.serviceID = 1
            frame.msgInvokeMethod.methodID = 4
            frame.msgInvokeMethod.argsProto = try part.serializedBytes()
            let framed = try FrameSerializer.serialize(frame)
            #expect(framed.count <= WireLimits.defaultReceiveCapacity, "a part of \(framed.count) bytes passes the frame limit")
        }
        #expect(parts.flatMap(\.chunksToMove) == request.chunksToMove)
        #expect(parts.flatMap(\.chunksToPatch) == request.chunksToPatch)
        #expect(parts.map(\.hasFlushRequestID) == Array(repeating: false, count: parts.count - 1) + [true])
        #expect(parts.last?.flushRequestID == 42)
    }
}

@Suite("Producers of other machines over TCP", .serialized)
struct RemoteProducerTests {
    /// Client ids are per address: the first producer on the unix socket and the first on TCP
    /// have the same one, and neither may stand in for the other.
    @Test func producersOnTwoAddressesWithTheSameClientIDAreTwoProducers() throws {
        let fixture = try RelayFixture()
        fixture.relay.close()  // its RelayPort client would take the TCP host's first client id
        let local = fixture.producer("local.source", on: fixture.hostClients, count: 1)
        let tcp = try RawPortClient(
            socket: FileDescriptors.connectedTCPSocket(address: fixture.tcpAddress), service: "ProducerPort",
            loop: fixture.loop)
        let remote = RawProducer(client: tcp, name: "over-tcp")
        #expect(remote.initialized != nil, "InitializeConnection over TCP was refused")
        fixture.run(until: { fixture.core.connectedProducers.count == 2 })
        local.endpoint.disconnect()
        fixture.run(until: { fixture.core.connectedProducers.map(\.name) == ["over-tcp"] },
            "the TCP producer went with the unix one")
        #expect(fixture.host.connectedProducerCount == 1)
        tcp.close()
    }

    /// A producer that writes faster than the link to the host takes is slowed down by its own
    /// socket, not dropped: the relay stops reading from it while more than a megabyte waits
    /// for the host, and goes on when the host has taken it.
    @Test func aProducerFasterThanTheHostIsSlowedDownNotDropped() throws {
        let loop = try EpollEventLoop()
        let transport = UnixSocketTransport(loop: loop)
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        // A host that accepts and reads nothing until told.
        let host = RecordingListenerDelegate()
        host.onAccept = { connection, _ in connection.setReadingPaused(true) }
        let hostListener = try transport.listen(at: "127.0.0.1:0", options: .default, delegate: host)
        defer { hostListener.close() }
        var options = TracingRelay.Options()
        options.machineIDHint = RelayFixture.guestHint
        let relayPath = directory.path + "/relay.sock"
        let relay = try TracingRelay(
            transport: transport, producerAddresses: [relayPath], hostAddress: hostListener.address, options: options)
        defer { relay.close() }
        let producer = FileDescriptors.connectedUnixSocket(path: relayPath)
        _ = fcntl(producer.rawValue, F_SETFL, fcntl(producer.rawValue, F_GETFL) | O_NONBLOCK)
        // The relay's own RelayPort connection and the producer's.
        #expect(loop.run(until: { host.connections.count == 2 }, timeout: .seconds(5)))

        // Twice the relay's send-queue bound (16 MiB): without flow control it drops both sides.
        let total = 32 << 20
        let pattern = (0..<(64 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var written = 0
        func writable() -> Bool {
            var poller = pollfd(fd: producer.rawValue, events: Int16(POLLOUT), revents: 0)
            return Glibc.poll(&poller, 1, 0) > 0 && poller.revents & Int16(POLLOUT) != 0
        }
        /// Writes until done, or until the socket stays full for `patience` while the loop runs.
        func write(patience: Duration) {
            while written < total {
                let offset = written % pattern.count
                let n = pattern.withUnsafeBytes {
                    Glibc.send(producer.rawValue, $0.baseAddress! + offset, min($0.count - offset, total - written), Int32(MSG_NOSIGNAL))
                }
                if n > 0 {
                    written += n
                } else if n < 0 && errno == EAGAIN {
                    guard loop.run(until: writable, timeout: patience) else { return }
                } else {
                    Issue.record("the relay dropped the producer after \(written) bytes (errno \(errno))")
                    return
                }
            }
        }
        write(patience: .milliseconds(300))
        // Held back: the relay's megabyte and what the kernel buffers on both links (TCP's grow
        // to a few MiB each).
        #expect(written < total / 2, "the producer was never slowed down: \(written) bytes went out")

        // The host reads again: the producer's bytes all arrive, in order, after the relay's
        // SetPeerIdentity frame.
        for connection in host.connections { connection.setReadingPaused(false) }
        write(patience: .seconds(5))
        #expect(written == total)
        let carried = host.delegates.max { $0.received.count < $1.received.count }
        #expect(loop.run(until: { (carried?.received.count ?? 0) >= total }, timeout: .seconds(10)))
        let received = carried?.received ?? []
        let identityLength = received.count >= 4 ? 4 + Int(received.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }) : 0
        let producerBytes = received.dropFirst(identityLength)
        #expect(producerBytes.count == total)
        let start = producerBytes.startIndex
        let intact = stride(from: 0, to: producerBytes.count, by: pattern.count).allSatisfy {
            Array(producerBytes[(start + $0)..<min(start + $0 + pattern.count, producerBytes.endIndex)]) == pattern
        }
        #expect(intact, "bytes lost or out of order")
    }

    /// Perfetto's SDK ends a short-lived process with a last CommitData and closes at once:
    /// under emulation that request is the only copy of the data.
    @Test func aLastCommitJustBeforeTheConnectionClosesIsKept() throws {
        let fixture = try RelayFixture()
        var identity = IPCFrame()
        identity.setPeerIdentity.machineIDHint = RelayFixture.guestHint
        let client = try RawPortClient(
            socket: FileDescriptors.connectedTCPSocket(address: fixture.tcpAddress), service: "ProducerPort",
            loop: fixture.loop, beforeBind: [identity])
        let producer = RawProducer(client: client, name: "short-lived")
        #expect(producer.initialized?.useShmemEmulation == true, "no fd crosses TCP: the host asks for emulation")
        producer.register("remote.source")
        let consumer = fixture.consumer()
        var config = TracingConfigs.config(buffers: [(1024, .ringBuffer)], dataSources: [("remote.source", 0)])
        config.traceAllMachines = true
        consumer.endpoint.enableTracing(config, outputFile: nil)
        let start = try #require(producer.waitForStart())
        #expect(producer.sharedMemory == nil && producer.client.peer.receivedFDs.isEmpty, "setup_tracing brought no fd")

        var move = RawChunks.move(page: 0, buffer: start.buffer)
        move.data = Data(RawChunks.chunk(
            writer: 1, id: 0, count: 2, records: [RawChunks.record("last words 0"), RawChunks.record("last words 1")]))
        producer.commit([move])
        producer.close()
        fixture.run(until: { fixture.core.connectedProducers.isEmpty }, "the producer's end was never noticed")

        consumer.endpoint.disableTracing()
        fixture.run(until: { consumer.disabledErrors.count == 1 })
        consumer.endpoint.readBuffers()
        fixture.run(until: { consumer.readsCompleted == 1 })
        let packets = consumer.producerPackets()
        #expect(RelayFixture.texts(packets, "last words") == ["last words 0", "last words 1"])
        #expect(packets.allSatisfy { $0.machineID == RelayFixture.guestMachineID })
    }
}
