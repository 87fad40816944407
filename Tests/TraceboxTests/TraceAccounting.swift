// Reading traces of `tracebox producer --continuous`: each writer's test packets are one
// sequence numbered 0, 1, 2, …, ended by a packet with is_last and counter = how many came
// before it. A packet is delivered (in the trace) or lost; every loss must be flagged on the
// sequence (previous_packet_dropped on the next packet read), and a session that lost any must
// count it in its trace stats. And a consumer in the test process, on an epoll loop of the
// test's thread, for what `tracebox perfetto` does not do (clone, several reads, counting
// callbacks).

import Glibc
import IPCProtocol
import IPCUnixSocket
import Testing
import TracingAPI

/// One writer's sequence as a trace shows it.
struct SequenceAccount {
    var pid: Int32
    var sequenceID: UInt32
    /// Test packets delivered (the last packet excluded).
    var delivered = 0
    /// The highest sequence number delivered, plus one (0: none).
    var reached: UInt32 = 0
    /// The writer's count from its last packet, if that arrived.
    var ended: UInt32?
    /// Sequence numbers missing before `reached` (or before the end).
    var missing: Int { Int(ended ?? reached) - delivered }
}

/// What a trace (or the reads of one session) holds, by sequence, and what is wrong with it.
struct TraceAccount {
    var sequences: [String: SequenceAccount] = [:]
    var problems: [String] = []
    var stats: TraceStats?
    private var last: [String: UInt32] = [:]
    /// Reads of a copy (a clone) of a session already read: a sequence may begin anywhere.
    private let continuing: Bool

    init(continuing: Bool = false) {
        self.continuing = continuing
    }

    init(_ packets: [TracePacket], continuing: Bool = false) {
        self.continuing = continuing
        add(packets)
    }

    /// Adds packets read after those added before (a later read of the same session).
    mutating func add(_ packets: [TracePacket]) {
        for packet in packets {
            if case .traceStats(let stats)? = packet.data { self.stats = stats }
            guard case .forTesting(let test)? = packet.data else { continue }
            let key = "\(packet.trustedPid)/\(packet.trustedPacketSequenceID)"
            var sequence = sequences[key] ?? SequenceAccount(pid: packet.trustedPid, sequenceID: packet.trustedPacketSequenceID)
            let value = test.seqValue
            if sequence.ended != nil {
                problems.append("\(key): packet \(value) after the last packet")
            }
            if let previous = last[key], value <= previous {
                problems.append("\(key): packet \(value) after \(previous)")
            }
            let expected = last[key].map { $0 + 1 } ?? (continuing ? value : 0)
            if value != expected && packet.previousPacketDropped == 0 {
                problems.append("\(key): packets \(expected)..<\(value) missing without previous_packet_dropped")
            }
            last[key] = value
            if test.isLast {
                if test.counter != UInt64(value) { problems.append("\(key): last packet \(value) counts \(test.counter)") }
                sequence.ended = value
            } else {
                sequence.delivered += 1
                sequence.reached = value + 1
            }
            sequences[key] = sequence
        }
    }

    /// Packets missing from delivered sequences.
    var missing: Int { sequences.values.reduce(0) { $0 + $1.missing } }
    var delivered: Int { sequences.values.reduce(0) { $0 + $1.delivered } }
    /// What the ended sequences' writers said they wrote.
    var written: UInt64 { sequences.values.reduce(0) { $0 + UInt64($1.ended ?? 0) } }

    /// Losses the session's buffers count (chunks overwritten or discarded, writers' drop
    /// markers); the service's own count of discarded chunks is not the session's.
    var countedLosses: UInt64 { lostChunks + writerDropMarkers }
    var lostChunks: UInt64 { (stats?.bufferStats ?? []).reduce(0) { $0 + $1.chunksOverwritten + $1.chunksDiscarded } }
    var writerDropMarkers: UInt64 { (stats?.bufferStats ?? []).reduce(0) { $0 + $1.traceWriterPacketLoss } }

    func sequences(of pid: pid_t) -> [SequenceAccount] {
        sequences.values.filter { $0.pid == pid }.sorted { $0.sequenceID < $1.sequenceID }
    }
}

/// How many `tracebox.test` data sources `perfetto --query` lists.
func registeredTestSources(_ query: String) -> Int {
    query.components(separatedBy: "data source tracebox.test").count - 1
}

/// A ConsumerPort client in the test process that remembers every callback.
final class TestConsumer: Consumer {
    private(set) var endpoint: RemoteConsumerEndpoint!
    private(set) var connects = 0
    private(set) var disconnects = 0
    private(set) var disabled: [String] = []
    private(set) var packets: [TracePacketData] = []
    private(set) var readsFinished = 0
    private(set) var stats: [TraceStats] = []

    init(loop: any IPCEventLoop, transport: any IPCTransport, address: String) {
        endpoint = RemoteConsumerEndpoint(consumer: self, backend: .transport(transport, address: address))
    }

    func onConnect() { connects += 1 }
    func onDisconnect() { disconnects += 1 }
    func onTracingDisabled(error: String) { disabled.append(error) }
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        self.packets.append(contentsOf: packets)
        if !hasMore { readsFinished += 1 }
    }
    func onTraceStats(success: Bool, _ stats: TraceStats) { if success { self.stats.append(stats) } }

    /// Reads the buffers; returns the packets of this read, decoded.
    func read(on loop: EpollEventLoop) throws -> [TracePacket] {
        let before = readsFinished
        let start = packets.count
        endpoint.readBuffers()
        _ = loop.run(until: { self.readsFinished > before }, timeout: .seconds(30))
        return try packets[start...].map { try $0.decode() }
    }

    func takePackets() -> [TracePacketData] {
        defer { packets = [] }
        return packets
    }
}

extension TraceConfig {
    /// A session of the test data source only, in one buffer.
    static func testSource(bufferKb: UInt32, discard: Bool = false, durationMs: UInt32 = 0, name: String? = nil) -> TraceConfig {
        var config = TraceConfig()
        var buffer = TraceConfig.BufferConfig()
        buffer.sizeKb = bufferKb
        if discard { buffer.fillPolicy = .discard }
        config.buffers = [buffer]
        var source = TraceConfig.DataSource()
        source.config.name = "tracebox.test"
        config.dataSources = [source]
        config.durationMs = durationMs
        if let name { config.uniqueSessionName = name }
        return config
    }
}
