// Fuzzes the tracing service's ConsumerPort: arbitrary frames from a consumer (EnableTracing
// with any config, write_into_file into a memfd the harness attaches to the first bytes,
// ReadBuffers, Flush, Detach/Attach, CloneSession of the honest session, QueryServiceState,
// ObserveEvents…), while an honest producer and consumer record beside it. Virtual time moves
// on, so the input's sessions run their timers (durations, file writes, flushes). Afterwards
// the honest pair must still record, and once the connection is gone the service must have
// forgotten it. Seeds: Fuzz/Seeds/FuzzConsumerPort, the captured consumer conversations.

import IPCInProcess
import IPCProtocol
import TracingAPI
import TracingFuzzSupport

#if canImport(Glibc)
import Glibc
#endif

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConsumerPort(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let service = FuzzedService(otherSources: [])
    let peer = RawPeer()
    let connection = service.connect(to: "consumer", peer: peer)
    // A file for write_into_file (unlinked already), in the fd slot of the first frame.
    let stream = tmpfile()
    let file = ScopedFD(stream.map { dup(fileno($0)) } ?? -1)
    if let stream { fclose(stream) }
    service.send(UnsafeRawBufferPointer(start: start, count: count), on: connection, fd: file.rawValue >= 0 ? file.rawValue : nil)
    service.loop.advanceTime(by: .seconds(2))
    service.checkStillServing()
    connection.close()
    service.loop.runUntilIdle()
    service.expectForgotten()
    service.tearDown()
    return 0
}
