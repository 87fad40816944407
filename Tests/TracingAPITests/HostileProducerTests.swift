// Hostile producers against our service on real unix sockets (TracingServiceHost on an
// EpollEventLoop): raw ProducerPort clients that hand over file descriptors that are not
// shared memory, lie in CommitData, scribble over a chunk while the service copies it,
// register ten thousand data sources, or never answer a flush or a stop. In every scenario an
// honest producer (our RemoteProducerEndpoint) records beside them and all of its packets must
// arrive, and once everybody is gone the process has exactly the descriptors it had before.

import CPerfettoIPCLinux
import Foundation
import IPCProtocol
import Synchronization
import IPCUnixSocket
import Testing
import TestSupport

@testable import TracingAPI

@Suite("Hostile producers on real sockets", .serialized)
final class HostileProducerTests: SocketTracingFixture {
    // MARK: Producer-provided shared memory

    /// F_SEAL_WRITE (linux/fcntl.h): no more writes, and no writable shared mappings.
    static let sealWrite: Int32 = 0x0008

    /// A sealed memfd of `size` bytes (sealed with `seals`).
    private static func memfd(size: Int, seals: Int32 = CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW | CPerfettoIPC_F_SEAL_SEAL) -> ScopedFD {
        let fd = ScopedFD(CPerfettoIPC_memfd_create("hostile", UInt32(CPerfettoIPC_MFD_CLOEXEC | CPerfettoIPC_MFD_ALLOW_SEALING)))
        precondition(ftruncate(fd.rawValue, off_t(size)) == 0)
        if seals != 0 { precondition(fcntlInt(fd.rawValue, CPerfettoIPC_F_ADD_SEALS, seals) == 0) }
        return fd
    }

    @Test func sharedMemoryThatIsNotASealedMemfdOfAValidSizeIsRefused() throws {
        try withoutLeaks {
            var pipeEnds: [Int32] = [-1, -1]
            precondition(pipe(&pipeEnds) == 0)
            let pipeRead = ScopedFD(pipeEnds[0])
            let pipeWrite = ScopedFD(pipeEnds[1])
            let regular = ScopedFD(open(directory.path + "/smb", O_RDWR | O_CREAT | O_CLOEXEC, 0o600))
            precondition(ftruncate(regular.rawValue, 256 * 1024) == 0)
            let (socketEnd, otherSocketEnd) = FileDescriptors.socketPair()
            let candidates: [(String, ScopedFD)] = [
                ("a pipe", pipeWrite),
                ("a regular file", regular),
                ("a socket", socketEnd),
                ("an unsealed memfd", Self.memfd(size: 256 * 1024, seals: 0)),
                ("a memfd sealed against shrinking only", Self.memfd(size: 256 * 1024, seals: CPerfettoIPC_F_SEAL_SHRINK)),
                ("a memfd sealed against resizing but open to more seals (traced refuses it too)", Self.memfd(
                    size: 256 * 1024, seals: CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW)),
                ("a sealed memfd of 0 bytes", Self.memfd(size: 0)),
                ("a sealed memfd of 1 byte", Self.memfd(size: 1)),
                ("a sealed memfd that is not a whole number of pages", Self.memfd(size: 4 * 4096 + 100)),
                ("a sparse sealed memfd of 1 GiB", Self.memfd(size: 1 << 30)),
                ("a memfd sealed against writing", Self.memfd(
                    size: 256 * 1024,
                    seals: CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW | Self.sealWrite)),
            ]
            let honest = honestProducer()
            for (what, fd) in candidates {
                var request = Perfetto_Protos_InitializeConnectionRequest()
                request.producerProvidedShmem = true
                request.sharedMemoryPageSizeHintBytes = 4096
                request.sharedMemorySizeHintBytes = 256 * 1024
                let hostile = try RawProducer(path: producerPath, loop: loop, request: request, fd: fd.rawValue)
                #expect(hostile.initialized?.usingShmemProvidedByProducer == false, "\(what) is refused")
                hostile.register("hostile.source")
                // The service makes its own memory for it when a session needs it.
                let consumer = consumer()
                consumer.endpoint.enableTracing(config(["hostile.source", "honest.source"]), outputFile: nil)
                let started = hostile.waitForStart()
                #expect(started != nil, "\(what): the producer still takes part")
                let memory = try #require(hostile.client.peer.receivedFDs.last, "\(what): setup_tracing brings memory")
                #expect(FileDescriptors.target(of: memory.rawValue).contains("memfd:perfetto_shmem"), "\(what)")
                #expect(lseek(memory.rawValue, 0, SEEK_END) == 256 * 1024, "\(what)")
                stopAndRead(consumer)
                expectComplete(consumer)
                consumer.endpoint.disconnect()
                hostile.close()
                run(until: { self.core.connectedProducers.count == 1 && self.core.sessions.isEmpty })
            }
            honest.endpoint.disconnect()
            withExtendedLifetime((pipeRead, otherSocketEnd)) {}
        }
    }

