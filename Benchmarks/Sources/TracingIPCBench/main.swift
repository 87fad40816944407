// The tracing system over IPC, as users run it: the service in a process of its own (this
// executable, spawned with `serve`), producers and consumers in this one. Each figure is printed
// beside its floor, measured in the same run:
//
//   swift build -c release --product TracingIPCBench && .build/release/TracingIPCBench [PACKETS [SECTIONS]]
//
// SECTIONS: a comma-separated subset of produce,read,compressed,rtt,idle (all but compressed
// by default).
//
//   produce    packets of 40 B and 1 KiB from 1 and 4 writer threads, committed through
//              CommitData into the session's buffer; floors: the in-process service (same code,
//              no sockets) and a memcpy of the same bytes; five rounds taking turns, medians.
//              Writers stall rather than drop: a packet lost fails the run.
//   read       ReadBuffers of a full 64 MiB buffer, five rounds; floor: the same bytes through
//              a plain unix socket between two threads, right after each round; the median ratio.
//   compressed ReadBuffers of a full 64 MiB buffer of text-like packets (about 4x compressible),
//              uncompressed, deflate and zstd (level 3) taking turns, three rounds; MB/s of the
//              trace before compression, the size read, and the service's CPU; with
//              PERFETTO_TRACED, deflate through Perfetto's traced too.
//   rtt        QueryCapabilities and QueryServiceState (20 producers connected), p50, against an
//              Echo round trip to the same process, the three calls taking turns.
//   idle       the service's resident memory per idle producer and per idle consumer connection.
//
// With PERFETTO_TRACED=/path/to/perfetto/out/rel/traced, the produce and read figures are also
// measured against Perfetto's own traced (same producers, writers and consumer), side by side.
//
// With PERF_CTL_FIFO=path, each timed read is bracketed by `enable` and `disable` written to
// that fifo, so that `perf record -D -1 --control fifo:path` profiles the reads alone (both
// processes), not the filling of the buffer before them.

import Dispatch
import FoundationEssentials
import IPCEchoService
import IPCProtocol
import IPCUnixSocket
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

// MARK: The service process

if CommandLine.arguments.dropFirst().first == "serve" {
    let directory = CommandLine.arguments[2]
    let loop = try EpollEventLoop()
    let service = TracingServiceCore(eventLoop: loop)
    let host = try TracingServiceHost(
        service: service, producerBackends: [.unixSocket(directory + "/p.sock", loop: loop)],
        consumerBackend: .unixSocket(directory + "/c.sock", loop: loop))
    let echo = try IPCHost(backend: .unixSocket(directory + "/echo.sock", loop: loop))
    echo.expose(EchoServiceImplementation())
    loop.run()
    withExtendedLifetime((host, echo)) {}
    exit(0)
}

// MARK: Helpers

let packets = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 1_000_000
/// Which parts to run: the second argument, comma-separated (all four by default).
let sections = Set(
    CommandLine.arguments.dropFirst(2).first.map { $0.split(separator: ",").map(String.init) }
        ?? ["produce", "read", "rtt", "idle"])

func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

func format(_ value: Double, _ digits: Int = 2) -> String { fixed(value, digits: digits) }

final class Box<T>: @unchecked Sendable { var value: T; init(_ value: T) { self.value = value } }

/// A loop on a thread of its own; `sync` runs a closure there and waits.
final class Loop: @unchecked Sendable {
    let loop: EpollEventLoop
    init() throws { loop = try EpollEventLoop.startOnNewThread(name: "bench") }
    func sync<T>(_ body: @escaping () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        let result = Box<T?>(nil)
        let work = Box(body)
        loop.execute {
            result.value = work.value()
            done.signal()
        }
        done.wait()
        return result.value!
    }
    /// Runs `body` on the loop with a completion; waits for the completion.
    func wait(_ body: @escaping (@escaping () -> Void) -> Void) {
        let done = DispatchSemaphore(value: 0)
        let work = Box(body)
        loop.execute { work.value { done.signal() } }
        done.wait()
    }
}

