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
