// swift-tools-version:6.2
//
// swift-perfetto-ipc: Perfetto's IPC (and, later, its tracing API) in Swift, wire-compatible
// with real Perfetto. See README.md for the module map and ../shared/DESIGN.md for the contract.
import PackageDescription

let package = Package(
    name: "swift-perfetto-ipc",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "IPCProtocol", targets: ["IPCProtocol"]),
        .library(name: "IPCUnixSocket", targets: ["IPCUnixSocket"]),
        .library(name: "IPCLibuv", targets: ["IPCLibuv"]),
        .library(name: "IPCInProcess", targets: ["IPCInProcess"]),
        .library(name: "IPCEchoService", targets: ["IPCEchoService"]),
        .library(name: "TracingAPI", targets: ["TracingAPI"]),
        .library(name: "TrackEvent", targets: ["TrackEvent"]),
        .library(name: "TrackEventTracing", targets: ["TrackEventTracing"]),
        .executable(name: "protoc-gen-swift-ipc", targets: ["protoc-gen-swift-ipc"]),
        .executable(name: "ipc-echo", targets: ["ipc-echo"]),
        .executable(name: "tracing-demo", targets: ["tracing-demo"]),
        .executable(name: "tracebox", targets: ["tracebox"]),
    ],
    dependencies: [
        // Without its default BinaryDelimitedStreams trait, SwiftProtobuf needs only
        // FoundationEssentials: applications do not load Foundation's ICU data (40 MB).
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0", traits: []),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", exact: "1.7.3"),
    ],
    targets: [
        // Thin wrappers for Linux calls Glibc does not import (epoll, eventfd, timerfd,
        // memfd_create, accept4, struct ucred, the CMSG macros). No logic lives here.
        .target(name: "CPerfettoIPCLinux"),
        // Declares the Swift runtime's `swift_tryRetain`, which weak references without side
        // tables are built on (IPCProtocol's Weak.swift).
        .target(name: "CSwiftRuntime"),
        // The wire format, the frame codec and (later) the RPC core: backend-neutral.
        .target(
            name: "IPCProtocol",
            dependencies: [
                "CSwiftRuntime",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // POSIX stream sockets (unix, abstract, TCP, vsock; fd passing; peer credentials) on any
        // loop that watches fds: shared by the epoll and libuv backends.
        .target(name: "IPCSocketCore", dependencies: ["IPCProtocol", "CPerfettoIPCLinux"]),
        // epoll event loop + POSIX stream sockets.
        .target(name: "IPCUnixSocket", dependencies: ["IPCProtocol", "IPCSocketCore", "CPerfettoIPCLinux"]),
        // libuv from the system (Debian: libuv1-dev).
        .systemLibrary(
            name: "CLibuv",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"]), .brew(["libuv"])]
        ),
        .target(name: "IPCLibuv", dependencies: ["IPCProtocol", "IPCSocketCore", "CLibuv", "CPerfettoIPCLinux"]),
        // zlib and zstd from the system (Debian: zlib1g-dev, libzstd-dev), for traces
        // compressed as Perfetto's traced compresses them.
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"]), .brew(["zlib"])]
        ),
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"]), .brew(["zstd"])]
        ),
        // In-memory transport and deterministic loop for tests.
        .target(name: "IPCInProcess", dependencies: ["IPCProtocol", "CPerfettoIPCLinux"]),
        // Perfetto's tracing service, producers and consumers, on the shared-memory ABI.
        .target(
            name: "TracingAPI",
            dependencies: [
                "IPCProtocol", "CPerfettoIPCLinux", "CZlib", "CZstd",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Track events for apps (Perfetto's TRACE_EVENT): categories, slices, counters, flows,
        // on the producer side of TracingAPI, in-process or against the system's service.
        .target(
            name: "TrackEvent",
            dependencies: ["TracingAPI", "IPCProtocol", "IPCUnixSocket", "CPerfettoIPCLinux"]
        ),
        // swift-distributed-tracing spans recorded as track events (its own module, so apps that
        // do not use swift-distributed-tracing do not depend on it).
        .target(
            name: "TrackEventTracing",
            dependencies: [
                "TrackEvent",
                "IPCProtocol",  // ThreadLock
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ]
        ),
        // Generates service handlers and proxies from .proto services (see scripts/).
        .executableTarget(
            name: "protoc-gen-swift-ipc",
            dependencies: [.product(name: "SwiftProtobufPluginLibrary", package: "swift-protobuf")]
        ),
        // Perfetto's echo.proto (../shared/interop) with its generated code and the reference
        // implementation used by ipc-echo, the tests and the benchmarks.
        .target(
            name: "IPCEchoService",
            dependencies: ["IPCProtocol", "CPerfettoIPCLinux", "CEchoPeer"],
            path: "Examples/EchoService"
        ),
        // The benchmarks' floor: a forked echo peer in plain C (read/write only after fork).
        .target(name: "CEchoPeer", path: "Examples/CEchoPeer"),
        .executableTarget(
            name: "ipc-echo",
            dependencies: [
                "IPCProtocol", "IPCUnixSocket", "IPCLibuv", "IPCInProcess", "IPCEchoService",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/ipc-echo"
        ),
        // The smallest host and client, for footprint figures (BENCHMARKS.md).
        .executableTarget(
            name: "minimal-echo",
            dependencies: ["IPCProtocol", "IPCUnixSocket", "IPCEchoService"],
            path: "Examples/minimal-echo"
        ),
        // An app instrumented with track events and swift-distributed-tracing.
        .executableTarget(
            name: "traced-app",
            dependencies: [
                "TrackEvent", "TrackEventTracing", "TracingAPI",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ],
            path: "Examples/traced-app"
        ),
        // Records an in-process tracing session into a Perfetto trace file.
        .executableTarget(
            name: "tracing-demo",
            dependencies: ["TracingAPI", "IPCProtocol", "IPCUnixSocket", "IPCInProcess", "CPerfettoIPCLinux"],
            path: "Examples/tracing-demo"
        ),
        // Perfetto's programs (traced, perfetto) and a test producer, as one executable.
        .executableTarget(
            name: "tracebox",
            dependencies: [
                "TracingAPI", "IPCProtocol", "IPCUnixSocket", "IPCLibuv", "CPerfettoIPCLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Helpers shared by the test targets (recording delegates, fd accounting, memfds).
        .target(
            name: "TestSupport",
            dependencies: [
                "IPCProtocol", "IPCEchoService", "CPerfettoIPCLinux",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "IPCUnixSocketTests",
            dependencies: ["IPCUnixSocket", "TestSupport", "CPerfettoIPCLinux"]
        ),
        // Transport and RPC scenarios written once, run against every backend.
        .testTarget(
            name: "BackendConformanceTests",
            dependencies: ["IPCProtocol", "IPCUnixSocket", "IPCLibuv", "IPCInProcess", "IPCEchoService", "TestSupport"]
        ),
        .testTarget(
            name: "IPCLibuvTests",
            dependencies: ["IPCProtocol", "IPCLibuv", "IPCUnixSocket", "IPCEchoService", "TestSupport", "CLibuv"]
        ),
        .testTarget(
            name: "IPCInProcessTests",
            dependencies: ["IPCProtocol", "IPCInProcess", "IPCUnixSocket", "IPCEchoService", "TestSupport"]
        ),
        .testTarget(
            name: "TracingAPITests",
            dependencies: ["TracingAPI", "IPCProtocol", "IPCInProcess", "IPCUnixSocket", "IPCLibuv", "IPCSocketCore", "TestSupport", "CPerfettoIPCLinux"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "TrackEventTests",
            dependencies: [
                "TrackEvent", "TrackEventTracing", "TracingAPI", "TestSupport", "CPerfettoIPCLinux",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            ]
        ),
        // The tracebox programs as separate processes on real sockets.
        .testTarget(
            name: "TraceboxTests",
            dependencies: ["tracebox", "TracingAPI", "IPCProtocol", "IPCUnixSocket", "TestSupport"]
        ),
        .testTarget(
            name: "IPCProtocolTests",
            dependencies: ["IPCProtocol", "IPCUnixSocket", "IPCEchoService", "TestSupport"],
            resources: [.copy("Fixtures")]
        ),
    ]
)
