// The reference implementation of `pfpeers.EchoService`, behaving like the C++ peer in
// ../shared/interop/echo:
// * Echo returns data and seq, the caller's pid/uid as the host saw them, and
//   received_fd_size = the size of the fd sent with the request (-1 without one);
// * want_fd attaches a memfd holding "fd-payload:" + data to the reply;
// * StreamEcho sends `count` replies (at least one) with index 0..count-1, the last with
//   has_more = false; a count over `maxStreamCount` is rejected (invalidArgument).

import CPerfettoIPCLinux
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Echo service with Deferred replies, as exposed by `ipc-echo serve`.
public final class EchoServiceImplementation: Pfpeers_EchoServiceHandler {
    /// How many clients the host reported gone.
    public private(set) var disconnectedClientCount = 0
    /// The last client the host reported gone.
    public private(set) var lastDisconnectedClient: IPCClientInfo?
    /// Echo calls received.
    public private(set) var echoCount = 0
    /// StreamEcho calls received.
    public private(set) var streamEchoCount = 0

    public init() {}

    public func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        echoCount += 1
        var response = Pfpeers_EchoReply()
        response.data = request.data
        response.seq = request.seq
        response.peerPid = context.client.pid ?? 0
        response.peerUid = Int32(bitPattern: context.client.uid ?? 0)
        response.receivedFdSize = context.takeReceivedFileDescriptor().map { Self.size(of: $0.rawValue) } ?? -1
        if request.wantFd {
            reply.resolve(response, fileDescriptor: Self.memfd(holding: Array("fd-payload:".utf8) + Array(request.data)))
        } else {
            reply.resolve(response)
        }
    }

    /// The most replies one StreamEcho sends: a client cannot make the service loop for ever.
    public static let maxStreamCount: UInt32 = 100_000

    public func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        streamEchoCount += 1
        guard request.count <= Self.maxStreamCount else {
            reply.reject(IPCError(.invalidArgument, "count \(request.count) is over the limit of \(Self.maxStreamCount)"))
            return
        }
        let count = max(1, Int(request.count))
        for index in 0..<count {
            var response = Pfpeers_EchoReply()
            response.data = request.data
            response.seq = request.seq
            response.index = UInt32(index)
            reply.resolve(response, hasMore: index < count - 1)
        }
    }

    public func clientDidDisconnect(_ client: IPCClientInfo) {
        disconnectedClientCount += 1
        lastDisconnectedClient = client
    }

    /// Size of what `fd` refers to (st_size), or -1 if fstat fails.
    public static func size(of fd: Int32) -> Int64 {
        var info = stat()
        return fstat(fd, &info) == 0 ? Int64(info.st_size) : -1
    }

    /// A close-on-exec memfd holding `bytes`, positioned at 0. `nil` if it cannot be made.
    public static func memfd(holding bytes: [UInt8], name: String = "echo-reply") -> ScopedFD? {
        let fd = CPerfettoIPC_memfd_create(name, UInt32(CPerfettoIPC_MFD_CLOEXEC))
        guard fd >= 0 else { return nil }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count else {
            close(fd)
            return nil
        }
        return ScopedFD(fd)
    }
}
