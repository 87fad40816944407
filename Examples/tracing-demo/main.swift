// tracing-demo: a tracing service, a producer and a consumer in one process, on a real event
// loop thread. The producer's worker thread writes TrackEvent slices and a counter through real
// shared memory; the consumer records two seconds... of virtual work (200 ms here) and writes a
// Perfetto trace file that opens in https://ui.perfetto.dev.
//
//   swift run tracing-demo [output.pftrace]
//   swift run tracing-demo replay CHUNKS.jsonl [output.pftrace] [--uid N] [--pid N]
//
// `replay` feeds a shared-memory capture (the format of ../shared/interop/smb) through the
// service's real shared memory and CommitData path, and writes the trace it yields; with the
// producer's uid and pid, its producer packets are byte for byte what Perfetto's traced wrote.

import CPerfettoIPCLinux
import Foundation
import IPCInProcess
import IPCProtocol
import IPCUnixSocket
import TracingAPI

/// A producer with one data source, "demo.work", that writes from its own thread while started.
final class DemoProducer: Producer, @unchecked Sendable {
    // @unchecked Sendable: `endpoint` is used on the loop; the worker only touches its writer.
    var endpoint: (any ProducerEndpoint)!
    private let stopFlag = Flag()

    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        guard let writer = endpoint.createTraceWriter(targetBuffer: BufferID(config.targetBuffer), policy: .stall())
        else { return }
        let stop = stopFlag
        Thread.detachNewThread { DemoProducer.work(writer, until: stop) }  // TraceWriter moves threads
    }

    func stopDataSource(_ id: DataSourceInstanceID) {
        stopFlag.set()
        // will_notify_on_stop: acknowledge once the worker has flushed its last chunk.
        let endpoint = UncheckedSendableBox(self.endpoint!)
        let loop = endpoint.value.eventLoop
        let flag = stopFlag
        Thread.detachNewThread {
            flag.waitForWorker()
            loop.execute { endpoint.value.notifyDataSourceStopped(id) }
        }
    }

    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        endpoint.notifyFlushComplete(id)
    }

    /// The worker: a track for this thread, then slices and a counter until stopped.
    static func work(_ writer: TraceWriter, until stop: Flag) {
        let trackUUID: UInt64 = 0xD3_0000_0001
        let counterUUID: UInt64 = 0xD3_0000_0002
        let pid = getpid()
        var descriptor = TracePacket()
        descriptor.timestamp = now()
        descriptor.sequenceFlags = 1  // SEQ_INCREMENTAL_STATE_CLEARED
        descriptor.trackDescriptor.uuid = trackUUID
        descriptor.trackDescriptor.thread.pid = pid
        descriptor.trackDescriptor.thread.tid = Int64(CPerfettoIPC_gettid())
        descriptor.trackDescriptor.thread.threadName = "demo worker"
        try? writer.writePacket(descriptor)
        var counter = TracePacket()
        counter.timestamp = now()
        counter.trackDescriptor.uuid = counterUUID
        counter.trackDescriptor.name = "queue depth"
        counter.trackDescriptor.counter = Perfetto_Protos_CounterDescriptor()
        try? writer.writePacket(counter)

        var iteration: UInt64 = 0
        while !stop.isSet {
            slice(writer, track: trackUUID, name: "iteration \(iteration % 10)") {
                usleep(200)
                // Counters are written field by field, straight into shared memory.
                writer.newTracePacket { packet in
                    packet.appendVarint(8, now())                          // timestamp
                    packet.appendVarint(10 + 3, 2)                         // sequence_flags: NEEDS_INCREMENTAL_STATE
                    packet.appendNested(11) { event in                     // track_event
                        event.appendVarint(9, 4)                           // type: COUNTER
                        event.appendVarint(11, counterUUID)                // track_uuid
                        event.appendInt(30, Int64(iteration % 17))         // counter_value
                    }
                }
            }
            iteration += 1
        }
        writer.flush()
        stop.workerDone()
    }

    static func slice(_ writer: TraceWriter, track: UInt64, name: String, _ body: () -> Void) {
        var begin = TracePacket()
        begin.timestamp = now()
        begin.sequenceFlags = 2
        begin.trackEvent.type = .sliceBegin
        begin.trackEvent.trackUuid = track
        begin.trackEvent.name = name
        try? writer.writePacket(begin)
        body()
        var end = TracePacket()
        end.timestamp = now()
        end.sequenceFlags = 2
        end.trackEvent.type = .sliceEnd
        end.trackEvent.trackUuid = track
        try? writer.writePacket(end)
    }

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_BOOTTIME, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// A one-shot flag the worker and the loop share.
final class Flag: @unchecked Sendable {
    private let condition = NSCondition()
    private var stopped = false
    private var finished = false
    var isSet: Bool { condition.withLock { stopped } }
    func set() { condition.withLock { stopped = true } }
    func workerDone() { condition.withLock { finished = true; condition.broadcast() } }
    func waitForWorker() { condition.withLock { while !finished { condition.wait() } } }
}

/// A session config: one buffer of `sizeKb`, one data source.
func demoConfig(dataSource: String, sizeKb: UInt32, durationMs: UInt32 = 0) -> TraceConfig {
    var config = TraceConfig()
    var buffer = TraceConfig.BufferConfig()
    buffer.sizeKb = sizeKb
    buffer.fillPolicy = .ringBuffer
    config.buffers = [buffer]
    var source = TraceConfig.DataSource()
    source.config.name = dataSource
    config.dataSources = [source]
    if durationMs > 0 { config.durationMs = durationMs }
    return config
}

