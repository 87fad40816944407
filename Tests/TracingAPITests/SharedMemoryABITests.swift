// The shared-memory ABI as Perfetto defines it: header bytes, layouts, the chunk state machine
// on a real memfd mapping, and what a mapping received from a peer must satisfy.

import CPerfettoIPCLinux
import IPCProtocol
import TestSupport
import XCTest

@testable import TracingAPI

final class SharedMemoryABITests: XCTestCase {
    func testChunkHeaderBytesMatchPerfetto() {
        // From ../shared/interop/smb/chunks.jsonl: chunk 0 of writer 1 with 6 records, no flags.
        let captured: [UInt8] = [0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00]
        let header = captured.withUnsafeBytes { ChunkHeader(bytes: $0) }
        XCTAssertEqual(header, ChunkHeader(chunkID: 0, writerID: 1, packetCount: 6, flags: []))
        var written = [UInt8](repeating: 0, count: 8)
        let flagged = ChunkHeader(chunkID: 0x0102_0304, writerID: 0x0506, packetCount: 1023,
                                  flags: [.lastPacketContinuesOnNextChunk, .needsPatching])
        written.withUnsafeMutableBytes { flagged.write(to: $0.baseAddress!) }
        XCTAssertEqual(written, [0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0xFF, 0x1B])
        XCTAssertEqual(written.withUnsafeBytes { ChunkHeader(bytes: $0) }, flagged)
        XCTAssertNil([UInt8](repeating: 0, count: 7).withUnsafeBytes { ChunkHeader(bytes: $0) }, "too short")
    }

    func testPaddedVarintIsFourBytes() {
        XCTAssertEqual(SharedMemoryABI.paddedVarint(12), [0x8C, 0x80, 0x80, 0x00])
        XCTAssertEqual(SharedMemoryABI.paddedVarint(SharedMemoryABI.packetSizeDropPacket), [0xFF, 0xFF, 0xFF, 0x7F])
        var written = [UInt8](repeating: 0, count: 4)
        written.withUnsafeMutableBytes { SharedMemoryABI.writePaddedVarint(140, to: $0.baseAddress!) }
        XCTAssertEqual(written, [0x8C, 0x81, 0x80, 0x00])
    }

    func testChunkSizesPerLayout() {
        let sizes = PageLayout.allCases.map { SharedMemoryABI.chunkSize(pageSize: 4096, layout: $0) }
        XCTAssertEqual(sizes, [0, 4088, 2044, 1020, 584, 292])
        XCTAssertEqual(PageLayout.allCases.map(\.chunkCount), [0, 1, 2, 4, 7, 14])
        XCTAssertNil(PageLayout(bitmap: 6 << 28))
        XCTAssertNil(PageLayout(bitmap: 7 << 28))
    }

