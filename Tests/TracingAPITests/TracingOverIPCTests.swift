// The same tracing scenarios on every binding: producers and consumers connected directly to
// the service, and through ProducerPort / ConsumerPort on the in-memory, epoll and libuv
// backends. Application code (RecordingProducer, RecordingConsumer) is the same in each.

import Foundation
import IPCInProcess
import IPCLibuv
import IPCProtocol
import IPCSocketCore
import IPCUnixSocket
import Testing
import TestSupport

@testable import TracingAPI

/// A service, and what producers and consumers connect through.
final class TracingWorld {
    let loop: any IPCEventLoop
    let core: TracingServiceCore
    /// The service as applications see it: the core itself, or a SystemTracingService.
    let clients: any TracingService
    /// The service served over IPC (nil for the direct binding).
    let host: TracingServiceHost?
    /// Whether producer identity comes from the connection rather than the options.
    let identityFromConnection: Bool
    private let runLoop: (() -> Bool) -> Bool
    private let cleanUp: () -> Void

    init(
        loop: any IPCEventLoop, core: TracingServiceCore, clients: any TracingService, host: TracingServiceHost?,
        run: @escaping (() -> Bool) -> Bool, cleanUp: @escaping () -> Void = {}
    ) {
        self.loop = loop
        self.core = core
        self.clients = clients
        self.host = host
        self.identityFromConnection = host != nil
        self.runLoop = run
        self.cleanUp = cleanUp
    }

    /// Drives the loop until `condition` holds (real loops: at most 5 s); records a failure if not.
    @discardableResult
    func run(
        until condition: () -> Bool, _ message: String = "condition never held",
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        let held = runLoop(condition)
        if !held { Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation) }
        return held
    }

    /// Lets the work already queued, and what it causes a few hops later, happen: a task that
    /// posts itself again 20 times runs last (posted tasks run in order on every loop).
    func settle() {
        let turns = LoopTurns(loop: loop)
        turns.start()
        _ = runLoop { turns.count == LoopTurns.total }
    }

    func tearDown() {
        host?.close()
        cleanUp()
    }
}

/// Runs a manual loop until `condition` holds, moving virtual time on (up to 10 s) while it
/// is idle, so timers (flush timeouts, reconnect backoff) fire as on a real loop.
func runVirtually(_ loop: ManualEventLoop, until condition: () -> Bool) -> Bool {
    for _ in 0..<1000 {
        if loop.run(until: condition) { return true }
        loop.advanceTime(by: .milliseconds(10))
    }
    return condition()
}

/// One way of binding producers and consumers to the service.
struct TracingBinding: Sendable, CustomTestStringConvertible {
    let name: String
    let make: @Sendable () throws -> TracingWorld
    var testDescription: String { name }

    static let direct = TracingBinding(name: "direct") {
        let loop = ManualEventLoop()
        let core = TracingServiceCore(eventLoop: loop)
        return TracingWorld(loop: loop, core: core, clients: core, host: nil, run: { runVirtually(loop, until: $0) })
    }

    static let inMemory = TracingBinding(name: "ports, in-memory") {
        let loop = ManualEventLoop()
        let transport = InProcessTransport(loop: loop)
        return try served(loop: loop, transport: transport, producer: "producer", consumer: "consumer") {
            runVirtually(loop, until: $0)
        }
    }

    static let epoll = TracingBinding(name: "ports, epoll unix socket") {
        let loop = try EpollEventLoop()
        let directory = TemporaryDirectory()
        return try served(
            loop: loop, transport: UnixSocketTransport(loop: loop), producer: directory.path + "/p.sock",
            consumer: directory.path + "/c.sock", run: { loop.run(until: $0, timeout: .seconds(5)) },
            cleanUp: { directory.remove() })
    }

    static let libuv = TracingBinding(name: "ports, libuv unix socket") {
        let loop = try LibuvEventLoop()
        let directory = TemporaryDirectory()
        return try served(
            loop: loop, transport: LibuvTransport(loop: loop), producer: directory.path + "/p.sock",
            consumer: directory.path + "/c.sock", run: { loop.run(until: $0, timeout: .seconds(5)) },
            cleanUp: {
                loop.shutdown()
                directory.remove()
            })
    }

