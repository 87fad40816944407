// Fuzzes the frame deserializer: arbitrary bytes, in arbitrary read sizes, with a small buffer
// so that oversized announcements, partial frames and compaction are all reached.
import IPCProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDeserializer(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    guard let first = input.first else { return 0 }
    // The first byte picks the read size (1...256) and the capacity (4 KiB or default).
    let readSize = Int(first & 0x7F) * 2 + 1
    let capacity = first & 0x80 != 0 ? 4096 : WireLimits.defaultReceiveCapacity
    guard let deserializer = try? FrameDeserializer(capacity: capacity) else { return 0 }
    var offset = 1
    while offset < count {
        let space = deserializer.receiveSpace
        let n = min(readSize, space.count, count - offset)
        space.baseAddress!.copyMemory(from: start + offset, byteCount: n)
        offset += n
        do {
            try deserializer.endReceive(byteCount: n)
        } catch {
            break  // oversized frame: the owner would close the connection
        }
        while let frame = deserializer.popNextFrame() {
            // Whatever decoded must encode again.
            _ = try? FrameSerializer.serialize(frame, maxPayloadSize: Int.max)
        }
    }
    return 0
}
