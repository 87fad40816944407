// Our service fed the bytes real Perfetto programs sent to the real traced (../shared/interop,
// copied into Fixtures/interop): an SDK producer and an SDK consumer in one session, and
// `perfetto --query-raw`. Our replies must equal traced's field by field, counters aside.

import Foundation
import IPCProtocol
import IPCUnixSocket
import SwiftProtobuf
import Testing
import TestSupport

@testable import TracingAPI

/// The client's frames of one captured connection and the frames traced answered with.
struct CapturedPortConversation {
    let clientFrames: [IPCFrame]
    let serviceFrames: [IPCFrame]

    init(_ folder: String, connection: Int = 0) throws {
        let root = try #require(Bundle.module.url(forResource: "Fixtures/interop/\(folder)", withExtension: nil))
        clientFrames = try Self.frames(in: Data(contentsOf: root.appendingPathComponent("conn\(connection).c2s.bin")))
        serviceFrames = try Self.frames(in: Data(contentsOf: root.appendingPathComponent("conn\(connection).s2c.bin")))
    }

    /// Splits a stream of `[u32 little-endian length][IPCFrame]`.
    static func frames(in stream: Data) throws -> [IPCFrame] {
        let bytes = [UInt8](stream)
        var frames: [IPCFrame] = []
        var offset = 0
        while offset + 4 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
            frames.append(try IPCFrame(serializedBytes: Array(bytes[(offset + 4)..<(offset + 4 + length)])))
            offset += 4 + length
        }
        return frames
    }

    /// The client's request with `requestID`.
    func request(_ requestID: UInt64) throws -> IPCFrame {
        try #require(clientFrames.first { $0.requestID == requestID })
    }

    /// traced's replies to `requestID`, in order.
    func replies(to requestID: UInt64) -> [IPCFrame] {
        serviceFrames.filter { $0.requestID == requestID }
    }
}

@Suite("Captured Perfetto conversations against our service", .serialized)
final class PortReplayTests {
    let loop: EpollEventLoop
    let transport: UnixSocketTransport
    let directory = TemporaryDirectory()
    let host: TracingServiceHost

    init() throws {
        loop = try EpollEventLoop()
        transport = UnixSocketTransport(loop: loop)
        host = try TracingServiceHost(
            service: TracingServiceCore(eventLoop: loop),
            producerBackends: [.transport(transport, address: directory.path + "/p.sock")],
            consumerBackend: .transport(transport, address: directory.path + "/c.sock"))
    }

    deinit {
        host.close()
        directory.remove()
    }

    /// A raw peer on a socketpair served by `ipcHost`.
    private func peer(on ipcHost: IPCHost) throws -> RawFramePeer {
        let (peer, other) = RawFramePeer.pair()
        ipcHost.adopt(try transport.adoptConnection(fd: other.release()))
        return peer
    }

    /// Drives the loop until `peer` has received `count` frames in all.
    @discardableResult
    private func frames(_ peer: RawFramePeer, count: Int, sourceLocation: SourceLocation = #_sourceLocation) -> [IPCFrame] {
        let held = loop.run(until: { peer.poll() >= count }, timeout: .seconds(5))
        #expect(held, "waited for \(count) frames, have \(peer.frames.count)", sourceLocation: sourceLocation)
        return peer.frames
    }

    private func decode<M: SwiftProtobuf.Message>(_ type: M.Type, _ frame: IPCFrame) throws -> M {
        try M(serializedBytes: frame.msgInvokeMethodReply.replyProto)
    }

    /// Compares the reply frames' envelopes (success, has_more) and their decoded messages.
    private func expectSameReplies<M: SwiftProtobuf.Message & Equatable>(
        _ ours: [IPCFrame], _ theirs: [IPCFrame], as type: M.Type, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        #expect(ours.count == theirs.count, sourceLocation: sourceLocation)
        for (mine, real) in zip(ours, theirs) {
            #expect(mine.msgInvokeMethodReply.success == real.msgInvokeMethodReply.success, sourceLocation: sourceLocation)
            #expect(mine.msgInvokeMethodReply.hasMore_p == real.msgInvokeMethodReply.hasMore_p, sourceLocation: sourceLocation)
            #expect(try decode(M.self, mine) == decode(M.self, real), sourceLocation: sourceLocation)
        }
    }

