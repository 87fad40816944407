// A loop on the test's thread with a transport, for RPC tests. Raw peers sit on the other end
// of socketpairs; nothing sleeps: the loop is driven until a condition holds, with a deadline.

import Foundation
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

final class RPCHarness {
    let loop: EpollEventLoop
    let transport: UnixSocketTransport
    let directory = TemporaryDirectory()
    /// Objects the test must keep alive to its end (hosts and clients close when released).
    private var retained: [AnyObject] = []

    init() throws {
        loop = try EpollEventLoop()
        transport = UnixSocketTransport(loop: loop)
    }

    deinit { directory.remove() }

    /// Keeps `object` alive until the harness goes away.
    func keep(_ object: AnyObject) { retained.append(object) }

    var socketPath: String { directory.path + "/rpc.sock" }

    @discardableResult
    func run(until condition: () -> Bool, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        let held = loop.run(until: condition, timeout: .seconds(5))
        #expect(held, comment, sourceLocation: sourceLocation)
        return held
    }

    /// Drives the loop for a short while to show that something does NOT happen.
    func settle() {
        loop.run(until: { false }, timeout: .milliseconds(20))
    }

    /// A host with the echo service, and a raw client peer connected to it.
    func hostWithRawClient(service: any IPCService = EchoServiceImplementation()) throws -> (IPCHost, RawFramePeer) {
        let host = IPCHost(transport: transport, logger: .quiet)
        host.expose(service)
        let (peer, other) = RawFramePeer.pair()
        host.adopt(try transport.adoptConnection(fd: other.release()))
        retained.append(host)
        return (host, peer)
    }

    /// A client on one end of a socketpair, and a raw host peer on the other.
    func clientWithRawHost() throws -> (IPCClient, RawFramePeer) {
        let (peer, other) = RawFramePeer.pair()
        let connection = try transport.adoptConnection(fd: other.release())
        let client = IPCClient(connection: connection, eventLoop: loop)
        retained.append(client)
        return (client, peer)
    }

    /// Waits for the peer to have received `count` frames in all.
    func frames(from peer: RawFramePeer, count: Int, sourceLocation: SourceLocation = #_sourceLocation) -> [IPCFrame] {
        run(until: { peer.poll() >= count }, "waiting for \(count) frames", sourceLocation: sourceLocation)
        return peer.frames
    }
}

func decodeEchoReply(_ frame: IPCFrame) -> Pfpeers_EchoReply? {
    try? Pfpeers_EchoReply(serializedBytes: frame.msgInvokeMethodReply.replyProto)
}