func descriptor(_ name: String, willNotifyOnStop: Bool = false) -> DataSourceDescriptor {
    var descriptor = DataSourceDescriptor()
    descriptor.name = name
    descriptor.willNotifyOnStop = willNotifyOnStop
    return descriptor
}

if CommandLine.arguments.dropFirst().first == "replay" {
    exit(replay(Array(CommandLine.arguments.dropFirst(2))))
}

let output = CommandLine.arguments.dropFirst().first ?? "tracing-demo.pftrace"
let loop = try EpollEventLoop.startOnNewThread(name: "tracing")
let service = TracingServiceCore(eventLoop: loop)
let producer = DemoProducer()
let done = DispatchSemaphore(value: 0)
let result = ThreadLock<(Result<[TracePacketData], TracingError>, [UInt8])?>(nil)

loop.execute {
    producer.endpoint = service.connectProducer(producer, options: ProducerConnectionOptions(name: "tracing-demo"))
    producer.endpoint.registerDataSource(descriptor("demo.work", willNotifyOnStop: true))
    // duration_ms: the service flushes and stops the session by itself.
    let config = demoConfig(dataSource: "demo.work", sizeKb: 4096, durationMs: 200)
    let recorder = TraceRecorder(service: service)
    let box = UncheckedSendableBox(recorder)
    recorder.start(config)
    // Ask for the trace once the session has stopped by itself (duration_ms).
    _ = loop.scheduleTask(after: .milliseconds(400)) {
        box.value.stop { outcome in
            let file = box.value.traceFile
            result.withLock { $0 = (outcome, file) }
            done.signal()
        }
    }
}
done.wait()
let (outcome, file) = result.withLock { $0! }
switch outcome {
case .success(let packets):
    try Data(file).write(to: URL(fileURLWithPath: output))
    let decoded = packets.compactMap { try? $0.decode() }
    let events = decoded.filter { if case .trackEvent? = $0.data { true } else { false } }.count
    let stats = decoded.last.map { if case .traceStats(let stats)? = $0.data { stats } else { TraceStats() } } ?? TraceStats()
    print("recorded \(packets.count) packets (\(events) track events) into \(output), \(file.count) bytes")
    print("buffer: \(stats.bufferStats.first?.chunksWritten ?? 0) chunks written, "
          + "\(stats.bufferStats.first?.chunksOverwritten ?? 0) overwritten; invalid packets: \(stats.invalidPackets)")
    print("open it in https://ui.perfetto.dev")
case .failure(let error):
    print("tracing failed: \(error)")
    exit(1)
}
loop.shutdown()

/// Records a session in which one producer commits the chunks of a capture.
func replay(_ arguments: [String]) -> Int32 {
    var positional: [String] = []
    var uid: UInt32 = 0
    var pid: Int32 = 0
    var index = 0
    while index < arguments.count {
        switch arguments[index] {
        case "--uid" where index + 1 < arguments.count:
            uid = UInt32(arguments[index + 1]) ?? 0
            index += 2
        case "--pid" where index + 1 < arguments.count:
            pid = Int32(arguments[index + 1]) ?? 0
            index += 2
        default:
            positional.append(arguments[index])
            index += 1
        }
    }
    guard let input = positional.first else {
        print("usage: tracing-demo replay CHUNKS.jsonl [output.pftrace] [--uid N] [--pid N]")
        return 2
    }
    let output = positional.count > 1 ? positional[1] : "replay.pftrace"
    do {
        let capture = try SharedMemoryCapture(jsonLines: String(contentsOfFile: input, encoding: .utf8))
        let loop = ManualEventLoop()
        let service = TracingServiceCore(eventLoop: loop)
        final class ReplayProducer: Producer {
            var started: DataSourceConfig?
            func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) { started = config }
            func stopDataSource(_ id: DataSourceInstanceID) {}
            func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {}
        }
        let producer = ReplayProducer()
        let endpoint = service.connectProducer(
            producer, options: ProducerConnectionOptions(name: "replay", identity: PeerIdentity(uid: uid, pid: pid)))
        endpoint.registerDataSource(descriptor("replay"))
        let recorder = TraceRecorder(service: service)
        recorder.start(demoConfig(dataSource: "replay", sizeKb: 64 * 1024))
        loop.runUntilIdle()
        guard let started = producer.started else { throw TracingError(.invalidState, "the data source did not start") }
        try capture.replay(into: endpoint, targetBuffer: BufferID(started.targetBuffer))
        loop.runUntilIdle()
        var outcome: Result<[TracePacketData], TracingError>?
        recorder.stop { outcome = $0 }
        loop.runUntilIdle()
        let packets = try outcome!.get()
        try Data(recorder.traceFile).write(to: URL(fileURLWithPath: output))
        let fromProducer = packets.filter { (try? $0.decode().trustedPacketSequenceID) != 1 }.count
        print("\(capture.commits.count) commits, \(capture.commits.reduce(0) { $0 + $1.chunks.count }) chunks -> "
              + "\(fromProducer) producer packets; trace written to \(output)")
        _ = endpoint
        return 0
    } catch {
        print("replay failed: \(error)")
        return 1
    }
}
