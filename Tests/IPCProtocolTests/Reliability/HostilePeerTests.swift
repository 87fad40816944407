// Hostile and broken peers against a real unix-socket host. Each test asserts what a user
// relies on: the host stays up, a well-behaved client keeps being served, and the offender's
// descriptors are all released.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

/// A host listening on a unix socket, a well-behaved client, and raw connections for attackers.
final class HostileHarness {
    let harness: RPCHarness
    let host: IPCHost
    let service = EchoServiceImplementation()
    let good = Pfpeers_EchoServiceProxy()
    let client: IPCClient
    let baselineFDs: [Int32]

    init(options: ConnectionOptions = .default, partialFrameTimeout: Duration = .seconds(10)) throws {
        harness = try RPCHarness()
        host = try IPCHost(backend: .unixSocket(harness.socketPath, loop: harness.loop, options: options), logger: .quiet)
        host.partialFrameTimeout = partialFrameTimeout
        host.expose(service)
        client = IPCClient(backend: .unixSocket(harness.socketPath, loop: harness.loop))
        client.bind(good)
        let good = self.good
        harness.run(until: { good.isBound })
        baselineFDs = FileDescriptors.openDescriptors()
    }

    /// A raw connection to the host.
    func attacker() -> RawFramePeer {
        let peer = RawFramePeer(socket: FileDescriptors.connectedUnixSocket(path: harness.socketPath))
        let loop = harness.loop
        peer.pumpWhileBlocked = { _ = loop.run(until: { false }, timeout: .milliseconds(1)) }
        harness.run(until: { self.host.clientCount >= 2 })
        return peer
    }

    /// The well-behaved client still gets answers.
    func goodClientIsServed(sourceLocation: SourceLocation = #_sourceLocation) {
        var request = Pfpeers_EchoRequest()
        request.data = Data("still here".utf8)
        var reply: AsyncResult<Pfpeers_EchoReply>?
        good.echo(request) { reply = $0 }
        harness.run(until: { reply != nil }, sourceLocation: sourceLocation)
        #expect(reply?.message?.data == Data("still here".utf8), sourceLocation: sourceLocation)
    }

    /// Waits until the host dropped `peer` and everything it held was released.
    func expectDropped(_ peer: RawFramePeer, sourceLocation: SourceLocation = #_sourceLocation) {
        harness.run(until: { peer.poll() >= 0 && peer.sawEndOfStream }, "host drops the peer", sourceLocation: sourceLocation)
        peer.close()
        harness.run(until: { self.host.clientCount == 1 }, sourceLocation: sourceLocation)
        #expect(FileDescriptors.openDescriptors() == baselineFDs, "no descriptor leaked", sourceLocation: sourceLocation)
    }
}

@Suite("Hostile peers")
struct HostilePeerTests {
    @Test func frameAnnouncingFourGibibytesIsDropped() throws {
        let h = try HostileHarness()
        let peer = h.attacker()
        peer.sendRaw([0xFF, 0xFF, 0xFF, 0xFF])
        h.expectDropped(peer)
        h.goodClientIsServed()
    }

