// `ipc-echo demo`: everything on a real socket, in one process, then cleaned up.

import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import IPCEchoService
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif
import IPCUnixSocket

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve on a real socket in a fresh temporary directory, make a few calls and a short bench, clean up.")

    @Option(help: "Timed calls in the short bench.") var iterations: Int = 5_000
    @Option(help: "Backend: unix (a real socket, epoll), libuv (a real socket, libuv), inprocess (in-memory frames) or direct (no frames).")
    var backend: Backend = .unix

    func run() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let address = backend.isInProcess ? "ipc-echo-demo" : directory + "/echo.sock"

        // The host: on its own loop thread for a real socket; in-process hosts share the
        // client's loop (EchoSession starts them).
        let hostLoop = try backend.startLoop(name: "echo-host")
        defer { hostLoop.shutdown() }
        let hostBox = HostBox()
        if !backend.isInProcess {
            let backend = self.backend
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                hostLoop.execute {
                    continuation.resume(with: Result {
                        let host = try IPCHost(backend: backend.value(address: address, loop: hostLoop))
                        host.expose(EchoServiceImplementation())
                        hostBox.host = host
                    })
                }
            }
        }
        defer { hostLoop.execute { hostBox.host?.close(); hostBox.host = nil } }
        say("host: serving EchoService at \(address) [backend: \(backend.rawValue)]")

        let session = try await EchoSession.connect(to: address, backend: backend)
        defer { session.close() }
        say("client: connected and bound EchoService")

        // Unary.
        say("\n> Echo(data: \"hello\", seq: 1)")
        say(describe(try await session.proxy.echo(request("hello", seq: 1))))

        // A file descriptor from the host.
        say("\n> Echo(data: \"fd-please\", want_fd: true)")
        var wantFD = request("fd-please", seq: 2)
        wantFD.wantFd = true
        let withFD = try await session.proxy.echoResponse(wantFD)
        say(describe(withFD.message))
        if let fd = withFD.fileDescriptor { say(describeFD(fd)) }

        // A file descriptor to the host.
        let filePath = directory + "/sent-file.txt"
        try Data("twenty-two bytes here\n".utf8).write(to: URL(fileURLWithPath: filePath))
        let opened = open(filePath, O_RDONLY | O_CLOEXEC)
        guard opened >= 0 else { throw ValidationError("cannot open \(filePath)") }
        let file = ScopedFD(opened)
        say("\n> Echo(data: \"with-client-fd\") + fd of \(filePath)")
        say(describe(try await session.proxy.echo(request("with-client-fd", seq: 3), fd: file.rawValue)))
        file.close()

        // Streaming.
        say("\n> StreamEcho(data: \"stream\", count: 3)")
        var streaming = request("stream", seq: 4)
        streaming.count = 3
        for try await reply in session.proxy.streamEcho(streaming) { say(describe(reply)) }

        // A short bench against the raw floor.
        say("\n> bench: \(iterations) sequential 16-byte echoes [\(backend.rawValue)] vs a plain socket ping-pong")
        try runEchoBench(session: session, iterations: iterations, payload: 16, withFD: false, compareRaw: true)
        say("\ndone: \(backend.isInProcess ? "in-process host closed" : "socket and temporary directory removed")")
    }

    private func request(_ text: String, seq: UInt32) -> Pfpeers_EchoRequest {
        var request = Pfpeers_EchoRequest()
        request.data = Data(text.utf8)
        request.seq = seq
        return request
    }

    private func makeTemporaryDirectory() throws -> String {
        var template = Array(((getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp") + "/ipc-echo-demo-XXXXXX").utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw IPCError.systemCall("mkdtemp", errno: errno)
        }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Holds the host; touched only on the host's loop.
private final class HostBox: @unchecked Sendable {
    var host: IPCHost?
}
