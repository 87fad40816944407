// Frame encode and decode beside their floor: a memcpy of the same bytes, in the same run.
import Benchmark
import Foundation
import IPCProtocol

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput], maxDuration: .seconds(2))

    for payloadSize in [16, 4096, 65536] {
        var frame = IPCFrame()
        frame.requestID = 42
        frame.msgInvokeMethodReply.success = true
        frame.msgInvokeMethodReply.replyProto = Data(repeating: 0x5A, count: payloadSize)
        let encoded = try! FrameSerializer.serialize(frame)

        Benchmark("memcpy floor \(payloadSize) B") { benchmark in
            var destination = [UInt8](repeating: 0, count: encoded.count)
            for _ in benchmark.scaledIterations {
                destination.withUnsafeMutableBytes { to in
                    encoded.withUnsafeBytes { from in to.copyMemory(from: from) }
                }
                blackHole(destination)
            }
        }

        Benchmark("frame encode \(payloadSize) B") { benchmark in
            for _ in benchmark.scaledIterations {
                blackHole(try FrameSerializer.serialize(frame))
            }
        }

        Benchmark("frame decode \(payloadSize) B") { benchmark in
            let deserializer = try FrameDeserializer()
            for _ in benchmark.scaledIterations {
                deserializer.receiveSpace.copyBytes(from: encoded)
                try deserializer.endReceive(byteCount: encoded.count)
                blackHole(deserializer.popNextFrame())
            }
        }
    }
}
