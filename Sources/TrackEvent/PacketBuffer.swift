// A small protobuf encoder for one packet at a time: an event is encoded here, where every
// nested length is known when its message ends, then copied into shared memory in one piece
// (TraceWriter.writePacket(bytes:)). Owned by a sequence and reused, so steady-state events
// allocate nothing.

final class PacketBuffer {
    // Unchecked exclusivity: used by one thread at a time (its sequence's), never reentered.
    @exclusivity(unchecked) private(set) var base: UnsafeMutableRawPointer
    @exclusivity(unchecked) private var capacity: Int
    @exclusivity(unchecked) private(set) var count = 0

    init(capacity: Int = 512) {
        self.capacity = capacity
        base = .allocate(byteCount: capacity, alignment: 8)
    }

    deinit { base.deallocate() }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    func reset() { count = 0 }

    @inline(__always)
    private func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        var newCapacity = capacity * 2
        while newCapacity < count + extra { newCapacity *= 2 }
        let grown = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 8)
        grown.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = grown
        capacity = newCapacity
    }

    @inline(__always)
    func varint(_ value: UInt64) {
        reserve(10)
        var value = value
        while value >= 0x80 {
            base.storeBytes(of: UInt8(truncatingIfNeeded: value) | 0x80, toByteOffset: count, as: UInt8.self)
            count += 1
            value >>= 7
        }
        base.storeBytes(of: UInt8(value), toByteOffset: count, as: UInt8.self)
        count += 1
    }

    @inline(__always)
    func varintField(_ field: UInt64, _ value: UInt64) {
        varint(field << 3)
        varint(value)
    }

    func fixed64Field(_ field: UInt64, _ value: UInt64) {
        varint(field << 3 | 1)
        reserve(8)
        base.storeBytes(of: value.littleEndian, toByteOffset: count, as: UInt64.self)
        count += 8
    }

    func bytesField(_ field: UInt64, _ bytes: UnsafeRawBufferPointer) {
        varint(field << 3 | 2)
        varint(UInt64(bytes.count))
        reserve(bytes.count)
        if let source = bytes.baseAddress { (base + count).copyMemory(from: source, byteCount: bytes.count) }
        count += bytes.count
    }

    func stringField(_ field: UInt64, _ string: String) {
        var string = string
        string.withUTF8 { bytesField(field, UnsafeRawBufferPointer($0)) }
    }

    func staticStringField(_ field: UInt64, _ string: StaticString) {
        if string.hasPointerRepresentation {
            bytesField(field, UnsafeRawBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
        } else {
            stringField(field, "\(string)")
        }
    }

    /// A nested message: one byte is reserved for its length; a longer one moves the content.
    @inline(__always)
    func nested(_ field: UInt64, _ body: () -> Void) {
        varint(field << 3 | 2)
        reserve(1)
        count += 1
        let start = count
        body()
        let length = count - start
        if length < 0x80 {
            base.storeBytes(of: UInt8(length), toByteOffset: start - 1, as: UInt8.self)
            return
        }
        var lengthSize = 1
        while UInt64(length) >> (7 * lengthSize) != 0 { lengthSize += 1 }
        reserve(lengthSize - 1)
        (base + start + lengthSize - 1).copyMemory(from: base + start, byteCount: length)
        count = start - 1
        varint(UInt64(length))
        count += length
    }
}
