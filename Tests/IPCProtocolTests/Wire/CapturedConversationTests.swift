// Every frame of every conversation recorded between real Perfetto programs
// (../shared/interop, copied into Fixtures/interop) must split and decode, and must say what
// the recording proxy says it said.

import Foundation
import Testing

@testable import IPCProtocol

@Suite("Captured Perfetto conversations")
struct CapturedConversationTests {
    static let conversations = (try? CapturedConversation.all()) ?? []

    @Test func fixturesArePresent() {
        #expect(Self.conversations.count == 8)
        #expect(Self.conversations.reduce(0) { $0 + $1.frames.count } == 103)
    }

    @Test(arguments: conversations.map(\.name))
    func everyFrameDecodesAsCaptured(name: String) throws {
        let conversation = try #require(Self.conversations.first { $0.name == name })
        // Split each raw stream with realistic, uneven reads.
        let fromClient = try FrameDeserializer().feed(conversation.clientToServer, readSizes: [7, 64, 3, 1000])
        let fromServer = try FrameDeserializer().feed(conversation.serverToClient, readSizes: [5, 200, 1, 4096])
        #expect(fromClient.count == conversation.frames(.clientToServer).count)
        #expect(fromServer.count == conversation.frames(.serverToClient).count)

        // The raw streams are exactly the captured frames back to back.
        #expect(conversation.clientToServer == conversation.frames(.clientToServer).flatMap(\.bytes))
        #expect(conversation.serverToClient == conversation.frames(.serverToClient).flatMap(\.bytes))

        var clientFrames = fromClient.makeIterator()
        var serverFrames = fromServer.makeIterator()
        var services: [UInt32: (name: String, methods: [UInt32: String])] = [:]
        var pendingBinds: [UInt64: String] = [:]
        var invokedMethods: [UInt64: (String, String)] = [:]

        for captured in conversation.frames {
            let next = captured.direction == .clientToServer ? clientFrames.next() : serverFrames.next()
            let frame = try #require(next)
            let context = "\(name) #\(captured.index)"
            #expect(frame.requestID == captured.requestID, "\(context)")

            switch captured.kind {
            case .bindService(let serviceName):
                #expect(frame.msg == .msgBindService(frame.msgBindService), "\(context)")
                #expect(frame.msgBindService.serviceName == serviceName, "\(context)")
                pendingBinds[frame.requestID] = serviceName
            case .bindServiceReply(let success, let serviceID, let methods):
                let reply = frame.msgBindServiceReply
                #expect(frame.msg == .msgBindServiceReply(reply), "\(context)")
                #expect(reply.success == success, "\(context)")
                #expect(reply.serviceID == serviceID, "\(context)")
                #expect(reply.methods.map(\.id) == methods.map(\.0), "\(context)")
                #expect(reply.methods.map(\.name) == methods.map(\.1), "\(context)")
                if success, let serviceName = pendingBinds[frame.requestID] {
                    services[reply.serviceID] = (
                        serviceName, Dictionary(uniqueKeysWithValues: reply.methods.map { ($0.id, $0.name) })
                    )
                }
            case .invokeMethod(let service, let method, let dropReply):
                let invoke = frame.msgInvokeMethod
                #expect(frame.msg == .msgInvokeMethod(invoke), "\(context)")
                #expect(invoke.dropReply == dropReply, "\(context)")
                let bound = try #require(services[invoke.serviceID], "\(context): unbound service")
                #expect(bound.name == service, "\(context)")
                #expect(bound.methods[invoke.methodID] == method, "\(context)")
                invokedMethods[frame.requestID] = (service, method)
            case .reply(let service, let method, let success, let hasMore):
                let reply = frame.msgInvokeMethodReply
                #expect(frame.msg == .msgInvokeMethodReply(reply), "\(context)")
                #expect(reply.success == success, "\(context)")
                #expect(reply.hasMore == hasMore, "\(context)")
                let invoked = try #require(invokedMethods[frame.requestID], "\(context): reply to nothing")
                #expect(invoked.0 == service && invoked.1 == method, "\(context)")
            case .other(let text):
                Issue.record("\(context): unexpected frame kind in capture: \(text)")
            }

            // Our own encoding of the same frame decodes to the same content (Perfetto pads
            // varints, we do not, so the bytes may differ).
            let reencoded = try FrameSerializer.serialize(frame)
            let roundTripped = try FrameDeserializer().feed(reencoded)
            #expect(roundTripped == [frame], "\(context)")
        }
    }

    @Test func firstBytesOfSDKProducerAndConsumerAreBindRequests() throws {
        for (file, service) in [("producer_first_bytes.bin", "ProducerPort"), ("consumer_first_bytes.bin", "ConsumerPort")] {
            let url = CapturedConversation.fixturesRoot.appendingPathComponent("first_bytes/\(file)")
            let bytes = [UInt8](try Data(contentsOf: url))
            #expect(bytes.count == 22)
            let frames = try FrameDeserializer().feed(bytes)
            #expect(frames.count == 1)
            #expect(frames.first?.requestID == 1)
            #expect(frames.first?.msgBindService.serviceName == service)

            var ours = IPCFrame()
            ours.requestID = 1
            ours.msgBindService.serviceName = service
            #expect(try FrameSerializer.serialize(ours) == bytes, "unpadded frames encode byte-identically")
        }
    }
}
