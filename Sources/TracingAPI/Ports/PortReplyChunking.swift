// How big replies are cut to fit a frame, on both sides of ConsumerPort (Perfetto's
// consumer_ipc_service.cc and consumer_ipc_client_impl.cc):
// * ReadBuffers: packets become slices; a reply holds slices up to the frame size less a
//   margin, counting 16 bytes of framing per slice, and a packet whose slices do not fit goes
//   on in the next reply. The client glues slices until `last_slice_for_packet`.
// * QueryServiceState: the state without its data sources first, then data sources appended
//   one by one while the chunk stays under the frame size less a margin. Every chunk parses
//   on its own; their bytes concatenated parse as the whole state.

import IPCProtocol
import SwiftProtobuf

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

enum ReadBuffersSlicer {
    /// Room for slices in one reply: the frame less Perfetto's 64-byte margin for the frame
    /// and InvokeMethodReply around it.
    static let replyBudget = WireLimits.defaultReceiveCapacity - 64
    /// A slice never exceeds this (a packet longer than that is cut into several slices).
    static let maxSliceSize = WireLimits.defaultReceiveCapacity - 512
    /// Perfetto's estimate of the framing of one slice in a reply.
    static let sliceOverhead = 16

    /// Part of a packet: `bytes[start..<end]` of the packet at `packet`.
    struct Slice: Equatable {
        let packet: Int
        let start: Int
        let end: Int
        let isLast: Bool
    }

    /// One reply: its slices and the exact size of its encoded ReadBuffersResponse. No bytes
    /// are copied until it is sent, and then straight into the frame.
    struct Reply: Equatable {
        var slices: [Slice] = []
        var encodedSize = 0
        var hasMore = true
    }

    /// The replies carrying `packets` (the slices count packets from `firstIndex`); the last
    /// has `hasMore`, the others have more.
    static func plan(_ packets: [TracePacketParts], firstIndex: Int = 0, hasMore: Bool) -> [Reply] {
        var replies: [Reply] = []
        var current = Reply()
        var currentBudget = 0
        for (offset, packet) in packets.enumerated() {
            let count = packet.count
            var start = 0
            repeat {
                let end = min(start + maxSliceSize, count)
                let budget = end - start + sliceOverhead
                if currentBudget + budget > replyBudget, !current.slices.isEmpty {
                    replies.append(current)
                    current = Reply()
                    currentBudget = 0
                }
                current.slices.append(Slice(packet: firstIndex + offset, start: start, end: end, isLast: end == count))
                current.encodedSize += encodedSize(ofSliceWith: end - start)
                currentBudget += budget
                start = end
            } while start < count
        }
        current.hasMore = hasMore
        replies.append(current)
        return replies
    }

    /// Writes `reply` as a ReadBuffersResponse, byte for byte what SwiftProtobuf writes for it:
    /// per slice, `slices` (field 2) holding `data` (field 1) and `last_slice_for_packet`
    /// (field 2, written when false too). `buffer` is exactly `reply.encodedSize` bytes.
    static func encode(_ reply: Reply, packets: [TracePacketParts], into buffer: UnsafeMutableRawBufferPointer) {
        guard !reply.slices.isEmpty, let start = buffer.baseAddress else { return }
        var at = start
        func put(_ byte: UInt8) {
            at.storeBytes(of: byte, as: UInt8.self)
            at += 1
        }
        for slice in reply.slices {
            let count = slice.end - slice.start
            put(0x12)
            at += ProtoEncoding.storeVarint(UInt64(sliceMessageSize(count)), to: at)
            put(0x0A)
            at += ProtoEncoding.storeVarint(UInt64(count), to: at)
            packets[slice.packet].copyBytes(slice.start..<slice.end, to: at)
            at += count
            put(0x10)
            put(slice.isLast ? 1 : 0)
        }
        precondition(at - start == buffer.count, "ReadBuffersResponse size mismatch")
    }

    /// A Slice message holding `count` bytes of data: data's tag, length and bytes, then
    /// last_slice_for_packet's tag and value.
    private static func sliceMessageSize(_ count: Int) -> Int {
        1 + ProtoEncoding.varintSize(UInt64(count)) + count + 2
    }

    /// A slice within the reply: its tag, length and message.
    private static func encodedSize(ofSliceWith count: Int) -> Int {
        let slice = sliceMessageSize(count)
        return 1 + ProtoEncoding.varintSize(UInt64(slice)) + slice
    }
}