    @Test func sealedSharedMemoryCannotBeTruncatedUnderTheService() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let memory = try SharedMemoryBuffer.create(size: 64 * 1024, pageSize: 4096)
            var request = Perfetto_Protos_InitializeConnectionRequest()
            request.producerProvidedShmem = true
            request.sharedMemoryPageSizeHintBytes = 4096
            let hostile = try RawProducer(path: producerPath, loop: loop, request: request, fd: memory.fileDescriptor.rawValue)
            #expect(hostile.initialized?.usingShmemProvidedByProducer == true)
            hostile.use(memory)
            hostile.register("hostile.source")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["hostile.source", "honest.source"]), outputFile: nil)
            let buffer = try #require(hostile.waitForStart()).buffer
            // The producer would like to make the service's reads fault: the seals say no.
            #expect(ftruncate(memory.fileDescriptor.rawValue, 0) != 0 && errno == EPERM)
            #expect(ftruncate(memory.fileDescriptor.rawValue, 1 << 30) != 0 && errno == EPERM)
            hostile.place(RawChunks.chunk(writer: 1, id: 0, count: 1, records: [RawChunks.record("hostile kept")]), page: 3)
            hostile.commitAndWait([RawChunks.move(page: 3, buffer: buffer)])
            stopAndRead(consumer)
            expectComplete(consumer)
            #expect(texts(consumer, "hostile") == ["hostile kept"])
            consumer.endpoint.disconnect()
            hostile.close()
            honest.endpoint.disconnect()
        }
    }

    // MARK: CommitData

    @Test func commitDataThatLiesIsDiscardedAndTouchesNobodyElse() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let hostile = try RawProducer(path: producerPath, loop: loop)
            hostile.register("hostile.source")
            // Two sessions: the hostile producer is given the first one's buffer only.
            let victim = consumer()
            victim.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })
            let victimBuffer = honest.started[0].config.targetBuffer
            let attacked = consumer()
            attacked.endpoint.enableTracing(config(["hostile.source"]), outputFile: nil)
            let ownBuffer = try #require(hostile.waitForStart()).buffer
            #expect(ownBuffer != victimBuffer)
            // The honest producer's only writer is its first: id 1.
            let honestWriter: UInt16 = 1

            let good = RawChunks.chunk(writer: 7, id: 0, count: 1, records: [RawChunks.record("hostile well-formed")])
            hostile.place(good, page: 0)
            // Chunk 1 of page 1 is still being written (state 1), not complete.
            hostile.place(RawChunks.chunk(writer: 7, id: 1, count: 1, records: [RawChunks.record("hostile unfinished")]),
                          page: 1, state: 1)
            // Complete chunks aimed at the other session's buffer, at no buffer, and one that
            // claims the honest producer's writer and its next chunk id.
            hostile.place(RawChunks.chunk(writer: honestWriter, id: 0, count: 1, records: [RawChunks.record("honest.source forged")]), page: 2)
            hostile.place(RawChunks.chunk(writer: honestWriter, id: 1, count: 1, records: [RawChunks.record("honest.source forged")]), page: 3)
            hostile.place(RawChunks.chunk(writer: honestWriter, id: 0, count: 1, records: [RawChunks.record("hostile impostor")]), page: 4)
            var patchElsewhere = CommitDataRequest.ChunkToPatch()
            patchElsewhere.targetBuffer = victimBuffer
            patchElsewhere.writerID = UInt32(honestWriter)
            patchElsewhere.chunkID = 0
            var patch = CommitDataRequest.ChunkToPatch.Patch()
            patch.offset = 0
            patch.data = Data([0xFF, 0xFF, 0xFF, 0x7F])
            patchElsewhere.patches = [patch]
            var patchOutside = patchElsewhere
            patchOutside.targetBuffer = ownBuffer
            patchOutside.writerID = 7
            patchOutside.patches[0].offset = 1_000_000
            hostile.commitAndWait([
                RawChunks.move(page: 9_999, buffer: ownBuffer),  // no such page
                RawChunks.move(page: 0, chunk: 20, buffer: ownBuffer),  // no such chunk
                RawChunks.move(page: 0, chunk: 1, buffer: ownBuffer),  // not in this layout
                RawChunks.move(page: 1, buffer: ownBuffer),  // being written
                RawChunks.move(page: 2, buffer: victimBuffer),  // not given to this producer
                RawChunks.move(page: 3, buffer: 70_000),  // no such buffer
                RawChunks.move(page: 4, buffer: ownBuffer),  // lands in its own sequence
                RawChunks.move(page: 0, buffer: ownBuffer),
            ], patches: [patchElsewhere, patchOutside])

            stopAndRead(victim)
            expectComplete(victim)
            #expect(texts(victim, "honest.source forged").isEmpty)
            #expect(texts(victim, "hostile").isEmpty)
            stopAndRead(attacked)
            #expect(texts(attacked, "hostile").sorted() == ["hostile impostor", "hostile well-formed"])
            let hostilePackets = attacked.producerPackets()
            #expect(hostilePackets.allSatisfy { UInt32(bitPattern: $0.trustedUid) == getuid() && $0.trustedPid == getpid() })
            let stats = try #require(attacked.decodedPackets().last?.traceStats)
            #expect(stats.chunksDiscarded == 6)
            #expect(stats.patchesDiscarded == 1)
            #expect(stats.bufferStats.first?.patchesFailed == 1)
            victim.endpoint.disconnect()
            attacked.endpoint.disconnect()
            hostile.close()
            honest.endpoint.disconnect()
        }
    }

    /// Whether ThreadSanitizer instruments this process (scripts/sanitize.sh thread): it would
    /// rightly report the race the next test makes on purpose (in real life, across processes).
    static let underThreadSanitizer = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil

    @Test(.disabled(if: underThreadSanitizer, "races with the service on purpose"))
    func aChunkRewrittenWhileTheServiceCopiesItCostsAtMostItsOwnPackets() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let hostile = try RawProducer(path: producerPath, loop: loop)
            hostile.register("hostile.source")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["hostile.source", "honest.source"]), outputFile: nil)
            let buffer = try #require(hostile.waitForStart()).buffer
            let memory = try #require(hostile.sharedMemory)
            run(until: { honest.started.count == 1 })

            // Another thread of the hostile process rewrites chunk payloads and page headers
            // the whole time the service is moving them.
            let scribbler = Scribbler(base: memory.base, size: memory.size, pageSize: memory.pageSize)
            scribbler.start()
            for round in 0..<400 {
                let page = round % memory.pageCount
                let chunk = RawChunks.chunk(writer: 9, id: UInt32(round), count: 2, records: [
                    RawChunks.record("hostile \(round)"), RawChunks.record(String(repeating: "y", count: 500)),
                ])
                hostile.place(chunk, page: page)
                hostile.commit([RawChunks.move(page: page, buffer: buffer)])
                if round % 50 == 49 { hostile.commitAndWait([]) }
            }
            hostile.commitAndWait([])
            scribbler.stop()
            stopAndRead(consumer)
            // Garbage may decode as anything: the honest producer's packets are all there.
            expectComplete(consumer, strict: false)
            consumer.endpoint.disconnect()
            hostile.close()
            honest.endpoint.disconnect()
        }
    }

    @Test func aFloodOfCommitsIsHeldToItsBuffersSize() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let hostile = try RawProducer(path: producerPath, loop: loop)
            hostile.register("hostile.source")
            let flooded = consumer()
            flooded.endpoint.enableTracing(config(["hostile.source"]) { $0.buffers[0].sizeKb = 256 }, outputFile: nil)
            let buffer = try #require(hostile.waitForStart()).buffer
            let other = consumer()
            other.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })
            // 4,000 chunks of 4 KiB carried in the commits themselves: 16 MiB for 256 KiB.
            let record = RawChunks.record(String(repeating: "f", count: 4000))
            for round in 0..<160 {
                var request = CommitDataRequest()
                for index in 0..<25 {
                    var move = RawChunks.move(page: 0, buffer: buffer)
                    move.data = Data(RawChunks.chunk(writer: 3, id: UInt32(round * 25 + index), count: 1, records: [record]))
                    request.chunksToMove.append(move)
                }
                hostile.client.call("CommitData", request, dropReply: true)
            }
            hostile.sync()
            let stored = try #require(core.buffers[BufferID(buffer)])
            #expect(stored.usedBytes <= stored.capacity)
            #expect(stored.stats.chunksWritten == 4000)
            #expect(stored.stats.chunksOverwritten >= 3900)
            stopAndRead(flooded)
            #expect(texts(flooded, "ffff").count < 70, "what a 256 KiB buffer holds")
            stopAndRead(other)
            expectComplete(other)
            for consumer in [flooded, other] { consumer.endpoint.disconnect() }
            hostile.close()
            honest.endpoint.disconnect()
        }
    }

    // MARK: Registrations

    @Test func tenThousandDataSourcesKeepTheServiceAnsweringInFrameSizedChunks() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let hostile = try RawProducer(path: producerPath, loop: loop)
            var last: UInt64 = 0
            for index in 0..<10_000 {
                var request = Perfetto_Protos_RegisterDataSourceRequest()
                request.dataSourceDescriptor.name = "hostile.source." + String(repeating: "n", count: 40) + ".\(index)"
                last = hostile.client.call("RegisterDataSource", request)
            }
            #expect(hostile.client.reply(to: last, as: Perfetto_Protos_RegisterDataSourceResponse.self, seconds: 30) != nil)
            #expect(core.connectedProducers.first { $0.name == "hostile" }?.dataSources.count == 10_000)

            // Raw: every reply frame stays under the frame limit, and the chunks add up.
            let query = try RawPortClient(path: consumerPath, service: "ConsumerPort", loop: loop)
            let id = query.call("QueryServiceState", Perfetto_Protos_QueryServiceStateRequest())
            _ = query.reply(to: id, as: Perfetto_Protos_QueryServiceStateResponse.self)
            let replies = query.replies(to: id)
            #expect(replies.count > 1)
            #expect(replies.dropLast().allSatisfy { $0.msgInvokeMethodReply.hasMore_p })
            for reply in replies {
                let size = (try reply.serializedBytes() as [UInt8]).count
                #expect(size <= WireLimits.defaultReceiveCapacity - 4)
            }
            var merged: [UInt8] = []
            for reply in replies {
                let chunk = try Perfetto_Protos_QueryServiceStateResponse(serializedBytes: reply.msgInvokeMethodReply.replyProto)
                merged += try chunk.serviceState.serializedBytes()
            }
            let state = try TracingServiceState(serializedBytes: merged)
            #expect(state.dataSources.count == 10_001)

            // Through our client too, and an honest session still records everything.
            let consumer = consumer()
            var queried: TracingServiceState?
            consumer.endpoint.queryServiceState(sessionsOnly: false) { _, value in queried = value }
            run(until: { queried != nil })
            #expect(queried?.dataSources.count == 10_001)
            consumer.endpoint.enableTracing(config(["honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })
            stopAndRead(consumer)
            expectComplete(consumer)
            consumer.endpoint.disconnect()
            query.close()
            hostile.close()
            honest.endpoint.disconnect()
        }
    }

    @Test func aServiceStateLargerThanTheSendQueueBoundReachesTheConsumer() throws {
        // An outside tester's uid 65534 producer registered 200 names of 100 KB: every full
        // QueryServiceState after that, root's too, lost its connection (the whole state was
        // queued at once, past the 16 MiB send-queue bound). The same at a tenth of the scale:
        // 1.7 MB of names against a 1 MiB bound.
        var bounded = ConnectionOptions.default
        bounded.maxQueuedSendBytes = 1 << 20
        try serve(options: TracingServiceCore.Options(), consumerOptions: bounded)
        try withoutLeaks {
            let hostile = try RawProducer(path: producerPath, loop: loop, name: "hostile")
            for index in 0..<170 {
                var request = Perfetto_Protos_RegisterDataSourceRequest()
                request.dataSourceDescriptor.name = "\(index)." + String(repeating: "n", count: 10_000)
                hostile.client.call("RegisterDataSource", request, dropReply: true)
            }
            hostile.sync()
            #expect(core.connectedProducers.first { $0.name == "hostile" }?.dataSources.count == 170)
            let consumer = consumer()
            for _ in 0..<2 {
                var queried: TracingServiceState?
                var succeeded: Bool?
                consumer.endpoint.queryServiceState(sessionsOnly: false) { success, value in
                    succeeded = success
                    queried = value
                }
                run(until: { succeeded != nil })
                #expect(succeeded == true)
                #expect(queried?.dataSources.count == 170)
                #expect(queried?.dataSources.allSatisfy { $0.dsDescriptor.name.utf8.count > 10_000 } == true)
            }
            consumer.endpoint.disconnect()
            hostile.close()
        }
    }

    @Test func registrationsPastTheLimitsAreRefusedAndHugeNamesDoNotBreakQueries() throws {
        var options = TracingServiceCore.Options()
        options.maxDataSourcesPerProducer = 100
        options.maxDataSourceBytesPerProducer = 300 * 1024
        try serve(options: options)
        try withoutLeaks {
            // A name of 131,040 bytes: one frame carries it in, but its entry in the service
            // state would not fit in a reply frame of its own.
            let hugeName = String(repeating: "h", count: 131_040)
            let hostile = try RawProducer(path: producerPath, loop: loop, name: hugeName)
            #expect(hostile.register(String(repeating: "d", count: 131_040)) == nil)
            for index in 1..<100 { #expect(hostile.register("small.\(index)") == nil) }
            #expect(hostile.register("one.too.many") == "too many data sources (the limit is 100 per producer)")
            hostile.unregister("small.1")
            #expect(hostile.register(String(repeating: "e", count: 131_040)) == nil)
            hostile.unregister("small.2")
            #expect(hostile.register(String(repeating: "f", count: 131_040))?.hasPrefix("the data source descriptors take too much memory") == true)

            let consumer = consumer()
            var queried: TracingServiceState?
            consumer.endpoint.queryServiceState(sessionsOnly: false) { success, value in
                #expect(success)
                queried = value
            }
            run(until: { queried != nil })
            #expect(queried?.dataSources.count == 99)
            #expect(queried?.producers.first?.name.utf8.count == 1024, "trimmed to fit a reply")
            #expect(queried?.dataSources.contains { $0.dsDescriptor.name == String(repeating: "d", count: 1024) } == true,
                    "trimmed to fit a reply")
            #expect(queried?.dataSources.contains { $0.dsDescriptor.name.utf8.count == 131_040 } == false)
            consumer.endpoint.disconnect()
            hostile.close()
        }
    }

    // MARK: Flush and stop

    @Test func registrationsSentBackToBackApplyInOrder() throws {
        try withoutLeaks {
            let producer = try RawProducer(path: producerPath, loop: loop, name: "eager")
            var register = Perfetto_Protos_RegisterDataSourceRequest()
            register.dataSourceDescriptor.name = "eager.source"
            var unregister = Perfetto_Protos_UnregisterDataSourceRequest()
            unregister.dataSourceName = "eager.source"
            // Register, Unregister, Register, without waiting for a reply between them.
            var update = Perfetto_Protos_UpdateDataSourceRequest()
            update.dataSourceDescriptor.name = "eager.source"
            update.dataSourceDescriptor.willNotifyOnStop = true
            let first = producer.client.call("RegisterDataSource", register)
            _ = producer.client.call("UnregisterDataSource", unregister)
            let last = producer.client.call("RegisterDataSource", register)
            let updated = producer.client.call("UpdateDataSource", update)
            let replies = [first, last].map {
                producer.client.reply(to: $0, as: Perfetto_Protos_RegisterDataSourceResponse.self)
            }
            #expect(replies.map { $0?.error } == ["", ""])
            #expect(producer.client.reply(to: updated, as: Perfetto_Protos_UpdateDataSourceResponse.self) != nil)
            producer.sync()
            let descriptor = core.connectedProducers.first { $0.name == "eager" }?.dataSources["eager.source"]
            #expect(descriptor != nil, "the last Register counts")
            #expect(descriptor?.willNotifyOnStop == true, "and the Update after it")
            producer.close()
        }
    }

    @Test func registeringAndUnregisteringInALoopLeavesNoInstancesBehind() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let churner = try RawProducer(path: producerPath, loop: loop, name: "churner")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["churn.source", "honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })
            let session = try #require(core.sessions.values.first)
            for round in 0..<300 {
                // Half of them would wait for a stop acknowledgement this producer never sends.
                churner.register("churn.source", willNotifyOnStop: round % 2 == 0)
                churner.unregister("churn.source")
            }
            #expect(session.instances.count == 1, "the unregistered instances are gone")
            #expect(session.instances.first?.name == "honest.source")
            stopAndRead(consumer)
            #expect(consumer.disabledErrors == [""])
            expectComplete(consumer)
            consumer.endpoint.disconnect()
            churner.close()
            honest.endpoint.disconnect()
        }
    }

    @Test func aFlushIsAnsweredAtOnceForAProducerThatUnregisteredThenLeft() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let leaving = try RawProducer(path: producerPath, loop: loop, name: "leaving")
            leaving.register("leaving.source")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["leaving.source", "honest.source"]), outputFile: nil)
            #expect(leaving.waitForStart() != nil)
            run(until: { honest.started.count == 1 })
            var flushed: Bool?
            consumer.endpoint.flush(timeoutMs: 60_000, flags: FlushFlags()) { flushed = $0 }
            run(until: { leaving.commands.contains { $0.isFlush } }, "the producer was never asked to flush")
            // It does not answer; its data source goes, then it goes.
            leaving.unregister("leaving.source")
            leaving.close()
            run(seconds: 10, until: { flushed != nil }, "the flush waited for a producer that left")
            // Failed, as in traced (what the producer had not committed may be missing), but at
            // once rather than at the timeout.
            #expect(flushed == false)
            stopAndRead(consumer)
            expectComplete(consumer)
            consumer.endpoint.disconnect()
            honest.endpoint.disconnect()
        }
    }

    @Test func aProducerThatNeverAsksForItsCommandsMakesTheServiceHoldNothing() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let deaf = try RawProducer(path: producerPath, loop: loop, asksForCommands: false)
            deaf.register("deaf.source")
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["deaf.source", "honest.source"]), outputFile: nil)
            run(until: { honest.started.count == 1 })
            // Each flush makes a command for the deaf producer; it ends by its timeout.
            let flushes = 300
            var ended = 0
            for _ in 0..<flushes { consumer.endpoint.flush(timeoutMs: 1, flags: FlushFlags()) { _ in ended += 1 } }
            run(seconds: 30, until: { ended == flushes }, "the flushes never ended")
            let backlogs = host.producerPorts[0].commandBacklogs
            // Only its setup_tracing waits (with the shared memory); the rest were dropped.
            #expect(backlogs.map(\.queued).max() == 1)
            #expect(backlogs.map(\.dropped).max() ?? 0 >= flushes)
            stopAndRead(consumer)
            expectComplete(consumer)
            consumer.endpoint.disconnect()
            deaf.close()
            honest.endpoint.disconnect()
        }
    }

    @Test func flushesAndStopsThatAreNeverAcknowledgedEndByTheirTimeouts() throws {
        try withoutLeaks {
            let honest = honestProducer()
            let mute = try RawProducer(path: producerPath, loop: loop)
            mute.register("mute.source", willNotifyOnStop: true)
            let consumer = consumer()
            consumer.endpoint.enableTracing(config(["mute.source", "honest.source"]) {
                $0.dataSourceStopTimeoutMs = 300
            }, outputFile: nil)
            #expect(mute.waitForStart() != nil)
            run(until: { honest.started.count == 1 })

            var flushed: Bool?
            consumer.endpoint.flush(timeoutMs: 200, flags: FlushFlags()) { flushed = $0 }
            run(until: { flushed != nil }, "the flush never ended")
            #expect(flushed == false, "a producer did not answer: the flush fails by its timeout")
            #expect(mute.commands.contains { $0.isFlush }, "the mute producer was asked")
            #expect(honest.flushRequests.count == 1)

            stopAndRead(consumer)
            #expect(consumer.disabledErrors == [""], "tracing ends by the stop timeout")
            #expect(mute.commands.contains { $0.isStopDataSource })
            expectComplete(consumer)
            consumer.endpoint.disconnect()
            mute.close()
            honest.endpoint.disconnect()
        }
    }
}

