// swift-tools-version:6.2
//
// libFuzzer targets for swift-perfetto-ipc, in their own package so that normal builds never
// see them. Build and run with scripts/fuzz.sh (swift build --sanitize=fuzzer).
import PackageDescription

let package = Package(
    name: "swift-perfetto-ipc-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-perfetto-ipc", path: ".."),
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "FuzzFrameDeserializer",
            dependencies: [.product(name: "IPCProtocol", package: "swift-perfetto-ipc")]
        ),
        .executableTarget(
            name: "FuzzHost",
            dependencies: [
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ]
        ),
        .executableTarget(
            name: "FuzzSharedMemory",
            dependencies: [
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // What the tracing-service fuzzers share: a served service and an honest pair beside it.
        .target(
            name: "TracingFuzzSupport",
            dependencies: [
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "FuzzProducerPort",
            dependencies: [
                "TracingFuzzSupport",
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
            ]
        ),
        .executableTarget(
            name: "FuzzConsumerPort",
            dependencies: [
                "TracingFuzzSupport",
                .product(name: "TracingAPI", package: "swift-perfetto-ipc"),
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
            ]
        ),
        .executableTarget(
            name: "FuzzClient",
            dependencies: [
                .product(name: "IPCProtocol", package: "swift-perfetto-ipc"),
                .product(name: "IPCInProcess", package: "swift-perfetto-ipc"),
                .product(name: "IPCEchoService", package: "swift-perfetto-ipc"),
            ]
        ),
    ]
)
