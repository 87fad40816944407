// The in-memory transport keeps the socket transports' promise about slow peers: a sender whose
// undelivered bytes would pass maxQueuedSendBytes is dropped, rather than queueing for ever. An
// end never points at a peer that is gone (the ends hold each other unowned).

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

    /// Closes every connection it is handed, at once, and keeps none.
    private final class RefusingListener: IPCListenerDelegate {
        var beforeClosing: (() -> Void)?
        func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
            beforeClosing?()
            connection.close()
        }
    }

    @Test func aServerEndClosedAndReleasedAsItIsAcceptedIsNeverWrittenTo() throws {
        let loop = ManualEventLoop()
        let transport = InProcessTransport(loop: loop)
        let refusing = RefusingListener()
        let listener = try transport.listen(at: "refusing", options: .default, delegate: refusing)
        let events = RecordingConnectionDelegate()
        let client = transport.connect(to: "refusing", options: .default, delegate: events)
        // A task that runs after the accepting turn, when the server end is gone, and before
        // the client hears that it closed.
        final class Outcome: @unchecked Sendable { var sent: Bool? }  // loop-confined
        let sentAfterwards = Outcome()
        let unchecked = UncheckedSendableBox(client)
        refusing.beforeClosing = { loop.execute { sentAfterwards.sent = unchecked.value.send([1, 2, 3]) } }
        #expect(loop.run(until: { events.isDisconnected }))
        #expect(sentAfterwards.sent == false, "nothing to send to: the server end is gone")
        #expect(events.events == [.connected, .disconnected(nil)])
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
