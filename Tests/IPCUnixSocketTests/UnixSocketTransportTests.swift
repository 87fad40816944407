// The unix-socket transport against real sockets. Each test drives the loop until what it
// waits for has happened, with a deadline; nothing sleeps.

import CPerfettoIPCLinux
import Foundation
import Glibc
import IPCProtocol
import IPCUnixSocket
import Synchronization
import Testing
import TestSupport

/// A loop on the test's thread, a transport on it, and a temp dir for socket files.
final class SocketHarness {
    let loop: EpollEventLoop
    let transport: UnixSocketTransport
    let directory = TemporaryDirectory()

    init() throws {
        loop = try EpollEventLoop()
        transport = UnixSocketTransport(loop: loop)
    }

    deinit { directory.remove() }

    func path(_ name: String = "test.sock") -> String { directory.path + "/" + name }

    /// A socket pair whose one end is a connection on the loop: the test writes raw bytes
    /// into the other.
    func adoptedSocketPair(
        receiveSpace: Int = 64 * 1024
    ) throws -> (peer: ScopedFD, connection: any IPCConnection, events: RecordingConnectionDelegate) {
        let (mine, theirs) = FileDescriptors.socketPair()
        let events = RecordingConnectionDelegate(receiveSpace: receiveSpace)
        let connection = try transport.adoptConnection(fd: theirs.release(), options: .default, delegate: events)
        return (mine, connection, events)
    }

    /// Drives the loop until `condition` holds; fails the test after 5 s.
    @discardableResult
    func run(until condition: () -> Bool, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        let held = loop.run(until: condition, timeout: .seconds(5))
        #expect(held, comment, sourceLocation: sourceLocation)
        return held
    }

    /// Listens at `address` and connects one client to it.
    func connectedPair(
        address: String? = nil, clientOptions: ConnectionOptions = .default, serverOptions: ConnectionOptions = .default
    ) throws -> (listener: any IPCListener, server: RecordingListenerDelegate, client: any IPCConnection, clientEvents: RecordingConnectionDelegate) {
        let server = RecordingListenerDelegate()
        let listener = try transport.listen(at: address ?? path(), options: serverOptions, delegate: server)
        let clientEvents = RecordingConnectionDelegate()
        let client = transport.connect(to: listener.address, options: clientOptions, delegate: clientEvents)
        run(until: { clientEvents.isConnected && server.connections.count == 1 })
        return (listener, server, client, clientEvents)
    }
}

@Suite("UnixSocketTransport")
struct UnixSocketTransportTests {
    @Test func connectingToNothingReportsFailureLater() throws {
        let harness = try SocketHarness()
        let events = RecordingConnectionDelegate()
        let connection = harness.transport.connect(to: harness.path("nobody.sock"), options: .default, delegate: events)
        #expect(events.events.isEmpty, "the result must not be delivered inline")
        harness.run(until: { events.isDisconnected })
        #expect(events.events == [.failedToConnect(.connectionFailed)])
        #expect(events.errors.first?.errno == ENOENT)
        #expect(events.errors.first?.address == harness.path("nobody.sock"))
        #expect(connection.state == .disconnected)
    }

    @Test func releasingAConnectingConnectionCancelsItSilently() throws {
        let harness = try SocketHarness()
        let server = RecordingListenerDelegate()
        let listener = try harness.transport.listen(at: harness.path(), options: .default, delegate: server)
        let events = RecordingConnectionDelegate()
        _ = harness.transport.connect(to: listener.address, options: .default, delegate: events)
        harness.run(until: { server.delegates.first?.isDisconnected == true })
        #expect(events.events.isEmpty, "no callback after the owner let go")
    }

    @Test func unparsableAddressFailsThroughTheDelegate() throws {
        let harness = try SocketHarness()
        let events = RecordingConnectionDelegate()
        _ = harness.transport.connect(to: "vsock://x:1", options: .default, delegate: events)
        #expect(events.events.isEmpty)
        harness.run(until: { events.isDisconnected })
        #expect(events.events == [.failedToConnect(.invalidAddress)])
    }