/// Resident memory of a process, from /proc.
func residentBytes(_ pid: pid_t) -> Int {
    guard let file = fopen("/proc/\(pid)/statm", "r") else { return 0 }
    defer { fclose(file) }
    var size = 0, resident = 0
    _ = withUnsafeMutablePointer(to: &size) { sizePointer in
        withUnsafeMutablePointer(to: &resident) { residentPointer in
            withVaList([sizePointer, residentPointer]) { vfscanf(file, "%ld %ld", $0) }
        }
    }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// CPU seconds (user and system) a process has used, from /proc.
func cpuSeconds(_ pid: pid_t) -> Double {
    guard let file = fopen("/proc/\(pid)/stat", "r") else { return 0 }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 4096)
    guard fgets(&line, Int32(line.count), file) != nil else { return 0 }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    guard let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// A producer of `bench.source`: its writers are made per run.
final class BenchProducer: Producer {
    var endpoint: (any ProducerEndpoint)!
    var started: (id: DataSourceInstanceID, buffer: BufferID)?
    var connected = false
    func onConnect() { connected = true }
    func startDataSource(_ id: DataSourceInstanceID, config: DataSourceConfig) {
        started = (id, BufferID(truncatingIfNeeded: config.targetBuffer))
    }
    func stopDataSource(_ id: DataSourceInstanceID) {
        endpoint.notifyDataSourceStopped(id)
        started = nil
    }
    func flush(_ id: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        endpoint.notifyFlushComplete(id)
    }
}

/// A consumer that keeps what it is told.
final class BenchConsumer: Consumer {
    var endpoint: (any ConsumerEndpoint)!
    var connected = false
    var disabled = false
    var received = 0
    var bytes = 0
    var readDone = false
    var stats: TraceStats?
    func onConnect() { connected = true }
    func onTracingDisabled(error: String) { disabled = true }
    func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        received += packets.count
        for packet in packets { bytes += packet.bytes.count }
        if !hasMore { readDone = true }
    }
    func onTraceStats(success: Bool, _ stats: TraceStats) { self.stats = stats }
}

func descriptor() -> DataSourceDescriptor {
    var descriptor = DataSourceDescriptor()
    descriptor.name = "bench.source"
    descriptor.willNotifyOnStop = true
    return descriptor
}

/// How a session's trace is compressed (none, deflate, zstd at a level).
enum Compression: CustomStringConvertible {
    case none, deflate, zstd(Int32)

    var description: String {
        switch self {
        case .none: "uncompressed"
        case .deflate: "deflate"
        case .zstd(let level): "zstd \(level)"
        }
    }
}

func config(bufferMiB: UInt32, compression: Compression = .none) -> TraceConfig {
    var config = TraceConfig()
    switch compression {
    case .none: break
    case .deflate: config.compressionType = .deflate
    case .zstd(let level): config.compression.zstd.level = level
    }
    var buffer = TraceConfig.BufferConfig()
    buffer.sizeKb = bufferMiB * 1024
    buffer.fillPolicy = .discard
    config.buffers = [buffer]
    var source = TraceConfig.DataSource()
    source.config.name = "bench.source"
    config.dataSources = [source]
    return config
}

/// Polls `condition` on the loop until it holds (up to 60 s).
func waitFor(_ loop: Loop, _ condition: @escaping () -> Bool) {
    let deadline = now() + 60
    while !loop.sync(condition), now() < deadline { usleep(200) }
}

