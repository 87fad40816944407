// Fuzzes a Host: arbitrary bytes from a client, through the in-memory transport (the full
// wire path: deserializer, dispatch, services, replies). One long-lived host serves every
// input, as a real one would; each input is a new client connection.
import IPCEchoService
import IPCInProcess
import IPCProtocol

/// A client end that swallows the host's replies.
final class Sink: IPCConnectionDelegate {
    let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {}
}

final class World {
    let loop = ManualEventLoop()
    let transport: InProcessTransport
    let host: IPCHost
    let sink = Sink()

    init() {
        transport = InProcessTransport(loop: loop)
        host = try! IPCHost(transport: transport, listeningAt: "fuzz")
        host.expose(EchoServiceImplementation())
        host.partialFrameTimeout = .seconds(1)
    }
}

nonisolated(unsafe) let world = World()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHost(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let connection = world.transport.connect(to: "fuzz", options: .default, delegate: world.sink)
    world.loop.runUntilIdle()
    // Send in pieces of varying size, as a socket would deliver them.
    var offset = 0
    var piece = 1
    while offset < count, connection.state == .connected {
        let n = min(piece, count - offset)
        connection.send(UnsafeRawBufferPointer(start: start + offset, count: n), fd: nil)
        offset += n
        piece = piece * 3 % 509 + 1
        world.loop.runUntilIdle()
    }
    world.loop.advanceTime(by: .seconds(2))  // partial-frame timeouts fire
    connection.close()
    world.loop.runUntilIdle()
    precondition(world.host.clientCount == 0, "the host must forget a client that went away")
    return 0
}
