// The output file of a write_into_file session. The consumer hands the service a descriptor,
// and the descriptor may be anything: a regular file, a full disk, a pipe nobody reads, a
// socket, a read-only file. Perfetto's service writes with blocking calls, so a pipe nobody
// drains stops the whole daemon; ours never blocks its loop:
// * a descriptor that is not open for writing is refused when the session is enabled;
// * regular files (and block devices) are written as they are: such writes complete or fail
//   (ENOSPC, EIO), they do not wait for a reader;
// * anything else (pipes, FIFOs, sockets, character devices) is written without blocking:
//   sockets with MSG_DONTWAIT, the others through a non-blocking descriptor of their own
//   (reopened through /proc/self/fd, so the consumer's own descriptor keeps its flags; if that
//   is refused, the shared description is made non-blocking). What the reader does not take yet
//   waits here, and the service reads no more out of the trace buffers until it is gone, so
//   the buffers' own policy (ring or discard) applies, as for a slow consumer;
// * bytes that make no progress for `stallTimeout` end the session with an error; a pipe whose
//   reader went away ends it at once (EPIPE, with SIGPIPE held off this thread).

import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

final class TraceFileOutput {
    enum Kind {
        /// Regular file or block device: writes complete or fail.
        case file
        /// Written with send(MSG_DONTWAIT).
        case socket
        /// Pipe, FIFO, character device: written through a non-blocking descriptor.
        case stream
    }

    let kind: Kind
    private let fd: ScopedFD
    private let loop: any IPCEventLoop
    private let stallTimeout: Duration
    /// Bytes the file did not take yet.
    private var pending: [UInt8] = []
    private var pendingOffset = 0
    /// Why writing failed; nothing is written once set.
    private(set) var error: String?
    /// Called once when writing fails after `write` returned (a later retry failed or stalled).
    var onFailure: ((String) -> Void)?
    private var watch: (any FileDescriptorWatch)?
    private var retryTimer: (any ScheduledTask)?
    private var stallTimer: (any ScheduledTask)?
    private var drainedCallbacks: [() -> Void] = []
    private var closed = false

    /// Bytes written so far.
    private(set) var bytesWritten: UInt64 = 0

    /// The output for `fd`, or why it cannot be written into.
    static func open(_ fd: ScopedFD, loop: any IPCEventLoop, stallTimeout: Duration) -> Result<TraceFileOutput, OutputError> {
        let raw = fd.rawValue
        let flags = fcntl(raw, F_GETFL)
        guard flags >= 0 else { return .failure(OutputError("the output file is not a valid descriptor")) }
        let access = flags & O_ACCMODE
        guard access == O_WRONLY || access == O_RDWR else {
            return .failure(OutputError("the output file is not open for writing"))
        }
        var info = stat()
        guard fstat(raw, &info) == 0 else { return .failure(OutputError("the output file cannot be examined: \(describe(errno))")) }
        switch info.st_mode & S_IFMT {
        case S_IFREG, S_IFBLK:
            return .success(TraceFileOutput(fd, kind: .file, loop: loop, stallTimeout: stallTimeout))
        case S_IFSOCK:
            return .success(TraceFileOutput(fd, kind: .socket, loop: loop, stallTimeout: stallTimeout))
        default:
            return .success(TraceFileOutput(nonBlocking(fd, info: info), kind: .stream, loop: loop, stallTimeout: stallTimeout))
        }
    }

    struct OutputError: Error {
        let message: String
        init(_ message: String) { self.message = message }
    }

    private init(_ fd: ScopedFD, kind: Kind, loop: any IPCEventLoop, stallTimeout: Duration) {
        self.fd = fd
        self.kind = kind
        self.loop = loop
        self.stallTimeout = stallTimeout
    }

    deinit { close() }

    /// A non-blocking descriptor for the same pipe or device: a new open file description when
    /// the kernel allows it (the consumer's stays as it was), else `fd` made non-blocking.
    private static func nonBlocking(_ fd: ScopedFD, info: stat) -> ScopedFD {
        let reopened = Glibc.open("/proc/self/fd/\(fd.rawValue)", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        if reopened >= 0 {
            var check = stat()
            if fstat(reopened, &check) == 0, check.st_dev == info.st_dev, check.st_ino == info.st_ino {
                return ScopedFD(reopened)
            }
            Glibc.close(reopened)
        }
        let flags = fcntl(fd.rawValue, F_GETFL)
        if flags >= 0 { _ = fcntl(fd.rawValue, F_SETFL, flags | O_NONBLOCK) }
        return fd
    }

    /// Whether bytes are still waiting for the file to take them.
    var hasPendingBytes: Bool { pendingOffset < pending.count }

    /// Writes `bytes` now as far as the file takes them; the rest waits and is written when
    /// the file has room. Returns false if writing has failed (see ``error``).
    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        guard error == nil, !closed else { return false }
        guard !bytes.isEmpty else { return true }
        if hasPendingBytes {
            pending.append(contentsOf: bytes)
        } else {
            pending = bytes
            pendingOffset = 0
        }
        writePending()
        return error == nil
    }

    /// Runs `body` once nothing waits (at once if nothing does); after a failure too, and never
    /// once the output is closed.
    func whenDrained(_ body: @escaping () -> Void) {
        guard !closed else { return }
        if !hasPendingBytes || error != nil { return body() }
        drainedCallbacks.append(body)
    }

