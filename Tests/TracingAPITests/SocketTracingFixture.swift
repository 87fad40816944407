// Our service on real unix sockets (TracingServiceHost on an EpollEventLoop), with the helpers
// the hostile-peer suites share: honest producers and consumers through our own clients, raw
// peers beside them, and a check that a scenario leaves no descriptor and no client behind.

import Foundation
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

@testable import TracingAPI

class SocketTracingFixture {
    let loop: EpollEventLoop
    let transport: UnixSocketTransport
    let directory = TemporaryDirectory()
    let producerPath: String
    let consumerPath: String
    var core: TracingServiceCore!
    var host: TracingServiceHost!
    var clients: SystemTracingService!

    init() throws {
        loop = try EpollEventLoop()
        transport = UnixSocketTransport(loop: loop)
        producerPath = directory.path + "/p.sock"
        consumerPath = directory.path + "/c.sock"
        try serve(options: TracingServiceCore.Options())
    }

    deinit {
        host.close()
        directory.remove()
    }

    /// (Re)starts the service with `options`; consumers' connections get `consumerOptions`.
    func serve(options: TracingServiceCore.Options, consumerOptions: ConnectionOptions = .default) throws {
        host?.close()
        core = TracingServiceCore(eventLoop: loop, options: options)
        host = try TracingServiceHost(
            service: core, producerBackends: [.transport(transport, address: producerPath)],
            consumerBackend: .transport(transport, address: consumerPath, options: consumerOptions), logger: .quiet)
        clients = SystemTracingService(
            transport: transport, producerAddress: producerPath, consumerAddress: consumerPath, reconnectPolicy: .never)
    }

    @discardableResult
    func run(
        seconds: Int = 5, until condition: () -> Bool, _ message: String = "condition never held",
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        drive(loop, seconds: seconds, until: condition, message, sourceLocation: sourceLocation)
    }

    /// Runs `scenario`, then checks the service forgot everybody and every descriptor the
    /// scenario made (sockets, shared memory, fds handed over) is closed again.
    func withoutLeaks(sourceLocation: SourceLocation = #_sourceLocation, _ scenario: () throws -> Void) rethrows {
        let baseline = FileDescriptors.openDescriptors()
        try scenario()
        let clean = loop.run(until: {
            host.connectedProducerCount == 0 && host.consumerPort.connectedConsumerCount == 0
                && core.sessions.isEmpty && core.buffers.isEmpty && FileDescriptors.openDescriptors() == baseline
        }, timeout: .seconds(5))
        let now = FileDescriptors.openDescriptors()
        let left = Set(now).subtracting(baseline).sorted().map { "\($0) \(FileDescriptors.target(of: $0))" }
        #expect(clean, Comment(rawValue: "left behind: \(host.connectedProducerCount) producers, "
            + "\(host.consumerPort.connectedConsumerCount) consumers, \(core.sessions.count) sessions, fds \(left)"),
            sourceLocation: sourceLocation)
    }

    /// An honest producer of `source` that writes `count` packets "<source> <i>" when started.
    func honestProducer(_ source: String = "honest.source", count: Int = 20) -> RecordingProducer {
        let producer = RecordingProducer(
            service: clients, name: "honest", dataSources: [TracingConfigs.descriptor(source, willNotifyOnStop: true)])
        producer.onStart = { _, writer in
            for index in 0..<count { writer.writeTestPacket(timestamp: UInt64(index + 1), "\(source) \(index)") }
        }
        run(until: { self.core.connectedProducers.contains { $0.name == "honest" && $0.dataSources[source] != nil } },
            "the honest producer never registered")
        return producer
    }

    func consumer() -> RecordingConsumer {
        let consumer = RecordingConsumer(service: clients)
        run(until: { consumer.connects == 1 }, "the consumer never connected")
        return consumer
    }

    func config(_ sources: [String], configure: (inout TraceConfig) -> Void = { _ in }) -> TraceConfig {
        var config = TracingConfigs.config(buffers: [(1024, .ringBuffer)], dataSources: sources.map { ($0, 0) })
        configure(&config)
        return config
    }

    /// Stops `consumer`'s session and reads it.
    func stopAndRead(_ consumer: RecordingConsumer, sourceLocation: SourceLocation = #_sourceLocation) {
        let disabled = consumer.disabledErrors.count
        consumer.endpoint.disableTracing()
        run(until: { consumer.disabledErrors.count == disabled + 1 }, "tracing never stopped", sourceLocation: sourceLocation)
        let reads = consumer.readsCompleted
        consumer.endpoint.readBuffers()
        run(until: { consumer.readsCompleted == reads + 1 }, "the read never finished", sourceLocation: sourceLocation)
    }

    /// The texts of the for_testing packets `consumer` read that start with `prefix`.
    func texts(_ consumer: RecordingConsumer, _ prefix: String, strict: Bool = true) -> [String] {
        consumer.producerPackets(strict: strict).map(\.forTesting.str).filter { $0.hasPrefix(prefix) }
    }

    func expectComplete(
        _ consumer: RecordingConsumer, source: String = "honest.source", count: Int = 20, strict: Bool = true,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(texts(consumer, source, strict: strict) == (0..<count).map { "\(source) \($0)" },
                "the honest producer's packets are all there", sourceLocation: sourceLocation)
    }

}

/// Runs a real loop until `condition` holds, at most `seconds`; fails the test if it never does.
@discardableResult
func drive(
    _ loop: EpollEventLoop, seconds: Int, until condition: () -> Bool, _ message: String = "condition never held",
    sourceLocation: SourceLocation = #_sourceLocation
) -> Bool {
    let held = loop.run(until: condition, timeout: .seconds(seconds))
    if !held { Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation) }
    return held
}
