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

    /// The replies carrying `packets`; the last has `hasMore`, the others have more.
    static func replies(
        for packets: [TracePacketData], hasMore: Bool
    ) -> [(Perfetto_Protos_ReadBuffersResponse, hasMore: Bool)] {
        var replies: [(Perfetto_Protos_ReadBuffersResponse, hasMore: Bool)] = []
        var current = Perfetto_Protos_ReadBuffersResponse()
        var currentSize = 0
        for packet in packets {
            let bytes = packet.bytes
            var start = 0
            repeat {
                let end = min(start + maxSliceSize, bytes.count)
                let size = end - start + sliceOverhead
                if currentSize + size > replyBudget, !current.slices.isEmpty {
                    replies.append((current, true))
                    current = Perfetto_Protos_ReadBuffersResponse()
                    currentSize = 0
                }
                var slice = Perfetto_Protos_ReadBuffersResponse.Slice()
                slice.data = Data(bytes[start..<end])
                slice.lastSliceForPacket = end == bytes.count
                current.slices.append(slice)
                currentSize += size
                start = end
            } while start < bytes.count
        }
        replies.append((current, hasMore))
        return replies
    }
}

/// Glues ReadBuffers slices back into packets (the consumer client's side).
struct TracePacketReassembler {
    private var pending: [UInt8] = []

    /// Appends the slices of one reply; returns the packets they complete.
    mutating func append(_ response: Perfetto_Protos_ReadBuffersResponse) -> [TracePacketData] {
        var packets: [TracePacketData] = []
        for slice in response.slices {
            pending.append(contentsOf: slice.data)
            if slice.lastSliceForPacket {
                packets.append(TracePacketData(bytes: pending))
                pending = []
            }
        }
        return packets
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

    /// `state` cut into chunks that each fit a reply and concatenate to the whole.
    ///
    /// The scalar fields go in the first chunk, then producers, data sources and sessions one
    /// by one, a new chunk whenever the next would not fit (repeated fields concatenate, so the
    /// chunks parse as the whole). Unlike Perfetto's, nothing is assumed to fit: many producers
    /// or sessions take several chunks too, and one entry too large for a chunk of its own (a
    /// producer's name of 100 KiB) is trimmed rather than failing every query.
    static func split(_ state: TracingServiceState) -> [TracingServiceState] {
        // The usual case, a state that fits one reply, costs one encoding here.
        if serializedSize(state) < chunkBudget { return [state] }
        var head = state
        let entries = state.producers.map(Entry.producer) + state.dataSources.map(Entry.dataSource)
            + state.tracingSessions.map(Entry.session)
        head.producers = []
        head.dataSources = []
        head.tracingSessions = []
        var chunks: [TracingServiceState] = []
        var current = head
        var currentSize = serializedSize(head)
        for original in entries {
            var entry = original
            var single = TracingServiceState()
            entry.add(to: &single)
            var size = serializedSize(single)
            if size >= chunkBudget {
                entry = original.trimmed
                single = TracingServiceState()
                entry.add(to: &single)
                size = serializedSize(single)
            }
            if currentSize + size < chunkBudget {
                entry.add(to: &current)
                currentSize += size
            } else {
                chunks.append(current)
                current = single
                currentSize = size
            }
        }
        chunks.append(current)
        return chunks
    }

    private static func serializedSize(_ state: TracingServiceState) -> Int {
        (try? state.serializedBytes() as [UInt8])?.count ?? 0
    }
}
