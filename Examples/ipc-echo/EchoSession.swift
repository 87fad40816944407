// A client connection with a bound echo proxy, its loop on a thread of its own.

import Foundation
import IPCEchoService
import IPCProtocol
import IPCUnixSocket

/// An `IPCClient` bound to EchoService; the proxy's async methods may be used from any task.
final class EchoSession: @unchecked Sendable {
    // @unchecked Sendable: `client` is created and closed on `loop` only; `proxy` is a
    // Sendable ServiceProxy used through its async methods.
    let loop: EpollEventLoop
    let proxy: Pfpeers_EchoServiceProxy
    private var client: IPCClient?

    private init(loop: EpollEventLoop, proxy: Pfpeers_EchoServiceProxy) {
        self.loop = loop
        self.proxy = proxy
    }

    /// Connects to `address` and waits until EchoService is bound.
    static func connect(to address: String) async throws -> EchoSession {
        let loop = try EpollEventLoop.startOnNewThread(name: "echo-client")
        let session = EchoSession(loop: loop, proxy: Pfpeers_EchoServiceProxy())
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            loop.execute {
                let client = IPCClient(transport: UnixSocketTransport(loop: loop), connectingTo: address)
                client.bind(session.proxy)
                session.client = client
                continuation.resume()
            }
        }
        do {
            try await session.proxy.waitUntilBound()
        } catch {
            session.close()
            throw error
        }
        return session
    }

    /// Closes the connection and stops the loop thread.
    func close() {
        loop.execute { [self] in
            client?.close()
            client = nil
            loop.stop()
        }
        loop.shutdown()
    }
}