    @Test func anSDKProducerAndAnSDKConsumerGetTracedsAnswers() throws {
        let producerConversation = try CapturedPortConversation("producer_session")
        let consumerConversation = try CapturedPortConversation("consumer_session")
        let producer = try peer(on: host.producerHosts[0])
        let consumer = try peer(on: host.consumerHost)

        // The producer: bind, InitializeConnection, GetAsyncCommand, RegisterDataSource x2.
        for requestID in 1...5 { producer.send(try producerConversation.request(UInt64(requestID))) }
        var received = frames(producer, count: 4)
        let bind = try #require(received.first { $0.requestID == 1 })
        let realBind = try #require(producerConversation.replies(to: 1).first)
        #expect(bind.msgBindServiceReply == realBind.msgBindServiceReply, "same service id and method ids")
        try expectSameReplies(
            received.filter { $0.requestID == 2 }, producerConversation.replies(to: 2),
            as: Perfetto_Protos_InitializeConnectionResponse.self)
        for requestID: UInt64 in [4, 5] {
            try expectSameReplies(
                received.filter { $0.requestID == requestID }, producerConversation.replies(to: requestID),
                as: Perfetto_Protos_RegisterDataSourceResponse.self)
        }

        // The consumer: bind, ObserveEvents, EnableTracing (its config, as perfetto sent it).
        for requestID in 1...3 { consumer.send(try consumerConversation.request(UInt64(requestID))) }
        let consumerBind = try #require(frames(consumer, count: 1).first)
        #expect(consumerBind.msgBindServiceReply == consumerConversation.replies(to: 1).first?.msgBindServiceReply)

        // The producer is set up and started as traced did it: setup_tracing with the shared
        // memory's fd, then setup x2, start x2 with the configs traced filled in.
        received = frames(producer, count: 9)
        let commands = received.filter { $0.requestID == 3 }
        let realCommands = producerConversation.replies(to: 3)
        try expectSameReplies(commands, Array(realCommands.prefix(5)), as: Perfetto_Protos_GetAsyncCommandResponse.self)
        #expect(producer.receivedFDs.count == 1, "the shared memory travels with setup_tracing")
        if let memfd = producer.receivedFDs.first {
            #expect(FileDescriptors.target(of: memfd.rawValue).contains("memfd:perfetto_shmem"))
            #expect(lseek(memfd.rawValue, 0, SEEK_END) == 256 * 1024)
        }

        // The producer says its data sources started; the consumer is told, as it asked.
        for requestID in 6...7 { producer.send(try producerConversation.request(UInt64(requestID))) }
        let events = frames(consumer, count: 3).filter { $0.requestID == 2 }
        let realEvents = consumerConversation.replies(to: 2)
        let startedNames = try events.flatMap {
            try decode(Perfetto_Protos_ObserveEventsResponse.self, $0).events.instanceStateChanges
                .filter { $0.state == .started }.map(\.dataSourceName)
        }
        let realStartedNames = try realEvents.flatMap {
            try decode(Perfetto_Protos_ObserveEventsResponse.self, $0).events.instanceStateChanges
                .filter { $0.state == .started }.map(\.dataSourceName)
        }
        #expect(startedNames == realStartedNames)

        // DisableTracing: stop x2 to the producer; once it acknowledges, EnableTracing's reply.
        consumer.send(try consumerConversation.request(5))
        received = frames(producer, count: 11)
        try expectSameReplies(
            Array(received.filter { $0.requestID == 3 }.dropFirst(5)), Array(realCommands.dropFirst(5)),
            as: Perfetto_Protos_GetAsyncCommandResponse.self)
        for requestID in 12...13 { producer.send(try producerConversation.request(UInt64(requestID))) }
        let disabled = loop.run(until: { consumer.poll() > 0 && consumer.frames.contains { $0.requestID == 3 } }, timeout: .seconds(5))
        #expect(disabled, "EnableTracing was never answered")
        try expectSameReplies(
            consumer.frames.filter { $0.requestID == 3 }, consumerConversation.replies(to: 3),
            as: Perfetto_Protos_EnableTracingResponse.self)
        try expectSameReplies(
            consumer.frames.filter { $0.requestID == 5 }, consumerConversation.replies(to: 5),
            as: Perfetto_Protos_DisableTracingResponse.self)
    }

