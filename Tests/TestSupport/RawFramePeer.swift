// A hand-driven peer that speaks raw frames over a non-blocking socket: the other side of the
// Host and Client tests, so each side is tested against the wire, not against our own other
// half (Perfetto's FakeClient / FakeHost).

import CPerfettoIPCLinux
import Foundation
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

/// One end of a connection, driven by the test: send frames, then poll for what came back.
public final class RawFramePeer {
    public private(set) var socket: ScopedFD
    private let deserializer: FrameDeserializer
    /// Every frame received so far, in order.
    public private(set) var frames: [IPCFrame] = []
    /// The fd that arrived with each frame index (by the index of the first frame of the read).
    public private(set) var receivedFDs: [ScopedFD] = []
    /// The peer closed its end.
    public private(set) var sawEndOfStream = false
    /// Called while a send would block, to let the other side (often on this very thread's
    /// loop) drain the socket. Without it a large send to a same-thread peer would deadlock.
    public var pumpWhileBlocked: (() -> Void)?

    public init(socket: ScopedFD) {
        self.socket = socket
        deserializer = try! FrameDeserializer()
        let flags = fcntl(socket.rawValue, F_GETFL)
        _ = fcntl(socket.rawValue, F_SETFL, flags | O_NONBLOCK)
    }

    /// A connected pair: this peer, and the other end for the code under test.
    public static func pair() -> (peer: RawFramePeer, other: ScopedFD) {
        let (mine, theirs) = FileDescriptors.socketPair()
        return (RawFramePeer(socket: mine), theirs)
    }

    /// Sends `frame` (with `fd` attached), blocking until written.
    public func send(_ frame: IPCFrame, fd: Int32? = nil) {
        sendRaw(try! FrameSerializer.serialize(frame), fd: fd)
    }

    /// Sends raw bytes, blocking until written.
    public func sendRaw(_ bytes: [UInt8], fd: Int32? = nil) {
        if let fd {
            precondition(FileDescriptors.sendWithFDs(socket.rawValue, bytes: bytes, fds: [fd]))
            return
        }
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(socket.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { offset += n } else if errno != EAGAIN && errno != EINTR { return } else if let pumpWhileBlocked {
                pumpWhileBlocked()
            } else {
                var poller = pollfd(fd: socket.rawValue, events: Int16(POLLOUT), revents: 0)
                _ = Glibc.poll(&poller, 1, 1000)
            }
        }
    }

    /// Reads whatever is available without blocking. Returns the number of frames so far.
    @discardableResult
    public func poll() -> Int {
        while !sawEndOfStream {
            let space = deserializer.receiveSpace
            var iov = iovec(iov_base: space.baseAddress, iov_len: space.count)
            let controlSize = CPerfettoIPC_CMSG_SPACE(4 * MemoryLayout<Int32>.size)
            let (count, fds): (Int, [Int32]) = withUnsafeMutablePointer(to: &iov) { iovPointer in
                withUnsafeTemporaryAllocation(byteCount: controlSize, alignment: 8) { control in
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    message.msg_control = control.baseAddress
                    message.msg_controllen = controlSize
                    let n = recvmsg(socket.rawValue, &message, CPerfettoIPC_MSG_CMSG_CLOEXEC | Int32(MSG_DONTWAIT))
                    var fds: [Int32] = []
                    if n > 0, message.msg_controllen > 0, let header = CPerfettoIPC_CMSG_FIRSTHDR(&message) {
                        let payload = Int(header.pointee.cmsg_len) - CPerfettoIPC_CMSG_LEN(0)
                        let data = UnsafeRawPointer(CPerfettoIPC_CMSG_DATA(header)!)
                        for index in 0..<(payload / 4) { fds.append(data.loadUnaligned(fromByteOffset: index * 4, as: Int32.self)) }
                    }
                    return (n, fds)
                }
            }
            if count == 0 { sawEndOfStream = true; break }
            if count < 0 {
                if errno == EAGAIN || errno == EINTR { break }
                sawEndOfStream = true
                break
            }
            receivedFDs.append(contentsOf: fds.map(ScopedFD.init))
            do {
                try deserializer.endReceive(byteCount: count)
            } catch {
                sawEndOfStream = true
            }
            while let frame = deserializer.popNextFrame() { frames.append(frame) }
        }
        return frames.count
    }

    /// Closes this end.
    public func close() { socket.close() }
}

/// Frames tests write by hand.
public enum TestFrames {
    public static func bind(_ name: String, requestID: UInt64) -> IPCFrame {
        var frame = IPCFrame()
        frame.requestID = requestID
        frame.msgBindService.serviceName = name
        return frame
    }

    public static func invoke(
        serviceID: UInt32, methodID: UInt32, arguments: Data, requestID: UInt64, dropReply: Bool = false
    ) -> IPCFrame {
        var frame = IPCFrame()
        frame.requestID = requestID
        frame.msgInvokeMethod.serviceID = serviceID
        frame.msgInvokeMethod.methodID = methodID
        frame.msgInvokeMethod.argsProto = arguments
        frame.msgInvokeMethod.dropReply = dropReply
        return frame
    }

    public static func bindReply(requestID: UInt64, success: Bool, serviceID: UInt32 = 1, methods: [String] = []) -> IPCFrame {
        var frame = IPCFrame()
        frame.requestID = requestID
        frame.msgBindServiceReply.success = success
        if success {
            frame.msgBindServiceReply.serviceID = serviceID
            frame.msgBindServiceReply.methods = methods.enumerated().map { index, name in
                var info = IPCFrame.BindServiceReply.MethodInfo()
                info.id = UInt32(index + 1)
                info.name = name
                return info
            }
        }
        return frame
    }

    public static func reply(requestID: UInt64, success: Bool = true, hasMore: Bool = false, payload: Data = Data()) -> IPCFrame {
        var frame = IPCFrame()
        frame.requestID = requestID
        frame.msgInvokeMethodReply.success = success
        frame.msgInvokeMethodReply.hasMore = hasMore
        if success { frame.msgInvokeMethodReply.replyProto = payload }
        return frame
    }
}

/// A raw listening unix socket that accepts without blocking.
public final class RawListener {
    public let fd: ScopedFD
    public init(path: String) {
        fd = FileDescriptors.boundUnixSocket(path: path)
        precondition(listen(fd.rawValue, 8) == 0)
        _ = fcntl(fd.rawValue, F_SETFL, fcntl(fd.rawValue, F_GETFL) | O_NONBLOCK)
    }

    /// The next waiting connection as a raw peer, or nil if none is waiting.
    public func accept() -> RawFramePeer? {
        let accepted = Glibc.accept(fd.rawValue, nil, nil)
        return accepted >= 0 ? RawFramePeer(socket: ScopedFD(accepted)) : nil
    }
}
