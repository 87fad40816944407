// Processes that die mid-conversation, and connections that close with descriptors in flight.
// The peers that die are real `ipc-echo` processes (built with the tests), killed with SIGKILL.

import Foundation
import Glibc
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import Testing
import TestSupport

/// The `ipc-echo` binary next to the test bundle, if it was built.
let ipcEchoBinary: URL? = {
    let candidate = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("ipc-echo")
    return FileManager.default.isExecutableFile(atPath: candidate.path) ? candidate : nil
}()

/// Runs `ipc-echo --help` once so Foundation's process machinery (its own threads and
/// descriptors) exists before a test counts descriptors.
func warmUpProcessSpawning() throws {
    try launchIPCEcho(["--help"]).waitUntilExit()
}

func launchIPCEcho(_ arguments: [String], output: Pipe? = nil) throws -> Process {
    let process = Process()
    process.executableURL = ipcEchoBinary
    process.arguments = arguments
    process.standardOutput = output ?? FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    return process
}

/// Starts `ipc-echo serve` and returns once it says it is serving (its first line of output):
/// an event, not a guess about how long start-up takes.
func launchEchoServer(at path: String) throws -> Process {
    let output = Pipe()
    let process = try launchIPCEcho(["serve", "--socket", path], output: output)
    var line = Data()
    while !line.contains(UInt8(ascii: "\n")) {
        let chunk = output.fileHandleForReading.availableData  // blocks until the child writes
        if chunk.isEmpty { break }  // the child exited
        line.append(chunk)
    }
    return process
}

@Suite("Faults", .enabled(if: ipcEchoBinary != nil, "needs the ipc-echo binary (swift build)"))
struct FaultTests {
    @Test func clientKilledMidStreamIsCleanedUpOnTheHost() throws {
        let harness = try RPCHarness()
        let parking = StreamParkingService()
        let host = try IPCHost(backend: .unixSocket(harness.socketPath, loop: harness.loop), logger: .quiet)
        host.expose(parking)
        try warmUpProcessSpawning()
        let baseline = FileDescriptors.openDescriptors()
        let child = try launchIPCEcho(["call", "--socket", harness.socketPath, "--data", "x", "--stream", "1000000"])
        harness.run(until: { parking.parked != nil }, "the child's stream is being served")
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        harness.run(until: { parking.disconnected.count == 1 }, "the service hears the client went away")
        #expect(host.clientCount == 0)
        // The service still holds the stream's Deferred: answering it goes nowhere, harmlessly,
        // and releasing it sends nothing.
        parking.parked?.resolve(Pfpeers_EchoReply(), hasMore: true)
        parking.parked = nil
        harness.settle()
        let extra = Set(FileDescriptors.openDescriptors()).subtracting(baseline)
        #expect(extra.isEmpty, "left open: \(extra.sorted().map { "\($0) \(FileDescriptors.target(of: $0))" })")
    }

    @Test func callGivesUpOnAHostThatNeverAnswers() throws {
        // A socket that accepts (the kernel's backlog) and never says a word: `ipc-echo call`
        // ends with an error at its deadline instead of waiting until killed.
        let harness = try RPCHarness()
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            for (index, byte) in harness.socketPath.utf8.enumerated() { path[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0 && listen(listener, 4) == 0)
        let errors = Pipe()
        let process = Process()
        process.executableURL = ipcEchoBinary
        process.arguments = ["call", "--socket", harness.socketPath, "--timeout", "0.5"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        process.waitUntilExit()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 1)
        #expect(message.contains("no answer from \(harness.socketPath) within 0.5 s"), "\(message)")
    }

    @Test func hostKilledRejectsEveryPendingCallExactlyOnce() throws {
        let harness = try RPCHarness()
        let child = try launchEchoServer(at: harness.socketPath)
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) }; child.waitUntilExit() }
        let client = IPCClient(backend: .unixSocket(harness.socketPath, loop: harness.loop))
        let proxy = Pfpeers_EchoServiceProxy()
        client.bind(proxy)
        harness.run(until: { proxy.isBound })
        var outcomes: [Int: [Bool]] = [:]
        var streamEnds = 0
        var streamReplies = 0
        let calls = 3000
        for index in 0..<calls {
            proxy.echo(echoRequest("pending-\(index)", seq: UInt32(index))) { outcomes[index, default: []].append($0.isSuccess) }
        }
        proxy.streamEcho(echoRequest("s", count: 100_000_000)) { result in
            if result.hasMore { streamReplies += 1 } else { streamEnds += 1 }
        }
        harness.run(until: { streamReplies > 0 || outcomes.count > 0 })
        kill(child.processIdentifier, SIGKILL)
        harness.run(until: { outcomes.count == calls && streamEnds == 1 }, "every call resolved or rejected")
        harness.settle()
        #expect(outcomes.count == calls)
        #expect(outcomes.values.allSatisfy { $0.count == 1 }, "exactly once each")
        #expect(streamEnds == 1, "the stream is rejected once")
        #expect(proxy.state == .disconnected)
        withExtendedLifetime(client) {}
    }

    @Test func closingWhileAReplyWithADescriptorIsInFlightLeaksNothing() throws {
        let harness = try RPCHarness()
        var options = ConnectionOptions()
        options.socketSendBufferSize = 4096
        let host = try IPCHost(backend: .unixSocket(harness.socketPath, loop: harness.loop, options: options), logger: .quiet)
        let service = EchoServiceImplementation()
        host.expose(service)
        let baseline = FileDescriptors.openDescriptors()
        for round in 0..<20 {
            let client = IPCClient(backend: .unixSocket(harness.socketPath, loop: harness.loop))
            let proxy = Pfpeers_EchoServiceProxy()
            client.bind(proxy)
            harness.run(until: { proxy.isBound })
            var request = echoRequest("fd-\(round)", wantFD: true)
            request.data = Data(repeating: 0x42, count: 60_000)  // big replies: some queue up
            let answered = service.echoCount
            for _ in 0..<8 { proxy.echo(request) { _ in } }
            // Even rounds close at once; odd rounds once the host has answered (its replies,
            // each with a memfd, are then queued or in the socket).
            if round % 2 == 1 { harness.run(until: { service.echoCount == answered + 8 }) }
            client.close()
            harness.run(until: { host.clientCount == 0 })
        }
        harness.settle()
        #expect(FileDescriptors.openDescriptors() == baseline)
    }
}

/// Streams one reply, then keeps the stream open.
final class StreamParkingService: Pfpeers_EchoServiceHandler {
    var parked: Deferred<Pfpeers_EchoReply>?
    var disconnected: [IPCClientInfo] = []
    func echo(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        reply.resolve(Pfpeers_EchoReply())
    }
    func streamEcho(_ request: Pfpeers_EchoRequest, context: IPCCallContext, reply: Deferred<Pfpeers_EchoReply>) {
        reply.resolve(Pfpeers_EchoReply(), hasMore: true)
        parked = reply
    }
    func clientDidDisconnect(_ client: IPCClientInfo) { disconnected.append(client) }
}