/// A producer of `bench.source` (4 MiB of shared memory) and a consumer, connected to
/// `service`, with a session of one `bufferMiB` buffer started and the data source running.
func startSession(
    service: any TracingService, loop: Loop, producerName: String, bufferMiB: UInt32, compression: Compression = .none
) -> (BenchProducer, BenchConsumer) {
    let producer = BenchProducer()
    let consumer = BenchConsumer()
    loop.sync {
        producer.endpoint = service.connectProducer(producer, options: .init(name: producerName, sharedMemorySizeHint: 4 << 20))
        producer.endpoint.registerDataSource(descriptor())
        consumer.endpoint = service.connectConsumer(consumer, uid: getuid())
    }
    waitFor(loop) { producer.connected && consumer.connected }
    loop.sync { consumer.endpoint.enableTracing(config(bufferMiB: bufferMiB, compression: compression), outputFile: nil) }
    waitFor(loop) { producer.started != nil }
    return (producer, consumer)
}

// MARK: Produce

/// Seconds for `threads` writers to write `count` packets of `size` payload bytes each and
/// have every one of them in the service's buffer.
func produce(service: any TracingService, loop: Loop, threads: Int, count: Int, size: Int) -> (seconds: Double, lost: UInt64) {
    let bufferMiB = UInt32(max(64, (count * threads * (size + 24)) >> 20 + 16))
    let (producer, consumer) = startSession(service: service, loop: loop, producerName: "bench", bufferMiB: bufferMiB)
    let writers: [TraceWriter] = loop.sync {
        (0..<threads).compactMap { _ in producer.endpoint.createTraceWriter(targetBuffer: producer.started!.buffer, policy: .stall(timeout: .seconds(10))) }
    }
    let payload = [UInt8](repeating: 0x61, count: size)
    let group = DispatchGroup()
    let start = now()
    for writer in writers {
        let box = Box(writer)
        group.enter()
        Thread.detach {
            payload.withUnsafeBytes { bytes in
                for index in 0..<count {
                    box.value.newTracePacket { packet in
                        packet.appendVarint(8, UInt64(index))
                        packet.appendBytes(900, bytes)
                    }
                }
            }
            box.value.flush()
            group.leave()
        }
    }
    group.wait()
    // Everything committed is in the buffer once a flush round trip comes back.
    let flushed = Box(false)
    loop.wait { done in consumer.endpoint.flush(timeoutMs: 60_000, flags: FlushFlags()) { _ in flushed.value = true; done() } }
    let seconds = now() - start
    let lost = writers.reduce(0) { $0 + $1.packetsDropped }
    loop.sync { consumer.endpoint.getTraceStats() }
    waitFor(loop) { consumer.stats != nil }
    let discarded = loop.sync { consumer.stats!.bufferStats.reduce(0) { $0 + $1.chunksDiscarded } }
    loop.sync {
        for writer in writers { writer.close() }
        consumer.endpoint.disableTracing()
        consumer.endpoint.freeBuffers()
        producer.endpoint.disconnect()
        consumer.endpoint.disconnect()
    }
    return (seconds, lost + discarded)
}

func memcpySeconds(count: Int, size: Int) -> Double {
    let source = [UInt8](repeating: 0x61, count: size)
    var destination = [UInt8](repeating: 0, count: 1 << 20)
    let start = now()
    var offset = 0
    source.withUnsafeBytes { from in
        destination.withUnsafeMutableBytes { to in
            for _ in 0..<count {
                if offset + size > to.count { offset = 0 }
                (to.baseAddress! + offset).copyMemory(from: from.baseAddress!, byteCount: size)
                offset += size
            }
        }
    }
    return now() - start
}

