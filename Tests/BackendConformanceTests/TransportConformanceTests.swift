// Transport behaviour every backend must show, written once.

import Foundation
import Glibc
import IPCProtocol
import Testing
import TestSupport

@Suite("Transport conformance")
struct TransportConformanceTests {
    /// Listens, connects one client, and waits until both ends are up.
    func pair(_ backend: any BackendFixture) throws -> (any IPCListener, RecordingListenerDelegate, any IPCConnection, RecordingConnectionDelegate) {
        let server = RecordingListenerDelegate()
        let listener = try backend.transport.listen(at: backend.newAddress(), options: .default, delegate: server)
        let events = RecordingConnectionDelegate()
        let client = backend.transport.connect(to: listener.address, options: .default, delegate: events)
        #expect(backend.run(until: { events.isConnected && server.connections.count == 1 }))
        return (listener, server, client, events)
    }

    @Test(arguments: BackendUnderTest.all)
    func connectingToNothingFailsOnALaterTurn(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        let events = RecordingConnectionDelegate()
        let address = fixture.newAddress().replacingOccurrences(of: "127.0.0.1:0", with: "127.0.0.1:1")
        let connection = fixture.transport.connect(to: address, options: .default, delegate: events)
        #expect(events.events.isEmpty)
        #expect(fixture.run(until: { events.isDisconnected }))
        #expect(events.events == [.failedToConnect(.connectionFailed)])
        #expect(connection.state == .disconnected)
    }

    @Test(arguments: BackendUnderTest.all)
    func bytesFlowBothWaysInOrder(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        let (listener, server, client, events) = try pair(fixture)
        let big = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(client.send(Array("first".utf8)))
        #expect(client.send(big))
        #expect(fixture.run(until: { server.delegates[0].received.count == 5 + big.count }))
        #expect(server.delegates[0].received == Array("first".utf8) + big)
        #expect(server.connections[0].send(Array("back".utf8)))
        #expect(fixture.run(until: { events.received.count == 4 }))
        #expect(events.received == Array("back".utf8))
        listener.close()
    }

    @Test(arguments: BackendUnderTest.all)
    func fileDescriptorsTravelWithTheirBytes(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        guard fixture.reportsKernelCredentials else { return }  // TCP cannot carry fds
        let (listener, server, client, events) = try pair(fixture)
        let outgoing = FileDescriptors.memfd(named: "conformance-out", content: Array("from client".utf8))
        #expect([UInt8(1)].withUnsafeBytes { client.send($0, fd: outgoing.rawValue) })
        outgoing.close()
        #expect(fixture.run(until: { !server.delegates[0].receivedFDs.isEmpty }))
        #expect(FileDescriptors.content(of: server.delegates[0].receivedFDs[0].rawValue) == Array("from client".utf8))
        #expect(FileDescriptors.isCloseOnExec(server.delegates[0].receivedFDs[0].rawValue))
        let incoming = FileDescriptors.memfd(named: "conformance-in", content: Array("from server".utf8))
        #expect([UInt8(2)].withUnsafeBytes { server.connections[0].send($0, fd: incoming.rawValue) })
        #expect(fixture.run(until: { !events.receivedFDs.isEmpty }))
        #expect(FileDescriptors.content(of: events.receivedFDs[0].rawValue) == Array("from server".utf8))
        listener.close()
    }

    @Test(arguments: BackendUnderTest.all)
    func peerIdentityIsKnownAndSurvivesClose(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        let (listener, server, client, events) = try pair(fixture)
        let accepted = server.connections[0]
        if fixture.reportsKernelCredentials {
            #expect(accepted.peer.pid == getpid())
            #expect(accepted.peer.uid == getuid())
            #expect(accepted.peer.isLocal)
        } else {
            #expect(accepted.peer.remoteAddress != nil)
        }
        accepted.close()
        #expect(fixture.run(until: { events.isDisconnected }))
        #expect(events.events == [.connected, .disconnected(nil)])
        if fixture.reportsKernelCredentials { #expect(client.peer.pid == getpid()) }
        listener.close()
    }

    @Test(arguments: BackendUnderTest.all)
    func closingAConnectionGivesNoCallbackToItsOwner(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        let (listener, server, client, events) = try pair(fixture)
        client.close()
        #expect(fixture.run(until: { server.delegates[0].isDisconnected }))
        #expect(events.events == [.connected])
        #expect(!client.send([1]), "a closed connection refuses to send")
        listener.close()
    }

    @Test(arguments: BackendUnderTest.all)
    func anAddressInUseIsRefused(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        guard !(fixture.newAddress().hasSuffix(":0")) else { return }  // port 0 is never "in use"
        let address = fixture.newAddress()
        let first = try fixture.transport.listen(at: address, options: .default, delegate: RecordingListenerDelegate())
        let error = #expect(throws: IPCError.self) {
            _ = try fixture.transport.listen(at: address, options: .default, delegate: RecordingListenerDelegate())
        }
        #expect(error?.code == .addressInUse)
        first.close()
    }

    @Test(arguments: BackendUnderTest.all)
    func aConnectionThatPausesReadingGetsThePeersBytesWhenItResumes(_ backend: BackendUnderTest) throws {
        let fixture = try backend.make()
        defer { fixture.tearDown() }
        let (listener, server, client, events) = try pair(fixture)
        let accepted = server.connections[0]
        #expect(accepted.setReadingPaused(true))
        #expect(client.send(Array("held".utf8)))
        // Twenty loop turns (each polls the sockets): a reading connection would have the bytes.
        let turns = LoopTurns(loop: fixture.loop)
        turns.start()
        #expect(fixture.run(until: { turns.count == LoopTurns.total }))
        #expect(server.delegates[0].received.isEmpty, "read while paused")
        // The other direction is not affected.
        #expect(accepted.send(Array("back".utf8)))
        #expect(fixture.run(until: { events.received.count == 4 }))

        // The sender hears when everything it sent has been taken.
        var drained = false
        #expect(client.whenSendQueueDrains { drained = true })
        #expect(accepted.setReadingPaused(false))
        #expect(fixture.run(until: { server.delegates[0].received == Array("held".utf8) && drained }))

        // A peer that says its last and closes while reading is paused is heard on resume.
        #expect(accepted.setReadingPaused(true))
        #expect(client.send(Array(" bye".utf8)))
        client.close()
        let more = LoopTurns(loop: fixture.loop)
        more.start()
        #expect(fixture.run(until: { more.count == LoopTurns.total }))
        #expect(!server.delegates[0].isDisconnected, "noticed the close while paused")
        #expect(accepted.setReadingPaused(false))
        #expect(fixture.run(until: { server.delegates[0].isDisconnected }))
        #expect(server.delegates[0].received == Array("held bye".utf8))
        listener.close()
    }
}