    @Test func serverDroppingAtOnceIsReportedAsDisconnect() throws {
        let harness = try SocketHarness()
        let server = RecordingListenerDelegate()
        server.onAccept = { connection, _ in connection.close() }
        let listener = try harness.transport.listen(at: harness.path(), options: .default, delegate: server)
        let events = RecordingConnectionDelegate()
        let client = harness.transport.connect(to: listener.address, options: .default, delegate: events)
        harness.run(until: { events.isDisconnected })
        #expect(events.events == [.connected, .disconnected(nil)])
        #expect(client.state == .disconnected)
    }

    @Test func dataFlowsBothWays() throws {
        let harness = try SocketHarness()
        let (_, server, client, clientEvents) = try harness.connectedPair()
        #expect(client.send(Array("ping".utf8)))
        harness.run(until: { server.delegates[0].received.count == 4 })
        #expect(server.delegates[0].received == Array("ping".utf8))
        #expect(server.connections[0].send(Array("pong!".utf8)))
        harness.run(until: { clientEvents.received.count == 5 })
        #expect(clientEvents.received == Array("pong!".utf8))
    }

    @Test func fourMebibyteBlockingSendArrivesWhole() throws {
        // The receiver runs on its own loop thread; the sender blocks its loop until done.
        let receiverLoop = try EpollEventLoop.startOnNewThread(name: "receiver")
        defer { receiverLoop.shutdown() }
        let harness = try SocketHarness()
        let address = harness.path()
        let total = 4 * 1024 * 1024
        let receiver = CountingReceiver()
        receiverLoop.execute {
            receiver.listener = try? UnixSocketTransport(loop: receiverLoop).listen(at: address, options: .default, delegate: receiver)
            receiver.ready.store(true, ordering: .releasing)
        }
        while !receiver.ready.load(ordering: .acquiring) { sched_yield() }

        var options = ConnectionOptions()
        options.sendTimeout = .zero  // blocking
        options.socketSendBufferSize = 64 * 1024
        let events = RecordingConnectionDelegate()
        let client = harness.transport.connect(to: address, options: options, delegate: events)
        harness.run(until: { events.isConnected })
        let payload = (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(client.send(payload))  // returns only when everything is written
        let expectedChecksum = payload.reduce(UInt64(0)) { $0 &+ UInt64($1) }
        let deadline = ContinuousClock.now + .seconds(10)
        while receiver.count.load(ordering: .acquiring) < total, ContinuousClock.now < deadline { sched_yield() }
        #expect(receiver.count.load(ordering: .acquiring) == total)
        #expect(receiver.checksum.load(ordering: .acquiring) == expectedChecksum)
        receiverLoop.execute { receiver.close() }
    }

    @Test func receiverDisconnectingMidSendIsReported() throws {
        let harness = try SocketHarness()
        var serverOptions = ConnectionOptions()
        serverOptions.socketReceiveBufferSize = 16 * 1024
        let (_, server, client, clientEvents) = try harness.connectedPair(serverOptions: serverOptions)
        #expect(client.send([UInt8](repeating: 7, count: 8 * 1024 * 1024)))  // mostly queued
        harness.run(until: { !server.delegates[0].received.isEmpty })
        server.connections[0].close()
        harness.run(until: { clientEvents.isDisconnected })
        #expect(clientEvents.events.last == .disconnected(.systemCallFailed))
        #expect([EPIPE, ECONNRESET].contains(clientEvents.errors.last?.errno ?? 0))
        #expect(client.state == .disconnected)
    }

    @Test func aDrainWaiterReleasedByTheTeardownMaySendOnTheClosingConnection() throws {
        // A streaming service keeps its Deferred in a drain waiter; when the connection fails
        // the waiter is released, and the Deferred sends its rejection on that very connection.
        // That send re-entered the teardown (an exclusivity violation: a crash).
        let harness = try SocketHarness()
        var serverOptions = ConnectionOptions()
        serverOptions.socketReceiveBufferSize = 16 * 1024
        let (_, server, client, clientEvents) = try harness.connectedPair(serverOptions: serverOptions)
        #expect(client.send([UInt8](repeating: 7, count: 8 * 1024 * 1024)))  // mostly queued
        let sends = SendsOnRelease.Results()
        do {
            let holder = SendsOnRelease(client, sends)
            #expect(client.whenSendQueueDrains { withExtendedLifetime(holder) {} })
        }
        harness.run(until: { !server.delegates[0].received.isEmpty })
        server.connections[0].close()
        harness.run(until: { clientEvents.isDisconnected })
        #expect(sends.values == [false], "released once, and its send refused: the connection is closed")
        #expect(client.state == .disconnected)
    }

    @Test func peerCredentialsAreOursAndSurviveDisconnect() throws {
        let harness = try SocketHarness()
        let (_, server, client, clientEvents) = try harness.connectedPair()
        let accepted = server.connections[0]
        #expect(accepted.peer.uid == getuid())
        #expect(accepted.peer.pid == getpid())
        #expect(accepted.peer.isLocal)
        #expect(client.peer.pid == getpid())
        accepted.close()
        harness.run(until: { clientEvents.isDisconnected })
        #expect(client.peer.uid == getuid())
        #expect(client.peer.pid == getpid())
        #expect(accepted.peer.pid == getpid())
    }

    @Test func fileDescriptorsTravelBothWays() throws {
        let harness = try SocketHarness()
        let (_, server, client, clientEvents) = try harness.connectedPair()
        let toServer = FileDescriptors.memfd(named: "to-server", content: Array("client content".utf8))
        #expect(Array("hi".utf8).withUnsafeBytes { client.send($0, fd: toServer.rawValue) })
        toServer.close()  // the kernel holds its own reference now
        harness.run(until: { !server.delegates[0].receivedFDs.isEmpty })
        let atServer = server.delegates[0].receivedFDs[0]
        #expect(FileDescriptors.content(of: atServer.rawValue) == Array("client content".utf8))
        #expect(FileDescriptors.isCloseOnExec(atServer.rawValue))

        let toClient = FileDescriptors.memfd(named: "to-client", content: Array("server content".utf8))
        #expect(Array("yo".utf8).withUnsafeBytes { server.connections[0].send($0, fd: toClient.rawValue) })
        harness.run(until: { !clientEvents.receivedFDs.isEmpty })
        #expect(FileDescriptors.content(of: clientEvents.receivedFDs[0].rawValue) == Array("server content".utf8))
        #expect(clientEvents.received == Array("yo".utf8))
    }

    /// epoll watches connections edge-triggered: one readiness event must still deliver a burst
    /// that takes far more reads than the per-event bound (16), without new bytes arriving.
    @Test func aBurstLongerThanOneEventsReadsArrivesWhole() throws {
        let harness = try SocketHarness()
        let (mine, connection, events) = try harness.adoptedSocketPair(receiveSpace: 64)
        let burst = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(burst.withUnsafeBytes { write(mine.rawValue, $0.baseAddress, $0.count) } == burst.count)
        harness.run(until: { events.received.count == burst.count })  // 157 reads of 64 bytes
        #expect(events.received.count == burst.count)
        #expect(events.received.elementsEqual(burst), "the bytes arrive in order")
        #expect(connection.state == .connected)
    }

    /// An end of stream queued behind data brings no readiness event of its own.
    @Test func anEndOfStreamRightBehindDataIsReported() throws {
        let harness = try SocketHarness()
        let (mine, connection, events) = try harness.adoptedSocketPair()
        #expect([UInt8](repeating: 5, count: 100).withUnsafeBytes { write(mine.rawValue, $0.baseAddress, $0.count) } == 100)
        mine.close()
        harness.run(until: { events.isDisconnected })
        #expect(events.received.count == 100)
        #expect(events.events.last == .disconnected(nil))
        #expect(connection.state == .disconnected)
    }

    /// epoll reads stop at a short read (no EAGAIN read per message), but the kernel also ends
    /// a read after a message with fds: what follows it, with no new edge, is read too.
    @Test func messagesOnEitherSideOfOneWithAnFDArriveFromOneEvent() throws {
        let harness = try SocketHarness()
        let (mine, connection, events) = try harness.adoptedSocketPair()
        let attached = FileDescriptors.memfd(named: "between", content: Array("attached".utf8))
        #expect(Array("before".utf8).withUnsafeBytes { write(mine.rawValue, $0.baseAddress, $0.count) } == 6)
        #expect(FileDescriptors.sendWithFDs(mine.rawValue, bytes: Array("with".utf8), fds: [attached.rawValue]))
        #expect(Array("after".utf8).withUnsafeBytes { write(mine.rawValue, $0.baseAddress, $0.count) } == 5)
        harness.run(until: { events.received.count == 15 })
        #expect(events.received == Array("beforewithafter".utf8))
        #expect(events.receivedFDs.map { FileDescriptors.content(of: $0.rawValue) } == [Array("attached".utf8)])
        #expect(connection.state == .connected)
    }

    /// A peer that shuts down writing after its last bytes: both reach us from one event.
    @Test func aShutdownRightBehindDataIsReported() throws {
        let harness = try SocketHarness()
        let (mine, connection, events) = try harness.adoptedSocketPair()
        #expect([UInt8](repeating: 6, count: 50).withUnsafeBytes { write(mine.rawValue, $0.baseAddress, $0.count) } == 50)
        #expect(shutdown(mine.rawValue, Int32(SHUT_WR)) == 0)
        harness.run(until: { events.isDisconnected })
        #expect(events.received.count == 50)
        #expect(connection.state == .disconnected)
    }

    @Test func extraFileDescriptorsInOneMessageAreClosed() throws {
        let harness = try SocketHarness()
        let (mine, connection, events) = try harness.adoptedSocketPair()
        let probes = (0..<3).map { FileDescriptors.memfd(named: "probe-\($0)", content: [UInt8($0)]) }
        let before = FileDescriptors.openDescriptors()
        #expect(FileDescriptors.sendWithFDs(mine.rawValue, bytes: [1, 2, 3], fds: probes.map(\.rawValue)))
        harness.run(until: { events.received.count == 3 })
        #expect(events.receivedFDs.count == 1)
        #expect(FileDescriptors.content(of: events.receivedFDs[0].rawValue) == [0], "the first fd is the one kept")
        // Exactly one new descriptor exists: the kept one. The other two were closed.
        let after = FileDescriptors.openDescriptors()
        #expect(Set(after).subtracting(before) == [events.receivedFDs[0].rawValue])
        #expect(connection.state == .connected)
    }

    @Test func tooManyFileDescriptorsDropTheConnectionWithoutLeaks() throws {
        let harness = try SocketHarness()
        let (mine, connection, events) = try harness.adoptedSocketPair()
        let probes = (0..<12).map { FileDescriptors.memfd(named: "flood-\($0)", content: [UInt8($0)]) }
        let before = Set(FileDescriptors.openDescriptors())
        #expect(FileDescriptors.sendWithFDs(mine.rawValue, bytes: [9], fds: probes.map(\.rawValue)))
        harness.run(until: { events.isDisconnected })
        #expect(events.events == [.disconnected(.protocolViolation)])
        #expect(events.receivedFDs.isEmpty)
        #expect(connection.state == .disconnected)
        // Our end of the pair is closed too.
        #expect(Set(FileDescriptors.openDescriptors()).subtracting(before).isEmpty)
    }

    @Test func sendTimeoutDropsAPeerThatNeverReads() throws {
        let harness = try SocketHarness()
        var options = ConnectionOptions()
        options.sendTimeout = .milliseconds(10)
        options.socketSendBufferSize = 4096
        var serverOptions = ConnectionOptions()
        serverOptions.socketReceiveBufferSize = 4096
        let (_, server, client, clientEvents) = try harness.connectedPair(clientOptions: options, serverOptions: serverOptions)
        // The server's delegate never drains: stop watching by giving it no chance to read —
        // the peer is a raw, never-read socket.
        let stalled = StalledReader()
        server.connections[0].delegate = stalled
        #expect(client.send([UInt8](repeating: 1, count: 1024 * 1024)))
        let start = ContinuousClock.now
        harness.run(until: { clientEvents.isDisconnected })
        #expect(clientEvents.events.last == .disconnected(.sendTimeout))
        #expect(ContinuousClock.now - start >= .milliseconds(10))
        #expect(client.state == .disconnected)
    }

    @Test func sendQueueOverflowDropsThePeer() throws {
        let harness = try SocketHarness()
        var options = ConnectionOptions()
        options.maxQueuedSendBytes = 64 * 1024
        options.socketSendBufferSize = 4096
        var serverOptions = ConnectionOptions()
        serverOptions.socketReceiveBufferSize = 4096
        let (_, server, client, clientEvents) = try harness.connectedPair(clientOptions: options, serverOptions: serverOptions)
        let stalled = StalledReader()
        server.connections[0].delegate = stalled
        #expect(client.send([UInt8](repeating: 1, count: 16 * 1024)))
        var accepted = true
        for _ in 0..<16 where accepted { accepted = client.send([UInt8](repeating: 2, count: 16 * 1024)) }
        #expect(!accepted)
        harness.run(until: { clientEvents.isDisconnected })
        #expect(clientEvents.events.last == .disconnected(.sendQueueFull))
    }

    @Test func everyDescriptorWeCreateIsCloseOnExec() throws {
        let before = Set(FileDescriptors.openDescriptors())
        let harness = try SocketHarness()
        let (listener, server, client, clientEvents) = try harness.connectedPair()
        defer { client.close() }
        let memfd = FileDescriptors.memfd(named: "cloexec", content: [1])
        #expect([UInt8(0)].withUnsafeBytes { server.connections[0].send($0, fd: memfd.rawValue) })
        harness.run(until: { !clientEvents.receivedFDs.isEmpty })
        let ours = Set(FileDescriptors.openDescriptors()).subtracting(before)
        #expect(ours.count >= 6)  // epoll, eventfd, listener, two sockets, received fd (+memfd)
        for fd in ours {
            #expect(FileDescriptors.isCloseOnExec(fd), "fd \(fd) (\(FileDescriptors.target(of: fd))) lacks FD_CLOEXEC")
        }
        listener.close()
    }

    @Test(arguments: ["@perfetto-ipc-test-\(getpid())", "relative-test-\(getpid()).sock"])
    func abstractAndRelativeAddressesWork(address: String) throws {
        let harness = try SocketHarness()
        let (listener, server, client, _) = try harness.connectedPair(address: address)
        #expect(client.send([42]))
        harness.run(until: { server.delegates[0].received == [42] })
        #expect(server.connections[0].peer.pid == getpid())
        if !address.hasPrefix("@") { #expect(FileManager.default.fileExists(atPath: address)) }
        listener.close()
        if !address.hasPrefix("@") { #expect(!FileManager.default.fileExists(atPath: address), "socket file removed on close") }
    }

    @Test func abstractAddressLengthHasNoTrailingNul() throws {
        let harness = try SocketHarness()
        let name = "perfetto-ipc-len-\(getpid())"
        let server = RecordingListenerDelegate()
        let listener = try harness.transport.listen(at: "@" + name, options: .default, delegate: server)
        defer { listener.close() }
        // /proc/net/unix shows the bound name with '@' for the leading NUL; a trailing NUL
        // in the length would appear as an extra '@' at the end.
        // Read to the end: `String(contentsOfFile:)` stops after the first 4 KiB of a procfs
        // file, so the test passed only while few sockets were open on the machine.
        let bytes = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/net/unix")).readToEnd() ?? Data()
        let table = String(decoding: bytes, as: UTF8.self)
        #expect(table.contains("@\(name)\n"))
    }

    @Test func tcpLoopbackWorksWithRemoteIdentity() throws {
        let harness = try SocketHarness()
        let (listener, server, client, clientEvents) = try harness.connectedPair(address: "127.0.0.1:0")
        #expect(listener.address.hasPrefix("127.0.0.1:"))
        #expect(listener.address != "127.0.0.1:0")
        #expect(server.connections[0].peer.remoteAddress?.hasPrefix("127.0.0.1:") == true)
        #expect(!server.connections[0].peer.isLocal)
        #expect(client.send(Array("tcp".utf8)))
        harness.run(until: { server.delegates[0].received == Array("tcp".utf8) })
        #expect(server.connections[0].send([1, 2]))
        harness.run(until: { clientEvents.received == [1, 2] })
    }

    @Test(.enabled(if: FileDescriptors.hasIPv6Loopback))
    func tcpIPv6LoopbackWorks() throws {
        let harness = try SocketHarness()
        let (listener, server, client, _) = try harness.connectedPair(address: "[::1]:0")
        #expect(listener.address.hasPrefix("[::1]:"))
        #expect(client.send([6]))
        harness.run(until: { server.delegates[0].received == [6] })
        #expect(server.connections[0].peer.remoteAddress?.hasPrefix("[::1]:") == true)
    }

    @Test func staleSocketFileIsReplacedAndLiveOneIsNotStolen() throws {
        let harness = try SocketHarness()
        let path = harness.path("stale.sock")
        // A socket file whose listener is gone.
        FileDescriptors.boundUnixSocket(path: path).close()
        #expect(FileManager.default.fileExists(atPath: path))

        let first = try harness.transport.listen(at: path, options: .default, delegate: RecordingListenerDelegate())
        let error = #expect(throws: IPCError.self) {
            _ = try harness.transport.listen(at: path, options: .default, delegate: RecordingListenerDelegate())
        }
        #expect(error?.code == .addressInUse)
        #expect(error?.address == path)
        first.close()
    }

    /// Another user's file at the path would keep the service from starting (in /tmp anyone may
    /// put one there), and a listener there would take its clients: it is replaced. Our own
    /// file that is not a socket is left alone.
    @Test(.enabled(if: getuid() == 0, "needs root to make files of another uid"))
    func anotherUsersFileAtThePathIsReplacedOursIsNot() throws {
        let harness = try SocketHarness()
        let path = harness.path("squatted.sock")
        // A squatter's live socket, owned by nobody.
        let squatter = FileDescriptors.boundUnixSocket(path: path)
        #expect(listen(squatter.rawValue, 4) == 0)
        #expect(chown(path, 65534, 65534) == 0)
        let server = RecordingListenerDelegate()
        let listener = try harness.transport.listen(at: path, options: .default, delegate: server)
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_uid == getuid())
        let events = RecordingConnectionDelegate()
        let client = harness.transport.connect(to: path, options: .default, delegate: events)
        harness.run(until: { events.isConnected && server.connections.count == 1 })
        client.close()
        listener.close()
        squatter.close()

        // A squatter's regular file and symlink are replaced too.
        for makeFile in [{ FileManager.default.createFile(atPath: path, contents: Data("x".utf8)) }, { symlink("/etc/passwd", path) == 0 }] {
            #expect(makeFile())
            #expect(lchown(path, 65534, 65534) == 0)
            let replacing = try harness.transport.listen(at: path, options: .default, delegate: RecordingListenerDelegate())
            #expect(lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK)
            replacing.close()
        }
        #expect(FileManager.default.fileExists(atPath: "/etc/passwd"))

        // Our own file that is not a socket: a path given by mistake, never removed.
        #expect(FileManager.default.createFile(atPath: path, contents: Data("mine".utf8)))
        let error = #expect(throws: IPCError.self) {
            _ = try harness.transport.listen(at: path, options: .default, delegate: RecordingListenerDelegate())
        }
        #expect(error?.code == .addressInUse)
        #expect(FileManager.default.contents(atPath: path) == Data("mine".utf8))
    }

