// Our ProducerPort and ConsumerPort clients driven through the flows captured between real
// Perfetto programs (../shared/interop): a raw host answers with traced's recorded replies,
// and every request our clients send must equal, field by field, what Perfetto's SDK sent.

import CPerfettoIPCLinux
import Foundation
import IPCProtocol
import IPCUnixSocket
import SwiftProtobuf
import Testing
import TestSupport

@testable import TracingAPI

@Suite("Our port clients against traced's captured replies", .serialized)
final class PortClientReplayTests {
    let loop: EpollEventLoop
    let transport: UnixSocketTransport
    let directory = TemporaryDirectory()

    init() throws {
        loop = try EpollEventLoop()
        transport = UnixSocketTransport(loop: loop)
    }

    deinit { directory.remove() }

    private func run(_ condition: () -> Bool, _ comment: Comment, sourceLocation: SourceLocation = #_sourceLocation) {
        let held = loop.run(until: condition, timeout: .seconds(5))
        #expect(held, comment, sourceLocation: sourceLocation)
    }

    /// The method id, drop_reply and decoded arguments of an InvokeMethod frame.
    private func call<Request: SwiftProtobuf.Message>(_ frame: IPCFrame, as type: Request.Type) throws -> (UInt32, Bool, Request) {
        let invoke = frame.msgInvokeMethod
        return (invoke.methodID, invoke.dropReply, try Request(serializedBytes: invoke.argsProto))
    }

    private func expectSameCall<Request: SwiftProtobuf.Message & Equatable>(
        _ ours: IPCFrame?, _ theirs: IPCFrame, as type: Request.Type, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let ours = try #require(ours, sourceLocation: sourceLocation)
        let (method, dropReply, request) = try call(ours, as: type)
        let (realMethod, realDropReply, realRequest) = try call(theirs, as: type)
        #expect(method == realMethod, sourceLocation: sourceLocation)
        #expect(dropReply == realDropReply, "drop_reply", sourceLocation: sourceLocation)
        #expect(request == realRequest, sourceLocation: sourceLocation)
    }

    /// Sends the captured replies to `requestID`, the shared memory with the one that had an fd.
    private func answer(_ host: RawFramePeer, _ conversation: CapturedPortConversation, _ requestID: UInt64,
                        range: Range<Int>? = nil, fd: Int32? = nil) throws {
        var replies = conversation.replies(to: requestID)
        if let range { replies = Array(replies[range]) }
        for (index, reply) in replies.enumerated() {
            host.sendRaw(try FrameSerializer.serialize(reply), fd: index == 0 ? fd : nil)
        }
    }

