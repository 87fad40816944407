// A client of ProducerPort or ConsumerPort that speaks raw frames on a real unix socket: it
// can say what no well-behaved client says (lying CommitData, fds that are not shared memory,
// thousands of registrations, never reading its socket), and lets the test read every frame
// the service sends back. It runs on the test's thread beside an EpollEventLoop that serves
// the service, and pumps that loop whenever it waits.

import CPerfettoIPCLinux
import Foundation
import IPCProtocol
import IPCUnixSocket
import SwiftProtobuf
import Testing
import TestSupport

@testable import TracingAPI

final class RawPortClient {
    let peer: RawFramePeer
    let loop: EpollEventLoop
    private(set) var serviceID: UInt32 = 0
    private(set) var methods: [String: UInt32] = [:]
    private var nextRequestID: UInt64 = 1

    /// Connects to `path` and binds `service` ("ProducerPort", "ConsumerPort").
    convenience init(path: String, service: String, loop: EpollEventLoop, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try self.init(
            socket: FileDescriptors.connectedUnixSocket(path: path), service: service, loop: loop,
            sourceLocation: sourceLocation)
    }

    /// Binds `service` on a connected `socket` (unix or TCP); `beforeBind` frames go first.
    init(
        socket: ScopedFD, service: String, loop: EpollEventLoop, beforeBind: [IPCFrame] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        self.loop = loop
        peer = RawFramePeer(socket: socket)
        for frame in beforeBind { peer.send(frame) }
        // A large send to a host on this very thread: let the loop drain the socket meanwhile.
        peer.pumpWhileBlocked = { [weak peer] in
            _ = loop.run(until: { false }, timeout: .milliseconds(1))
            peer?.poll()
        }
        let requestID = nextRequest()
        peer.send(TestFrames.bind(service, requestID: requestID))
        let reply = try #require(waitForFrame({ $0.requestID == requestID }, sourceLocation: sourceLocation))
        try #require(reply.msgBindServiceReply.success, sourceLocation: sourceLocation)
        serviceID = reply.msgBindServiceReply.serviceID
        for method in reply.msgBindServiceReply.methods { methods[method.name] = method.id }
    }

    private func nextRequest() -> UInt64 {
        defer { nextRequestID += 1 }
        return nextRequestID
    }

    /// Invokes `method` with `arguments` (and `fd`); returns the request id.
    @discardableResult
    func call(_ method: String, _ arguments: some SwiftProtobuf.Message, fd: Int32? = nil, dropReply: Bool = false) -> UInt64 {
        let requestID = nextRequest()
        let bytes: [UInt8] = (try? arguments.serializedBytes()) ?? []
        peer.send(
            TestFrames.invoke(
                serviceID: serviceID, methodID: methods[method] ?? 0, arguments: Data(bytes), requestID: requestID,
                dropReply: dropReply),
            fd: fd)
        return requestID
    }

    /// Drives the loop (and reads the socket) until `condition` holds, at most `seconds`.
    @discardableResult
    func run(seconds: Int = 5, until condition: () -> Bool) -> Bool {
        loop.run(until: {
            peer.poll()
            return condition()
        }, timeout: .seconds(seconds))
    }

    /// The first frame received so far that matches, waiting for it up to 5 s.
    func waitForFrame(
        _ matches: (IPCFrame) -> Bool, seconds: Int = 5, sourceLocation: SourceLocation = #_sourceLocation
    ) -> IPCFrame? {
        let found = run(seconds: seconds) { peer.frames.contains(where: matches) }
        #expect(found, "the service never sent the frame waited for", sourceLocation: sourceLocation)
        return peer.frames.first(where: matches)
    }

    /// Replies to `requestID` received so far.
    func replies(to requestID: UInt64) -> [IPCFrame] {
        peer.poll()
        return peer.frames.filter { $0.requestID == requestID && $0.isInvokeMethodReply }
    }

    /// Waits for the (final) reply to `requestID` and decodes it; nil if it was a rejection.
    func reply<M: SwiftProtobuf.Message>(
        to requestID: UInt64, as type: M.Type, seconds: Int = 5, sourceLocation: SourceLocation = #_sourceLocation
    ) -> M? {
        guard let frame = waitForFrame({
            $0.requestID == requestID && $0.isInvokeMethodReply && !$0.msgInvokeMethodReply.hasMore_p
        }, seconds: seconds, sourceLocation: sourceLocation), frame.msgInvokeMethodReply.success else { return nil }
        return try? M(serializedBytes: frame.msgInvokeMethodReply.replyProto)
    }

