// Fuzzes the tracing service's ProducerPort: the frames of a hostile producer and the contents
// of its shared memory together. The input is
//
//     [u16 LE n1][n1 bytes of frames][u16 LE n2][n2 bytes of frames][shared-memory bytes]
//
// The first frames are sent (a producer binds, initializes, registers data sources; the running
// session wants "pf.peer", "track_event" and "fuzz.source"), so the service creates the
// producer's shared memory and sends its fd, into which the remaining bytes are written, page
// headers and chunks alike; then the second frames are sent (CommitData, patches, flush and
// stop acknowledgements, anything). An honest producer recording into the same buffer must
// still get a packet through, before and after the connection goes (the service scrapes the
// shared memory then), and the service must forget the hostile producer.
// Seeds (Fuzz/Seeds/FuzzProducerPort): the captured producer conversations of
// Tests/TracingAPITests/Fixtures/interop, split after their five first frames (bind,
// InitializeConnection, GetAsyncCommand, two registrations), with the chunks they committed
// (Fuzz/Seeds/FuzzSharedMemory) laid out as the pages they were in (Div1, chunk 0 complete).

import IPCInProcess
import IPCProtocol
import TracingAPI
import TracingFuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProducerPort(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: start, count: count)
    var offset = 0
    /// The next `[u16 n][n bytes]` part (shorter if the input ends).
    func part() -> UnsafeRawBufferPointer {
        guard offset + 2 <= input.count else {
            offset = input.count
            return UnsafeRawBufferPointer(start: nil, count: 0)
        }
        let length = Int(input[offset]) | Int(input[offset + 1]) << 8
        let begin = offset + 2
        let end = min(input.count, begin + length)
        offset = end
        return UnsafeRawBufferPointer(rebasing: input[begin..<end])
    }
    let first = part()
    let second = part()
    let memoryBytes = UnsafeRawBufferPointer(rebasing: input[offset...])

    // The honest session also wants the data sources the hostile producer may register, so
    // it shares their buffer (global id 1, as in the captured conversation).
    let service = FuzzedService(otherSources: ["pf.peer", "track_event", "fuzz.source"])
    let peer = RawPeer()
    let connection = service.connect(to: "producer", peer: peer)
    service.send(first, on: connection)
    if let fd = peer.lastFileDescriptor?.duplicate(),
       let memory = try? SharedMemoryBuffer.map(fd, pageSize: 4096, requireSeals: false) {
        memory.base.copyMemory(from: memoryBytes.baseAddress ?? start, byteCount: min(memoryBytes.count, memory.size))
    }
    service.send(second, on: connection)
    service.checkStillServing()
    // Gone: the service scrapes what is left in its shared memory, then forgets it.
    connection.close()
    service.loop.runUntilIdle()
    service.expectForgotten()
    service.checkStillServing()
    service.tearDown()
    return 0
}