    @Test func ourProducerSendsWhatTheSDKProducerSent() throws {
        let conversation = try CapturedPortConversation("producer_session")
        let captured = conversation.clientFrames
        let listener = RawListener(path: directory.path + "/p.sock")
        let service = SystemTracingService(
            transport: transport, producerAddress: directory.path + "/p.sock", consumerAddress: directory.path + "/c.sock",
            reconnectPolicy: .never)
        let descriptors = try [3, 4].map {
            try Perfetto_Protos_RegisterDataSourceRequest(serializedBytes: captured[$0].msgInvokeMethod.argsProto)
                .dataSourceDescriptor
        }
        let initialize = try Perfetto_Protos_InitializeConnectionRequest(serializedBytes: captured[1].msgInvokeMethod.argsProto)
        let options = ProducerConnectionOptions(
            name: initialize.producerName, sharedMemorySizeHint: Int(initialize.sharedMemorySizeHintBytes),
            sharedMemoryPageSizeHint: Int(initialize.sharedMemoryPageSizeHintBytes), sdkVersion: initialize.sdkVersion)
        let producer = RecordingProducer(service: service, name: initialize.producerName, dataSources: descriptors, options: options)

        var host: RawFramePeer?
        run({ host = host ?? listener.accept(); return host != nil }, "the producer did not connect")
        let peer = try #require(host)
        run({ peer.poll() >= 1 }, "no BindService")
        #expect(peer.frames[0] == captured[0], "BindService(\"ProducerPort\") as the SDK sends it")

        try answer(peer, conversation, 1)
        run({ peer.poll() >= 3 }, "no InitializeConnection and GetAsyncCommand")
        try #require(peer.frames.count >= 3)
        try expectSameCall(peer.frames[1], captured[1], as: Perfetto_Protos_InitializeConnectionRequest.self)
        try expectSameCall(peer.frames[2], captured[2], as: Perfetto_Protos_GetAsyncCommandRequest.self)

        try answer(peer, conversation, 2)
        run({ peer.poll() >= 5 }, "no RegisterDataSource")
        try #require(peer.frames.count >= 5)
        #expect(producer.connects == 1)
        try expectSameCall(peer.frames[3], captured[3], as: Perfetto_Protos_RegisterDataSourceRequest.self)
        try expectSameCall(peer.frames[4], captured[4], as: Perfetto_Protos_RegisterDataSourceRequest.self)
        try answer(peer, conversation, 4)
        try answer(peer, conversation, 5)

        // setup_tracing with a shared memory like traced's, then setup and start x2.
        let memory = try SharedMemoryBuffer.create(size: 256 * 1024, pageSize: 4096)
        try answer(peer, conversation, 3, range: 0..<5, fd: memory.fileDescriptor.rawValue)
        run({ producer.started.count == 2 }, "the data sources did not start")
        #expect(producer.events == [
            "connect", "setup-tracing", "setup pf.peer", "setup track_event", "start pf.peer", "start track_event",
        ])
        #expect(producer.endpoint.sharedMemory?.size == 256 * 1024)
        // Each started instance makes a writer: RegisterTraceWriter as the SDK sent them.
        run({ peer.poll() >= 7 }, "no RegisterTraceWriter")
        let registrations = peer.frames.filter { $0.msgInvokeMethod.methodID == 6 }
        let realRegistrations = captured.filter { $0.msgInvokeMethod.methodID == 6 }
        #expect(registrations.count == realRegistrations.count)
        for (ours, theirs) in zip(registrations, realRegistrations) {
            try expectSameCall(ours, theirs, as: Perfetto_Protos_RegisterTraceWriterRequest.self)
        }

        // stop x2: NotifyDataSourceStopped x2, with drop_reply, as the SDK sent them.
        try answer(peer, conversation, 3, range: 5..<7)
        run({ peer.poll() > 0 && peer.frames.filter { $0.msgInvokeMethod.methodID == 9 }.count == 2 }, "no NotifyDataSourceStopped")
        let stops = peer.frames.filter { $0.msgInvokeMethod.methodID == 9 }
        let realStops = captured.filter { $0.msgInvokeMethod.methodID == 9 }
        for (ours, theirs) in zip(stops, realStops) {
            try expectSameCall(ours, theirs, as: Perfetto_Protos_NotifyDataSourceStoppedRequest.self)
        }
        let requestIDs = peer.frames.map(\.requestID)
        #expect(requestIDs == Array(1...UInt64(requestIDs.count)), "request ids count up from 1")
    }

    /// A producer (no reconnection) that connected to a raw host, bound ProducerPort and was
    /// answered InitializeConnection with traced's captured replies.
    private func initializedProducer() throws -> (RawFramePeer, RecordingProducer, CapturedPortConversation) {
        let conversation = try CapturedPortConversation("producer_session")
        let listener = RawListener(path: directory.path + "/p.sock")
        let service = SystemTracingService(
            transport: transport, producerAddress: directory.path + "/p.sock", consumerAddress: directory.path + "/c.sock",
            reconnectPolicy: .never)
        let producer = RecordingProducer(service: service, name: "app", dataSources: [TracingConfigs.descriptor("app.source")])
        var host: RawFramePeer?
        run({ host = host ?? listener.accept(); return host != nil }, "the producer did not connect")
        let peer = try #require(host)
        run({ peer.poll() >= 1 }, "no BindService")
        try answer(peer, conversation, 1)
        run({ peer.poll() >= 3 }, "no InitializeConnection and GetAsyncCommand")
        try answer(peer, conversation, 2)
        run({ producer.connects == 1 }, "the producer never connected")
        return (peer, producer, conversation)
    }

    @Test func aServiceSharedMemoryThatIsNotSealedIsRefused() throws {
        // A service that could shrink the buffer after sending it would turn the writers' stores
        // into SIGBUS in the application's threads: the producer maps only a sealed memfd.
        let (peer, producer, conversation) = try initializedProducer()
        let unsealed = ScopedFD(CPerfettoIPC_memfd_create("unsealed", UInt32(CPerfettoIPC_MFD_CLOEXEC | CPerfettoIPC_MFD_ALLOW_SEALING)))
        #expect(ftruncate(unsealed.rawValue, 256 * 1024) == 0)
        try answer(peer, conversation, 3, range: 0..<1, fd: unsealed.rawValue)
        run({ peer.poll() >= 0 && peer.sawEndOfStream }, "the producer kept the connection")
        #expect(!producer.events.contains("setup-tracing"))
        #expect(producer.endpoint.sharedMemory == nil)
        // The application can tell its users why.
        run({ producer.disconnects == 1 }, "the producer was not told")
        let reason = try #require((producer.endpoint as? RemoteProducerEndpoint)?.connectionError)
        #expect(reason.message.hasPrefix("the service's shared memory cannot be used: "), Comment(rawValue: reason.message))
        #expect(reason.message.contains("not sealed"), Comment(rawValue: reason.message))
    }

    @Test func aCommandStreamThatEndsIsALostService() throws {
        // Nothing would start a producer whose command stream ended: it lets the connection go
        // (and, with a reconnect policy, connects anew) instead of staying connected for ever.
        let (peer, producer, _) = try initializedProducer()
        let commandStream = try #require(peer.frames.dropFirst(2).first?.requestID)  // GetAsyncCommand, after InitializeConnection
        peer.send(TestFrames.reply(requestID: commandStream, hasMore: false))
        run({ peer.poll() >= 0 && peer.sawEndOfStream }, "the producer stayed on a service that sends it nothing")
        run({ producer.disconnects == 1 }, "the producer was not told")
        #expect((producer.endpoint as? RemoteProducerEndpoint)?.connectionError?.message == "the service ended its command stream")
    }

    @Test func ourConsumerSendsWhatTheSDKConsumerSentAndReassemblesTheSameTrace() throws {
        let conversation = try CapturedPortConversation("consumer_session")
        let captured = conversation.clientFrames
        let listener = RawListener(path: directory.path + "/c.sock")
        let service = SystemTracingService(
            transport: transport, producerAddress: directory.path + "/p.sock", consumerAddress: directory.path + "/c.sock")
        let consumer = RecordingConsumer(service: service)
        var host: RawFramePeer?
        run({ host = host ?? listener.accept(); return host != nil }, "the consumer did not connect")
        let peer = try #require(host)
        run({ peer.poll() >= 1 }, "no BindService")
        #expect(peer.frames[0] == captured[0], "BindService(\"ConsumerPort\") as the SDK sends it")
        try answer(peer, conversation, 1)
        run({ consumer.connects == 1 }, "not connected")

        let observe = try Perfetto_Protos_ObserveEventsRequest(serializedBytes: captured[1].msgInvokeMethod.argsProto)
        let enable = try Perfetto_Protos_EnableTracingRequest(serializedBytes: captured[2].msgInvokeMethod.argsProto)
        let flush = try Perfetto_Protos_FlushRequest(serializedBytes: captured[3].msgInvokeMethod.argsProto)
        consumer.endpoint.observeEvents(observe.eventsToObserve)
        consumer.endpoint.enableTracing(enable.traceConfig, outputFile: nil)
        var flushed: Bool?
        consumer.endpoint.flush(timeoutMs: flush.timeoutMs, flags: FlushFlags(rawValue: flush.flags)) { flushed = $0 }
        consumer.endpoint.disableTracing()
        run({ peer.poll() >= 5 }, "the calls did not arrive")
        try #require(peer.frames.count >= 5)
        try expectSameCall(peer.frames[1], captured[1], as: Perfetto_Protos_ObserveEventsRequest.self)
        try expectSameCall(peer.frames[2], captured[2], as: Perfetto_Protos_EnableTracingRequest.self)
        try expectSameCall(peer.frames[3], captured[3], as: Perfetto_Protos_FlushRequest.self)
        try expectSameCall(peer.frames[4], captured[4], as: Perfetto_Protos_DisableTracingRequest.self)

        for requestID: UInt64 in [2, 3, 4, 5] { try answer(peer, conversation, requestID) }
        run({ flushed != nil && consumer.disabledErrors.count == 1 }, "flush and disable not answered")
        #expect(flushed == true)
        #expect(consumer.disabledErrors == [""])
        #expect(consumer.observed.count == conversation.replies(to: 2).count)

        consumer.endpoint.readBuffers()
        run({ peer.poll() >= 6 }, "no ReadBuffers")
        try #require(peer.frames.count >= 6)
        try expectSameCall(peer.frames[5], captured[5], as: Perfetto_Protos_ReadBuffersRequest.self)
        try answer(peer, conversation, 6)
        run({ consumer.readsCompleted == 1 }, "the read did not complete")
        // The packets are the ones the SDK consumer wrote into its trace file.
        let url = try #require(Bundle.module.url(forResource: "Fixtures/consumer_session", withExtension: "pftrace"))
        let written = try TraceFile.decodePackets([UInt8](Data(contentsOf: url)))
        #expect(consumer.packets == written)
        #expect(consumer.readFailures.isEmpty)

        // A read the service fails, one it answers with bytes that do not decode, and one the
        // connection ends: each says why, then ends as every read does.
        consumer.endpoint.readBuffers()
        run({ peer.poll() >= 7 }, "no second ReadBuffers")
        peer.send(TestFrames.reply(requestID: try #require(peer.frames.last).requestID, success: false))
        run({ consumer.readsCompleted == 2 }, "the failed read did not end")
        consumer.endpoint.readBuffers()
        run({ peer.poll() >= 8 }, "no third ReadBuffers")
        peer.send(TestFrames.reply(requestID: try #require(peer.frames.last).requestID, payload: Data([0x12, 0x05, 0x0A])))
        run({ consumer.readsCompleted == 3 }, "the undecodable read did not end")
        consumer.endpoint.readBuffers()
        run({ peer.poll() >= 9 }, "no fourth ReadBuffers")
        peer.close()
        run({ consumer.readsCompleted == 4 }, "the read cut by the connection did not end")
        #expect(consumer.readFailures.count == 3)
        #expect(consumer.readFailures.first?.hasPrefix("the service failed the read") == true)
        #expect(consumer.readFailures.dropFirst().first == "the service sent an undecodable ReadBuffersResponse")
        #expect(consumer.readFailures.last == "the connection to the service ended")
        #expect(consumer.packets == written, "nothing more arrived")
    }
}
