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

    /// `state` cut into chunks that each fit a reply and concatenate to the whole.
    static func split(_ state: TracingServiceState) -> [TracingServiceState] {
        var head = state
        let dataSources = head.dataSources
        head.dataSources = []
        var chunks: [TracingServiceState] = []
        var current = head
        var currentSize = (try? head.serializedBytes() as [UInt8])?.count ?? 0
        for dataSource in dataSources {
            var single = TracingServiceState()
            single.dataSources = [dataSource]
            let size = (try? single.serializedBytes() as [UInt8])?.count ?? 0
            if currentSize + size < chunkBudget {
                current.dataSources.append(dataSource)
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
}
