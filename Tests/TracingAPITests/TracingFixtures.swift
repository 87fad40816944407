// Test doubles for the tracing API: a producer and a consumer that record every callback,
// and helpers to build configs and drive a ManualEventLoop.

import Foundation
import IPCInProcess
import IPCProtocol
import Testing

@testable import TracingAPI

/// A producer that registers data sources, records every callback, and (by default)
/// acknowledges flushes after flushing its writers.
final class RecordingProducer: Producer {
    var endpoint: (any ProducerEndpoint)!
    private(set) var events: [String] = []
    private(set) var started: [(id: DataSourceInstanceID, config: DataSourceConfig)] = []
    private(set) var stopped: [DataSourceInstanceID] = []
    private(set) var flushRequests: [(id: FlushRequestID, dataSources: [DataSourceInstanceID])] = []
    private(set) var clearedIncrementalState: [[DataSourceInstanceID]] = []
    private(set) var connects = 0
    private(set) var disconnects = 0
    private(set) var tracingSetups = 0
    var acknowledgesFlushes = true
    /// Whether a flush also flushes the writers (a producer whose writers live on busy threads
    /// does not: its service, or under emulation its endpoint, scrapes their chunks).
    var flushesWriters = true
    var notifiesStops = true
    /// Writers by instance, created on start for the instance's target buffer.
    var writers: [DataSourceInstanceID: TraceWriter] = [:]
    /// Runs when an instance starts (after its writer exists).
    var onStart: ((DataSourceInstanceID, TraceWriter) -> Void)?

    init(
        service: any TracingService, name: String, uid: UInt32 = 1000, pid: Int32 = 4242,
        dataSources: [DataSourceDescriptor], options: ProducerConnectionOptions? = nil
    ) {
        var connectOptions = options ?? ProducerConnectionOptions(name: name)
        connectOptions.name = name
        connectOptions.identity = PeerIdentity(uid: uid, pid: pid)
        endpoint = service.connectProducer(self, options: connectOptions)
        for descriptor in dataSources { endpoint.registerDataSource(descriptor) }
    }

    func onConnect() { connects += 1; events.append("connect") }
    func onDisconnect() { disconnects += 1; events.append("disconnect") }
    func onTracingSetup() { tracingSetups += 1; events.append("setup-tracing") }

    func setupDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        events.append("setup \(config.name)")
    }

    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        events.append("start \(config.name)")
        started.append((id, config))
        guard let writer = endpoint.createTraceWriter(
            targetBuffer: BufferID(config.targetBuffer), policy: .drop) else { return }
        writers[id] = writer
        onStart?(id, writer)
    }

    func clearIncrementalState(_ dataSources: [DataSourceInstanceID]) {
        clearedIncrementalState.append(dataSources)
    }

    func stopDataSource(_ id: DataSourceInstanceID) {
        events.append("stop")
        stopped.append(id)
        writers[id]?.flush()
        if notifiesStops { endpoint.notifyDataSourceStopped(id) }
    }

    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        events.append("flush")
        flushRequests.append((id, dataSources))
        guard acknowledgesFlushes else { return }
        if flushesWriters { for instance in dataSources { writers[instance]?.flush() } }
        endpoint.notifyFlushComplete(id)
    }
}

/// A consumer that records what the service tells it.
final class RecordingConsumer: Consumer {
    var endpoint: (any ConsumerEndpoint)!
    private(set) var disabledErrors: [String] = []
    private(set) var packets: [TracePacketData] = []
    private(set) var batchesHasMore: [Bool] = []
    private(set) var stats: [TraceStats] = []
    private(set) var observed: [ObservableEvents] = []
    private(set) var connects = 0
    private(set) var disconnects = 0

    init(service: any TracingService, uid: UInt32 = 1000) {
        endpoint = service.connectConsumer(self, uid: uid)
    }

