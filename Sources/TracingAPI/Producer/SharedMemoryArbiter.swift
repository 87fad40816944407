// The producer side of a shared-memory buffer (Perfetto's SharedMemoryArbiterImpl): hands
// free chunks to trace writers, collects the chunks they complete and the patches they owe
// into one pending CommitDataRequest, and has the loop take it, so many chunks travel in one
// commit. A commit of completed chunks may be batched (the endpoint decides how long it
// waits); one is asked for at once when a flush wants it, when a writer waits for a free
// chunk, or when the chunks waiting fill half the buffer (Perfetto's rule, so writers do not
// run out of chunks while a batch waits).
//
// Thread-safe: writers on any thread take and return chunks; the chunk states themselves move
// by compare-and-swap in the page headers, the pending commit sits behind a lock.
//
// Shared-memory emulation (a producer whose service is on another machine): the buffer is the
// producer's alone. When a commit is taken, each completed chunk's bytes are copied into the
// request (`chunks_to_move.data`) and the chunk is freed at once, since the service never sees
// the memory; on flush, chunks still being written are scraped the same way.

import CPerfettoIPCLinux
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import IPCProtocol
import SwiftProtobuf

/// What a trace writer does when the shared memory has no free chunk.
public enum BufferExhaustedPolicy: Sendable, Hashable {
    /// Drop packets until a chunk is free again; the service sees a drop marker on the sequence.
    case drop
    /// Wait for the service to free a chunk, up to `timeout`, then drop. Never waits on the
    /// service's own loop thread (nothing could free a chunk while it waits): drops there.
    case stall(timeout: Duration = .seconds(1))
}

/// Allocates chunks of one producer's shared-memory buffer and batches commits.
public final class SharedMemoryArbiter: @unchecked Sendable {
    // @unchecked Sendable: mutable state is behind `state`; the buffer is atomic by design.

    /// Where commits and writer registrations go (the producer endpoint, on its loop).
    struct Sink: Sendable {
        /// Runs a commit on the loop: everything pending then (``takePendingCommit()``), flush
        /// acknowledgements included; `completion` runs once the service applied it.
        /// `batched`: nothing waits on it but the chunks themselves, so the endpoint may hold it
        /// back to gather more (without a completion only).
        var scheduleCommit: @Sendable (_ batched: Bool, _ completion: (@Sendable () -> Void)?) -> Void
        var registerWriter: @Sendable (_ writerID: UInt16, _ targetBuffer: UInt16) -> Void
        var unregisterWriter: @Sendable (_ writerID: UInt16) -> Void
        /// Whether the caller runs on the thread that frees chunks (stalling there would hang).
        var isServiceThread: @Sendable () -> Bool
    }

    private struct State {
        var pending = Perfetto_Protos_CommitDataRequest()
        /// Flush acknowledgements not sent yet, oldest first: one rides on each commit (a
        /// CommitData has room for one), so a producer that flushes its writers and then
        /// acknowledges sends one message, as Perfetto's does, not two.
        var pendingFlushAcks: [UInt64] = []
        /// Bytes of the completed chunks in `pending`.
        var pendingChunkBytes = 0
        var commitScheduled = ScheduledCommit.none
        var nextPage = 0
        var usedWriterIDs = Set<UInt16>()
        var nextWriterID: UInt16 = 1
        var chunksAcquired: UInt64 = 0
        var chunksUnavailable: UInt64 = 0
    }

    private enum ScheduledCommit {
        case none, batched, immediate
    }

    /// The buffer shared with the service.
    public let buffer: SharedMemoryBuffer
    /// The layout applied to pages as they are first used (Perfetto's default: one chunk a page).
    public let pageLayout: PageLayout
    /// The service cannot read ``buffer``: chunks travel inside the commits.
    public let emulatesSharedMemory: Bool
    private let sink: Sink
    private let state = ThreadLock(State())

    init(buffer: SharedMemoryBuffer, pageLayout: PageLayout = .divideBy1, emulatesSharedMemory: Bool = false, sink: Sink) {
        self.buffer = buffer
        self.pageLayout = pageLayout
        self.emulatesSharedMemory = emulatesSharedMemory
        self.sink = sink
    }

