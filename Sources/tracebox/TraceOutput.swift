// Where `tracebox perfetto` puts a trace it reads: packets are framed into a trace file as they
// arrive and written out a megabyte at a time, so writing overlaps reading and the trace is
// never held whole in memory (it was collected, encoded once more, then written: three times
// the trace at the end, and nothing written until the read was over).
//
// Into a regular file the loop writes. Into a pipe or a terminal a writer thread does: a write
// there takes as long as the reader likes, and the service drops a consumer that does not read
// its replies within its send timeout. The megabytes wait for the writer up to
// `maxQueuedBytes`; past that the loop waits too (the reader sets the pace, as it does for
// Perfetto's client), so memory stays bounded however large the trace (all of it was gathered
// in memory before: 4 GB for a 2 GB trace read into a slow pipe).

import Dispatch
import Synchronization
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

final class TraceOutput {
    /// Bytes gathered before a write.
    static let writeSize = 1 << 20
    /// Bytes that may wait for the writer thread of a pipe or terminal before the loop waits.
    static let maxQueuedBytes = 32 << 20

    private let fd: Int32
    private var pending: [UInt8] = []
    private(set) var packets = 0
    private(set) var bytes = 0
    /// The first write that failed; nothing is written after it.
    private(set) var error: SystemError?
    /// The last packet seen: a read ends with the service's trace stats.
    private(set) var lastPacket: TracePacketData?
    /// Writes for a pipe or a terminal; nil for a regular file (the loop writes).
    private let writer: QueuedWriter?

    init(fd: Int32) {
        self.fd = fd
        var status = stat()
        let isRegularFile = fstat(fd, &status) == 0 && status.st_mode & S_IFMT == S_IFREG
        writer = isRegularFile ? nil : QueuedWriter(fd: fd, slots: Self.maxQueuedBytes / Self.writeSize)
        pending.reserveCapacity(Self.writeSize + 64 * 1024)
    }

    func append(_ batch: [TracePacketData]) {
        for packet in batch { TraceFile.appendFramedPacket(packet.bytes, to: &pending) }
        packets += batch.count
        lastPacket = batch.last ?? lastPacket
        if pending.count >= Self.writeSize { write() }
    }

    /// Writes what is gathered, and waits until everything handed over is written.
    func flush() {
        write()
        guard let writer else { return }
        writer.finish()
        bytes = writer.written
        if error == nil { error = writer.error }
    }

    private func write() {
        defer { pending.removeAll(keepingCapacity: true) }
        guard error == nil, !pending.isEmpty else { return }
        if let writer {
            writer.enqueue(pending)
            return
        }
        do {
            try writeAll(pending, to: fd)
            bytes += pending.count
        } catch let failure as SystemError {
            error = failure
        } catch {
            self.error = SystemError("write")
        }
    }

    /// The trace stats the read ended with, if it did.
    var traceStats: TraceStats? {
        lastPacket.flatMap { lastTraceStats(in: [$0]) }
    }
}

/// A thread that writes the buffers handed to it, in order, holding at most `slots` of them:
/// ``enqueue(_:)`` waits for a free one. After a failed write the rest are dropped.
private final class QueuedWriter: @unchecked Sendable {
    private let fd: Int32
    private let queue = Mutex<[[UInt8]]>([])
    private let freeSlots: DispatchSemaphore
    private let queued = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let outcome = Mutex<(written: Int, error: SystemError?)>((0, nil))
    private var started = false
    private var isFinished = false

    init(fd: Int32, slots: Int) {
        self.fd = fd
        freeSlots = DispatchSemaphore(value: slots)
    }

    /// Bytes written so far, and the first write that failed.
    var written: Int { outcome.withLock { $0.written } }
    var error: SystemError? { outcome.withLock { $0.error } }

    func enqueue(_ buffer: [UInt8]) {
        if !started {
            started = true
            guard let thread = spawnThread({ [self] in run() }) else {
                outcome.withLock { $0.error = SystemError("pthread_create") }
                started = false
                return
            }
            pthread_detach(thread)
        }
        freeSlots.wait()
        queue.withLock { $0.append(buffer) }
        queued.signal()
    }

    /// Waits until every buffer handed over is written (or dropped after a failure).
    func finish() {
        guard started, !isFinished else { return }
        isFinished = true
        enqueue([])  // the end
        finished.wait()
    }

    private func run() {
        while true {
            queued.wait()
            let buffer = queue.withLock { $0.removeFirst() }
            // Every slot comes back, the end's too: a semaphore destroyed below its starting
            // value is a crash in libdispatch.
            defer { freeSlots.signal() }
            if buffer.isEmpty { break }
            if outcome.withLock({ $0.error == nil }) {
                do {
                    try writeAll(buffer, to: fd)
                    outcome.withLock { $0.written += buffer.count }
                } catch {
                    outcome.withLock { $0.error = (error as? SystemError) ?? SystemError("write") }
                }
            }
        }
        finished.signal()
    }
}
