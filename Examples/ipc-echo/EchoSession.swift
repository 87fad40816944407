// A client bound to EchoService, its loop on a thread of its own. For the in-process backends
// the session also runs the host, on the same loop (they cannot reach across processes).

import IPCEchoService
import IPCInProcess
import IPCLibuv
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif
import IPCUnixSocket

/// The backends `ipc-echo` can use.
enum Backend: String, CaseIterable, Sendable {
    /// epoll + POSIX sockets.
    case unix
    /// libuv + POSIX sockets.
    case libuv
    /// In-memory frames in this process (no kernel).
    case inprocess
    /// Direct calls in this process (no frames).
    case direct

    var isInProcess: Bool { self == .inprocess || self == .direct }

    /// A loop of the kind this backend needs, running on its own thread.
    func startLoop(name: String) throws -> any IPCEventLoop & LoopShutdown {
        switch self {
        case .libuv: return try LibuvEventLoop.startOnNewThread(name: name)
        case .unix, .inprocess, .direct: return try EpollEventLoop.startOnNewThread(name: name)
        }
    }

    /// The one value that picks the backend, for host and client alike.
    func value(address: String, loop: any IPCEventLoop) -> IPCBackend {
        switch self {
        case .unix: return .unixSocket(address, loop: loop as! EpollEventLoop)
        case .libuv: return .libuv(address, loop: loop as! LibuvEventLoop)
        case .inprocess: return .inProcess(address, loop: loop)
        case .direct: return .direct(address, loop: loop)
        }
    }
}

/// Loops `ipc-echo` starts on threads of their own and must stop.
protocol LoopShutdown {
    func shutdown()
}

extension EpollEventLoop: LoopShutdown {}
extension LibuvEventLoop: LoopShutdown {}

extension Backend {
    /// For messages.
    var label: String { rawValue }
}

/// An `IPCClient` bound to EchoService; the proxy's async methods may be used from any task.
final class EchoSession: @unchecked Sendable {
    // @unchecked Sendable: `client` and `host` are created and closed on `loop` only; `proxy`
    // is a Sendable ServiceProxy used through its async methods.
    let loop: any IPCEventLoop & LoopShutdown
    let proxy: Pfpeers_EchoServiceProxy
    let backend: Backend
    private var client: IPCClient?
    private var host: IPCHost?

    private init(loop: any IPCEventLoop & LoopShutdown, backend: Backend) {
        self.loop = loop
        self.backend = backend
        proxy = Pfpeers_EchoServiceProxy()
    }

    /// Connects to `address` and waits until EchoService is bound. With an in-process
    /// `backend`, first starts an echo host at `address` on the same loop.
    static func connect(to address: String, backend: Backend = .unix) async throws -> EchoSession {
        let loop = try backend.startLoop(name: "echo-client")
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
        }
        loop.shutdown()
    }
}
