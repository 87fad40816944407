// Compressed traces, as Perfetto's traced writes them (its MaybeCompressPackets): the packets of
// a read are framed as a `Trace` (`0x0A <length> <packet>` each), that stream is compressed, and
// the result goes out as one packet holding only `compressed_packets` (deflate, zlib format) or
// `zstd_compressed_packets` (one zstd frame). Trace processor and the Perfetto UI expand both.
//
// Reads compress after the trace filter and with the stats packet inside, as traced does.
// ReadBuffers compresses each part it reads (256 KiB of chunks, so that the loop stays
// responsive), the output file about 1 MiB of packets into each packet (traced: 32 KiB per
// ReadBuffers task, 1 MiB per file write).

import CZlib
import CZstd

/// The codec a session's config asks for.
enum TraceCompression: Equatable {
    case deflate
    case zstd(level: Int32)

    /// The highest zstd level a session is compressed with. Higher levels (up to 22) compress
    /// a few MB/s: on the service's loop, where every producer's commits and every consumer's
    /// calls wait, they would stall the whole service for seconds per read. Level 9 keeps
    /// zstd faster than traced's deflate.
    static let maxZstdLevel: Int32 = 9

    /// Packets' bytes (framed) compressed into each compressed packet.
    static let groupBytes = 1 << 20

    /// What `config` asks for, as traced picks it: zstd if its `compression` says so (level 0
    /// is zstd's default, levels above ``maxZstdLevel`` are lowered to it, negative levels are
    /// zstd's fast modes), else deflate if `compression` or the older `compression_type` says
    /// so, else none.
    init?(_ config: TraceConfig) {
        if config.compression.hasZstd {
            self = .zstd(level: min(config.compression.zstd.level, Self.maxZstdLevel))
        } else if config.compression.hasDeflate || config.compressionType == .deflate {
            self = .deflate
        } else {
            return nil
        }
    }

    /// The `TracePacket` field the compressed stream goes in.
    var packetField: Int {
        switch self {
        case .deflate: 50
        case .zstd: 133
        }
    }

    /// `packets` as compressed packets, a group of about ``groupBytes`` of them in each.
    func compress(_ packets: [TracePacketParts]) -> [TracePacketParts] {
        var compressed: [TracePacketParts] = []
        var group: [UInt8] = []
        // Room for the group, or for all of a smaller read (a ReadBuffers part is 256 KiB).
        let readBytes = packets.reduce(0) { $0 + TraceFile.framedPacketSize($1.count) }
        group.reserveCapacity(min(readBytes, Self.groupBytes + (packets.first?.count ?? 0)))
        for packet in packets {
            TraceFile.appendFramedPacket(packet, to: &group)
            if group.count >= Self.groupBytes {
                compressed.append(TracePacketParts(compressedPacket(group)))
                group.removeAll(keepingCapacity: true)
            }
        }
        if !group.isEmpty { compressed.append(TracePacketParts(compressedPacket(group))) }
        return compressed
    }

    /// One packet holding `stream` compressed.
    private func compressedPacket(_ stream: [UInt8]) -> TracePacketData {
        let data = compressedBytes(stream)
        var packet: [UInt8] = []
        packet.reserveCapacity(data.count + 8)
        ProtoEncoding.appendTag(packetField, .lengthDelimited, to: &packet)
        ProtoEncoding.appendVarint(UInt64(data.count), to: &packet)
        packet.append(contentsOf: data)
        return TracePacketData(bytes: packet)
    }

    /// `input` compressed, whole.
    func compressedBytes(_ input: [UInt8]) -> [UInt8] {
        switch self {
        case .deflate:
            let bound = Int(compressBound(uLong(input.count)))
            return [UInt8](unsafeUninitializedCapacity: bound) { output, initialized in
                var length = uLongf(bound)
                let status = input.withUnsafeBufferPointer { source in
                    // Level 6, zlib's default and traced's.
                    compress2(output.baseAddress!, &length, source.baseAddress!, uLong(input.count), 6)
                }
                // With the output as large as compressBound, zlib cannot fail but on memory.
                precondition(status == Z_OK, "zlib compress2 failed: \(status)")
                initialized = Int(length)
            }
        case .zstd(let level):
            let bound = ZSTD_compressBound(input.count)
            return [UInt8](unsafeUninitializedCapacity: bound) { output, initialized in
                let written = input.withUnsafeBytes { source in
                    ZSTD_compress(output.baseAddress!, bound, source.baseAddress!, input.count, level)
                }
                precondition(ZSTD_isError(written) == 0, "zstd compress failed: \(written)")
                initialized = written
            }
        }
    }
}
