// Commits that carry chunk bytes (shared-memory emulation) can outgrow a frame: a flush or a
// scrape may hold every chunk of the buffer. They are split so that no request's estimated
// size reaches the frame limit less 512 bytes of headroom, as Perfetto's arbiter splits them
// (not splitting was a Perfetto bug: "IPC frame too large" on the host, the producer dropped).
// Moves keep their order, patches follow the moves (the service applies moves first), and
// the flush acknowledgement and the caller's callback go with the last request.

import IPCProtocol

enum CommitDataSplitting {
    /// The most a split request may be estimated at: the receive capacity less the frame
    /// header and 512 bytes for the envelope (Perfetto's `kMaxCommitDataRequestChunkSize`).
    static let maxRequestBytes = WireLimits.defaultReceiveCapacity - 512

    /// A move's estimated serialized size: its bytes and 32 for the fixed fields and framing.
    static func estimatedSize(of move: CommitDataRequest.ChunksToMove) -> Int { move.data.count + 32 }

    /// A patch entry's estimated serialized size (never under the real one).
    static func estimatedSize(of patch: CommitDataRequest.ChunkToPatch) -> Int {
        patch.patches.reduce(32) { $0 + $1.data.count + 16 }
    }

    /// `request` as one or more requests, each estimated under ``maxRequestBytes``.
    static func split(_ request: CommitDataRequest, limit: Int = maxRequestBytes) -> [CommitDataRequest] {
        let total = request.chunksToMove.reduce(0) { $0 + estimatedSize(of: $1) }
            + request.chunksToPatch.reduce(0) { $0 + estimatedSize(of: $1) }
        guard total >= limit else { return [request] }
        var requests: [CommitDataRequest] = []
        var current = CommitDataRequest()
        var currentBytes = 0
        func add(_ bytes: Int, _ append: (inout CommitDataRequest) -> Void) {
            if currentBytes != 0 && currentBytes + bytes >= limit {
                requests.append(current)
                current = CommitDataRequest()
                currentBytes = 0
            }
            currentBytes += bytes
            append(&current)
        }
        for move in request.chunksToMove {
            add(estimatedSize(of: move)) { $0.chunksToMove.append(move) }
        }
        for patch in request.chunksToPatch {
            add(estimatedSize(of: patch)) { $0.chunksToPatch.append(patch) }
        }
        if request.hasFlushRequestID { current.flushRequestID = request.flushRequestID }
        requests.append(current)
        return requests
    }
}