/// Glues ReadBuffers slices back into packets (the consumer client's side).
struct TracePacketReassembler {
    private var pending: [UInt8] = []
    /// The largest packet glued back; a larger one fails the read.
    var maxPacketSize = maxReassembledPacketSize
    /// Why the last `append` returned nil.
    private(set) var failure = ""

    /// Appends the slices of one encoded ReadBuffersResponse, read straight from its bytes
    /// (no Slice messages, no copy per slice but into the packet); returns the packets they
    /// complete, or nil (why in ``failure``) if the bytes are not a ReadBuffersResponse or a
    /// packet would pass ``maxPacketSize``. As in protobuf, a field
    /// repeated within a slice counts its last value, and unknown fields are skipped.
    mutating func append(encoded bytes: UnsafeRawBufferPointer) -> [TracePacketData]? {
        var packets: [TracePacketData] = []
        var tooLarge = false
        let wellFormed = ProtoEncoding.walkFields(in: bytes) { field in
            guard field.number == 2 else { return true }  // `slices`; nothing else is known
            guard field.wireType == 2 else { return false }
            let slice = UnsafeRawBufferPointer(rebasing: bytes[field.bytes])
            var data = 0..<0
            var isLast = false
            let sliceWellFormed = ProtoEncoding.walkFields(in: slice) { inner in
                switch (inner.number, inner.wireType) {
                case (1, 2): data = inner.bytes
                case (2, 0): isLast = inner.varint != 0
                case (1, _), (2, _): return false
                default: break
                }
                return true
            }
            guard sliceWellFormed else { return false }
            let dataBytes = UnsafeRawBufferPointer(rebasing: slice[data])
            guard pending.count + dataBytes.count <= maxPacketSize else {
                failure = "a packet of more than \(maxPacketSize) bytes"
                tooLarge = true
                return false
            }
            if isLast && pending.isEmpty {
                packets.append(TracePacketData(bytes: [UInt8](dataBytes)))
            } else {
                pending.append(contentsOf: dataBytes)
                if isLast {
                    packets.append(TracePacketData(bytes: pending))
                    pending = []
                }
            }
            return true
        }
        if !wellFormed && !tooLarge { failure = "an undecodable ReadBuffersResponse" }
        return wellFormed ? packets : nil
    }

    /// Drops a packet left unfinished (the stream ended in its middle).
    mutating func reset() { pending = [] }
}

enum ServiceStateChunks {
    /// Perfetto's margin for the frame around a QueryServiceState reply.
    static let chunkBudget = WireLimits.defaultReceiveCapacity - 128
    /// Strings of an entry too large for a chunk of its own are cut to this many bytes.
    static let trimmedStringBytes = 1024

    /// One element of a repeated field of the state.
    private enum Entry {
        case producer(TracingServiceState.Producer)
        case dataSource(TracingServiceState.DataSource)
        case session(TracingServiceState.TracingSession)

        func add(to state: inout TracingServiceState) {
            switch self {
            case .producer(let producer): state.producers.append(producer)
            case .dataSource(let dataSource): state.dataSources.append(dataSource)
            case .session(let session): state.tracingSessions.append(session)
            }
        }

        /// The entry with what can be long cut short: a producer's name and version, a data
        /// source's descriptor down to its (cut) name, a session's name and buffer list.
        var trimmed: Entry {
            switch self {
            case .producer(var producer):
                producer.name = trim(producer.name)
                if producer.hasSdkVersion { producer.sdkVersion = trim(producer.sdkVersion) }
                if producer.hasMachineName { producer.machineName = trim(producer.machineName) }
                return .producer(producer)
            case .dataSource(var dataSource):
                var descriptor = DataSourceDescriptor()
                descriptor.name = trim(dataSource.dsDescriptor.name)
                dataSource.dsDescriptor = descriptor
                return .dataSource(dataSource)
            case .session(var session):
                if session.hasUniqueSessionName { session.uniqueSessionName = trim(session.uniqueSessionName) }
                if session.hasBugreportFilename { session.bugreportFilename = trim(session.bugreportFilename) }
                session.bufferSizeKb = Array(session.bufferSizeKb.prefix(128))
                return .session(session)
            }
        }

        private func trim(_ text: String) -> String {
            guard text.utf8.count > ServiceStateChunks.trimmedStringBytes else { return text }
            var cut = String(decoding: text.utf8.prefix(ServiceStateChunks.trimmedStringBytes), as: UTF8.self)
            // A character cut in half decodes as U+FFFD: drop it.
            if cut.last == "\u{FFFD}" { cut.removeLast() }
            return cut
        }
    }