    /// The most a copy may leave waiting for an output that is not a regular file.
    static let maxPendingCopyBytes = 16 << 20

    /// Writes what this file holds, from its start (as traced's CloneSession copies it), into
    /// `output`. Only a regular file can be read back. Returns why it failed, or nil.
    ///
    /// Only the bytes the file has when the copy starts: an `output` that appends to this very
    /// file would otherwise keep the copy going until the disk is full, with the service's loop
    /// held all along (outside tester, round eight; Perfetto's traced does the same).
    func copyContents(into output: TraceFileOutput) -> String? {
        guard kind == .file, !closed else { return "the session's output is not a file that can be read back" }
        var status = stat()
        guard fstat(fd.rawValue, &status) == 0 else { return "Read failed: \(Self.describe(errno))" }
        let size = off_t(status.st_size)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var offset: off_t = 0
        while offset < size {
            let wanted = min(buffer.count, Int(size - offset))
            let count = buffer.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, wanted, offset) }
            if count < 0 {
                if errno == EINTR { continue }
                return "Read failed: \(Self.describe(errno))"
            }
            if count == 0 { return nil }  // truncated meanwhile
            offset += off_t(count)
            guard output.write(Array(buffer[..<count])) else { return "Write failed: \(output.error ?? "")" }
            // A pipe nobody drains would take the whole file into memory here.
            if output.pending.count - output.pendingOffset > Self.maxPendingCopyBytes {
                return "Write failed: the output does not take the copy"
            }
        }
        return nil
    }

    /// Stops writing and closes the descriptor; what still waits is dropped. Idempotent.
    func close() {
        guard !closed else { return }
        closed = true
        stopWaiting()
        drainedCallbacks = []
        pending = []
        pendingOffset = 0
        fd.close()
    }

    // MARK: Writing

    private func writePending() {
        var progressed = false
        while hasPendingBytes {
            let written = pending.withUnsafeBytes { raw in
                writeOnce(raw.baseAddress! + pendingOffset, raw.count - pendingOffset)
            }
            if written > 0 {
                pendingOffset += written
                bytesWritten += UInt64(written)
                progressed = true
                continue
            }
            let code = written == 0 ? EIO : errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK {
                waitForRoom(progressed: progressed)
                return
            }
            fail("writing the trace file failed: \(Self.describe(code))")
            return
        }
        pending = []
        pendingOffset = 0
        stopWaiting()
        let callbacks = drainedCallbacks
        drainedCallbacks = []
        for callback in callbacks { callback() }
    }

    private func writeOnce(_ start: UnsafeRawPointer, _ count: Int) -> Int {
        let raw = fd.rawValue
        switch kind {
        case .file:
            return Glibc.write(raw, start, count)
        case .socket:
            return send(raw, start, count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        case .stream:
            // A pipe whose reader has gone raises SIGPIPE at the writing thread, which would
            // end the service: hold it off this thread and discard the one this write raised.
            var pipeSignal = sigset_t()
            sigemptyset(&pipeSignal)
            sigaddset(&pipeSignal, SIGPIPE)
            var previousMask = sigset_t()
            pthread_sigmask(SIG_BLOCK, &pipeSignal, &previousMask)
            var alreadyPending = sigset_t()
            sigpending(&alreadyPending)
            let wasPending = sigismember(&alreadyPending, SIGPIPE) == 1
            let written = Glibc.write(raw, start, count)
            let code = errno
            if written < 0, code == EPIPE, !wasPending {
                var noWait = timespec(tv_sec: 0, tv_nsec: 0)
                _ = sigtimedwait(&pipeSignal, nil, &noWait)
            }
            pthread_sigmask(SIG_SETMASK, &previousMask, nil)
            errno = code
            return written
        }
    }

    /// The file is full for now: write again when it has room (watched when the loop can
    /// watch it, polled otherwise), and give up if nothing moves for `stallTimeout`.
    private func waitForRoom(progressed: Bool) {
        if progressed || stallTimer == nil {
            stallTimer?.cancel()
            stallTimer = loop.scheduleTask(after: stallTimeout) { [weak self] in
                guard let self, !self.closed, self.hasPendingBytes else { return }
                self.fail("the output file took no data for \(self.stallTimeout) (is anything reading it?)")
            }
        }
        guard watch == nil, retryTimer == nil else { return }
        if let watch = try? loop.watch(fd.rawValue, for: .writable, handler: { [weak self] _ in self?.writePending() }) {
            self.watch = watch
        } else {
            scheduleRetry()
        }
    }

    private func scheduleRetry() {
        retryTimer = loop.scheduleTask(after: .milliseconds(20)) { [weak self] in
            guard let self, !self.closed else { return }
            self.retryTimer = nil
            self.writePending()
            if self.hasPendingBytes, self.error == nil, self.retryTimer == nil, self.watch == nil { self.scheduleRetry() }
        }
    }

    private func stopWaiting() {
        watch?.cancel()
        watch = nil
        retryTimer?.cancel()
        retryTimer = nil
        stallTimer?.cancel()
        stallTimer = nil
    }

    private func fail(_ message: String) {
        guard error == nil else { return }
        error = message
        stopWaiting()
        pending = []
        pendingOffset = 0
        let callbacks = drainedCallbacks
        drainedCallbacks = []
        onFailure?(message)
        for callback in callbacks { callback() }
    }

    static func describe(_ code: Int32) -> String {
        String(cString: strerror(code))
    }
}
