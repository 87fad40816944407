// Trace packets through the tracing service, beside their floor in the same run. Each
// iteration is 1,000 small packets (a timestamp and a 24-byte for_testing string, ~40 bytes):
//   append encoded bytes (floor):  the same packet bytes appended to a preallocated array
//   swift-protobuf serialize:      what building each packet as a message and encoding it costs
//   TraceWriter + commit:          field by field into shared-memory chunks, flushed, and the
//                                  service moves the chunks into its buffer (CommitData)
//   TraceWriter + service + read:  ... and a consumer reads the 1,000 packets back out
import Benchmark
import Foundation
import IPCInProcess
import IPCProtocol
import TracingAPI

let packetsPerIteration = 1_000
let text = "packet payload 012345678"

final class BenchProducer: Producer {
    var endpoint: (any ProducerEndpoint)!
    var writer: TraceWriter?
    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        writer = endpoint.createTraceWriter(targetBuffer: BufferID(config.targetBuffer), policy: .drop)
    }
    func stopDataSource(_ id: DataSourceInstanceID) {}
    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {}
}

final class BenchConsumer: Consumer {
    var packets = 0
    func onTracingDisabled(error: String) {}
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) { self.packets += packets.count }
}

/// A service with one producer writing and one consumer reading, on a manual loop.
struct Session {
    let loop = ManualEventLoop()
    let service: TracingServiceCore
    let producer = BenchProducer()
    let consumer = BenchConsumer()
    let consumerEndpoint: any ConsumerEndpoint

    init() {
        service = TracingServiceCore(eventLoop: loop)
        producer.endpoint = service.connectProducer(producer, options: ProducerConnectionOptions(name: "bench"))
        var descriptor = DataSourceDescriptor()
        descriptor.name = "bench"
        producer.endpoint.registerDataSource(descriptor)
        consumerEndpoint = service.connectConsumer(consumer, uid: 0)
        var config = TraceConfig()
        var buffer = TraceConfig.BufferConfig()
        buffer.sizeKb = 8 * 1024
        config.buffers = [buffer]
        var source = TraceConfig.DataSource()
        source.config.name = "bench"
        config.dataSources = [source]
        consumerEndpoint.enableTracing(config, outputFile: nil)
        loop.runUntilIdle()
        precondition(producer.writer != nil)
    }
}

@inline(__always)
func writePacket(_ writer: TraceWriter, _ index: Int) {
    writer.newTracePacket { packet in
        packet.appendVarint(8, UInt64(index))
        packet.appendNested(900) { $0.appendString(1, text) }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput], timeUnits: .microseconds, maxDuration: .seconds(3))

    var message = TracePacket()
    message.timestamp = 123_456
    message.forTesting.str = text
    let encoded: [UInt8] = try! message.serializedBytes()

    Benchmark("append encoded bytes (floor)") { benchmark in
        var output: [UInt8] = []
        output.reserveCapacity((encoded.count + 8) * packetsPerIteration)
        for _ in benchmark.scaledIterations {
            output.removeAll(keepingCapacity: true)
            for _ in 0..<packetsPerIteration {
                output.append(0x0A)
                output.append(UInt8(encoded.count))
                output.append(contentsOf: encoded)
            }
            blackHole(output.count)
        }
    }

    Benchmark("swift-protobuf serialize") { benchmark in
        for _ in benchmark.scaledIterations {
            for index in 0..<packetsPerIteration {
                var packet = TracePacket()
                packet.timestamp = UInt64(index)
                packet.forTesting.str = text
                blackHole(try! packet.serializedBytes() as [UInt8])
            }
        }
    }

    Benchmark("TraceWriter + commit") { benchmark in
        let session = Session()
        let writer = session.producer.writer!
        for _ in benchmark.scaledIterations {
            for index in 0..<packetsPerIteration { writePacket(writer, index) }
            writer.flush()
            session.loop.runUntilIdle()  // the service moves the chunks into its ring buffer
        }
        precondition(writer.packetsDropped == 0)
    }

    Benchmark("TraceWriter + service + read") { benchmark in
        let session = Session()
        let writer = session.producer.writer!
        for _ in benchmark.scaledIterations {
            for index in 0..<packetsPerIteration { writePacket(writer, index) }
            writer.flush()
            session.loop.runUntilIdle()
            session.consumerEndpoint.readBuffers()
            session.loop.runUntilIdle()
        }
        precondition(session.consumer.packets >= benchmark.scaledIterations.count * packetsPerIteration)
    }
}