    /// The ports over real unix sockets, on a deterministic loop with virtual time: the same
    /// socket transport the epoll and libuv loops run (IPCSocketCore), polled by the test.
    static let unixSocketsOnManualLoop = TracingBinding(name: "ports, unix socket, manual loop") {
        let loop = ManualEventLoop()
        let directory = TemporaryDirectory()
        return try served(
            loop: loop, transport: POSIXSocketTransport(loop: loop), producer: directory.path + "/p.sock",
            consumer: directory.path + "/c.sock", run: { runVirtually(loop, until: $0) }, cleanUp: { directory.remove() })
    }

    static let all = [direct, inMemory, epoll, libuv]
    static let overIPC = [inMemory, epoll, libuv]
    /// Bindings on a ManualEventLoop, for scenarios that move virtual time.
    static let deterministic = [direct, inMemory, unixSocketsOnManualLoop]

    private static func served(
        loop: any IPCEventLoop, transport: any IPCTransport, producer: String, consumer: String,
        run: @escaping (() -> Bool) -> Bool, cleanUp: @escaping () -> Void = {}
    ) throws -> TracingWorld {
        let core = TracingServiceCore(eventLoop: loop)
        let host = try TracingServiceHost(
            service: core, producerBackends: [.transport(transport, address: producer)],
            consumerBackend: .transport(transport, address: consumer))
        let clients = SystemTracingService(
            transport: transport, producerAddress: producer, consumerAddress: consumer,
            reconnectPolicy: ReconnectPolicy(initialDelay: .milliseconds(10), maximumDelay: .milliseconds(40)))
        return TracingWorld(loop: loop, core: core, clients: clients, host: host, run: run, cleanUp: cleanUp)
    }
}

@Suite("Tracing over every binding", .serialized)
struct TracingOverIPCTests {
    private func connectedProducer(
        _ world: TracingWorld, name: String = "app", dataSources: [DataSourceDescriptor]
    ) -> RecordingProducer {
        let producer = RecordingProducer(service: world.clients, name: name, dataSources: dataSources)
        world.run(until: { producer.connects == 1 }, "the producer did not connect")
        // Registrations travel after the handshake: wait until the service has them.
        world.run(until: { world.core.connectedProducers.contains { $0.name == name && $0.dataSources.count == dataSources.count } })
        return producer
    }

    private func connectedConsumer(_ world: TracingWorld) -> RecordingConsumer {
        let consumer = RecordingConsumer(service: world.clients)
        world.run(until: { consumer.connects == 1 }, "the consumer did not connect")
        return consumer
    }

    private func read(_ consumer: RecordingConsumer, _ world: TracingWorld) {
        let before = consumer.readsCompleted
        consumer.endpoint.readBuffers()
        world.run(until: { consumer.readsCompleted == before + 1 }, "the read did not complete")
    }

    @Test(arguments: TracingBinding.all)
    func aSessionDeliversEveryPacketWithTheTrustedIdentity(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in
            for index in 0..<5 { writer.writeTestPacket(timestamp: UInt64(100 + index), "packet \(index)") }
        }
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        #expect(producer.events == ["connect", "setup-tracing", "setup test.source", "start test.source"])
        #expect(producer.endpoint.sharedMemory?.size == 256 * 1024)

        consumer.endpoint.disableTracing()
        world.run(until: { consumer.disabledErrors.count == 1 })
        #expect(consumer.disabledErrors == [""])
        #expect(producer.stopped == [producer.started[0].id])