    @Test func oneMebibyteOfRandomBytesIsSurvived() throws {
        let h = try HostileHarness()
        let peer = h.attacker()
        var rng = SplitMix64(seed: 42)
        // Small announced sizes so that many garbage frames get decoded, not just rejected.
        var bytes: [UInt8] = []
        while bytes.count < 1 << 20 {
            let size = Int(rng.next() % 200)
            FrameSerializer.appendHeader(payloadSize: size, to: &bytes)
            bytes += (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        }
        peer.sendRaw(bytes)
        h.goodClientIsServed()
        peer.close()
        h.harness.run(until: { h.host.clientCount == 1 })
        #expect(FileDescriptors.openDescriptors() == h.baselineFDs)
    }

    @Test func validFramesWithGarbagePayloadsAreAnsweredWithFailures() throws {
        let h = try HostileHarness()
        let peer = h.attacker()
        var rng = SplitMix64(seed: 7)
        for id in 1...200 {
            let garbage = Data((0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            peer.send(TestFrames.invoke(serviceID: UInt32(rng.next() % 3), methodID: UInt32(rng.next() % 4), arguments: garbage, requestID: UInt64(id)))
        }
        peer.send(TestFrames.bind(String(decoding: (0..<40).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, as: UTF8.self), requestID: 201))
        h.harness.run(until: { peer.poll() >= 201 })
        #expect(peer.frames.map(\.requestID) == Array(1...201))
        #expect(!peer.frames.last!.msgBindServiceReply.success)
        h.goodClientIsServed()
    }

    @Test func floodOfDescriptorsIsClosed() throws {
        let h = try HostileHarness()
        let peer = h.attacker()
        let probes = (0..<8).map { FileDescriptors.memfd(named: "flood-\($0)", content: [UInt8($0)]) }
        // 200 frames, each carrying eight descriptors: the host keeps at most one at a time.
        for id in 1...200 {
            let frame = try FrameSerializer.serialize(TestFrames.bind("Nope", requestID: UInt64(id)))
            #expect(FileDescriptors.sendWithFDs(peer.socket.rawValue, bytes: frame, fds: probes.map(\.rawValue)))
        }
        h.harness.run(until: { peer.poll() >= 200 })
        // More than eight in one message is an attack: the connection goes.
        let many = (0..<12).map { FileDescriptors.memfd(named: "more-\($0)", content: [1]) }
        #expect(FileDescriptors.sendWithFDs(peer.socket.rawValue, bytes: [0], fds: many.map(\.rawValue)))
        (probes + many).forEach { $0.close() }  // in flight, the kernel holds its own references
        h.expectDropped(peer)
        h.goodClientIsServed()
    }

    @Test func halfAFrameThenSilenceIsDroppedAfterTheTimeout() throws {
        let h = try HostileHarness(partialFrameTimeout: .milliseconds(50))
        let peer = h.attacker()
        let frame = try FrameSerializer.serialize(TestFrames.bind("EchoService", requestID: 1))
        peer.sendRaw(Array(frame.prefix(frame.count / 2)))
        h.goodClientIsServed()  // meanwhile, others are served
        h.expectDropped(peer)
    }

    @Test func peerThatNeverReadsIsDroppedAfterTheSendTimeout() throws {
        var options = ConnectionOptions()
        options.sendTimeout = .milliseconds(100)
        options.socketSendBufferSize = 16 * 1024
        let h = try HostileHarness(options: options)
        let peer = h.attacker()
        var shrink: Int32 = 4096
        setsockopt(peer.socket.rawValue, SOL_SOCKET, SO_RCVBUF, &shrink, socklen_t(MemoryLayout<Int32>.size))
        var request = Pfpeers_EchoRequest()
        request.data = Data(repeating: 0x41, count: 1000)
        request.count = 5000  // ~5 MB of replies that are never read
        peer.send(TestFrames.invoke(serviceID: 1, methodID: 2, arguments: request.encoded, requestID: 1))
        h.goodClientIsServed()
        h.harness.run(until: { h.host.clientCount == 1 }, "the stalled reader is dropped")
        peer.close()
        #expect(FileDescriptors.openDescriptors() == h.baselineFDs)
    }

    @Test func tenThousandBindsOfUnknownServicesAreAllRefused() throws {
        let h = try HostileHarness()
        let peer = h.attacker()
        for id in 1...10_000 {
            peer.send(TestFrames.bind("Unknown\(id % 97)", requestID: UInt64(id)))
            if id % 500 == 0 { h.harness.run(until: { peer.poll() >= id }) }
        }
        h.harness.run(until: { peer.poll() >= 10_000 })
        #expect(peer.frames.allSatisfy { $0.msgBindServiceReply.hasSuccess && !$0.msgBindServiceReply.success })
        h.goodClientIsServed()
    }

    @Test func invokingWithoutBindingIsAnsweredLikePerfetto() throws {
        // Perfetto hosts do not track binds per client: a valid service id works without one.
        let h = try HostileHarness()
        let peer = h.attacker()
        peer.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("no bind").encoded, requestID: 1))
        let frame = try #require(h.harness.frames(from: peer, count: 1).first)
        #expect(decodeEchoReply(frame)?.data == Data("no bind".utf8))
    }

    @Test func reusedAndOutOfOrderRequestIDsAreEchoedAsSent() throws {
        let h = try HostileHarness()
        let peer = h.attacker()
        for id: UInt64 in [5, 5, 3, 1, UInt64.max] {
            peer.send(TestFrames.invoke(serviceID: 1, methodID: 1, arguments: echoRequest("\(id)").encoded, requestID: id))
        }
        let frames = h.harness.frames(from: peer, count: 5)
        #expect(frames.map(\.requestID) == [5, 5, 3, 1, UInt64.max])
        h.goodClientIsServed()
    }
}
