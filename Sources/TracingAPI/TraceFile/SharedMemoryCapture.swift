// Shared-memory captures: what a real producer had in its shared memory at each CommitData,
// in the JSON-lines format of the project's interop fixtures (../shared/interop/smb/README.md):
// one "chunk" record per moved chunk (page, chunk, page-header bitmap, the whole chunk as hex),
// one "patch" record per ChunkToPatch, "flush_ack" records for flush acknowledgements.
//
// Replaying one puts every chunk back where the producer had it, in a producer's real shared
// memory, and issues the same CommitData requests, so the service reads exactly what the real
// service read. Used by the tests and by `tracing-demo replay`.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A recorded sequence of CommitData requests with the shared-memory chunks they moved.
public struct SharedMemoryCapture: Sendable {
    /// One moved chunk, as it was in the producer's shared memory.
    public struct Chunk: Sendable {
        /// Where the chunk was: page index, chunk index in the page, the page header then, and
        /// the chunk's byte offset in the buffer; `bytes` is the whole chunk, header included.
        public var page: Int
        public var chunk: Int
        public var pageHeaderBitmap: UInt32
        public var offsetInBuffer: Int
        public var bytes: [UInt8]
    }

    /// One CommitData request.
    public struct Commit: Sendable {
        /// 1-based position of this CommitData on the producer's connection.
        public var sequence: Int
        public var chunks: [Chunk] = []
        public var patches: [CommitDataRequest.ChunkToPatch] = []
        public var flushRequestID: UInt64?
    }

    /// The commits, in the order the producer sent them.
    public var commits: [Commit]

    /// One line of the capture (the union of the record kinds' fields).
    private struct Record: Decodable {
        struct PatchRecord: Decodable {
            var offset: Int?
            var data_hex: String?
        }
        var kind: String?
        var commit_seq: Int?
        var page: Int?
        var chunk: Int?
        var page_header_bitmap: String?
        var chunk_offset_in_smb: Int?
        var hex: String?
        var writer_id: Int?
        var chunk_id: Int?
        var target_buffer: Int?
        var has_more_patches: Bool?
        var patches: [PatchRecord]?
        var flush_request_id: UInt64?
    }

    /// Parses the JSON-lines capture format. Throws on malformed lines.
    public init(jsonLines: String) throws(TracingError) {
        var bySequence: [Int: Commit] = [:]
        let decoder = JSONDecoder()
        for (number, line) in jsonLines.split(separator: "\n").enumerated() where !line.isEmpty {
            guard let record = try? decoder.decode(Record.self, from: Data(line.utf8)) else {
                throw TracingError(.invalidConfig, "line \(number + 1): not a capture record")
            }
            let sequence = record.commit_seq ?? 0
            var commit = bySequence[sequence] ?? Commit(sequence: sequence)
            switch record.kind {
            case "chunk":
                guard let page = record.page, let chunk = record.chunk, let bitmapText = record.page_header_bitmap,
                      let bitmap = UInt32(bitmapText.hasPrefix("0x") ? String(bitmapText.dropFirst(2)) : bitmapText, radix: 16),
                      let offset = record.chunk_offset_in_smb, let hex = record.hex, let bytes = Self.bytes(hex: hex) else {
                    throw TracingError(.invalidConfig, "line \(number + 1): incomplete chunk record")
                }
                commit.chunks.append(Chunk(page: page, chunk: chunk, pageHeaderBitmap: bitmap, offsetInBuffer: offset, bytes: bytes))
            case "patch":
                var entry = CommitDataRequest.ChunkToPatch()
                guard let writer = record.writer_id, let chunkID = record.chunk_id, let patches = record.patches else {
                    throw TracingError(.invalidConfig, "line \(number + 1): incomplete patch record")
                }
                entry.writerID = UInt32(truncatingIfNeeded: writer)
                entry.chunkID = UInt32(truncatingIfNeeded: chunkID)
                entry.targetBuffer = UInt32(truncatingIfNeeded: record.target_buffer ?? 0)
                entry.hasMorePatches_p = record.has_more_patches ?? false
                for patch in patches {
                    guard let offset = patch.offset, let hex = patch.data_hex, let data = Self.bytes(hex: hex) else {
                        throw TracingError(.invalidConfig, "line \(number + 1): incomplete patch")
                    }
                    var item = CommitDataRequest.ChunkToPatch.Patch()
                    item.offset = UInt32(truncatingIfNeeded: offset)
                    item.data = Data(data)
                    entry.patches.append(item)
                }
                commit.patches.append(entry)
            case "flush_ack":
                commit.flushRequestID = record.flush_request_id
            default:
                throw TracingError(.invalidConfig, "line \(number + 1): unknown record kind")
            }
            bySequence[sequence] = commit
        }
        commits = bySequence.keys.sorted().map { bySequence[$0]! }
    }

    /// Puts each commit's chunks into `endpoint`'s shared memory (page header included) and
    /// commits them into `targetBuffer`, one CommitData per recorded commit. Loop-only.
    public func replay(into endpoint: any ProducerEndpoint, targetBuffer: BufferID) throws(TracingError) {
        guard let memory = endpoint.sharedMemory else {
            throw TracingError(.invalidState, "the producer has no shared memory yet (tracing not set up)")
        }
        for commit in commits {
            var request = CommitDataRequest()
            for chunk in commit.chunks {
                guard chunk.page >= 0, chunk.page < memory.pageCount, chunk.chunk >= 0,
                      chunk.chunk < SharedMemoryABI.maxChunksPerPage, chunk.offsetInBuffer >= 0,
                      chunk.bytes.count <= memory.size, chunk.offsetInBuffer <= memory.size - chunk.bytes.count else {
                    throw TracingError(.invalidConfig, "chunk at offset \(chunk.offsetInBuffer) does not fit the buffer")
                }
                memory.storeHeaderBitmap(chunk.pageHeaderBitmap, page: chunk.page)
                chunk.bytes.withUnsafeBytes { bytes in
                    (memory.base + chunk.offsetInBuffer).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                }
                var move = CommitDataRequest.ChunksToMove()
                move.page = UInt32(chunk.page)
                move.chunk = UInt32(chunk.chunk)
                move.targetBuffer = UInt32(targetBuffer)
                request.chunksToMove.append(move)
            }
            for var patch in commit.patches {
                patch.targetBuffer = UInt32(targetBuffer)
                request.chunksToPatch.append(patch)
            }
            if let flushRequestID = commit.flushRequestID { request.flushRequestID = flushRequestID }
            endpoint.commitData(request, completion: nil)
        }
    }

    private static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
