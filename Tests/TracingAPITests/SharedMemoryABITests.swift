// The shared-memory ABI as Perfetto defines it: header bytes, layouts, the chunk state machine
// on a real memfd mapping, and what a mapping received from a peer must satisfy.

import CPerfettoIPCLinux
import IPCProtocol
import TestSupport
import Foundation
import Testing

@testable import TracingAPI

@Suite("Shared-memory ABI", .serialized)
struct SharedMemoryABITests {
    @Test func chunkHeaderBytesMatchPerfetto() {
        // From ../shared/interop/smb/chunks.jsonl: chunk 0 of writer 1 with 6 records, no flags.
        let captured: [UInt8] = [0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00]
        let header = captured.withUnsafeBytes { ChunkHeader(bytes: $0) }
        #expect(header == ChunkHeader(chunkID: 0, writerID: 1, packetCount: 6, flags: []))
        var written = [UInt8](repeating: 0, count: 8)
        let flagged = ChunkHeader(chunkID: 0x0102_0304, writerID: 0x0506, packetCount: 1023,
                                  flags: [.lastPacketContinuesOnNextChunk, .needsPatching])
        written.withUnsafeMutableBytes { flagged.write(to: $0.baseAddress!) }
        #expect(written == [0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0xFF, 0x1B])
        #expect(written.withUnsafeBytes { ChunkHeader(bytes: $0) } == flagged)
        #expect([UInt8](repeating: 0, count: 7).withUnsafeBytes { ChunkHeader(bytes: $0) } == nil, "too short")
    }

    @Test func paddedVarintIsFourBytes() {
        #expect(SharedMemoryABI.paddedVarint(12) == [0x8C, 0x80, 0x80, 0x00])
        #expect(SharedMemoryABI.paddedVarint(SharedMemoryABI.packetSizeDropPacket) == [0xFF, 0xFF, 0xFF, 0x7F])
        var written = [UInt8](repeating: 0, count: 4)
        written.withUnsafeMutableBytes { SharedMemoryABI.writePaddedVarint(140, to: $0.baseAddress!) }
        #expect(written == [0x8C, 0x81, 0x80, 0x00])
    }

    @Test func chunkSizesPerLayout() {
        let sizes = PageLayout.allCases.map { SharedMemoryABI.chunkSize(pageSize: 4096, layout: $0) }
        #expect(sizes == [0, 4088, 2044, 1020, 584, 292])
        #expect(PageLayout.allCases.map(\.chunkCount) == [0, 1, 2, 4, 7, 14])
        #expect(PageLayout(bitmap: 6 << 28) == nil)
        #expect(PageLayout(bitmap: 7 << 28) == nil)
    }

    @Test func serviceValidatesLayouts() {
        #expect(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 4096))
        #expect(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 32 * 1024))
        #expect(!(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 12 * 1024)), "3 pages of 4 KiB")
        #expect(!(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 64 * 1024)), "over 32 KiB")
        #expect(!SharedMemoryBuffer.isValid(size: 10_000, pageSize: 4096))
        #expect(!(SharedMemoryBuffer.isValid(size: 64 * 1024 * 1024, pageSize: 4096)), "over 32 MiB")
    }

    @Test func chunkStateMachineOnTheMappedPageHeader() throws {
        let buffer = try SharedMemoryBuffer.create(size: 4 * 4096, pageSize: 4096)
        #expect(buffer.headerBitmap(page: 0) == 0)
        #expect(buffer.tryPartitionPage(0, layout: .divideBy4))
        #expect(!buffer.tryPartitionPage(0, layout: .divideBy1), "already partitioned")
        #expect(buffer.headerBitmap(page: 0) == (3 << 28))

        let header = ChunkHeader(chunkID: 7, writerID: 3)
        let (start, size) = try #require(buffer.tryAcquireChunkForWriting(page: 0, chunk: 2, header: header))
        #expect(size == 1020)
        #expect((start - buffer.base) == (8 + 2 * 1020))
        #expect(buffer.tryAcquireChunkForWriting(page: 0, chunk: 2, header: header) == nil, "not free any more")
        #expect(buffer.tryAcquireChunkForReading(page: 0, chunk: 2) == nil, "not complete yet")
        #expect(ChunkState.of(chunk: 2, in: buffer.headerBitmap(page: 0)) == .beingWritten)

        buffer.releaseChunkAsComplete(page: 0, chunk: 2)
        #expect(ChunkState.of(chunk: 2, in: buffer.headerBitmap(page: 0)) == .complete)
        let (readStart, _) = try #require(buffer.tryAcquireChunkForReading(page: 0, chunk: 2))
        #expect(ChunkHeader(bytes: UnsafeRawBufferPointer(start: readStart, count: 8)) == header)
        buffer.releaseChunkAsFree(page: 0, chunk: 2)
        #expect(buffer.headerBitmap(page: 0) == 0, "an all-free page goes back to unpartitioned")
        #expect(UnsafeRawBufferPointer(start: readStart, count: 8).allSatisfy { $0 == 0 }, "the chunk header is cleared")
    }