    /// Sends SetPeerIdentity: who the peer says it is (a unix-socket host must not listen).
    func claim(uid: Int32, pid: Int32) {
        var frame = IPCFrame()
        frame.setPeerIdentity.uid = uid
        frame.setPeerIdentity.pid = pid
        peer.send(frame)
    }

    func close() { peer.close() }
}

/// A hostile producer: a raw ProducerPort client with helpers for the usual requests.
final class RawProducer {
    let client: RawPortClient
    private var commandsRequest: UInt64 = 0
    /// The service's shared memory, once `setup_tracing` brought it (mapped here, as a producer would).
    private(set) var sharedMemory: SharedMemoryBuffer?

    /// The service's answer to InitializeConnection.
    private(set) var initialized: Perfetto_Protos_InitializeConnectionResponse?

    /// Connects, initializes (with `fd` beside `request`, for producer-provided memory) and
    /// asks for the command stream.
    convenience init(
        path: String, loop: EpollEventLoop, name: String = "hostile",
        request: Perfetto_Protos_InitializeConnectionRequest? = nil, fd: Int32? = nil,
        claimedIdentity: (uid: Int32, pid: Int32)? = nil, asksForCommands: Bool = true
    ) throws {
        self.init(
            client: try RawPortClient(path: path, service: "ProducerPort", loop: loop), name: name, request: request,
            fd: fd, claimedIdentity: claimedIdentity, asksForCommands: asksForCommands)
    }

    /// The same on a client already bound to ProducerPort (e.g. over TCP).
    init(
        client: RawPortClient, name: String = "hostile", request: Perfetto_Protos_InitializeConnectionRequest? = nil,
        fd: Int32? = nil, claimedIdentity: (uid: Int32, pid: Int32)? = nil, asksForCommands: Bool = true
    ) {
        self.client = client
        if let claimedIdentity { client.claim(uid: claimedIdentity.uid, pid: claimedIdentity.pid) }
        var initialize = request ?? Perfetto_Protos_InitializeConnectionRequest()
        if !initialize.hasProducerName { initialize.producerName = name }
        let id = client.call("InitializeConnection", initialize, fd: fd)
        initialized = client.reply(to: id, as: Perfetto_Protos_InitializeConnectionResponse.self)
        if asksForCommands { commandsRequest = client.call("GetAsyncCommand", Perfetto_Protos_GetAsyncCommandRequest()) }
    }

    /// Uses `memory` (the producer's own, which the service adopted) as the shared memory.
    func use(_ memory: SharedMemoryBuffer) { sharedMemory = memory }

    /// Registers a data source and waits for the answer; returns the response's error, if any.
    @discardableResult
    func register(_ name: String, willNotifyOnStop: Bool = false) -> String? {
        var request = Perfetto_Protos_RegisterDataSourceRequest()
        request.dataSourceDescriptor.name = name
        if willNotifyOnStop { request.dataSourceDescriptor.willNotifyOnStop = true }
        let id = client.call("RegisterDataSource", request)
        let response = client.reply(to: id, as: Perfetto_Protos_RegisterDataSourceResponse.self)
        return response?.hasError == true ? response?.error : nil
    }

    /// Withdraws a data source, then waits until the service has applied it (a Sync after it).
    func unregister(_ name: String) {
        var request = Perfetto_Protos_UnregisterDataSourceRequest()
        request.dataSourceName = name
        client.call("UnregisterDataSource", request, dropReply: true)
        sync()
    }

    /// A Sync round trip: everything sent before has been applied when it returns.
    func sync() {
        let id = client.call("Sync", Perfetto_Protos_SyncRequest())
        _ = client.reply(to: id, as: Perfetto_Protos_SyncResponse.self)
    }

    /// Commands received on the GetAsyncCommand stream so far, mapping the shared memory when
    /// `setup_tracing` brings it.
    var commands: [Perfetto_Protos_GetAsyncCommandResponse] {
        client.replies(to: commandsRequest).compactMap {
            try? Perfetto_Protos_GetAsyncCommandResponse(serializedBytes: $0.msgInvokeMethodReply.replyProto)
        }
    }

