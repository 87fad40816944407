// Expanding the compressed packets of a trace (what `TraceFile.decompressPackets` does with
// each): streamed, so a stream that expands past its bound stops there instead of filling
// memory.

import CZlib
import CZstd

enum TraceDecompression {
    /// A zlib-format deflate stream, expanded.
    static func inflate(_ input: UnsafeRawBufferPointer, maxBytes: Int) -> Result<[UInt8], TracingError> {
        var stream = z_stream()
        guard inflateInit_(&stream, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            return .failure(TracingError(.invalidConfig, "zlib cannot start inflating"))
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var window = [UInt8](repeating: 0, count: 256 * 1024)
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        while true {
            let (status, produced) = window.withUnsafeMutableBufferPointer { buffer in
                stream.next_out = buffer.baseAddress
                stream.avail_out = uInt(buffer.count)
                let status = CZlib.inflate(&stream, Z_NO_FLUSH)
                return (status, buffer.count - Int(stream.avail_out))
            }
            // zlib says Z_BUF_ERROR when it can make no progress: here, the input ran out.
            if status == Z_BUF_ERROR && stream.avail_in == 0 || status == Z_OK && produced == 0 && stream.avail_in == 0 {
                return .failure(TracingError(.invalidConfig, "a compressed_packets stream is cut short"))
            }
            guard status == Z_OK || status == Z_STREAM_END else {
                return .failure(TracingError(.invalidConfig, "a compressed_packets stream does not inflate (zlib status \(status))"))
            }
            guard output.count + produced <= maxBytes else {
                return .failure(TracingError(.invalidConfig, "compressed packets expand past \(maxBytes) bytes"))
            }
            output.append(contentsOf: window[..<produced])
            if status == Z_STREAM_END { return .success(output) }
        }
    }

    /// One zstd frame (or several, back to back), expanded.
    static func zstdDecompress(_ input: UnsafeRawBufferPointer, maxBytes: Int) -> Result<[UInt8], TracingError> {
        guard let context = ZSTD_createDStream() else { return .failure(TracingError(.invalidConfig, "zstd cannot start decompressing")) }
        defer { ZSTD_freeDStream(context) }
        var output: [UInt8] = []
        var window = [UInt8](repeating: 0, count: ZSTD_DStreamOutSize())
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var lastResult = 0
        while true {
            let (result, produced) = window.withUnsafeMutableBytes { buffer in
                var destination = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
                let result = ZSTD_decompressStream(context, &destination, &source)
                return (result, destination.pos)
            }
            guard ZSTD_isError(result) == 0 else {
                let reason = String(cString: ZSTD_getErrorName(result))
                return .failure(TracingError(.invalidConfig, "a zstd_compressed_packets stream does not decompress (\(reason))"))
            }
            guard output.count + produced <= maxBytes else {
                return .failure(TracingError(.invalidConfig, "compressed packets expand past \(maxBytes) bytes"))
            }
            output.append(contentsOf: window[..<produced])
            lastResult = result
            if source.pos == source.size && produced < window.count { break }
        }
        guard lastResult == 0 else {
            return .failure(TracingError(.invalidConfig, "a zstd_compressed_packets stream is cut short"))
        }
        return .success(output)
    }
}