/// A thread that rewrites random bytes of a shared-memory buffer until stopped: chunk bytes
/// with plain stores, page headers with atomic ones (the service CASes those).
final class Scribbler: Sendable {
    private let base: Int
    private let size: Int
    private let pageSize: Int
    private let running = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(base: UnsafeMutableRawPointer, size: Int, pageSize: Int) {
        self.base = Int(bitPattern: base)
        self.size = size
        self.pageSize = pageSize
    }

    func start() {
        running.store(true, ordering: .releasing)
        Thread.detachNewThread { [self] in
            var generator = SystemRandomNumberGenerator()
            let pointer = UnsafeMutableRawPointer(bitPattern: base)!
            while running.load(ordering: .acquiring) {
                for _ in 0..<256 {
                    let offset = Int.random(in: 0..<size, using: &generator)
                    if offset % pageSize < SharedMemoryABI.pageHeaderSize {
                        let page = (pointer + offset - offset % pageSize).assumingMemoryBound(to: UInt32.self)
                        CPerfettoIPC_atomicStore32(page, UInt32.random(in: 0...UInt32.max, using: &generator))
                    } else {
                        pointer.storeBytes(of: UInt8.random(in: 0...255, using: &generator), toByteOffset: offset, as: UInt8.self)
                    }
                }
            }
            finished.signal()
        }
    }

    func stop() {
        running.store(false, ordering: .releasing)
        finished.wait()
    }
}
