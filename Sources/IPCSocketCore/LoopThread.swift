// Starting a loop on a thread of its own, shared by the epoll and libuv loops.

import CPerfettoIPCLinux
import Glibc
import IPCProtocol
import Synchronization

/// Runs `body` on a new thread named `name` (at most 15 bytes are kept) and returns once the
/// body has called `ready`: a loop calls it after taking ownership of itself, so `inEventLoop`
/// is right for anyone who calls in as soon as this returns.
///
/// - Throws: ``IPCError`` if the thread cannot be created.
package func startLoopThread(
    name: String, _ body: @escaping (_ ready: () -> Void) -> Void
) throws(IPCError) -> pthread_t {
    let start = LoopThreadStart(name: String(name.utf8.prefix(15)) ?? "perfetto-ipc", body: body)
    let retained = Unmanaged.passRetained(start)
    var handle = pthread_t()
    let rc = pthread_create(&handle, nil, { raw in
        let start = Unmanaged<LoopThreadStart>.fromOpaque(raw!).takeRetainedValue()
        CPerfettoIPC_setThreadName(start.name)
        start.body { start.isReady.store(true, ordering: .releasing) }
        return nil
    }, retained.toOpaque())
    guard rc == 0 else {
        retained.release()
        throw IPCError.systemCall("pthread_create", errno: rc)
    }
    while !start.isReady.load(ordering: .acquiring) { sched_yield() }
    return handle
}

private final class LoopThreadStart: Sendable {
    let name: String
    // Sendable in practice: called once, on the new thread only.
    nonisolated(unsafe) let body: (_ ready: () -> Void) -> Void
    let isReady = Atomic<Bool>(false)

    init(name: String, body: @escaping (_ ready: () -> Void) -> Void) {
        self.name = name
        self.body = body
    }
}
