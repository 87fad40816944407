// The unix-socket transport's raw ping-pong (no framing, no RPC) beside a plain blocking
// socketpair ping-pong of the same sizes, in the same run. Each iteration is one round trip:
// the client sends N bytes and waits until N bytes come back from an echoer on another thread.
// Fixtures are made once per benchmark and reused by every sample (a fixture per sample timed
// first-touch page faults of fresh buffers: 7.9x the floor at 64 KiB, none of it the transport).
import Benchmark
import BenchmarkSupport
import Foundation
import IPCEchoService
import IPCProtocol
import IPCUnixSocket

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, maxDuration: .seconds(3))

    for size in [16, 4096, 65536] {
        benchmarkPlainSocketFloor(payloadSize: size)
        benchmarkWithFixture(
            "transport ping-pong \(size) B", make: { try TransportFixture(payloadSize: size) }, close: { $0.close() },
            iteration: { $0.roundTrip() })
    }
}

/// A connection on a loop driven by the benchmark thread, echoed by a transport on a second
/// loop thread.
final class TransportFixture: @unchecked Sendable {
    let clientLoop: EpollEventLoop
    let echoLoop: EpollEventLoop
    let echoer: RawEchoer
    let client: any IPCConnection
    let delegate: CountingDelegate
    let payload: [UInt8]

    init(payloadSize: Int) throws {
        echoLoop = try EpollEventLoop.startOnNewThread(name: "echoer")
        clientLoop = try EpollEventLoop()
        var fds: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        echoer = RawEchoer()
        let echoer = self.echoer, echoLoop = self.echoLoop, theirs = fds[1]
        let ready = DispatchSemaphore(value: 0)
        echoLoop.execute {
            echoer.connection = try? UnixSocketTransport(loop: echoLoop).adoptConnection(fd: theirs, delegate: echoer)
            ready.signal()
        }
        ready.wait()
        delegate = CountingDelegate()
        client = try UnixSocketTransport(loop: clientLoop).adoptConnection(fd: fds[0], delegate: delegate)
        payload = [UInt8](repeating: 0x61, count: payloadSize)
    }

    func roundTrip() {
        let target = delegate.received + payload.count
        client.send(payload)
        clientLoop.run(until: { self.delegate.received >= target }, timeout: .seconds(5))
    }

    func close() {
        clientLoop.run(until: { true }, timeout: .zero)  // teardown may run on another thread
        client.close()
        let echoer = self.echoer
        echoLoop.execute { echoer.connection?.close() }
        echoLoop.shutdown()
    }
}

final class CountingDelegate: IPCConnectionDelegate {
    var received = 0
    let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
    deinit { space.deallocate() }
    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) { received += byteCount }
}

/// Sends back whatever arrives; lives on the echo loop.
final class RawEchoer: IPCConnectionDelegate, @unchecked Sendable {
    var connection: (any IPCConnection)?
    let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 16)
    deinit { space.deallocate() }
    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        connection.send(UnsafeRawBufferPointer(rebasing: space[0..<byteCount]), fd: nil)
    }
}
