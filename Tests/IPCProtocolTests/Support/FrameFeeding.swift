// Helpers to push bytes through a FrameDeserializer the way a socket would.

@testable import IPCProtocol

extension FrameDeserializer {
    /// Writes `bytes` into the receive space in reads of the given sizes (cycled), decoding as
    /// it goes, and returns every frame popped. Rethrows the first framing error.
    func feed(_ bytes: some Collection<UInt8>, readSizes: [Int] = [Int.max]) throws(IPCError) -> [IPCFrame] {
        var frames: [IPCFrame] = []
        var remaining = bytes[...]
        var sizeIndex = 0
        while !remaining.isEmpty {
            let space = receiveSpace
            let wanted = min(readSizes[sizeIndex % readSizes.count], space.count, remaining.count)
            sizeIndex += 1
            precondition(wanted > 0, "receive space exhausted")
            let chunk = remaining.prefix(wanted)
            UnsafeMutableRawBufferPointer(rebasing: space[0..<wanted]).copyBytes(from: chunk)
            remaining = remaining.dropFirst(wanted)
            try endReceive(byteCount: wanted)
            while let frame = popNextFrame() { frames.append(frame) }
        }
        return frames
    }
}

/// Builds a frame carrying `count` bytes of test data.
func testFrame(requestID: UInt64, dataSize: Int, fill: UInt8 = 0xAB) -> IPCFrame {
    var frame = IPCFrame()
    frame.requestID = requestID
    frame.dataForTesting = [Data(repeating: fill, count: dataSize)]
    return frame
}

/// Raw header + payload, for hand-written streams.
func rawFrame(payload: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = []
    FrameSerializer.appendHeader(payloadSize: payload.count, to: &bytes)
    return bytes + payload
}

import Foundation
