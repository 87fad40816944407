// Shared by the benchmark targets: benchmarks whose fixture outlives a sample, and the plain
// socket floor the socket benchmarks are measured against.
//
// package-benchmark runs a benchmark's closure once per sample. A fixture made inside it would
// be made per sample, and samples would time its set-up and the first touch of its fresh
// buffers (first-touch page faults cost up to ~12 µs each on this VM: that, not the transport,
// was the "7.9x" of the first 64 KiB transport figures).
import Benchmark
import IPCEchoService

/// Registers a benchmark whose fixture is made on first use, reused by every sample, and
/// closed by the teardown hook; each iteration of a sample calls `iteration` once.
public func benchmarkWithFixture<Fixture>(
    _ name: String, configuration: Benchmark.Configuration = Benchmark.defaultConfiguration,
    make: @escaping @Sendable () throws -> Fixture, close: @escaping @Sendable (Fixture) -> Void = { _ in },
    iteration: @escaping @Sendable (Fixture) -> Void
) {
    let fixture = ReusedFixture<Fixture>()
    Benchmark(
        name, configuration: configuration,
        closure: { benchmark in
            let value = try fixture.get(make)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { iteration(value) }
            benchmark.stopMeasurement()
        },
        teardown: { if let value = fixture.take() { close(value) } })
}

/// The floor of every socket figure: a plain blocking socketpair ping-pong between two
/// threads, `payloadSize` bytes each way.
public func benchmarkPlainSocketFloor(payloadSize: Int) {
    benchmarkWithFixture(
        "plain socket ping-pong \(payloadSize) B (floor)",
        make: { RawPingPong(payloadSize: payloadSize) }, close: { $0.close() }, iteration: { $0.roundTrip() })
}

/// A fixture made on first use and kept across samples. The benchmark closure and the
/// teardown hook are its only users, one after the other.
final class ReusedFixture<Value>: @unchecked Sendable {
    private var value: Value?

    /// The fixture, made with `make` the first time.
    func get(_ make: () throws -> Value) rethrows -> Value {
        if let value { return value }
        let made = try make()
        value = made
        return made
    }

    /// Hands the fixture over (for teardown) and forgets it.
    func take() -> Value? {
        defer { value = nil }
        return value
    }
}
