// Bytes a connection could not hand to the kernel yet, in order, each chunk with the fd that
// must travel with its first byte. Bounded: the owner drops the peer when it overflows.

import IPCProtocol

struct SendQueue {
    private struct Chunk {
        var bytes: [UInt8]
        var offset: Int
        /// Still to be attached to the next sendmsg of this chunk (nil once sent).
        var fd: ScopedFD?
    }

    private var chunks: [Chunk] = []
    private var head = 0
    private(set) var byteCount = 0

    var isEmpty: Bool { head == chunks.count }

    mutating func append(_ bytes: UnsafeRawBufferPointer, fd: ScopedFD?) {
        chunks.append(Chunk(bytes: Array(bytes), offset: 0, fd: fd))
        byteCount += bytes.count
    }

    /// Calls `write` with the front chunk's unsent bytes and fd until it would block or the
    /// queue is empty. `write` returns how many bytes went out (0 = would block).
    mutating func drain(_ write: (UnsafeRawBufferPointer, Int32?) throws(IPCError) -> Int) throws(IPCError) {
        while head < chunks.count {
            let chunk = chunks[head]
            let written = try chunk.bytes.withUnsafeBytes { all in
                Result { () throws(IPCError) in
                    try write(UnsafeRawBufferPointer(rebasing: all[chunk.offset...]), chunk.fd?.rawValue)
                }
            }.get()
            guard written > 0 else { return }
            chunks[head].fd = nil  // the kernel has its own reference now; ours closes
            chunks[head].offset += written
            byteCount -= written
            if chunks[head].offset == chunks[head].bytes.count {
                head += 1
                if head == chunks.count {
                    chunks.removeAll(keepingCapacity: true)
                    head = 0
                }
            }
        }
    }

    mutating func removeAll() {
        chunks.removeAll()
        head = 0
        byteCount = 0
    }
}
