// swift-tools-version:6.1
//
// Benchmarks for swift-perfetto-ipc, kept out of the main package so CI and users do not build
// package-benchmark. Run from this folder:  swift package benchmark
import PackageDescription

let package = Package(
    name: "swift-perfetto-ipc-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-perfetto-ipc", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Benchmarks with fixtures that outlive a sample, and the plain socket floor.
        .target(
            name: "BenchmarkSupport",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ],
            path: "Sources/BenchmarkSupport"
        ),
        .executableTarget(
            name: "FrameCodec",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
            ],
            path: "Benchmarks/FrameCodec",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "TransportPingPong",
            dependencies: [
                "BenchmarkSupport",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "IPCUnixSocket", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ],
            path: "Benchmarks/TransportPingPong",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "InProcessEcho",
            dependencies: [
                "BenchmarkSupport",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ],
            path: "Benchmarks/InProcessEcho",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "TracingThroughput",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
            ],
            path: "Benchmarks/TracingThroughput",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "TrackEvents",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "TrackEvent", package: "swift-perfetto-ipc"),
            ],
            path: "Benchmarks/TrackEvents",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Rates and footprint that package-benchmark's per-iteration model does not fit:
        // pipelined calls/s, streamed replies/s, connects/s, resident bytes per idle connection.
        .executableTarget(
            name: "RateProbe",
            dependencies: [
                .product(name: "IPCUnixSocket", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ],
            path: "Sources/RateProbe"
        ),
        // Track event call sites, printed in the form other tracing libraries report them.
        .executableTarget(
            name: "TrackEventBench",
            dependencies: [
                .product(name: "TrackEvent", package: "swift-perfetto-ipc"),
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
            ],
            path: "Sources/TrackEventBench"
        ),
        // The tracing system over IPC: producers, reads, round trips, idle memory; the service
        // in a process of its own.
        .executableTarget(
            name: "TracingIPCBench",
            dependencies: [
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "IPCUnixSocket", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ],
            path: "Sources/TracingIPCBench"
        ),
        // Not a benchmark: a bare loop for profilers.
        .executableTarget(
            name: "ProfileInProcess",
            dependencies: [
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ],
            path: "Sources/ProfileInProcess"
        ),
        .executableTarget(
            name: "EchoRoundTrip",
            dependencies: [
                "BenchmarkSupport",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "IPCUnixSocket", package: "swift-perfetto-ipc"),
                .product(name: "IPCLibuv", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
            ],
            path: "Benchmarks/EchoRoundTrip",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
