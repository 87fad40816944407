// Perfetto's trace file format: `message Trace { repeated TracePacket packet = 1; }`, i.e. a
// concatenation of `0x0A <varint length> <TracePacket bytes>`. Files written this way open in
// the Perfetto UI and trace_processor.

#if canImport(Glibc)
import Glibc
#endif

/// Encoding and writing Perfetto trace files.
public enum TraceFile {
    /// The tag of `Trace.packet` (field 1, length-delimited).
    static let packetTag: UInt8 = 0x0A

    /// Bytes a packet of `size` bytes takes in a trace file.
    public static func framedPacketSize(_ size: Int) -> Int {
        1 + ProtoEncoding.varintSize(UInt64(size)) + size
    }

    /// Appends one packet with its `Trace.packet` preamble.
    public static func appendFramedPacket(_ packet: [UInt8], to output: inout [UInt8]) {
        output.append(packetTag)
        ProtoEncoding.appendVarint(UInt64(packet.count), to: &output)
        output.append(contentsOf: packet)
    }

    /// Appends one packet read out of a buffer with its preamble, copying its parts straight in.
    static func appendFramedPacket(_ packet: TracePacketParts, to output: inout [UInt8]) {
        output.append(packetTag)
        ProtoEncoding.appendVarint(UInt64(packet.count), to: &output)
        packet.append(to: &output)
    }

    /// Counts the packets of the trace file open at `fd` by reading only their headers (the
    /// file may be larger than memory), and its size in bytes. Throws where it stops being a
    /// trace, or when it cannot be read.
    public static func countPackets(inFile fd: Int32) throws(TracingError) -> (packets: Int, bytes: Int) {
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw TracingError(.invalidConfig, "cannot read the file (errno \(errno))") }
        let size = Int(status.st_size)
        var packets = 0
        var offset = 0
        // Headers are read through a window of the file, refilled from the next header when
        // that header is not all in it (after a large packet, or at the window's end): one
        // read per 64 KiB of small packets, not one per packet.
        var window = [UInt8](repeating: 0, count: 64 * 1024)
        var windowStart = 0
        var windowCount = 0
        while offset < size {
            if offset + min(1 + ProtoEncoding.maxVarintSize, size - offset) > windowStart + windowCount {
                let count = window.withUnsafeMutableBytes { pread(fd, $0.baseAddress, min($0.count, size - offset), off_t(offset)) }
                guard count > 0 else { throw TracingError(.invalidConfig, "cannot read the file (errno \(errno))") }
                windowStart = offset
                windowCount = count
            }
            guard window[offset - windowStart] == packetTag else {
                throw TracingError(.invalidConfig, "byte \(offset): expected the Trace.packet tag 0x0A")
            }
            var position = offset - windowStart + 1
            guard let length = window.withUnsafeBytes({ ProtoEncoding.readVarint(UnsafeRawBufferPointer(rebasing: $0[..<windowCount]), at: &position) }),
                  length <= UInt64(size - windowStart - position) else {
                throw TracingError(.invalidConfig, "byte \(offset): a packet runs past the end of the file")
            }
            offset = windowStart + position + Int(length)
            packets += 1
        }
        return (packets, size)
    }

    /// A whole trace file for `packets`.
    public static func encode(_ packets: [TracePacketData]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(packets.reduce(0) { $0 + framedPacketSize($1.bytes.count) })
        for packet in packets { appendFramedPacket(packet.bytes, to: &output) }
        return output
    }

    /// Splits a trace file into its packets. Throws on a malformed file.
    public static func decodePackets(_ bytes: [UInt8]) throws(TracingError) -> [TracePacketData] {
        var packets: [TracePacketData] = []
        var position = 0
        while position < bytes.count {
            guard bytes[position] == packetTag else {
                throw TracingError(.invalidConfig, "byte \(position): expected the Trace.packet tag 0x0A")
            }
            position += 1
            let start = position
            guard let length = bytes.withUnsafeBytes({ ProtoEncoding.readVarint($0, at: &position) }) else {
                throw TracingError(.invalidConfig, "byte \(start): truncated packet length")
            }
            guard length <= UInt64(bytes.count - position) else {
                throw TracingError(.invalidConfig, "byte \(position): packet of \(length) bytes runs past the end")
            }
            packets.append(TracePacketData(bytes: Array(bytes[position..<position + Int(length)])))
            position += Int(length)
        }
        return packets
    }

    /// `packets` with every compressed packet (`compressed_packets`, deflate, or
    /// `zstd_compressed_packets`, as Perfetto's traced writes them when a session's config asks
    /// for compression) replaced by the packets it holds; other packets as they are.
    ///
    /// Throws when a compressed packet does not expand to a trace, or would expand past
    /// `maxBytes` in all (a bound against a stream made to expand without end).
    public static func decompressPackets(
        _ packets: [TracePacketData], maxBytes: Int = 1 << 30
    ) throws(TracingError) -> [TracePacketData] {
        var expanded: [TracePacketData] = []
        var budget = maxBytes
        for packet in packets {
            guard let (codec, payload) = compressedPayload(of: packet) else {
                expanded.append(packet)
                continue
            }
            let stream = try packet.bytes.withUnsafeBytes { bytes in
                let compressed = UnsafeRawBufferPointer(rebasing: bytes[payload])
                return switch codec {
                case .deflate: TraceDecompression.inflate(compressed, maxBytes: budget)
                case .zstd: TraceDecompression.zstdDecompress(compressed, maxBytes: budget)
                }
            }.get()
            budget -= stream.count
            expanded.append(contentsOf: try decodePackets(stream))
        }
        return expanded
    }

    /// The codec and the compressed bytes of a packet whose only field is a compressed stream.
    private static func compressedPayload(of packet: TracePacketData) -> (TraceCompression, Range<Int>)? {
        packet.bytes.withUnsafeBytes { bytes in
            var found: (TraceCompression, Range<Int>)?
            var fields = 0
            let wellFormed = ProtoEncoding.walkFields(in: bytes) { field in
                fields += 1
                guard field.wireType == 2 else { return true }
                for codec in [TraceCompression.deflate, .zstd(level: 0)] where field.number == codec.packetField {
                    found = (codec, field.bytes)
                }
                return true
            }
            return wellFormed && fields == 1 ? found : nil
        }
    }
}
