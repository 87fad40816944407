// The backends the conformance suite runs against. Each provides a loop the test thread can
// drive, a transport on it, and fresh addresses. Adding a backend here runs every scenario
// against it.

import Foundation
import IPCInProcess
import IPCLibuv
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

/// One backend, as the tests drive it.
protocol BackendFixture: AnyObject {
    var loop: any IPCEventLoop { get }
    var transport: any IPCTransport { get }
    /// Whether a connection from this backend has kernel-checked peer credentials.
    var reportsKernelCredentials: Bool { get }
    /// A fresh address nobody listens on.
    func newAddress() -> String
    /// Drives the loop until `condition` holds (real backends: for at most 5 s).
    func run(until condition: () -> Bool) -> Bool
    func tearDown()
}

/// A named backend factory, printable in test names.
struct BackendUnderTest: Sendable, CustomTestStringConvertible {
    let name: String
    let make: @Sendable () throws -> any BackendFixture
    var testDescription: String { name }

    static let all: [BackendUnderTest] = [
        BackendUnderTest(name: "epoll unix socket") { try EpollFixture() },
        BackendUnderTest(name: "epoll TCP") { try EpollFixture(tcp: true) },
        BackendUnderTest(name: "libuv unix socket") { try LibuvFixture() },
        BackendUnderTest(name: "in-memory") { InMemoryFixture() },
    ]
}

final class EpollFixture: BackendFixture {
    let epoll: EpollEventLoop
    let transport: any IPCTransport
    let directory = TemporaryDirectory()
    let tcp: Bool
    private var counter = 0

    init(tcp: Bool = false) throws {
        epoll = try EpollEventLoop()
        transport = UnixSocketTransport(loop: epoll)
        self.tcp = tcp
    }

    var loop: any IPCEventLoop { epoll }
    var reportsKernelCredentials: Bool { !tcp }

    func newAddress() -> String {
        counter += 1
        return tcp ? "127.0.0.1:0" : directory.path + "/conformance-\(counter).sock"
    }

    func run(until condition: () -> Bool) -> Bool {
        epoll.run(until: condition, timeout: .seconds(5))
    }

    func tearDown() { directory.remove() }
}

final class InMemoryFixture: BackendFixture {
    let manual = ManualEventLoop()
    let transport: any IPCTransport
    private var counter = 0

    init() {
        transport = InProcessTransport(loop: manual)
    }

    var loop: any IPCEventLoop { manual }
    var reportsKernelCredentials: Bool { true }

    func newAddress() -> String {
        counter += 1
        return "conformance-\(counter)"
    }

    func run(until condition: () -> Bool) -> Bool { manual.run(until: condition) }

    func tearDown() {}
}

final class LibuvFixture: BackendFixture {
    let uv: LibuvEventLoop
    let transport: any IPCTransport
    let directory = TemporaryDirectory()
    private var counter = 0

    init() throws {
        uv = try LibuvEventLoop()
        transport = LibuvTransport(loop: uv)
    }

    var loop: any IPCEventLoop { uv }
    var reportsKernelCredentials: Bool { true }

    func newAddress() -> String {
        counter += 1
        return directory.path + "/libuv-\(counter).sock"
    }

    func run(until condition: () -> Bool) -> Bool { uv.run(until: condition, timeout: .seconds(5)) }

    func tearDown() {
        uv.shutdown()
        directory.remove()
    }
}