    /// Part of a chunk: bytes of a part of the encoded state as they are, or an entry encoded
    /// again, trimmed.
    enum Piece {
        case original(part: Int, Range<Int>)
        case trimmed([UInt8])

        var count: Int {
            switch self {
            case .original(_, let range): range.count
            case .trimmed(let bytes): bytes.count
            }
        }
    }

    /// One reply's TracingServiceState: its pieces, in order, and their size.
    struct Chunk {
        var pieces: [Piece] = []
        var size = 0

        mutating func append(_ piece: Piece) {
            size += piece.count
            // Fields that follow each other in the encoded state stay one range.
            if case .original(let part, let next) = piece, case .original(part, let last)? = pieces.last,
               last.upperBound == next.lowerBound {
                pieces[pieces.count - 1] = .original(part: part, last.lowerBound..<next.upperBound)
            } else {
                pieces.append(piece)
            }
        }
    }

    /// A TracingServiceState, encoded in `parts` whose bytes concatenate to it, cut into
    /// chunks that each fit a reply and concatenate to the whole; nil if a part is not a
    /// well-formed message.
    ///
    /// The state is cut between its top-level fields (a producer, a data source, a session, a
    /// scalar), in order, a new chunk whenever the next field would not fit: repeated fields
    /// concatenate, so the chunks parse as the whole. Nothing is decoded or copied but an entry
    /// too large for a chunk of its own (a producer's name of 100 KiB), which is trimmed rather
    /// than failing every query. Unlike Perfetto's, nothing is assumed to fit: many producers
    /// or sessions take several chunks too.
    static func plan(_ parts: [[UInt8]]) -> [Chunk]? {
        var chunks: [Chunk] = []
        var current = Chunk()
        for (partIndex, part) in parts.enumerated() {
            var fieldStart = 0
            var failed = false
            let wellFormed = part.withUnsafeBytes { bytes in
                ProtoEncoding.walkFields(in: bytes) { field in
                    defer { fieldStart = field.end }
                    var piece = Piece.original(part: partIndex, fieldStart..<field.end)
                    if piece.count >= chunkBudget {
                        guard let trimmed = trimmedEntry(field.number, UnsafeRawBufferPointer(rebasing: bytes[field.bytes])) else {
                            failed = true
                            return false
                        }
                        piece = .trimmed(trimmed)
                    }
                    if !current.pieces.isEmpty && current.size + piece.count >= chunkBudget {
                        chunks.append(current)
                        current = Chunk()
                    }
                    current.append(piece)
                    return true
                }
            }
            guard wellFormed, !failed else { return nil }
        }
        chunks.append(current)
        return chunks
    }

    /// The entry a top-level field of `number` holds, trimmed and encoded as a state of its own.
    private static func trimmedEntry(_ number: Int, _ bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        let entry: Entry?
        switch number {
        case 1: entry = (try? TracingServiceState.Producer(serializedBytes: Array(bytes))).map(Entry.producer)
        case 2: entry = (try? TracingServiceState.DataSource(serializedBytes: Array(bytes))).map(Entry.dataSource)
        case 6: entry = (try? TracingServiceState.TracingSession(serializedBytes: Array(bytes))).map(Entry.session)
        default: entry = nil
        }
        guard let entry else { return nil }
        var single = TracingServiceState()
        entry.trimmed.add(to: &single)
        return try? single.serializedBytes()
    }

    /// Writes `chunk` of the state encoded in `parts` as a QueryServiceStateResponse (its
    /// `service_state`, field 1) into `frame`, which is ``encodedSize(of:)`` bytes.
    static func encode(_ chunk: Chunk, of parts: [[UInt8]], into frame: UnsafeMutableRawBufferPointer) {
        guard let base = frame.baseAddress else { return }
        base.storeBytes(of: 0x0A, as: UInt8.self)
        var at = base + 1 + ProtoEncoding.storeVarint(UInt64(chunk.size), to: base + 1)
        for piece in chunk.pieces {
            switch piece {
            case .original(let part, let range):
                parts[part].withUnsafeBytes { at.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
            case .trimmed(let bytes):
                bytes.withUnsafeBytes { at.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
            at += piece.count
        }
    }

    /// The size of the QueryServiceStateResponse `chunk` makes.
    static func encodedSize(of chunk: Chunk) -> Int {
        1 + ProtoEncoding.varintSize(UInt64(chunk.size)) + chunk.size
    }
}