    @Test func indexesOutsideTheLayoutAreRefused() throws {
        let buffer = try SharedMemoryBuffer.create(size: 2 * 4096, pageSize: 4096)
        #expect(!buffer.tryPartitionPage(2, layout: .divideBy1), "outside the buffer")
        #expect(!buffer.tryPartitionPage(-1, layout: .divideBy1))
        #expect(!buffer.tryPartitionPage(0, layout: .notPartitioned))
        #expect(buffer.headerBitmap(page: 99) == 0)
        #expect(!buffer.storeHeaderBitmap(1, page: 2))
        #expect(buffer.tryPartitionPage(0, layout: .divideBy2))
        #expect(buffer.tryAcquireChunkForWriting(page: 0, chunk: 2, header: ChunkHeader(chunkID: 0, writerID: 1)) == nil)
        #expect(buffer.tryAcquireChunkForReading(page: 0, chunk: 5) == nil)
        #expect(buffer.tryAcquireChunkForReading(page: 2, chunk: 0) == nil)
        #expect(buffer.tryAcquireChunkForReading(page: -1, chunk: 0) == nil)
    }

    @Test func theServiceMemfdIsSealedAndNamedLikePerfettos() throws {
        let buffer = try SharedMemoryBuffer.create()
        let fd = buffer.fileDescriptor.rawValue
        #expect(FileDescriptors.target(of: fd) == "/memfd:perfetto_shmem (deleted)")
        let seals = fcntlInt(fd, CPerfettoIPC_F_GET_SEALS, 0)
        let wanted = CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW | CPerfettoIPC_F_SEAL_SEAL
        #expect(seals & wanted == wanted)
        #expect(ftruncate(fd, 4096) != 0, "cannot be shrunk under a mapping")
        #expect(FileDescriptors.isCloseOnExec(fd))
    }

    @Test func mappingAPeersBufferRequiresSeals() throws {
        let unsealed = FileDescriptors.memfd(named: "producer_shmem", content: [UInt8](repeating: 0, count: 8192))
        let error = #expect(throws: TracingError.self) {
            try SharedMemoryBuffer.map(unsealed, pageSize: 4096, requireSeals: true)
        }
        #expect(error?.code == .invalidSharedMemory)
        let wrongSize = FileDescriptors.memfd(named: "odd", content: [UInt8](repeating: 0, count: 5000))
        #expect(throws: TracingError.self) { try SharedMemoryBuffer.map(wrongSize, pageSize: 4096, requireSeals: false) }
    }

    @Test func bothMappingsOfOneMemfdSeeTheSameStates() throws {
        let service = try SharedMemoryBuffer.create(size: 4096, pageSize: 4096)
        let producer = try SharedMemoryBuffer.map(
            #require(service.fileDescriptor.duplicate()), pageSize: 4096, requireSeals: true)
        #expect(service.base != producer.base)
        #expect(producer.tryPartitionPage(0, layout: .divideBy1))
        #expect(producer.tryAcquireChunkForWriting(page: 0, chunk: 0, header: ChunkHeader(chunkID: 1, writerID: 1)) != nil)
        producer.releaseChunkAsComplete(page: 0, chunk: 0)
        #expect(service.tryAcquireChunkForReading(page: 0, chunk: 0) != nil)
    }
}