    @Test func aStartupTracingProducerHasItsOwnMemoryAdoptedAsTracedDid() throws {
        // conn0: the SDK's throwaway connection, closed right after binding.
        let throwaway = try CapturedPortConversation("startup_producer_session", connection: 0)
        let first = try peer(on: host.producerHosts[0])
        for frame in throwaway.clientFrames { first.send(frame) }
        frames(first, count: throwaway.serviceFrames.count)
        first.close()

        let conversation = try CapturedPortConversation("startup_producer_session", connection: 1)
        let producer = try peer(on: host.producerHosts[0])
        // The producer's own memory, sealed as the SDK seals it, with InitializeConnection.
        let memory = try SharedMemoryBuffer.create(size: 256 * 1024, pageSize: 4096)
        producer.send(try conversation.request(1))
        producer.send(try conversation.request(2), fd: memory.fileDescriptor.rawValue)
        producer.send(try conversation.request(3))
        let received = frames(producer, count: 3)
        #expect(received.first { $0.requestID == 1 }?.msgBindServiceReply == conversation.replies(to: 1).first?.msgBindServiceReply)
        try expectSameReplies(
            received.filter { $0.requestID == 2 }, conversation.replies(to: 2),
            as: Perfetto_Protos_InitializeConnectionResponse.self)
        // setup_tracing at once, empty and without an fd: the producer keeps its own memory.
        try expectSameReplies(
            received.filter { $0.requestID == 3 }, Array(conversation.replies(to: 3).prefix(1)),
            as: Perfetto_Protos_GetAsyncCommandResponse.self)
        #expect(producer.receivedFDs.isEmpty)
        #expect(host.service.connectedProducers.first?.isSharedMemoryProvidedByProducer == true)
    }

    @Test func perfettoWritingIntoAFileGetsTracedsAnswer() throws {
        let conversation = try CapturedPortConversation("perfetto_cmd_write_into_file")
        let consumer = try peer(on: host.consumerHost)
        let file = FileDescriptors.memfd(named: "out.pftrace", content: [])
        consumer.send(try conversation.request(1))
        // EnableTracing carries the output file, as perfetto sent it; its config stops after 1 s.
        consumer.send(try conversation.request(2), fd: file.rawValue)
        let answered = loop.run(until: { consumer.poll() >= 2 }, timeout: .seconds(10))
        #expect(answered, "EnableTracing was never answered")
        try expectSameReplies(
            consumer.frames.filter { $0.requestID == 2 }, conversation.replies(to: 2),
            as: Perfetto_Protos_EnableTracingResponse.self)
        let request = try Perfetto_Protos_EnableTracingRequest(
            serializedBytes: try conversation.request(2).msgInvokeMethod.argsProto)
        let written = try TraceFile.decodePackets(FileDescriptors.content(of: file.rawValue)).map { try $0.decode() }
        let configs = written.compactMap { packet -> TraceConfig? in
            if case .traceConfig(let config)? = packet.data { return config } else { return nil }
        }
        #expect(configs == [request.traceConfig], "the file starts with the config perfetto sent")
    }

    @Test func perfettoQueryRawGetsOneCompleteServiceState() throws {
        let conversation = try CapturedPortConversation("perfetto_cmd_query")
        let consumer = try peer(on: host.consumerHost)
        for frame in conversation.clientFrames { consumer.send(frame) }
        let received = frames(consumer, count: conversation.serviceFrames.count)
        let ours = received.filter { $0.requestID == 2 }
        let theirs = conversation.replies(to: 2)
        #expect(ours.map(\.msgInvokeMethodReply.hasMore_p) == theirs.map(\.msgInvokeMethodReply.hasMore_p))
        let state = try decode(Perfetto_Protos_QueryServiceStateResponse.self, try #require(ours.last)).serviceState
        let realState = try decode(Perfetto_Protos_QueryServiceStateResponse.self, try #require(theirs.last)).serviceState
        // The same shape: what a reader of `perfetto --query` looks at is present in both.
        #expect(state.hasSupportsTracingSessions == realState.hasSupportsTracingSessions)
        #expect(state.hasNumSessions == realState.hasNumSessions)
        #expect(state.hasTracingServiceVersion == realState.hasTracingServiceVersion)
    }
}