enum Thread {
    static func detach(_ body: @escaping @Sendable () -> Void) {
        final class Work: @unchecked Sendable { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
        var thread = pthread_t()
        let work = Unmanaged.passRetained(Work(body)).toOpaque()
        pthread_create(&thread, nil, { argument in
            Unmanaged<Work>.fromOpaque(argument!).takeRetainedValue().body()
            return nil
        }, work)
        pthread_detach(thread)
    }
}

// MARK: Main

// MARK: Read

/// Rounds of each produce figure: medians of runs taking turns.
let produceRounds = 5

/// Rounds of the read section: one 64 MiB read takes tens of milliseconds, shorter than the
/// VM's swings, so the median of several is reported.
let readRounds = 5

/// Fills a 64 MiB buffer over IPC, then times one ReadBuffers of all of it, and a plain unix
/// socket copy of the same bytes (one thread writing, one reading) right after it. `service`
/// is the service's pid (for its CPU time).
func readRound(system: SystemTracingService, loop: Loop, service: pid_t)
    -> (seconds: Double, floorSeconds: Double, wholeTraceFloorSeconds: Double, bytes: Int, packets: Int, consumerGrowth: Int,
        serviceBusy: Double)
{
    let (producer, consumer) = startSession(service: system, loop: loop, producerName: "reader-bench", bufferMiB: 64)
    let writer = loop.sync { producer.endpoint.createTraceWriter(targetBuffer: producer.started!.buffer, policy: .stall(timeout: .seconds(10)))! }
    let payload = [UInt8](repeating: 0x62, count: 1000)
    payload.withUnsafeBytes { bytes in
        for index in 0..<(64 * 1024 - 2048) { writer.newTracePacket { $0.appendVarint(8, UInt64(index)); $0.appendBytes(900, bytes) } }
    }
    writer.flush()
    loop.wait { done in consumer.endpoint.flush(timeoutMs: 60_000, flags: FlushFlags()) { _ in done() } }
    let before = residentBytes(getpid())
    let serviceCPU = cpuSeconds(service)
    perfControl("enable")
    let start = now()
    loop.sync { consumer.endpoint.readBuffers() }
    waitFor(loop) { consumer.readDone }
    let seconds = now() - start
    perfControl("disable")
    let busy = (cpuSeconds(service) - serviceCPU) / seconds
    let growth = residentBytes(getpid()) - before
    loop.sync {
        writer.close()
        consumer.endpoint.freeBuffers()
        producer.endpoint.disconnect()
        consumer.endpoint.disconnect()
    }
    return (seconds, socketCopySeconds(consumer.bytes, wholeTrace: false), socketCopySeconds(consumer.bytes, wholeTrace: true),
            consumer.bytes, consumer.received, growth, busy)
}

/// 4,096 payloads of 1,000 bytes of words drawn from 256 (about 4x compressible by deflate, as
/// traces of names and numbers are), distinct enough that a compressor's window never holds a
/// repeat of the packet it compresses.
let textPayloads: [[UInt8]] = {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next() -> UInt64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return state >> 33
    }
    let words: [[UInt8]] = (0..<256).map { _ in
        (0..<(3 + Int(next() % 8))).map { _ in UInt8(ascii: "a") + UInt8(next() % 26) } + [UInt8(ascii: " ")]
    }
    return (0..<4096).map { _ in
        var payload: [UInt8] = []
        while payload.count < 1000 { payload += words[Int(next() % 256)] }
        return Array(payload.prefix(1000))
    }
}()

/// One compressed-read round: fills a 64 MiB buffer of `textPayloads` in a session compressed
/// as `compression`, times one ReadBuffers of it. Returns the seconds, the bytes and packets
/// received, and the service's CPU seconds.
func compressedReadRound(system: SystemTracingService, loop: Loop, service: pid_t, compression: Compression)
    -> (seconds: Double, bytes: Int, packets: Int, serviceCPU: Double)
{
    let (producer, consumer) = startSession(
        service: system, loop: loop, producerName: "compressed-bench", bufferMiB: 64, compression: compression)
    let writer = loop.sync { producer.endpoint.createTraceWriter(targetBuffer: producer.started!.buffer, policy: .stall(timeout: .seconds(10)))! }
    for index in 0..<(64 * 1024 - 2048) {
        textPayloads[index % textPayloads.count].withUnsafeBytes { bytes in
            writer.newTracePacket { $0.appendVarint(8, UInt64(index)); $0.appendBytes(900, bytes) }
        }
    }
    writer.flush()
    loop.wait { done in consumer.endpoint.flush(timeoutMs: 60_000, flags: FlushFlags()) { _ in done() } }
    let serviceCPU = cpuSeconds(service)
    let start = now()
    loop.sync { consumer.endpoint.readBuffers() }
    waitFor(loop) { consumer.readDone }
    let seconds = now() - start
    let cpu = cpuSeconds(service) - serviceCPU
    loop.sync {
        writer.close()
        consumer.endpoint.freeBuffers()
        producer.endpoint.disconnect()
        consumer.endpoint.disconnect()
    }
    return (seconds, consumer.bytes, consumer.received, cpu)
}