    /// The instance the service started, once it did: (instance id, global target buffer).
    func waitForStart(sourceLocation: SourceLocation = #_sourceLocation) -> (id: UInt64, buffer: UInt32)? {
        guard client.run(until: { commands.contains { $0.isStartDataSource } }) else {
            Issue.record("the data source was never started", sourceLocation: sourceLocation)
            return nil
        }
        if sharedMemory == nil, let fd = client.peer.receivedFDs.last, let duplicate = fd.duplicate() {
            sharedMemory = try? SharedMemoryBuffer.map(duplicate, pageSize: 4096, requireSeals: false)
        }
        let start = commands.last { $0.isStartDataSource }!.startDataSource
        return (start.newInstanceID, start.config.targetBuffer)
    }

    /// Writes `bytes` as chunk `chunk` of `page` (laid out `layout`) and marks it `state`.
    func place(_ bytes: [UInt8], page: Int, chunk: Int = 0, layout: PageLayout = .divideBy1, state: UInt32 = 3) {
        guard let memory = sharedMemory else { return }
        let pageStart = memory.base + page * memory.pageSize
        let size = SharedMemoryABI.chunkSize(pageSize: memory.pageSize, layout: layout)
        let start = pageStart + SharedMemoryABI.pageHeaderSize + chunk * size
        memset(start, 0, size)
        bytes.prefix(size).withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        memory.storeHeaderBitmap((layout.rawValue << 28) | (state << (UInt32(chunk) * 2)), page: page)
    }

    /// Sends CommitData (drop_reply, as producers do); with `flushRequestID`, acknowledges a flush.
    func commit(
        _ moves: [CommitDataRequest.ChunksToMove], patches: [CommitDataRequest.ChunkToPatch] = [],
        flushRequestID: UInt64? = nil
    ) {
        var request = CommitDataRequest()
        request.chunksToMove = moves
        request.chunksToPatch = patches
        if let flushRequestID { request.flushRequestID = flushRequestID }
        client.call("CommitData", request, dropReply: true)
    }

    /// Sends CommitData and waits for its reply: everything before it has been applied.
    func commitAndWait(_ moves: [CommitDataRequest.ChunksToMove], patches: [CommitDataRequest.ChunkToPatch] = []) {
        var request = CommitDataRequest()
        request.chunksToMove = moves
        request.chunksToPatch = patches
        let id = client.call("CommitData", request)
        _ = client.reply(to: id, as: Perfetto_Protos_CommitDataResponse.self)
    }

    func close() { client.close() }
}

enum RawChunks {
    static func move(page: Int, chunk: Int = 0, buffer: UInt32) -> CommitDataRequest.ChunksToMove {
        var move = CommitDataRequest.ChunksToMove()
        move.page = UInt32(truncatingIfNeeded: page)
        move.chunk = UInt32(truncatingIfNeeded: chunk)
        move.targetBuffer = buffer
        return move
    }

    /// A chunk: its header, then records (each already framed with its size).
    static func chunk(writer: UInt16, id: UInt32, count: UInt16, flags: ChunkFlags = [], records: [[UInt8]]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 8)
        bytes.withUnsafeMutableBytes {
            ChunkHeader(chunkID: id, writerID: writer, packetCount: count, flags: flags).write(to: $0.baseAddress!)
        }
        for record in records { bytes += record }
        return bytes
    }

    /// A record holding a for_testing packet with `text`.
    static func record(_ text: String) -> [UInt8] {
        var testEvent: [UInt8] = []
        ProtoEncoding.appendTag(1, .lengthDelimited, to: &testEvent)
        ProtoEncoding.appendVarint(UInt64(text.utf8.count), to: &testEvent)
        testEvent += Array(text.utf8)
        var packet: [UInt8] = []
        ProtoEncoding.appendTag(900, .lengthDelimited, to: &packet)
        ProtoEncoding.appendVarint(UInt64(testEvent.count), to: &packet)
        packet += testEvent
        return SharedMemoryABI.paddedVarint(UInt32(packet.count)) + packet
    }
}

extension IPCFrame {
    var isInvokeMethodReply: Bool {
        if case .msgInvokeMethodReply? = msg { true } else { false }
    }
}

extension Perfetto_Protos_GetAsyncCommandResponse {
    var isStartDataSource: Bool { if case .startDataSource? = cmd { true } else { false } }
    var isStopDataSource: Bool { if case .stopDataSource? = cmd { true } else { false } }
    var isFlush: Bool { if case .flush? = cmd { true } else { false } }
}
