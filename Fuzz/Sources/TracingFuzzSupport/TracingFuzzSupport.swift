// What the tracing-service fuzzers share: a service served over the in-memory transport with
// an honest producer and consumer bound directly beside it, a raw connection for the fuzz
// input, and the check that the honest pair still records after whatever the input did.

import IPCInProcess
import IPCProtocol
import Logging
import TracingAPI

/// The honest producer: writes one packet when asked, answers flushes.
public final class HonestProducer: Producer {
    public var endpoint: (any ProducerEndpoint)?
    public var writer: TraceWriter?
    public init() {}
    public func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        writer = endpoint?.createTraceWriter(targetBuffer: BufferID(truncatingIfNeeded: config.targetBuffer), policy: .drop)
    }
    public func stopDataSource(_ id: DataSourceInstanceID) {
        writer?.flush()
        endpoint?.notifyDataSourceStopped(id)
    }
    public func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        writer?.flush()
        endpoint?.notifyFlushComplete(id)
    }
}

/// The honest consumer: keeps what it reads.
public final class HonestConsumer: Consumer {
    public var packets: [TracePacketData] = []
    public var reads = 0
    public var disabled = 0
    public init() {}
    public func onTracingDisabled(error: String) { disabled += 1 }
    public func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        self.packets += packets
        if !hasMore { reads += 1 }
    }
}

/// The far end of the fuzz input's connection: swallows the service's replies, keeps the last
/// file descriptor that came with one (the shared memory, with setup_tracing).
public final class RawPeer: IPCConnectionDelegate {
    let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    public private(set) var lastFileDescriptor: ScopedFD?
    public init() {}
    deinit { space.deallocate() }
    public func connectionDidConnect(_ connection: any IPCConnection) {}
    public func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    public func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    public func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    public func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        if let fileDescriptor { lastFileDescriptor = fileDescriptor }
    }
}

/// A service on a manual loop, served at "producer" and "consumer", an honest producer of
/// `honestSource` and a consumer recording it (and `otherSources`) into one ring buffer.
public final class FuzzedService {
    public static let honestSource = "fuzz.honest"
    public let loop = ManualEventLoop()
    public let transport: InProcessTransport
    public let core: TracingServiceCore
    public let host: TracingServiceHost
    public let producer = HonestProducer()
    public let producerEndpoint: any ProducerEndpoint
    public let consumer = HonestConsumer()
    public let consumerEndpoint: any ConsumerEndpoint

    public init(otherSources: [String]) {
        transport = InProcessTransport(loop: loop)
        core = TracingServiceCore(eventLoop: loop)
        host = try! TracingServiceHost(
            service: core, producerBackends: [.transport(transport, address: "producer")],
            consumerBackend: .transport(transport, address: "consumer"),
            logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }))
        producerEndpoint = core.connectProducer(producer, options: ProducerConnectionOptions(name: "honest"))
        producer.endpoint = producerEndpoint
        var descriptor = DataSourceDescriptor()
        descriptor.name = Self.honestSource
        descriptor.willNotifyOnStop = true
        producerEndpoint.registerDataSource(descriptor)
        consumerEndpoint = core.connectConsumer(consumer, uid: 0)
        var config = TraceConfig()
        var buffer = TraceConfig.BufferConfig()
        buffer.sizeKb = 256
        config.buffers = [buffer]
        for name in [Self.honestSource] + otherSources {
            var source = TraceConfig.DataSource()
            source.config.name = name
            config.dataSources.append(source)
        }
        config.flushTimeoutMs = 100
        config.dataSourceStopTimeoutMs = 100
        consumerEndpoint.enableTracing(config, outputFile: nil)
        loop.runUntilIdle()
        guard producer.writer != nil else { fatalError("the honest session did not start") }
    }

    /// A raw connection to `address`, connected.
    public func connect(to address: String, peer: RawPeer) -> any IPCConnection {
        let connection = transport.connect(to: address, options: .default, delegate: peer)
        loop.runUntilIdle()
        return connection
    }

    /// Sends `bytes` in pieces of varying size, as a socket would deliver them, with `fd` on
    /// the first; runs the loop after each.
    public func send(_ bytes: UnsafeRawBufferPointer, on connection: any IPCConnection, fd: Int32? = nil) {
        var offset = 0
        var piece = 7
        var fd = fd
        while offset < bytes.count, connection.state == .connected {
            let count = min(piece, bytes.count - offset)
            connection.send(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]), fd: fd)
            fd = nil
            offset += count
            piece = piece * 5 % 4093 + 1
            loop.runUntilIdle()
        }
    }

    /// The honest pair still records: a packet written now is read back, whatever the input did.
    public func checkStillServing() {
        guard let writer = producer.writer else { fatalError("the honest producer lost its writer") }
        writer.newTracePacket { packet in packet.appendNested(900) { $0.appendString(1, "alive") } }
        writer.flush()
        loop.runUntilIdle()
        // Flushes and stops the input never answers end by their (virtual) timeouts.
        var flushed: Bool?
        consumerEndpoint.flush(timeoutMs: 100, flags: FlushFlags()) { flushed = $0 }
        loop.runUntilIdle()
        loop.advanceTime(by: .milliseconds(200))
        guard flushed != nil else { fatalError("a flush never ended") }
        let before = consumer.packets.count
        let reads = consumer.reads
        consumerEndpoint.readBuffers()
        loop.runUntilIdle()
        guard consumer.reads == reads + 1 else { fatalError("a read never ended") }
        let alive = consumer.packets[before...].contains { (try? $0.decode())?.forTesting.str == "alive" }
        if !alive { fatalError("the service stopped serving the honest pair after this input") }
    }

    /// The input's connection is closed: the service must have forgotten it.
    public func expectForgotten() {
        precondition(host.connectedProducerCount == 0, "the service kept a producer that went away")
        precondition(host.consumerPort.connectedConsumerCount == 0, "the service kept a consumer that went away")
    }

    /// Ends everything.
    public func tearDown() {
        producer.writer = nil
        consumerEndpoint.disconnect()
        producerEndpoint.disconnect()
        host.close()
        loop.runUntilIdle()
        loop.advanceTime(by: .seconds(1))
    }
}
