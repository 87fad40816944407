// Fuzzes a Client: arbitrary "replies" from a host, through the in-memory transport, while
// the client has a bind, a unary call and a streaming call outstanding. Every callback must be
// called at most once per call (streams: until a final reply), and the client must end cleanly.
import IPCEchoService
import IPCInProcess
import IPCProtocol

/// A raw host: accepts one connection and hands the fuzz input to it.
final class RawHost: IPCListenerDelegate, IPCConnectionDelegate {
    var connection: (any IPCConnection)?
    let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
        connection.delegate = self
        self.connection = connection
    }
    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {}
    deinit { space.deallocate() }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClient(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let loop = ManualEventLoop()
    let transport = InProcessTransport(loop: loop)
    let raw = RawHost()
    let listener = try! transport.listen(at: "fuzz", options: .default, delegate: raw)
    var client: IPCClient? = IPCClient(transport: transport, connectingTo: "fuzz")
    let proxy = Pfpeers_EchoServiceProxy()
    var finalResults = 0
    var unaryResults = 0
    proxy.onConnect = { [unowned proxy] in  // not a cycle: one harness per input, 1M inputs
        proxy.echo(Pfpeers_EchoRequest()) { _ in unaryResults += 1 }
        proxy.streamEcho(Pfpeers_EchoRequest()) { result in if !result.hasMore { finalResults += 1 } }
    }
    client?.bind(proxy)
    loop.runUntilIdle()
    if let connection = raw.connection {
        connection.send(UnsafeRawBufferPointer(start: start, count: count), fd: nil)
        loop.runUntilIdle()
        connection.close()
    }
    loop.runUntilIdle()
    precondition(unaryResults <= 1, "a unary callback ran more than once")
    precondition(finalResults <= 1, "a stream ended more than once")
    client = nil
    loop.runUntilIdle()
    listener.close()
    return 0
}
