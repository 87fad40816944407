// A client bound to EchoService, its loop on a thread of its own. For the in-process backends
// the session also runs the host, on the same loop (they cannot reach across processes).

import Foundation
import IPCEchoService
import IPCInProcess
import IPCProtocol
import IPCUnixSocket

/// The backends `ipc-echo` can use.
enum Backend: String, CaseIterable, Sendable {
    /// epoll + POSIX sockets.
    case unix
    /// In-memory frames in this process (no kernel).
    case inprocess
    /// Direct calls in this process (no frames).
    case direct

    var isInProcess: Bool { self != .unix }

    /// The one value that picks the backend, for host and client alike.
    func value(address: String, loop: EpollEventLoop) -> IPCBackend {
        switch self {
        case .unix: return .unixSocket(address, loop: loop)
        case .inprocess: return .inProcess(address, loop: loop)
        case .direct: return .direct(address, loop: loop)
        }
    }
}

/// An `IPCClient` bound to EchoService; the proxy's async methods may be used from any task.
final class EchoSession: @unchecked Sendable {
    // @unchecked Sendable: `client` and `host` are created and closed on `loop` only; `proxy`
    // is a Sendable ServiceProxy used through its async methods.
    let loop: EpollEventLoop
    let proxy: Pfpeers_EchoServiceProxy
    let backend: Backend
    private var client: IPCClient?
    private var host: IPCHost?

    private init(loop: EpollEventLoop, backend: Backend) {
        self.loop = loop
        self.backend = backend
        proxy = Pfpeers_EchoServiceProxy()
    }

    /// Connects to `address` and waits until EchoService is bound. With an in-process
    /// `backend`, first starts an echo host at `address` on the same loop.
    static func connect(to address: String, backend: Backend = .unix) async throws -> EchoSession {
        let loop = try EpollEventLoop.startOnNewThread(name: "echo-client")
        let session = EchoSession(loop: loop, backend: backend)
        do {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                loop.execute {
                    continuation.resume(with: Result {
                        let value = backend.value(address: address, loop: loop)
                        if backend.isInProcess {
                            session.host = try IPCHost(backend: value)
                            session.host?.expose(EchoServiceImplementation())
                        }
                        let client = IPCClient(backend: value)
                        client.bind(session.proxy)
                        session.client = client
                    })
                }
            }
            try await session.proxy.waitUntilBound()
        } catch {
            session.close()
            throw error
        }
        return session
    }

    /// Closes the connection (and an in-process host) and stops the loop thread.
    func close() {
        loop.execute { [self] in
            client?.close()
            client = nil
            host?.close()
            host = nil
            loop.stop()
        }
        loop.shutdown()
    }
}
