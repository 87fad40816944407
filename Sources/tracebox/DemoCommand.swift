// tracebox demo: the whole system on an embedded default, over real IPC. A service on sockets
// in a fresh temporary folder, a producer in a separate process (this executable) writing track
// events from a few threads, and a short session recorded through ConsumerPort into a .pftrace
// in the current folder. Every process and socket it starts is gone when it ends.

import ArgumentParser
import IPCProtocol
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a service, a producer process and a recording over real sockets; write tracebox-demo.pftrace.")

    @Option(name: [.customShort("o"), .customLong("out")], help: "Where the trace goes.")
    var out = "tracebox-demo.pftrace"

    @Option(help: "How long to record, in milliseconds.")
    var durationMs: UInt32 = 1500

    @Option(help: "Producer threads writing slices.")
    var threads = 3

    @Option(help: "Slices per thread (and test packets).")
    var count = 200

    func run() throws {
        var template = Array("/tmp/tracebox-demo-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemError("mkdtemp") }
        let directory = String(cString: made)
        defer { rmdir(directory) }
        let producerSocket = directory + "/producer.sock"
        let consumerSocket = directory + "/consumer.sock"

        let runner = try CommandLoop(backend: .unix)
        let service = TracingServiceCore(eventLoop: runner.loop)
        let host = try TracingServiceHost(
            service: service, producerBackends: [.transport(runner.transport, address: producerSocket)],
            consumerBackend: .transport(runner.transport, address: consumerSocket))
        defer { host.close() }
        say("service: producers at \(producerSocket), consumers at \(consumerSocket)")

        let child = try spawnProducer(socket: producerSocket)
        defer { reap(child) }
        say("producer: process \(child) writing from \(threads) threads")

        let clients = SystemTracingService(
            producerBackend: .transport(runner.transport, address: producerSocket),
            consumerBackend: .transport(runner.transport, address: consumerSocket))
        let session = ConsumerSession()
        session.endpoint = clients.connectConsumer(session, uid: getuid())
        runner.run(until: { session.connected || session.disconnected })

        var config = TraceConfig()
        var buffer = TraceConfig.BufferConfig()
        buffer.sizeKb = 8 * 1024
        config.buffers = [buffer]
        var test = TraceConfig.DataSource()
        test.config.name = "tracebox.test"
        var events = TraceConfig.DataSource()
        events.config.name = "track_event"
        events.config.trackEventConfig.enabledCategories = [TestProducer.category]
        config.dataSources = [test, events]
        config.durationMs = durationMs
        session.endpoint.enableTracing(config, outputFile: nil)
        var interrupted = false
        runner.onTerminationSignal {
            interrupted = true
            session.endpoint.disableTracing()
        }
        let progress = isatty(STDERR_FILENO) == 1 ? Progress(durationMs: durationMs, outputFD: nil) : nil
        progress?.start(on: runner.loop, session: session)
        runner.run(until: { session.disabledError != nil || session.disconnected })
        progress?.stop()
        session.endpoint.readBuffers()
        runner.run(until: { session.readFinished || session.disconnected })

        let output = TraceFile.encode(session.packets)
        let fd = open(out, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError("open \(out)") }
        defer { close(fd) }
        try writeAll(output, to: fd)
        let summary = DemoSummary(session.packets)
        say("recorded \(session.packets.count) packets, \(Quantities.bytes(output.count))" + Losses(summary.stats).summary
            + (interrupted ? " (stopped early)" : ""))
        for (thread, slices) in summary.slicesPerThread {
            say("  \(thread): \(slices) slices")
        }
        say("  test packets: \(summary.testPackets)")
        say("wrote \(out): open it at https://ui.perfetto.dev (Open trace file), or with trace_processor")
    }

    /// This executable, as `tracebox producer`, told where the service is.
    private func spawnProducer(socket: String) throws -> pid_t {
        let arguments = ["tracebox", "producer", "-n", "\(count)", "--threads", "\(threads)", "-t", "10", "--name", "tracebox.demo"]
        var environment = ["PERFETTO_PRODUCER_SOCK_NAME=\(socket)"]
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            if !text.hasPrefix("PERFETTO_PRODUCER_SOCK_NAME=") { environment.append(text) }
            index += 1
        }
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let result = posix_spawn(&pid, "/proc/self/exe", nil, nil, argv, envp)
        guard result == 0 else {
            errno = result
            throw SystemError("posix_spawn")
        }
        return pid
    }

    /// Waits for the producer to exit (it does once its data source stops); kills it after 5 s.
    private func reap(_ pid: pid_t) {
        var status: Int32 = 0
        for _ in 0..<500 {
            if waitpid(pid, &status, WNOHANG) == pid { return }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
    }
}

/// What the demo's trace holds, for people.
struct DemoSummary {
    var slicesPerThread: [(String, Int)] = []
    var testPackets = 0
    var stats: TraceStats?

    init(_ packets: [TracePacketData]) {
        var threadNames: [UInt64: String] = [:]
        var slices: [UInt64: Int] = [:]
        for packet in packets {
            guard let decoded = try? packet.decode() else { continue }
            switch decoded.data {
            case .trackDescriptor(let track)? where track.hasThread:
                threadNames[track.uuid] = track.thread.threadName
            case .trackEvent(let event)? where event.type == .sliceBegin:
                slices[event.trackUuid, default: 0] += 1
            case .forTesting?:
                testPackets += 1
            case .traceStats(let traceStats)?:
                stats = traceStats
            default:
                break
            }
        }
        slicesPerThread = slices.map { (threadNames[$0.key] ?? "track \($0.key)", $0.value) }.sorted { $0.0 < $1.0 }
    }
}