/// Writes `command` to the fifo named by PERF_CTL_FIFO, if any (`perf record --control`).
func perfControl(_ command: String) {
    guard let path = getenv("PERF_CTL_FIFO") else { return }
    let fd = open(path, O_WRONLY)
    guard fd >= 0 else { return }
    _ = (command + "\n").utf8CString.withUnsafeBytes { write(fd, $0.baseAddress, $0.count - 1) }
    close(fd)
}

/// Seconds to copy `total` bytes through a unix socket from one thread to another, written
/// 128 KiB at a time from one buffer that stays in the caches (`wholeTrace` false), or from a
/// buffer of `total` bytes written just before, as a trace is held in memory (true).
func socketCopySeconds(_ total: Int, wholeTrace: Bool) -> Double {
    var fds: [Int32] = [0, 0]
    socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds)
    let reader = Box(fds[1])
    let readerDone = DispatchSemaphore(value: 0)
    Thread.detach {
        var buffer = [UInt8](repeating: 0, count: 128 * 1024)
        var remaining = total
        while remaining > 0 {
            let count = buffer.withUnsafeMutableBytes { read(reader.value, $0.baseAddress, min($0.count, remaining)) }
            if count <= 0 { break }
            remaining -= count
        }
        readerDone.signal()
    }
    let source = [UInt8](repeating: 0x63, count: wholeTrace ? total : 128 * 1024)
    let start = now()
    var sent = 0
    source.withUnsafeBytes { bytes in
        while sent < total {
            let offset = wholeTrace ? sent : 0
            let count = write(fds[0], bytes.baseAddress! + offset, min(128 * 1024, total - sent))
            if count <= 0 { break }
            sent += count
        }
    }
    readerDone.wait()
    let seconds = now() - start
    close(fds[0])
    close(fds[1])
    return seconds
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

