// Echo latency, measured the same way everywhere it is reported (`ipc-echo bench`, the
// Benchmarks package): sequential round trips, each call issued from the previous reply's
// callback on the client's loop, timed with the monotonic clock; and the floor it is compared
// against, a plain blocking unix-socket ping-pong with a forked echo process, same payload.

import Dispatch
import CEchoPeer
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Latency figures of a run, in microseconds.
public struct LatencySummary: Sendable, CustomStringConvertible {
    public var samples: [Double]
    public var mean: Double { samples.reduce(0, +) / Double(max(1, samples.count)) }
    public func percentile(_ p: Double) -> Double {
        guard !samples.isEmpty else { return 0 }
        let sorted = samples.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p / 100 + 0.5))]
    }
    public var p50: Double { percentile(50) }
    public var p99: Double { percentile(99) }
    public var callsPerSecond: Double { samples.isEmpty ? 0 : 1_000_000 / mean }

    public init(samples: [Double]) { self.samples = samples }

    public var description: String {
        "mean=\(fixed(mean))us p50=\(fixed(p50))us p99=\(fixed(p99))us calls/s=\(Int(callsPerSecond.rounded()))"
    }
}

public enum EchoBenchmark {
    /// Runs `iterations` sequential Echo calls with `payload` bytes of data through `proxy`
    /// (bound, its loop running on another thread) after `warmup` untimed ones.
    /// - Throws: the first call failure.
    public static func measureEcho(
        proxy: Pfpeers_EchoServiceProxy, payloadSize: Int, iterations: Int, warmup: Int = 200, withFD: Bool = false
    ) throws -> LatencySummary {
        guard let loop = proxy.eventLoop else { throw IPCError(.disconnected, "proxy is not bound") }
        let run = BenchmarkRun(iterations: iterations, warmup: warmup)
        var request = Pfpeers_EchoRequest()
        request.data = Data(repeating: 0x61, count: payloadSize)
        let fdFile = withFD ? EchoServiceImplementation.memfd(holding: [1, 2, 3, 4]) : nil
        let box = UncheckedBenchmarkBox(proxy: proxy, request: request, fd: fdFile)
        loop.execute { box.next(run) }
        run.done.wait()
        if let error = run.error { throw error }
        return LatencySummary(samples: run.samples)
    }

    /// The floor: `iterations` blocking ping-pongs of `payloadSize` bytes each way over a
    /// unix socketpair, echoed by a forked process.
    public static func measureRawPingPong(payloadSize: Int, iterations: Int, warmup: Int = 200) -> LatencySummary {
        let pingPong = RawPingPong(payloadSize: payloadSize)
        defer { pingPong.close() }
        var samples: [Double] = []
        samples.reserveCapacity(iterations)
        for index in 0..<(warmup + iterations) {
            let start = monotonicMicroseconds()
            guard pingPong.roundTrip() else { break }
            if index >= warmup { samples.append(monotonicMicroseconds() - start) }
        }
        return LatencySummary(samples: samples)
    }

    static func monotonicMicroseconds() -> Double {
        Double(monotonicNanoseconds()) / 1000
    }

    /// Reads exactly `count` bytes (all of `buffer` by default) into `buffer`; false at end of
    /// stream or on error.
    public static func readFully(_ fd: Int32, _ buffer: inout [UInt8], count: Int? = nil) -> Bool {
        let count = count ?? buffer.count
        var offset = 0
        while offset < count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + offset, count - offset) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return false }
            offset += n
        }
        return true
    }

    /// Writes the first `count` bytes (all of `buffer` by default); false on error.
    public static func writeFully(_ fd: Int32, _ buffer: [UInt8], count: Int? = nil) -> Bool {
        let count = count ?? buffer.count
        var offset = 0
        while offset < count {
            let n = buffer.withUnsafeBytes { send(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return false }
            offset += n
        }
        return true
    }
}

/// The floor's fixture: a unix socketpair with a forked process that echoes every message back,
/// blocking reads and writes on both ends. Made once and reused, so round trips are timed warm
/// (no process start, no first-touch page faults inside a measurement).
public final class RawPingPong: @unchecked Sendable {
    // @unchecked Sendable: used by one thread at a time (the caller). The peer is a separate
    // process: waking it costs what waking a real peer costs (two threads of one process wake
    // each other faster on this kind of machine, which made the old floor too low).
    private var mine: Int32
    private var buffer: [UInt8]
    private let peerBuffer: UnsafeMutableRawBufferPointer
    private var peer: pid_t