    /// Creates a writer for `targetBuffer` (the buffer id from the data source's config), or
    /// nil when all 32,767 writer ids (``SharedMemoryABI/maxWriterID``) are taken.
    public func createTraceWriter(
        targetBuffer: UInt16, policy: BufferExhaustedPolicy = .stall()
    ) -> TraceWriter? {
        guard let writerID = allocateWriterID() else { return nil }
        sink.registerWriter(writerID, targetBuffer)
        return TraceWriter(arbiter: self, writerID: writerID, targetBuffer: targetBuffer, policy: policy)
    }

    /// Sends whatever is pending (completed chunks, patches) and an optional flush
    /// acknowledgement, which goes with the chunks of a commit already on its way if there is
    /// one; `completion` runs on the service's loop after the service applied it.
    public func flushPendingCommitData(
        flushRequestID: UInt64? = nil, completion: (@Sendable () -> Void)? = nil
    ) {
        state.withLock { state in
            state.commitScheduled = .immediate
            if let flushRequestID { state.pendingFlushAcks.append(flushRequestID) }
        }
        sink.scheduleCommit(false, completion)
    }

    // MARK: Writers' side

    private func allocateWriterID() -> UInt16? {
        state.withLock { state in
            // Ids go round within 1...maxWriterID, as Perfetto's arbiter hands them out: a
            // service drops writers past it (traced drops their patches).
            guard state.usedWriterIDs.count < Int(SharedMemoryABI.maxWriterID) else { return nil }
            func following(_ id: UInt16) -> UInt16 { id >= SharedMemoryABI.maxWriterID ? 1 : id + 1 }
            while state.usedWriterIDs.contains(state.nextWriterID) { state.nextWriterID = following(state.nextWriterID) }
            let id = state.nextWriterID
            state.usedWriterIDs.insert(id)
            state.nextWriterID = following(id)
            return id
        }
    }

    func releaseWriterID(_ writerID: UInt16) {
        state.withLock { _ = $0.usedWriterIDs.remove(writerID) }
        sink.unregisterWriter(writerID)
    }

    /// A free chunk, stamped with `header`, or nil when the policy gives up.
    func acquireChunk(header: ChunkHeader, policy: BufferExhaustedPolicy) -> AcquiredChunk? {
        if let chunk = tryAcquireChunk(header: header) { return chunk }
        guard case .stall(let timeout) = policy, !sink.isServiceThread() else {
            state.withLock { $0.chunksUnavailable += 1 }
            return nil
        }
        // Make sure the service hears about what is already complete, then back off and retry.
        flushPendingCommitData()
        let deadline = ContinuousClock.now + timeout
        var backoff: Duration = .microseconds(50)
        while ContinuousClock.now < deadline {
            let nanoseconds = backoff.components.attoseconds / 1_000_000_000
            var pause = timespec(tv_sec: 0, tv_nsec: Int(nanoseconds))
            nanosleep(&pause, nil)
            if let chunk = tryAcquireChunk(header: header) { return chunk }
            backoff = min(backoff * 2, .milliseconds(10))
        }
        state.withLock { $0.chunksUnavailable += 1 }
        return nil
    }

    private func tryAcquireChunk(header: ChunkHeader) -> AcquiredChunk? {
        let pages = buffer.pageCount
        let start = state.withLock { $0.nextPage }
        for step in 0..<pages {
            let page = (start + step) % pages
            var layout = buffer.layout(page: page)
            if layout == .notPartitioned {
                _ = buffer.tryPartitionPage(page, layout: pageLayout)
                layout = buffer.layout(page: page)
            }
            guard let layout, layout != .notPartitioned else { continue }
            for chunk in 0..<layout.chunkCount {
                if let (address, size) = buffer.tryAcquireChunkForWriting(page: page, chunk: chunk, header: header) {
                    state.withLock {
                        $0.nextPage = page
                        $0.chunksAcquired += 1
                    }
                    return AcquiredChunk(page: page, index: chunk, start: address, size: size)
                }
            }
        }
        return nil
    }