        read(consumer, world)
        let written = consumer.producerPackets()
        #expect(written.map(\.forTesting.str) == (0..<5).map { "packet \($0)" })
        #expect(written.map(\.timestamp) == [100, 101, 102, 103, 104])
        let uid = world.identityFromConnection ? getuid() : 1000
        let pid = world.identityFromConnection ? getpid() : 4242
        for packet in written {
            #expect(UInt32(bitPattern: packet.trustedUid) == uid)
            #expect(packet.trustedPid == pid)
        }
        #expect(consumer.decodedPackets().last?.hasTraceStats ?? false)
    }

    /// A session holding 60 test packets (timestamps 0..<60) ending in `payload`, flushed and
    /// ready to read; `keepWriter` gets the producer's writer. The producer is returned to be
    /// kept: released, it disconnects, and what its writer writes afterwards goes nowhere.
    private func sessionOfSixtyPackets(
        _ world: TracingWorld, payload: String, keepWriter: @escaping (TraceWriter) -> Void = { _ in }
    ) -> (consumer: RecordingConsumer, producer: RecordingProducer) {
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source")])
        producer.onStart = { _, writer in
            for index in 0..<60 { writer.writeTestPacket(timestamp: UInt64(index), "\(index) \(payload)") }
            writer.flush()
            keepWriter(writer)
        }
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(buffers: [(4096, .ringBuffer)]), outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        var flushed: Bool?
        consumer.endpoint.flush(timeoutMs: 2000, flags: FlushFlags()) { flushed = $0 }
        world.run(until: { flushed != nil })
        #expect(flushed == true)
        return (consumer, producer)
    }

    @Test(arguments: TracingBinding.all)
    func aReadLargerThanAFrameArrivesWholeAndInOrder(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        // ~180 KiB: more than a frame holds, within the shared memory the writer has.
        let payload = String(repeating: "x", count: 3000)
        let (consumer, producer) = sessionOfSixtyPackets(world, payload: payload)
        defer { withExtendedLifetime(producer) {} }
        read(consumer, world)
        let written = consumer.producerPackets()
        #expect(written.count == 60)
        #expect(written.map(\.timestamp) == (0..<60).map(UInt64.init))
        #expect(written.allSatisfy { $0.forTesting.str.hasSuffix(payload) })
    }

    @Test(arguments: TracingBinding.all)
    func aReadInManyPartsArrivesWholeOnceAndInOrder(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        world.core.readPartChunkBytes = 1  // every chunk a part of its own, each read on its own turn
        let payload = String(repeating: "y", count: 2000)
        let (consumer, producer) = sessionOfSixtyPackets(world, payload: payload)
        defer { withExtendedLifetime(producer) {} }
        read(consumer, world)
        // ~120 KiB in chunks of a few KiB: one batch (one reply) or more per part.
        #expect(consumer.batchesHasMore.count >= 20)
        let written = consumer.producerPackets()
        #expect(written.map(\.timestamp) == (0..<60).map(UInt64.init))
        #expect(written.allSatisfy { $0.forTesting.str.hasSuffix(payload) })
        // The stats close the read, once; a second read finds nothing new but the stats.
        #expect(consumer.decodedPackets().filter(\.hasTraceStats).count == 1)
        #expect(consumer.decodedPackets().last?.hasTraceStats ?? false)
        read(consumer, world)
        #expect(consumer.producerPackets().count == 60)
        // Reading a session that is gone ends the read at once.
        consumer.endpoint.freeBuffers()
        read(consumer, world)
    }

    @Test(arguments: TracingBinding.all)
    func freeBuffersAnswersOnceWhenTheServiceHasFreedThem(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let (consumer, producer) = sessionOfSixtyPackets(world, payload: "p")
        defer { withExtendedLifetime(producer) {} }
        #expect(world.core.sessions.count == 1)
        var answers: [Bool] = []
        consumer.endpoint.freeBuffers { answers.append($0) }
        #expect(answers.isEmpty, "never called back inside the call")
        world.run(until: { !answers.isEmpty })
        #expect(world.core.sessions.isEmpty, "answered before the session was freed")
        world.settle()
        #expect(answers == [true])

        // Without a connection (or a service) the answer is false, once.
        consumer.endpoint.disconnect()
        consumer.endpoint.freeBuffers { answers.append($0) }
        world.run(until: { answers.count == 2 })
        world.settle()
        #expect(answers == [true, false])
    }

    /// A read takes what the buffers held when it started: packets written while it goes on
    /// wait for the next read, so a read of a busy session still ends.
    @Test(arguments: TracingBinding.deterministic)
    func aReadEndsWithWhatTheBuffersHeldWhenItStarted(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        world.core.readPartChunkBytes = 1
        let payload = String(repeating: "z", count: 2000)
        var writer: TraceWriter?
        let (consumer, producer) = sessionOfSixtyPackets(world, payload: payload) { writer = $0 }
        defer { withExtendedLifetime(producer) {} }
        let before = consumer.readsCompleted
        consumer.endpoint.readBuffers()
        // More packets while the read goes on, part by part.
        for index in 60..<120 { writer?.writeTestPacket(timestamp: UInt64(index), "\(index) \(payload)") }
        writer?.flush()
        world.run(until: { consumer.readsCompleted == before + 1 }, "the read did not end")
        let firstRead = consumer.producerPackets().map(\.timestamp)
        #expect(firstRead == (0..<60).map(UInt64.init), "the read has what the buffers held, no more")
        read(consumer, world)
        let timestamps = consumer.producerPackets().map(\.timestamp)
        #expect(timestamps == (0..<120).map(UInt64.init), "the next read has the rest, nothing twice")
        #expect(consumer.producerPackets().allSatisfy { $0.forTesting.str.hasSuffix(payload) })
    }

    @Test(arguments: TracingBinding.all)
    func aDetachedSessionOutlivesItsConsumerAndIsAttachedFromANewConnection(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 7, "kept across attach") }
        var first: RecordingConsumer? = connectedConsumer(world)
        var config = TracingConfigs.config()
        config.uniqueSessionName = "detached"
        first!.endpoint.enableTracing(config, outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        var detached: Bool?
        first!.endpoint.detach(key: "my-key") { detached = $0 }
        world.run(until: { detached != nil })
        #expect(detached == true)
        world.settle()
        // Perfetto's `perfetto --detach` deletes its output file if EnableTracing fails.
        #expect(first!.disabledErrors.isEmpty, "detaching does not end the consumer's EnableTracing")
        first!.endpoint.disconnect()
        first = nil
        world.settle()
        #expect(world.core.sessions.count == 1, "a detached session survives its consumer")
        #expect(producer.stopped.isEmpty)

        let second = connectedConsumer(world)
        var attached: TraceConfig??
        second.endpoint.attach(key: "other-key") { attached = .some($0) }
        world.run(until: { attached != nil })
        #expect(attached! == nil, "an unknown key attaches nothing")
        attached = nil
        second.endpoint.attach(key: "my-key") { attached = .some($0) }
        world.run(until: { attached != nil })
        #expect(attached??.uniqueSessionName == "detached")

        second.endpoint.disableTracing()
        world.run(until: { second.disabledErrors.count == 1 }, "the attached consumer is told when tracing stops")
        read(second, world)
        #expect(second.producerPackets().map(\.forTesting.str) == ["kept across attach"])
    }

    @Test(arguments: TracingBinding.all)
    func theServiceStateNamesProducersDataSourcesAndSessions(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let first = connectedProducer(world, name: "first", dataSources: [TracingConfigs.descriptor("a"), TracingConfigs.descriptor("b")])
        let second = connectedProducer(world, name: "second", dataSources: [TracingConfigs.descriptor("c")])
        defer { withExtendedLifetime((first, second)) {} }
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(dataSources: [("a", 0)]), outputFile: nil)
        var state: TracingServiceState?
        consumer.endpoint.queryServiceState(sessionsOnly: false) { success, value in
            #expect(success)
            state = value
        }
        world.run(until: { state != nil })
        #expect(state?.producers.map(\.name) == ["first", "second"])
        #expect(state?.dataSources.map(\.dsDescriptor.name) == ["a", "b", "c"])
        #expect(state?.tracingSessions.count == 1)
        if world.identityFromConnection {
            #expect(state?.producers.allSatisfy { $0.pid == getpid() && UInt32(bitPattern: $0.uid) == getuid() } ?? false)
        }
        var capabilities: TracingServiceCapabilities?
        consumer.endpoint.queryCapabilities { capabilities = $0 }
        world.run(until: { capabilities != nil })
        #expect(capabilities?.hasQueryCapabilities_p == true)
    }

    /// Disconnecting is the end of what the producer sent, not the loss of it: the chunks and
    /// patches its writers handed back, and the calls it made, in the same turn, land first.
    @Test(arguments: TracingBinding.all)
    func aProducerThatWritesAndDisconnectsInOneTurnLosesNothing(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let payload = String(repeating: "w", count: 2000)  // two packets a chunk, one across each pair
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source")])
        producer.onStart = { _, writer in
            for index in 0..<9 { writer.writeTestPacket(timestamp: UInt64(index), "\(index) \(payload)") }
            writer.flush()
            producer.endpoint.disconnect()
        }
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        world.run(until: { world.core.connectedProducers.isEmpty }, "the producer is still connected")
        consumer.endpoint.disableTracing()
        world.run(until: { consumer.disabledErrors.count == 1 })
        read(consumer, world)
        #expect(consumer.producerPackets().map(\.timestamp) == (0..<9).map(UInt64.init))
        #expect(consumer.producerPackets().allSatisfy { $0.forTesting.str.hasSuffix(payload) })
    }

    /// Releasing a producer's endpoint disconnects it, and what its writers handed over first
    /// still lands: its commits and patches, and what its writers finished.
    @Test(arguments: TracingBinding.all)
    func aProducerReleasedRightAfterWritingLosesNothing(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let payload = String(repeating: "r", count: 2000)
        var producer: RecordingProducer? = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { producer?.started.count == 1 })
        world.settle()  // the writer's registration reaches the service
        let writer = try #require(producer?.writers.values.first)
        for index in 0..<9 { writer.writeTestPacket(timestamp: UInt64(index), "\(index) \(payload)") }
        writer.flush()
        producer = nil
        world.run(until: { world.core.connectedProducers.isEmpty }, "the producer is still connected")
        consumer.endpoint.disableTracing()
        world.run(until: { consumer.disabledErrors.count == 1 })
        read(consumer, world)
        #expect(consumer.producerPackets().map(\.timestamp) == (0..<9).map(UInt64.init))
    }

    /// The service keeps the producers' part of the state between queries: every change shows.
    @Test(arguments: TracingBinding.all)
    func theServiceStateFollowsProducersAndDataSourcesAsTheyChange(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let first = connectedProducer(world, name: "first", dataSources: [TracingConfigs.descriptor("a"), TracingConfigs.descriptor("b")])
        var second: RecordingProducer? = connectedProducer(world, name: "second", dataSources: [TracingConfigs.descriptor("c")])
        defer { withExtendedLifetime(first) {} }
        let consumer = connectedConsumer(world)
        func query(sessionsOnly: Bool = false) -> TracingServiceState? {
            var state: TracingServiceState?
            consumer.endpoint.queryServiceState(sessionsOnly: sessionsOnly) { success, value in
                #expect(success)
                state = value
            }
            world.run(until: { state != nil })
            return state
        }
        func dataSources() -> [String] {
            (query()?.dataSources ?? []).map { "\($0.producerID):\($0.dsDescriptor.name)" }
        }
        #expect(dataSources() == ["1:a", "1:b", "2:c"])
        #expect(dataSources() == ["1:a", "1:b", "2:c"], "asked twice, the same")

        second!.endpoint.registerDataSource(TracingConfigs.descriptor("d"))
        world.settle()
        #expect(dataSources() == ["1:a", "1:b", "2:c", "2:d"])

        var updated = TracingConfigs.descriptor("a")
        updated.willNotifyOnStop = true
        first.endpoint.updateDataSource(updated)
        world.settle()
        #expect(query()?.dataSources.first?.dsDescriptor.willNotifyOnStop == true)

        first.endpoint.unregisterDataSource(named: "b")
        world.settle()
        #expect(dataSources() == ["1:a", "2:c", "2:d"])

        second = nil  // released: the producer disconnects
        world.run(until: { world.core.connectedProducers.count == 1 })
        #expect(query()?.producers.map(\.name) == ["first"])
        #expect(dataSources() == ["1:a"])
        #expect(query(sessionsOnly: true)?.producers.isEmpty == true)
    }

    @Test(arguments: TracingBinding.all)
    func aConsumerThatGoesAwayFreesItsSessionAndAProducerThatGoesAwayIsStopped(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source")])
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        consumer.endpoint.disconnect()
        world.run(until: { world.core.sessions.isEmpty }, "the session was not freed")
        world.run(until: { producer.stopped.count == 1 }, "the producer's instance was not stopped")
        #expect(consumer.disconnects == 1)

        producer.endpoint.disconnect()
        world.run(until: { world.core.connectedProducers.isEmpty }, "the service still has the producer")
        world.run(until: { producer.disconnects == 1 })
        world.settle()
        #expect(producer.disconnects == 1, "told once")
        #expect(producer.connects == 1, "a producer that disconnects itself does not come back")
    }

    @Test(arguments: TracingBinding.all)
    func aCloneIsReadWhileTheOriginalGoesOnRecording(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 1, "before the clone") }
        let owner = connectedConsumer(world)
        var config = TracingConfigs.config()
        config.uniqueSessionName = "original"
        owner.endpoint.enableTracing(config, outputFile: nil)
        world.run(until: { producer.started.count == 1 })

        let reader = connectedConsumer(world)
        var request = CloneSessionRequest()
        request.uniqueSessionName = "original"
        var cloned: CloneSessionResponse?
        reader.endpoint.cloneSession(request) { cloned = $0 }
        world.run(until: { cloned != nil })
        #expect(cloned?.success == true, Comment(rawValue: cloned?.error ?? ""))
        read(reader, world)
        #expect(reader.producerPackets().map(\.forTesting.str) == ["before the clone"], "the clone holds what was flushed")

        producer.writers.values.first?.writeTestPacket(timestamp: 2, "after the clone")
        owner.endpoint.disableTracing()
        world.run(until: { owner.disabledErrors.count == 1 })
        read(owner, world)
        #expect(owner.producerPackets().map(\.forTesting.str) == ["before the clone", "after the clone"],
                "reading the clone took nothing from the original")

        // A consumer that has a session cannot clone into it; an unknown session is not found.
        var again: CloneSessionResponse?
        reader.endpoint.cloneSession(request) { again = $0 }
        world.run(until: { again != nil })
        #expect(again?.success == false)
        let third = connectedConsumer(world)
        var unknown = CloneSessionRequest()
        unknown.sessionID = 999
        var missing: CloneSessionResponse?
        third.endpoint.cloneSession(unknown) { missing = $0 }
        world.run(until: { missing != nil })
        #expect(missing?.success == false)
        #expect(missing?.error == "Tracing session not found")
    }

    @Test(arguments: TracingBinding.all)
    func writeIntoFileGetsTheOutputFileFromTheConsumer(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 1, "into the file") }
        let consumer = connectedConsumer(world)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        var config = TracingConfigs.config()
        config.writeIntoFile = true
        // The fd crosses the socket with EnableTracing; ours is closed at once, as a CLI would.
        consumer.endpoint.enableTracing(config, outputFile: file.duplicate())
        world.run(until: { producer.started.count == 1 })
        consumer.endpoint.disableTracing()
        world.run(until: { consumer.disabledErrors == [""] })
        let trace = try Perfetto_Protos_Trace(serializedBytes: FileDescriptors.content(of: file.rawValue))
        #expect(trace.packet.filter { $0.trustedPacketSequenceID >= 2 }.map(\.forTesting.str) == ["into the file"])
        #expect(trace.packet.first?.hasTraceConfig ?? false)
    }

    @Test(arguments: TracingBinding.all)
    func aSessionWrittenIntoAFileIsClonedIntoTheClonersFile(_ binding: TracingBinding) throws {
        // Cloning such a session gave an empty trace while saying the data was in the file
        // (outside tester, round seven: Perfetto's `perfetto --clone-by-name` wrote 0 bytes).
        // As traced does, the file so far is copied into the cloner's, then the buffers.
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)])
        producer.onStart = { _, writer in
            writer.writeTestPacket(timestamp: 1, "written into the file")
            writer.flush()
        }
        let owner = connectedConsumer(world)
        let file = FileDescriptors.memfd(named: "trace", content: [])
        var config = TracingConfigs.config()
        config.writeIntoFile = true
        config.fileWritePeriodMs = 100
        config.uniqueSessionName = "long"
        owner.endpoint.enableTracing(config, outputFile: file.duplicate())
        world.run(until: { producer.started.count == 1 })
        let texts = { (fd: Int32) in
            ((try? Perfetto_Protos_Trace(serializedBytes: FileDescriptors.content(of: fd)))?.packet ?? [])
                .filter { $0.trustedPacketSequenceID >= 2 }.map(\.forTesting.str)
        }
        world.run(until: { texts(file.rawValue) == ["written into the file"] }, "the first period was never written")
        // Committed, and in the file or the buffer when the clone comes (the clone's flush
        // takes it if neither): in the copy either way, once.
        producer.writers.values.first?.writeTestPacket(timestamp: 2, "still in the buffer")
        producer.writers.values.first?.flush()

        let cloner = connectedConsumer(world)
        var request = CloneSessionRequest()
        request.uniqueSessionName = "long"
        var refused: CloneSessionResponse?
        cloner.endpoint.cloneSession(request) { refused = $0 }
        world.run(until: { refused != nil })
        #expect(refused?.success == false)
        #expect(refused?.error == "Failed to clone 'write_into_file' session: a file descriptor is required to copy existing file")

        let copy = FileDescriptors.memfd(named: "copy", content: [])
        var cloned: CloneSessionResponse?
        cloner.endpoint.cloneSession(request, outputFile: copy.duplicate()) { cloned = $0 }
        world.run(until: { cloned != nil })
        #expect(cloned?.success == true, Comment(rawValue: cloned?.error ?? ""))
        #expect(cloned?.wasWriteIntoFile == true)
        // Complete when the reply comes (Perfetto's CLI ends then): each packet once.
        #expect(texts(copy.rawValue) == ["written into the file", "still in the buffer"])
        read(cloner, world)
        #expect(cloner.producerPackets().isEmpty, "the copy's data is in its file")

        producer.writers.values.first?.writeTestPacket(timestamp: 3, "after the clone")
        owner.endpoint.disableTracing()
        world.run(until: { owner.disabledErrors == [""] })
        #expect(texts(file.rawValue) == ["written into the file", "still in the buffer", "after the clone"],
                "the original file is whole")
    }

    @Test(arguments: TracingBinding.all)
    func startupTracingMemoryIsAdoptedWhenSealedAndValid(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let memory = try SharedMemoryBuffer.create(size: 64 * 1024, pageSize: 4096)
        let options = ProducerConnectionOptions(name: "early", producerProvidedSharedMemory: memory)
        let producer = RecordingProducer(
            service: world.clients, name: "early", dataSources: [TracingConfigs.descriptor("test.source", willNotifyOnStop: true)],
            options: options)
        world.run(until: { producer.connects == 1 })
        #expect(producer.endpoint.isSharedMemoryProvidedByProducer)
        producer.onStart = { _, writer in writer.writeTestPacket(timestamp: 5, "from startup memory") }
        world.run(until: { world.core.connectedProducers.first?.dataSources.isEmpty == false })
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        #expect(producer.endpoint.sharedMemory?.size == 64 * 1024, "the producer's own buffer, not a new one")
        consumer.endpoint.disableTracing()
        world.run(until: { consumer.disabledErrors.count == 1 })
        read(consumer, world)
        #expect(consumer.producerPackets().map(\.forTesting.str) == ["from startup memory"])
    }

    @Test(arguments: TracingBinding.overIPC)
    func aFlushIsAcknowledgedInTheCommitThatCarriesWhatTheWritersFlushed(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = RecordingProducer(
            service: world.clients, name: "flushing", dataSources: [TracingConfigs.descriptor("test.source")])
        world.run(until: { producer.connects == 1 })
        world.run(until: { world.core.connectedProducers.first?.dataSources.isEmpty == false })
        var started: TraceWriter?
        producer.onStart = { _, writer in started = writer }
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { started != nil })
        let writer = try #require(started)
        let endpoint = try #require(producer.endpoint as? RemoteProducerEndpoint)
        for round in 0..<3 {
            // In a chunk the writer still holds: only the flush sends it.
            writer.writeTestPacket(timestamp: UInt64(round), "round \(round)")
            world.settle()
            let before = endpoint.commitsSent
            var flushed: Bool?
            consumer.endpoint.flush(timeoutMs: 2000, flags: FlushFlags()) { flushed = $0 }
            world.run(until: { flushed != nil })
            #expect(flushed == true)
            world.settle()
            #expect(endpoint.commitsSent == before + 1, "the writer's chunk and the acknowledgement travel together")
        }
        read(consumer, world)
        #expect(consumer.producerPackets().map(\.timestamp) == [0, 1, 2])
    }

    @Test(arguments: TracingBinding.overIPC)
    func completedChunksWaitForTheBatchingIntervalUnlessAFlushOrHalfTheMemoryWantsThem(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        var options = ProducerConnectionOptions(name: "batching")
        options.commitBatchingInterval = .seconds(3600)
        let producer = RecordingProducer(
            service: world.clients, name: "batching", dataSources: [TracingConfigs.descriptor("test.source")], options: options)
        world.run(until: { producer.connects == 1 })
        world.run(until: { world.core.connectedProducers.first?.dataSources.isEmpty == false })
        var started: TraceWriter?
        producer.onStart = { _, writer in started = writer }
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(buffers: [(4096, .ringBuffer)]), outputFile: nil)
        world.run(until: { started != nil })
        let writer = try #require(started)
        let endpoint = try #require(producer.endpoint as? RemoteProducerEndpoint)
        let text = String(repeating: "x", count: 1000)
        func write(_ range: Range<Int>) {
            for index in range { writer.writeTestPacket(timestamp: UInt64(index), "\(index) \(text)") }
        }
        func flush() {
            var flushed: Bool?
            consumer.endpoint.flush(timeoutMs: 2000, flags: FlushFlags()) { flushed = $0 }
            world.run(until: { flushed != nil })
            #expect(flushed == true)
        }
        #expect(endpoint.commitsSent == 0)

        // Four packets of ~1 KiB fill a 4 KiB chunk. The first commit after a quiet spell goes at once.
        write(0..<5)
        world.run(until: { endpoint.commitsSent == 1 })
        // Chunks completed soon after wait for the interval (an hour here).
        write(5..<20)
        world.settle()
        #expect(endpoint.commitsSent == 1)
        // A flush does not wait.
        flush()
        read(consumer, world)
        #expect(consumer.producerPackets().map(\.timestamp) == (0..<20).map(UInt64.init))
        // Nor do chunks filling half the shared memory (256 KiB): 40 chunks here.
        let beforeHalf = endpoint.commitsSent
        write(20..<180)
        world.run(until: { endpoint.commitsSent == beforeHalf + 1 }, "half the shared memory waited for the interval")

        flush()
        read(consumer, world)
        #expect(consumer.producerPackets().map(\.timestamp) == (0..<180).map(UInt64.init))
    }

    @Test(arguments: TracingBinding.overIPC)
    func startupTracingMemoryThatIsNotSealedIsRefusedAndTheServiceMakesItsOwn(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        // A memfd the producer could still shrink under the service's mapping.
        let unsealed = FileDescriptors.memfd(named: "unsealed", content: [UInt8](repeating: 0, count: 64 * 1024))
        let memory = try SharedMemoryBuffer.map(unsealed, pageSize: 4096, requireSeals: false)
        let options = ProducerConnectionOptions(name: "early", producerProvidedSharedMemory: memory)
        let producer = RecordingProducer(
            service: world.clients, name: "early", dataSources: [TracingConfigs.descriptor("test.source")], options: options)
        world.run(until: { producer.connects == 1 })
        #expect(!producer.endpoint.isSharedMemoryProvidedByProducer)
        world.run(until: { world.core.connectedProducers.first?.dataSources.isEmpty == false })
        let consumer = connectedConsumer(world)
        consumer.endpoint.enableTracing(TracingConfigs.config(), outputFile: nil)
        world.run(until: { producer.started.count == 1 })
        #expect(producer.endpoint.sharedMemory?.size == 256 * 1024, "the service's own buffer")
    }

    @Test(arguments: TracingBinding.overIPC)
    func aProducerReconnectsWhenTheServiceComesBackAndRegistersItsDataSourcesAgain(_ binding: TracingBinding) throws {
        let world = try binding.make()
        defer { world.tearDown() }
        let producer = connectedProducer(world, dataSources: [TracingConfigs.descriptor("test.source")])
        var synced = 0
        let host = try #require(world.host)
        host.close()
        world.run(until: { producer.disconnects == 1 }, "the producer was not told the service went away")
        producer.endpoint.sync { synced += 1 }
        world.run(until: { synced == 1 }, "a sync without a service still calls back")

        // A new service on the same addresses: the producer finds it by itself.
        let core = TracingServiceCore(eventLoop: world.loop)
        let producerBackend = (world.clients as! SystemTracingService).producerBackend
        let consumerBackend = (world.clients as! SystemTracingService).consumerBackend
        let revived = try TracingServiceHost(service: core, producerBackends: [producerBackend], consumerBackend: consumerBackend)
        defer { revived.close() }
        world.run(until: { producer.connects == 2 }, "the producer did not reconnect")
        world.run(until: { core.connectedProducers.first?.dataSources.keys.sorted() == ["test.source"] })
        #expect(producer.disconnects == 1)
    }
}