/// Everything runs outside the main actor: closures made here are handed to the loop thread.
nonisolated func runBenchmarks() throws {

    var template = Array("/tmp/tracing-ipc-bench-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { fatalError("mkdtemp") }
    let directory = String(cString: made)
    var child: pid_t = 0
    let childOut = "\(directory)/serve.log"
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 1, childOut, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let spawnArguments = ["TracingIPCBench", "serve", directory]
    let argv = spawnArguments.map { strdup($0) } + [nil]
    guard posix_spawn(&child, "/proc/self/exe", &actions, nil, argv, environ) == 0 else { fatalError("spawn") }
    defer {
        kill(child, SIGTERM)
        var status: Int32 = 0
        waitpid(child, &status, 0)
    }
    for _ in 0..<5000 where access(directory + "/echo.sock", F_OK) != 0 { usleep(1000) }

    let loop = try Loop()
    let transport = UnixSocketTransport(loop: loop.loop)
    let system = SystemTracingService(transport: transport, producerAddress: directory + "/p.sock", consumerAddress: directory + "/c.sock")
    let inProcess = TracingServiceCore(eventLoop: loop.loop)

    // Perfetto's traced, if named: the same producers against it.
    var realTraced: pid_t = 0
    var realSystem: SystemTracingService?
    if let traced = getenv("PERFETTO_TRACED").map({ String(cString: $0) }) {
        let environment = ["PERFETTO_PRODUCER_SOCK_NAME=\(directory)/real-p.sock", "PERFETTO_CONSUMER_SOCK_NAME=\(directory)/real-c.sock"]
        let envp = (environment.map { strdup($0) }) + [nil]
        let argv = [strdup(traced), nil]
        // Its log (a line per session) goes to a file beside the sockets, not into the figures.
        var tracedActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&tracedActions)
        posix_spawn_file_actions_addopen(&tracedActions, 2, "\(directory)/traced.log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard posix_spawn(&realTraced, traced, &tracedActions, nil, argv, envp) == 0 else { fatalError("spawn \(traced)") }
        for _ in 0..<5000 where access(directory + "/real-c.sock", F_OK) != 0 { usleep(1000) }
        realSystem = SystemTracingService(
            transport: transport, producerAddress: directory + "/real-p.sock", consumerAddress: directory + "/real-c.sock")
    }
    defer {
        if realTraced != 0 {
            kill(realTraced, SIGTERM)
            var status: Int32 = 0
            waitpid(realTraced, &status, 0)
        }
    }

    for (size, label) in [(40, "40B"), (1024, "1KiB")] where sections.contains("produce") {
        let count = size == 40 ? packets : packets / 8
        for threads in [1, 4] {
            // Rounds taking turns (IPC, in-process, Perfetto's traced), so that each ratio
            // compares runs made in the same moments; the medians are reported.
            var ipcSeconds: [Double] = [], localSeconds: [Double] = [], realSeconds: [Double] = []
            var ratios: [Double] = [], realRatios: [Double] = []
            var lost: UInt64 = 0, realLost: UInt64 = 0
            for _ in 0..<produceRounds {
                let ipc = produce(service: system, loop: loop, threads: threads, count: count, size: size)
                let local = produce(service: inProcess, loop: loop, threads: threads, count: count, size: size)
                ipcSeconds.append(ipc.seconds)
                localSeconds.append(local.seconds)
                ratios.append(ipc.seconds / local.seconds)
                lost += ipc.lost + local.lost
                if let realSystem {
                    let real = produce(service: realSystem, loop: loop, threads: threads, count: count, size: size)
                    realSeconds.append(real.seconds)
                    realRatios.append(ipc.seconds / real.seconds)
                    realLost += real.lost
                }
            }
            let copy = memcpySeconds(count: count * threads, size: size)
            let total = Double(count * threads)
            let ipc = median(ipcSeconds), local = median(localSeconds)
            print("produce \(label) x\(threads) threads: ipc \(format(total / ipc / 1e6))M packets/s "
                + "\(format(total * Double(size) / ipc / 1e6, 0)) MB/s, in-process \(format(total / local / 1e6))M/s, "
                + "memcpy \(format(total / copy / 1e6, 0))M/s; ipc/in-process \(format(median(ratios)))x "
                + "(\(format(ratios.min()!))–\(format(ratios.max()!))x); lost \(lost)")
            if realSystem != nil {
                print("  the same into Perfetto's traced: \(format(total / median(realSeconds) / 1e6))M packets/s; "
                    + "ours/traced time \(format(median(realRatios)))x (\(format(realRatios.min()!))–\(format(realRatios.max()!))x); "
                    + "lost \(realLost)")
            }
        }
    }

    // Read: fill a 64 MiB buffer over IPC, then time ReadBuffers; each round beside its floor.
    if sections.contains("read") {
        var ratios: [Double] = []
        var wholeTraceRatios: [Double] = []
        var rates: [Double] = []
        var growth = 0.0
        var realRates: [Double] = []
        for round in 0..<readRounds {
            let result = readRound(system: system, loop: loop, service: child)
            ratios.append(result.floorSeconds / result.seconds)
            wholeTraceRatios.append(result.wholeTraceFloorSeconds / result.seconds)
            rates.append(Double(result.bytes) / result.seconds / 1e6)
            if round == 0 {
                growth = Double(result.consumerGrowth) / Double(result.bytes)
                print("read \(result.packets) packets, \(format(Double(result.bytes) / 1048576, 1)) MiB per round, \(readRounds) rounds")
            }
            let megabytesPerSecond = { (seconds: Double) in format(Double(result.bytes) / seconds / 1e6, 0) }
            print("  round \(round + 1): ReadBuffers \(format(rates.last!, 0)) MB/s, service busy "
                + "\(format(result.serviceBusy * 100, 0))% of it; plain socket \(megabytesPerSecond(result.floorSeconds)) MB/s "
                + "(ratio \(format(ratios.last!))x), from the whole trace in memory \(megabytesPerSecond(result.wholeTraceFloorSeconds)) MB/s "
                + "(ratio \(format(wholeTraceRatios.last!))x)")
            // The same round against Perfetto's traced (the same producer and consumer code).
            if let realSystem {
                let real = readRound(system: realSystem, loop: loop, service: realTraced)
                realRates.append(Double(real.bytes) / real.seconds / 1e6)
                print("    Perfetto's traced: ReadBuffers \(format(realRates.last!, 0)) MB/s (\(real.packets) packets), "
                    + "busy \(format(real.serviceBusy * 100, 0))% of it; ours/traced rate \(format(rates.last! / realRates.last!))x")
            }
        }
        if !realRates.isEmpty {
            print("  Perfetto's traced: ReadBuffers median \(format(median(realRates), 0)) MB/s; ours/traced "
                + "\(format(median(rates) / median(realRates)))x")
        }
        print("read: ReadBuffers median \(format(median(rates), 0)) MB/s; median ratio to a plain socket copy "
            + "\(format(median(ratios)))x (\(format(ratios.min()!))–\(format(ratios.max()!))x), to one from the whole trace in memory "
            + "\(format(median(wholeTraceRatios)))x (\(format(wholeTraceRatios.min()!))–\(format(wholeTraceRatios.max()!))x); "
            + "consumer memory grew \(format(growth))x the trace")
    }

    // Compressed reads: the same text-like trace read uncompressed, deflated and zstd'ed, in turns.
    if sections.contains("compressed") {
        var kinds: [(Compression, SystemTracingService, pid_t, String)] = [
            (.none, system, child, "ours"), (.deflate, system, child, "ours"), (.zstd(3), system, child, "ours"),
        ]
        if let realSystem { kinds.append((.deflate, realSystem, realTraced, "Perfetto's traced")) }
        var results = [[(seconds: Double, bytes: Int, packets: Int, serviceCPU: Double)]](repeating: [], count: kinds.count)
        for _ in 0..<3 {
            for (index, kind) in kinds.enumerated() {
                results[index].append(compressedReadRound(system: kind.1, loop: loop, service: kind.2, compression: kind.0))
            }
        }
        // The trace's size before compression: what the uncompressed read received.
        let traceBytes = Double(results[0].map(\.bytes).max()!)
        print("compressed: ReadBuffers of a 64 MiB buffer of text-like packets (\(format(traceBytes / 1048576, 1)) MiB), "
            + "median of 3; MB/s of the trace before compression")
        for (index, kind) in kinds.enumerated() {
            let rounds = results[index]
            let rate = median(rounds.map { traceBytes / $0.seconds / 1e6 })
            let size = median(rounds.map { Double($0.bytes) })
            print("  \(kind.3), \(kind.0): \(format(rate, 0)) MB/s, \(format(size / 1048576, 1)) MiB read "
                + "(\(format(traceBytes / size))x smaller), \(format(median(rounds.map { Double($0.packets) }), 0)) packets, "
                + "service CPU \(format(median(rounds.map(\.serviceCPU)) * 1000, 0)) ms")
        }
    }

    // Round trips: ConsumerPort calls with 20 producers connected, against Echo to the same process.
    if sections.contains("rtt") {
        let idle = (0..<20).map { _ in BenchProducer() }
        let consumer = BenchConsumer()
        loop.sync {
            for (index, producer) in idle.enumerated() {
                producer.endpoint = system.connectProducer(producer, options: .init(name: "idle-\(index)"))
                producer.endpoint.registerDataSource(descriptor())
            }
            consumer.endpoint = system.connectConsumer(consumer, uid: getuid())
        }
        waitFor(loop) { idle.allSatisfy(\.connected) && consumer.connected }
        /// p50 of each call, the calls taking turns (one of each per round), so that all see
        /// the same moments of the VM: measured one after another, their floors drifted 2x apart.
        func interleavedP50(_ rounds: Int, _ calls: [(@escaping () -> Void) -> Void]) -> [Double] {
            var samples = Array(repeating: [Double](), count: calls.count)
            for round in 0..<(rounds + 200) {
                for (index, call) in calls.enumerated() {
                    let start = now()
                    loop.wait(call)
                    if round >= 200 { samples[index].append((now() - start) * 1e6) }
                }
            }
            return samples.map { $0.sorted()[$0.count / 2] }
        }
        let echoClient = loop.sync { IPCClient(backend: .unixSocket(directory + "/echo.sock", loop: loop.loop)) }
        let echo = Pfpeers_EchoServiceProxy()
        loop.sync { echoClient.bind(echo) }
        waitFor(loop) { echo.isBound }
        var echoRequest = Pfpeers_EchoRequest()
        echoRequest.data = Data(repeating: 0x61, count: 16)
        let request = echoRequest
        let echoCall: (@escaping () -> Void) -> Void = { done in
            let callback = Box(done)
            echo.echo(request, reply: { _ in callback.value() })
        }
        let p50s = interleavedP50(2000, [
            echoCall,
            { done in consumer.endpoint.queryCapabilities { _ in done() } },
            { done in consumer.endpoint.queryServiceState(sessionsOnly: false) { _, _ in done() } },
        ])
        let (echoRTT, capabilities, state) = (p50s[0], p50s[1], p50s[2])
        // Echo calls back to back are faster than echo calls between others: both are shown.
        let echoAlone = interleavedP50(2000, [echoCall])[0]
        print("rtt p50 (calls taking turns): QueryCapabilities \(format(capabilities))us (\(format(capabilities / echoRTT))x echo), "
            + "QueryServiceState with 20 producers \(format(state))us (\(format(state / echoRTT))x echo), "
            + "echo \(format(echoRTT))us; echo back to back \(format(echoAlone))us "
            + "(\(format(capabilities / echoAlone))x, \(format(state / echoAlone))x)")
        loop.sync {
            for producer in idle { producer.endpoint.disconnect() }
            consumer.endpoint.disconnect()
            echoClient.close()
        }
    }

    // Idle connections: the service process's resident memory per producer and per consumer.
    if sections.contains("idle") {
        let count = 200
        let base = residentBytes(child)
        let producers = (0..<count).map { _ in BenchProducer() }
        loop.sync {
            for (index, producer) in producers.enumerated() {
                producer.endpoint = system.connectProducer(producer, options: .init(name: "idle-\(index)"))
                producer.endpoint.registerDataSource(descriptor())
            }
        }
        waitFor(loop) { producers.allSatisfy(\.connected) }
        usleep(700_000)  // receive buffers of idle connections give their pages back after 500 ms
        let withProducers = residentBytes(child)
        let consumers = (0..<count).map { _ in BenchConsumer() }
        loop.sync {
            for consumer in consumers {
                consumer.endpoint = system.connectConsumer(consumer, uid: getuid())
                consumer.endpoint.getTraceStats()  // a consumer is connected on its first request
            }
        }
        waitFor(loop) { consumers.allSatisfy { $0.connected && $0.stats != nil } }
        usleep(700_000)
        let withConsumers = residentBytes(child)
        print("idle: \(format(Double(withProducers - base) / Double(count) / 1024, 1)) KiB per producer, "
            + "\(format(Double(withConsumers - withProducers) / Double(count) / 1024, 1)) KiB per consumer (service resident memory)")
        loop.sync {
            for producer in producers { producer.endpoint.disconnect() }
            for consumer in consumers { consumer.endpoint.disconnect() }
        }
    }
}

try runBenchmarks()