    /// Forks the echo peer for payloads of `payloadSize` bytes.
    public init(payloadSize: Int) {
        var fds: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        mine = fds[0]
        let theirs = fds[1]
        let size = max(1, payloadSize)
        buffer = [UInt8](repeating: 0x61, count: size)
        peerBuffer = .allocate(byteCount: size, alignment: 16)
        peer = CEchoPeer_fork(theirs, mine, peerBuffer.baseAddress!.assumingMemoryBound(to: UInt8.self), size)
        precondition(peer > 0, "fork failed")
        Glibc.close(theirs)
    }

    deinit {
        close()
        peerBuffer.deallocate()
    }

    /// Sends the payload and waits until all of it has come back. False once closed.
    @discardableResult
    public func roundTrip() -> Bool {
        EchoBenchmark.writeFully(mine, buffer) && EchoBenchmark.readFully(mine, &buffer)
    }

    /// Ends the peer (it sees end of stream), waits for it, and closes the socket. Idempotent.
    public func close() {
        guard mine >= 0 else { return }
        shutdown(mine, Int32(SHUT_RDWR))
        Glibc.close(mine)
        mine = -1
        var status: Int32 = 0
        waitpid(peer, &status, 0)
    }
}

/// Shared between the loop thread (which records) and the waiting thread (which reads after
/// `done` is signalled): the semaphore orders the accesses.
private final class BenchmarkRun: @unchecked Sendable {
    // Loop-confined while it runs, read by the caller after `done`: unchecked exclusivity keeps
    // the harness's own bookkeeping out of what is measured.
    let iterations: Int
    let warmup: Int
    @exclusivity(unchecked) var samples: [Double] = []
    @exclusivity(unchecked) var error: IPCError?
    @exclusivity(unchecked) var issued = 0
    let done = DispatchSemaphore(value: 0)

    init(iterations: Int, warmup: Int) {
        self.iterations = iterations
        self.warmup = warmup
        samples.reserveCapacity(iterations)
    }
}

/// The proxy and request, used only on the proxy's loop. One reply callback serves every call,
/// so the harness allocates nothing per call (what is timed is the call, not the harness).
private final class UncheckedBenchmarkBox: @unchecked Sendable {
    let proxy: Pfpeers_EchoServiceProxy
    let request: Pfpeers_EchoRequest
    let fd: ScopedFD?
    @exclusivity(unchecked) private var start: Double = 0
    @exclusivity(unchecked) private var run: BenchmarkRun?
    @exclusivity(unchecked) private var onReply: ((AsyncResult<Pfpeers_EchoReply>) -> Void)?

    init(proxy: Pfpeers_EchoServiceProxy, request: Pfpeers_EchoRequest, fd: ScopedFD?) {
        self.proxy = proxy
        self.request = request
        self.fd = fd
    }

    func next(_ run: BenchmarkRun) {
        if self.run == nil {
            self.run = run
            // Strong: calls a host never finished are rejected when the client closes, after the
            // caller dropped the box (an unowned reference crashed there against a host that
            // answered every call with has_more). The cycle ends when the run does (`onReply =
            // nil`), and `replied` ignores what comes after.
            onReply = { [self] result in self.replied(result) }
        }
        guard run.issued < run.warmup + run.iterations else {
            onReply = nil
            self.run = nil
            run.done.signal()
            return
        }
        run.issued += 1
        start = EchoBenchmark.monotonicMicroseconds()
        proxy.echo(request, fd: fd?.rawValue, reply: onReply)
    }

    private func replied(_ result: AsyncResult<Pfpeers_EchoReply>) {
        let elapsed = EchoBenchmark.monotonicMicroseconds() - start
        guard let run else { return }
        guard result.isSuccess else {
            run.error = result.error ?? IPCError(.remoteFailure, "echo failed")
            onReply = nil
            self.run = nil
            run.done.signal()
            return
        }
        if run.issued > run.warmup { run.samples.append(elapsed) }
        next(run)
    }
}

/// `value` with `digits` decimals (what `String(format: "%.2f")` prints, without Foundation).
public func fixed(_ value: Double, digits: Int = 2) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    let fraction = Int(scaled - Double(whole) * scale)
    var fractionText = String(fraction)
    while fractionText.count < digits { fractionText = "0" + fractionText }
    return (value < 0 ? "-" : "") + "\(whole)" + (digits > 0 ? "." + fractionText : "")
}