    func testServiceValidatesLayouts() {
        XCTAssertTrue(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 4096))
        XCTAssertTrue(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 32 * 1024))
        XCTAssertFalse(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 12 * 1024), "3 pages of 4 KiB")
        XCTAssertFalse(SharedMemoryBuffer.isValid(size: 256 * 1024, pageSize: 64 * 1024), "over 32 KiB")
        XCTAssertFalse(SharedMemoryBuffer.isValid(size: 10_000, pageSize: 4096))
        XCTAssertFalse(SharedMemoryBuffer.isValid(size: 64 * 1024 * 1024, pageSize: 4096), "over 32 MiB")
    }

    func testChunkStateMachineOnTheMappedPageHeader() throws {
        let buffer = try SharedMemoryBuffer.create(size: 4 * 4096, pageSize: 4096)
        XCTAssertEqual(buffer.headerBitmap(page: 0), 0)
        XCTAssertTrue(buffer.tryPartitionPage(0, layout: .divideBy4))
        XCTAssertFalse(buffer.tryPartitionPage(0, layout: .divideBy1), "already partitioned")
        XCTAssertEqual(buffer.headerBitmap(page: 0), 3 << 28)

        let header = ChunkHeader(chunkID: 7, writerID: 3)
        let (start, size) = try XCTUnwrap(buffer.tryAcquireChunkForWriting(page: 0, chunk: 2, header: header))
        XCTAssertEqual(size, 1020)
        XCTAssertEqual(start - buffer.base, 8 + 2 * 1020)
        XCTAssertNil(buffer.tryAcquireChunkForWriting(page: 0, chunk: 2, header: header), "not free any more")
        XCTAssertNil(buffer.tryAcquireChunkForReading(page: 0, chunk: 2), "not complete yet")
        XCTAssertEqual(ChunkState.of(chunk: 2, in: buffer.headerBitmap(page: 0)), .beingWritten)

        buffer.releaseChunkAsComplete(page: 0, chunk: 2)
        XCTAssertEqual(ChunkState.of(chunk: 2, in: buffer.headerBitmap(page: 0)), .complete)
        let (readStart, _) = try XCTUnwrap(buffer.tryAcquireChunkForReading(page: 0, chunk: 2))
        XCTAssertEqual(ChunkHeader(bytes: UnsafeRawBufferPointer(start: readStart, count: 8)), header)
        buffer.releaseChunkAsFree(page: 0, chunk: 2)
        XCTAssertEqual(buffer.headerBitmap(page: 0), 0, "an all-free page goes back to unpartitioned")
        XCTAssertEqual(UnsafeRawBufferPointer(start: readStart, count: 8).allSatisfy { $0 == 0 }, true,
                       "the chunk header is cleared")
    }

    func testIndexesOutsideTheLayoutAreRefused() throws {
        let buffer = try SharedMemoryBuffer.create(size: 2 * 4096, pageSize: 4096)
        XCTAssertFalse(buffer.tryPartitionPage(2, layout: .divideBy1), "outside the buffer")
        XCTAssertFalse(buffer.tryPartitionPage(-1, layout: .divideBy1))
        XCTAssertFalse(buffer.tryPartitionPage(0, layout: .notPartitioned))
        XCTAssertEqual(buffer.headerBitmap(page: 99), 0)
        XCTAssertFalse(buffer.storeHeaderBitmap(1, page: 2))
        XCTAssertTrue(buffer.tryPartitionPage(0, layout: .divideBy2))
        XCTAssertNil(buffer.tryAcquireChunkForWriting(page: 0, chunk: 2, header: ChunkHeader(chunkID: 0, writerID: 1)))
        XCTAssertNil(buffer.tryAcquireChunkForReading(page: 0, chunk: 5))
        XCTAssertNil(buffer.tryAcquireChunkForReading(page: 2, chunk: 0))
        XCTAssertNil(buffer.tryAcquireChunkForReading(page: -1, chunk: 0))
    }

    func testTheServiceMemfdIsSealedAndNamedLikePerfettos() throws {
        let buffer = try SharedMemoryBuffer.create()
        let fd = buffer.fileDescriptor.rawValue
        XCTAssertEqual(FileDescriptors.target(of: fd), "/memfd:perfetto_shmem (deleted)")
        let seals = fcntlInt(fd, CPerfettoIPC_F_GET_SEALS, 0)
        let wanted = CPerfettoIPC_F_SEAL_SHRINK | CPerfettoIPC_F_SEAL_GROW | CPerfettoIPC_F_SEAL_SEAL
        XCTAssertEqual(seals & wanted, wanted)
        XCTAssertNotEqual(ftruncate(fd, 4096), 0, "cannot be shrunk under a mapping")
        XCTAssertTrue(FileDescriptors.isCloseOnExec(fd))
    }

    func testMappingAPeersBufferRequiresSeals() throws {
        let unsealed = FileDescriptors.memfd(named: "producer_shmem", content: [UInt8](repeating: 0, count: 8192))
        XCTAssertThrowsError(try SharedMemoryBuffer.map(unsealed, pageSize: 4096, requireSeals: true)) { error in
            XCTAssertEqual((error as? TracingError)?.code, .invalidSharedMemory)
        }
        let wrongSize = FileDescriptors.memfd(named: "odd", content: [UInt8](repeating: 0, count: 5000))
        XCTAssertThrowsError(try SharedMemoryBuffer.map(wrongSize, pageSize: 4096, requireSeals: false))
    }

    func testBothMappingsOfOneMemfdSeeTheSameStates() throws {
        let service = try SharedMemoryBuffer.create(size: 4096, pageSize: 4096)
        let producer = try SharedMemoryBuffer.map(
            XCTUnwrap(service.fileDescriptor.duplicate()), pageSize: 4096, requireSeals: true)
        XCTAssertNotEqual(service.base, producer.base)
        XCTAssertTrue(producer.tryPartitionPage(0, layout: .divideBy1))
        XCTAssertNotNil(producer.tryAcquireChunkForWriting(page: 0, chunk: 0, header: ChunkHeader(chunkID: 1, writerID: 1)))
        producer.releaseChunkAsComplete(page: 0, chunk: 0)
        XCTAssertNotNil(service.tryAcquireChunkForReading(page: 0, chunk: 0))
    }
}
