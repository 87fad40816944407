// The in-memory transport keeps the socket transports' promise about slow peers: a sender whose
// undelivered bytes would pass maxQueuedSendBytes is dropped, rather than queueing for ever.

import IPCInProcess
import IPCProtocol
import TestSupport
import Testing

@Suite("In-memory transport")
struct InMemoryTransportTests {
    @Test func aSendThatWouldOverflowTheQueueDropsTheSender() throws {
        let loop = ManualEventLoop()
        let transport = InProcessTransport(loop: loop)
        let server = RecordingListenerDelegate()
        let listener = try transport.listen(at: "bounded", options: .default, delegate: server)
        var options = ConnectionOptions()
        options.maxQueuedSendBytes = 64 * 1024
        let events = RecordingConnectionDelegate()
        let client = transport.connect(to: "bounded", options: options, delegate: events)
        #expect(loop.run(until: { events.isConnected && server.connections.count == 1 }))

        // Without a loop turn nothing is delivered: the fifth 16 KiB send would make 80 KiB.
        let piece = [UInt8](repeating: 7, count: 16 * 1024)
        let accepted = (0..<5).map { _ in client.send(piece) }
        #expect(accepted == [true, true, true, true, false])
        #expect(events.events == [.connected], "reported on a later turn, not inside send")
        #expect(loop.run(until: { events.isDisconnected }))
        #expect(events.events.last == .disconnected(.sendQueueFull))
        #expect(client.state == .disconnected)
        #expect(loop.run(until: { server.delegates[0].isDisconnected }), "the peer sees end of stream")
        withExtendedLifetime(listener) {}
    }

    @Test func deliveredBytesDoNotCountAgainstTheQueue() throws {
        let loop = ManualEventLoop()
        let transport = InProcessTransport(loop: loop)
        let server = RecordingListenerDelegate()
        let listener = try transport.listen(at: "bounded", options: .default, delegate: server)
        var options = ConnectionOptions()
        options.maxQueuedSendBytes = 64 * 1024
        let events = RecordingConnectionDelegate()
        let client = transport.connect(to: "bounded", options: options, delegate: events)
        #expect(loop.run(until: { events.isConnected && server.connections.count == 1 }))
        let piece = [UInt8](repeating: 7, count: 48 * 1024)
        for _ in 0..<10 {
            #expect(client.send(piece))
            loop.runUntilIdle()
        }
        #expect(server.delegates[0].received.count == 10 * piece.count)
        #expect(events.events == [.connected])
        withExtendedLifetime(listener) {}
    }
}