    @Test func aListenerClosingLeavesTheSocketFileOfAServiceStartedAtItsPathSince() throws {
        let harness = try SocketHarness()
        let path = harness.path("restarted.sock")
        let old = try harness.transport.listen(at: path, options: .default, delegate: RecordingListenerDelegate())
        // The old service's file is removed (by hand, a cleanup script) and a new one starts.
        #expect(unlink(path) == 0)
        let newServer = RecordingListenerDelegate()
        let new = try harness.transport.listen(at: path, options: .default, delegate: newServer)
        old.close()
        #expect(FileManager.default.fileExists(atPath: path), "the old listener removed the new one's file")

        let events = RecordingConnectionDelegate()
        let client = harness.transport.connect(to: path, options: .default, delegate: events)
        harness.run(until: { events.isConnected && newServer.connections.count == 1 })
        client.close()
        new.close()
        #expect(!FileManager.default.fileExists(atPath: path), "a listener removes its own file")
    }

    @Test func socketFileModeIsApplied() throws {
        let harness = try SocketHarness()
        var options = ConnectionOptions()
        options.socketFileMode = 0o660
        let path = harness.path("mode.sock")
        let listener = try harness.transport.listen(at: path, options: options, delegate: RecordingListenerDelegate())
        defer { listener.close() }
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: harness.directory.path)
        #expect(leftovers == ["mode.sock"], "no temporary socket file left behind")
    }

    @Test func adoptsAListeningDescriptor() throws {
        let harness = try SocketHarness()
        let path = harness.path("adopted.sock")
        let fd = FileDescriptors.boundUnixSocket(path: path, closeOnExec: false).release()
        #expect(listen(fd, 8) == 0)
        let server = RecordingListenerDelegate()
        let listener = try harness.transport.adoptListener(fd: fd, options: .default, delegate: server)
        #expect(FileDescriptors.isCloseOnExec(fd))
        let events = RecordingConnectionDelegate()
        let client = harness.transport.connect(to: path, options: .default, delegate: events)
        harness.run(until: { events.isConnected && server.connections.count == 1 })
        #expect(client.state == .connected)
        listener.close()
    }

    @Test func thousandConnectCloseCyclesLeaveNoDescriptors() throws {
        let harness = try SocketHarness()
        let server = RecordingListenerDelegate()
        let listener = try harness.transport.listen(at: harness.path(), options: .default, delegate: server)
        let before = FileDescriptors.openDescriptors()
        for _ in 0..<1000 {
            let events = RecordingConnectionDelegate()
            let client = harness.transport.connect(to: listener.address, options: .default, delegate: events)
            harness.run(until: { events.isConnected && server.connections.count == 1 })
            client.close()
            harness.run(until: { server.delegates.first?.isDisconnected == true })
            server.dropAll()
        }
        #expect(FileDescriptors.openDescriptors() == before)
        listener.close()
    }

    @Test func vsockAddressesParseAndFailCleanlyWithoutVsock() throws {
        #expect(try SocketAddress(parsing: "vsock://3:5000") == .vsock(cid: 3, port: 5000))
        let harness = try SocketHarness()
        let events = RecordingConnectionDelegate()
        let connection = harness.transport.connect(to: "vsock://1:5000", options: .default, delegate: events)
        harness.run(until: { events.isDisconnected || events.isConnected })
        connection.close()
        // On machines without vsock this is a clean failure carrying errno, never a crash.
        if case .failedToConnect = events.events.first { #expect(events.errors.first?.errno != nil) }
    }
}