    /// Marks a written chunk complete and queues it (and any patches) for the next commit.
    func returnCompletedChunk(
        _ chunk: AcquiredChunk, header: ChunkHeader, targetBuffer: UInt16,
        patches: [Perfetto_Protos_CommitDataRequest.ChunkToPatch]
    ) {
        header.publishPacketsWord(at: chunk.start)
        buffer.releaseChunkAsComplete(page: chunk.page, chunk: chunk.index)
        var move = Perfetto_Protos_CommitDataRequest.ChunksToMove()
        move.page = UInt32(chunk.page)
        move.chunk = UInt32(chunk.index)
        move.targetBuffer = UInt32(targetBuffer)
        enqueue(move: move, chunkSize: chunk.size, patches: patches)
    }

    /// Queues patches for chunks already returned.
    func enqueuePatches(_ patches: [Perfetto_Protos_CommitDataRequest.ChunkToPatch]) {
        guard !patches.isEmpty else { return }
        enqueue(move: nil, chunkSize: 0, patches: patches)
    }

    private func enqueue(
        move: Perfetto_Protos_CommitDataRequest.ChunksToMove?, chunkSize: Int,
        patches: [Perfetto_Protos_CommitDataRequest.ChunkToPatch]
    ) {
        let schedule = state.withLock { state -> ScheduledCommit in
            if let move { state.pending.chunksToMove.append(move) }
            state.pending.chunksToPatch.append(contentsOf: patches)
            state.pendingChunkBytes += chunkSize
            let wanted: ScheduledCommit = state.pendingChunkBytes * 2 >= buffer.size ? .immediate : .batched
            switch (state.commitScheduled, wanted) {
            case (.none, _), (.batched, .immediate):
                state.commitScheduled = wanted
                return wanted
            default:
                return .none
            }
        }
        guard schedule != .none else { return }
        // One commit carries everything queued until it runs.
        sink.scheduleCommit(schedule == .batched, nil)
    }

    /// Takes the batch queued so far and the oldest flush acknowledgement not sent: the one
    /// place they leave the arbiter, on the loop, when a scheduled commit runs (each
    /// acknowledgement scheduled its own, so none is left behind).
    func takePendingCommit() -> Perfetto_Protos_CommitDataRequest {
        var request = state.withLock { state in
            defer {
                state.pending = Perfetto_Protos_CommitDataRequest()
                state.pendingChunkBytes = 0
                state.commitScheduled = .none
            }
            var request = state.pending
            if !state.pendingFlushAcks.isEmpty { request.flushRequestID = state.pendingFlushAcks.removeFirst() }
            return request
        }
        if emulatesSharedMemory {
            // The chunks are complete, so no writer touches them: copy them out and free them.
            request.chunksToMove = request.chunksToMove.compactMap { move in
                guard let (start, size) = buffer.tryAcquireChunkForReading(page: Int(move.page), chunk: Int(move.chunk))
                else { return nil }
                var carried = move
                carried.data = Data(UnsafeRawBufferPointer(start: start, count: size))
                buffer.releaseChunkAsFree(page: Int(move.page), chunk: Int(move.chunk))
                return carried
            }
        }
        return request
    }

    /// Under emulation: copies of the chunks writers are still filling or completed but not
    /// committed yet, for the writers in `targets` (writer → its target buffer), so a flush
    /// brings everything finished so far. The chunks stay with their writers.
    func scrapeEmulatedChunks(targets: [UInt16: UInt16]) -> [Perfetto_Protos_CommitDataRequest.ChunksToMove] {
        guard emulatesSharedMemory, !targets.isEmpty else { return [] }
        return buffer.scrapeChunks().compactMap { chunk in
            guard let target = targets[chunk.header.writerID] else { return nil }
            var move = Perfetto_Protos_CommitDataRequest.ChunksToMove()
            move.targetBuffer = UInt32(target)
            move.data = Data(chunk.bytes)
            move.chunkIncomplete = !chunk.isComplete
            return move
        }
    }

    /// Counters for tests and diagnostics.
    public var chunksAcquired: UInt64 { state.withLock { $0.chunksAcquired } }
    /// Times a writer found no free chunk (and dropped).
    public var chunksUnavailable: UInt64 { state.withLock { $0.chunksUnavailable } }
}

/// A chunk a writer owns between acquire and return.
struct AcquiredChunk {
    var page: Int
    var index: Int
    var start: UnsafeMutableRawPointer
    var size: Int
}