    func onConnect() { connects += 1 }
    func onDisconnect() { disconnects += 1 }
    func onTracingDisabled(error: String) { disabledErrors.append(error) }
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        self.packets.append(contentsOf: packets)
        batchesHasMore.append(hasMore)
    }
    func onTraceStats(success: Bool, _ stats: TraceStats) { self.stats.append(stats) }
    func onObservableEvents(_ events: ObservableEvents) { observed.append(events) }
    /// Why reads ended early, in order.
    private(set) var readFailures: [String] = []
    func onTraceDataFailed(error: String) { readFailures.append(error) }

    /// Reads completed so far (batches with hasMore = false).
    var readsCompleted: Int { batchesHasMore.filter { !$0 }.count }

    /// Reads the buffers and drives `loop` until that read has completed.
    func read(on loop: ManualEventLoop, sourceLocation: SourceLocation = #_sourceLocation) {
        let before = readsCompleted
        endpoint.readBuffers()
        drive(loop, until: { self.readsCompleted == before + 1 }, "the read did not complete", sourceLocation: sourceLocation)
    }

    /// Packets decoded; fails the test on a packet that does not decode, unless `strict` is
    /// false (garbage from a hostile producer can be well-formed at the top level, which is all
    /// the service checks, as Perfetto's does, and still not decode as a TracePacket).
    func decodedPackets(strict: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) -> [TracePacket] {
        packets.compactMap { packet in
            do { return try packet.decode() } catch {
                if strict { Issue.record("packet does not decode: \(error)", sourceLocation: sourceLocation) }
                return nil
            }
        }
    }

    /// Decoded packets written by producers (not the service's own sequence).
    func producerPackets(strict: Bool = true) -> [TracePacket] {
        decodedPackets(strict: strict).filter { $0.trustedPacketSequenceID != TracingSession.servicePacketSequenceID }
    }
}

enum TracingConfigs {
    static func descriptor(
        _ name: String, willNotifyOnStop: Bool = false, handlesIncrementalStateClear: Bool = false
    ) -> DataSourceDescriptor {
        var descriptor = DataSourceDescriptor()
        descriptor.name = name
        descriptor.willNotifyOnStop = willNotifyOnStop
        if handlesIncrementalStateClear { descriptor.handlesIncrementalStateClear = true }
        return descriptor
    }

    static func config(
        buffers: [(sizeKb: UInt32, policy: TraceConfig.BufferConfig.FillPolicy)] = [(1024, .ringBuffer)],
        dataSources: [(name: String, targetBuffer: UInt32)] = [("test.source", 0)],
        durationMs: UInt32 = 0
    ) -> TraceConfig {
        var config = TraceConfig()
        for buffer in buffers {
            var bufferConfig = TraceConfig.BufferConfig()
            bufferConfig.sizeKb = buffer.sizeKb
            bufferConfig.fillPolicy = buffer.policy
            config.buffers.append(bufferConfig)
        }
        for source in dataSources {
            var entry = TraceConfig.DataSource()
            entry.config.name = source.name
            entry.config.targetBuffer = source.targetBuffer
            config.dataSources.append(entry)
        }
        if durationMs > 0 { config.durationMs = durationMs }
        return config
    }
}

extension TraceWriter {
    /// A packet with `timestamp` and `for_testing.str`, written field by field.
    func writeTestPacket(timestamp: UInt64, _ text: String) {
        newTracePacket { packet in
            packet.appendVarint(8, timestamp)
            packet.appendNested(900) { testEvent in testEvent.appendString(1, text) }
        }
    }
}

extension Array where Element == UInt8 {
    init(hex: String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.count / 2)
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        self = bytes
    }
}

/// Runs the loop until `condition` holds; fails the test if the loop goes idle first.
func drive(
    _ loop: ManualEventLoop, until condition: () -> Bool, _ message: String = "condition never held",
    sourceLocation: SourceLocation = #_sourceLocation
) {
    if !loop.run(until: condition) { Issue.record(Comment(rawValue: message), sourceLocation: sourceLocation) }
}

extension TracePacket {
    var hasTraceConfig: Bool { if case .traceConfig? = data { true } else { false } }
    var hasClockSnapshot: Bool { if case .clockSnapshot? = data { true } else { false } }
    var hasTraceStats: Bool { if case .traceStats? = data { true } else { false } }
    var hasServiceEvent: Bool { if case .serviceEvent? = data { true } else { false } }
}