/// A delegate that accepts bytes into a buffer but is never drained by anyone: the kernel
/// buffer fills and the sender stalls. (Reading is what it refuses to do beyond that.)
final class StalledReader: IPCConnectionDelegate {
    private let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {}
}

/// Counts and sums received bytes on the receiver's own loop thread.
final class CountingReceiver: IPCListenerDelegate, IPCConnectionDelegate, @unchecked Sendable {
    // @unchecked Sendable: `listener`, `connections` and `space` are touched only on the
    // receiver's loop; the counters are atomics read by the test thread.
    let count = Atomic<Int>(0)
    let checksum = Atomic<UInt64>(0)
    let ready = Atomic<Bool>(false)
    var listener: (any IPCListener)?
    private var connections: [any IPCConnection] = []
    private let space = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)

    func close() {
        listener?.close()
        connections.forEach { $0.close() }
        connections.removeAll()
    }
    func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
        connection.delegate = self
        connections.append(connection)
    }
    func connectionDidConnect(_ connection: any IPCConnection) {}
    func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {}
    func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {}
    func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer { space }
    func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        let sum = UnsafeRawBufferPointer(rebasing: space[0..<byteCount]).reduce(UInt64(0)) { $0 &+ UInt64($1) }
        checksum.add(sum, ordering: .relaxed)
        count.add(byteCount, ordering: .releasing)
    }
}

/// Sends on a connection from its deinit, as a Deferred released unresolved sends its rejection.
final class SendsOnRelease {
    final class Results { var values: [Bool] = [] }
    let connection: any IPCConnection
    let results: Results
    init(_ connection: any IPCConnection, _ results: Results) {
        self.connection = connection
        self.results = results
    }
    deinit { results.values.append(connection.send([1, 2, 3])) }
}
