// libFuzzer target: hostile shared-memory contents and CommitData requests fed to the tracing
// service. The input is a CommitDataRequest (chunks travel in `data`, the shared-memory emulation
// path, so the fuzzer controls every byte of every chunk) or, if it does not decode as one, a
// single raw chunk, sent by a hostile producer. Whatever it is, the service must not trap, and
// must keep serving everybody else: after each input an honest producer's packet still comes out.

import Foundation
import IPCInProcess
import IPCProtocol
import SwiftProtobuf
import TracingAPI

final class FuzzProducer: Producer {
    var writer: TraceWriter?
    var endpoint: (any ProducerEndpoint)?
    var buffer: UInt32 = 0
    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        buffer = config.targetBuffer
        writer = endpoint?.createTraceWriter(targetBuffer: BufferID(config.targetBuffer), policy: .drop)
    }
    func stopDataSource(_ id: DataSourceInstanceID) {}
    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        endpoint?.notifyFlushComplete(id)
    }
}

final class FuzzConsumer: Consumer {
    var packets: [TracePacketData] = []
    var reads = 0
    func onTracingDisabled(error: String) {}
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        self.packets += packets
        if !hasMore { reads += 1 }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = [UInt8](UnsafeBufferPointer(start: data, count: size))
    let loop = ManualEventLoop()
    let service = TracingServiceCore(eventLoop: loop)
    var descriptor = DataSourceDescriptor()
    descriptor.name = "fuzz.source"
    let producer = FuzzProducer()  // hostile
    let producerEndpoint = service.connectProducer(producer, options: ProducerConnectionOptions(name: "fuzz"))
    producer.endpoint = producerEndpoint
    producerEndpoint.registerDataSource(descriptor)
    let honest = FuzzProducer()
    let honestEndpoint = service.connectProducer(honest, options: ProducerConnectionOptions(name: "honest"))
    honest.endpoint = honestEndpoint
    honestEndpoint.registerDataSource(descriptor)
    let consumer = FuzzConsumer()
    let consumerEndpoint = service.connectConsumer(consumer, uid: 0)
    var config = TraceConfig()
    var bufferConfig = TraceConfig.BufferConfig()
    bufferConfig.sizeKb = 64
    bufferConfig.fillPolicy = input.first.map { $0 & 1 == 0 ? .ringBuffer : .discard } ?? .ringBuffer
    config.buffers = [bufferConfig]
    var source = TraceConfig.DataSource()
    source.config.name = "fuzz.source"
    config.dataSources = [source]
    consumerEndpoint.enableTracing(config, outputFile: nil)
    loop.runUntilIdle()
    guard producer.writer != nil, honest.writer != nil else { fatalError("the session did not start") }

    var request: CommitDataRequest
    if let decoded = try? CommitDataRequest(serializedBytes: input) {
        request = decoded
        // Aim half of the moves at the real buffer, so they get past the buffer check.
        for index in request.chunksToMove.indices where index % 2 == 0 {
            request.chunksToMove[index].targetBuffer = producer.buffer
        }
        for index in request.chunksToPatch.indices where index % 2 == 0 {
            request.chunksToPatch[index].targetBuffer = producer.buffer
        }
    } else {
        request = CommitDataRequest()
        var move = CommitDataRequest.ChunksToMove()
        move.targetBuffer = producer.buffer
        move.data = Data(input)
        request.chunksToMove = [move]
    }
    producerEndpoint.commitData(request, completion: nil)
    loop.runUntilIdle()
    consumerEndpoint.readBuffers()
    loop.runUntilIdle()

    // Still serving: a packet written the normal way comes back.
    honest.writer!.newTracePacket { packet in packet.appendNested(900) { $0.appendString(1, "alive") } }
    honest.writer!.flush()
    loop.runUntilIdle()
    let before = consumer.packets.count
    consumerEndpoint.readBuffers()
    loop.runUntilIdle()
    let alive = consumer.packets[before...].contains { packet in
        (try? packet.decode())?.forTesting.str == "alive"
    }
    if !alive { fatalError("the service stopped serving after this input") }
    producer.writer = nil
    honest.writer = nil
    withExtendedLifetime((producerEndpoint, honestEndpoint, consumerEndpoint)) {}
    return 0
}
