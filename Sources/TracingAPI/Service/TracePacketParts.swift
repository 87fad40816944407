// A packet on its way from a trace buffer to a consumer, not yet copied anywhere: its body
// where it already lies (inside a stored chunk, or glued from fragments) and the trusted fields
// the service appends, kept encoded inline. It is copied once, straight into its destination
// (a ReadBuffers reply frame, the output file), or made into a `TracePacketData` for a consumer
// in this process.
//
// The body shares the chunk's storage: a packet keeps its whole chunk alive until it is sent,
// which the service bounds by reading its buffers in parts.

struct TracePacketParts {
    /// The storage the body lies in, and where.
    let storage: [UInt8]
    let body: Range<Int>
    /// Encoded trusted fields, appended after the body.
    let trusted: TrustedFields

    /// A packet written whole by the service (its own packets, relayed ones).
    init(_ packet: TracePacketData) {
        storage = packet.bytes
        body = 0..<packet.bytes.count
        trusted = TrustedFields()
    }

    init(storage: [UInt8], body: Range<Int>, trusted: TrustedFields) {
        self.storage = storage
        self.body = body
        self.trusted = trusted
    }

    /// The packet's size, trusted fields included.
    var count: Int { body.count + trusted.count }

    /// Copies the packet's bytes `range` (offsets into the whole packet) to `destination`.
    func copyBytes(_ range: Range<Int>, to destination: UnsafeMutableRawPointer) {
        var at = destination
        let bodyPart = range.clamped(to: 0..<body.count)
        if !bodyPart.isEmpty {
            storage.withUnsafeBytes { bytes in
                at.copyMemory(from: bytes.baseAddress! + body.lowerBound + bodyPart.lowerBound, byteCount: bodyPart.count)
            }
            at += bodyPart.count
        }
        let trustedPart = range.clamped(to: body.count..<count)
        if !trustedPart.isEmpty {
            trusted.copyBytes((trustedPart.lowerBound - body.count)..<(trustedPart.upperBound - body.count), to: at)
        }
    }

    /// Appends the packet's bytes to `output`.
    func append(to output: inout [UInt8]) {
        storage.withUnsafeBytes { output.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[body])) }
        trusted.append(to: &output)
    }

    /// The packet as one array (for a consumer in this process).
    var joined: TracePacketData {
        if trusted.count == 0 && body == storage.indices { return TracePacketData(bytes: storage) }
        return TracePacketData(bytes: [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            copyBytes(0..<count, to: buffer.baseAddress!)
            initialized = count
        })
    }
}

/// The fields only the service may write on a producer's packet, encoded once, in the order
/// Perfetto writes them. At most 39 bytes: five tags of one or two bytes, two int32s that may
/// take ten (negative values are sign-extended), two uint32s of up to five, one bool.
struct TrustedFields {
    static let capacity = 40
    private var storage: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)
    private(set) var count = 0

    /// None (a packet the service wrote itself).
    init() {}

    init(uid: UInt32, sequenceID: UInt32, pid: Int32?, machineID: UInt32 = 0, previousPacketDropped: Bool = false) {
        var count = 0
        withUnsafeMutableBytes(of: &storage) { buffer in
            let base = buffer.baseAddress!
            func field(_ number: Int, _ value: UInt64) {
                count += ProtoEncoding.storeVarint(UInt64(number) << 3, to: base + count)
                count += ProtoEncoding.storeVarint(value, to: base + count)
            }
            field(TracePacketField.trustedUID, UInt64(bitPattern: Int64(Int32(bitPattern: uid))))
            field(TracePacketField.trustedPacketSequenceID, UInt64(sequenceID))
            if let pid { field(TracePacketField.trustedPID, UInt64(bitPattern: Int64(pid))) }
            // Only packets of other machines say which (0, this machine, is left out as in Perfetto).
            if machineID != 0 { field(TracePacketField.machineID, UInt64(machineID)) }
            if previousPacketDropped { field(TracePacketField.previousPacketDropped, 1) }
        }
        self.count = count
    }

    func copyBytes(_ range: Range<Int>, to destination: UnsafeMutableRawPointer) {
        withUnsafeBytes(of: storage) { bytes in
            destination.copyMemory(from: bytes.baseAddress! + range.lowerBound, byteCount: range.count)
        }
    }

    /// The encoded fields, appended to `packet`.
    func append(to packet: inout [UInt8]) {
        withUnsafeBytes(of: storage) { bytes in
            packet.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[..<count]))
        }
    }
}
