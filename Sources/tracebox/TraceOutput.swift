// Where `tracebox perfetto` puts a trace it reads: packets are framed into a trace file as they
// arrive and written out a megabyte at a time, so writing overlaps reading and the trace is
// never held whole in memory (it was collected, encoded once more, then written: three times
// the trace at the end, and nothing written until the read was over).
//
// Only into a regular file, though: a write to a pipe can block for as long as its reader likes,
// the loop with it, and the service drops a consumer that does not read its replies within its
// send timeout. Into a pipe or a terminal the trace is gathered and written when the read is over.

import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

final class TraceOutput {
    /// Bytes gathered before a write.
    static let writeSize = 1 << 20

    private let fd: Int32
    /// Bytes gathered before a write: `writeSize` into a regular file, all of them otherwise.
    private let threshold: Int
    private var pending: [UInt8] = []
    private(set) var packets = 0
    private(set) var bytes = 0
    /// The first write that failed; nothing is written after it.
    private(set) var error: SystemError?
    /// The last packet seen: a read ends with the service's trace stats.
    private(set) var lastPacket: TracePacketData?

    init(fd: Int32) {
        self.fd = fd
        var status = stat()
        let isRegularFile = fstat(fd, &status) == 0 && status.st_mode & S_IFMT == S_IFREG
        threshold = isRegularFile ? Self.writeSize : .max
        if isRegularFile { pending.reserveCapacity(Self.writeSize + 64 * 1024) }
    }

    func append(_ batch: [TracePacketData]) {
        for packet in batch { TraceFile.appendFramedPacket(packet.bytes, to: &pending) }
        packets += batch.count
        lastPacket = batch.last ?? lastPacket
        if pending.count >= threshold { flush() }
    }

    /// Writes what is gathered.
    func flush() {
        defer { pending.removeAll(keepingCapacity: true) }
        guard error == nil, !pending.isEmpty else { return }
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
