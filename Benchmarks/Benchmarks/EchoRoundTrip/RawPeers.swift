// Peers that speak just enough of the wire to serve or drive one side of an echo, and that
// allocate nothing per round trip: with one of them on the other end, package-benchmark's
// malloc count is that of the real side alone.
//   RawEchoHost:   answers the bind, then every InvokeMethod with a fixed Echo reply
//                  (patched with the request id), on a thread of its own.
//   RawEchoClient: binds, then sends one fixed InvokeMethod and reads the reply, on the
//                  caller's thread.
import Foundation
import IPCEchoService
import IPCProtocol

#if canImport(Glibc)
import Glibc
#endif

enum RawWire {
    static func frame(_ frame: IPCFrame) -> [UInt8] {
        try! FrameSerializer.serialize(frame)
    }

    /// Reads one frame's payload into `buffer` (capacity preallocated); returns its size.
    static func readFrame(_ fd: Int32, into buffer: inout [UInt8]) -> Int? {
        guard EchoBenchmark.readFully(fd, &buffer, count: 4) else { return nil }
        let size = Int(UInt32(buffer[0]) | UInt32(buffer[1]) << 8 | UInt32(buffer[2]) << 16 | UInt32(buffer[3]) << 24)
        guard size <= buffer.count, EchoBenchmark.readFully(fd, &buffer, count: size) else { return nil }
        return size
    }

    static func echoReply(payloadSize: Int) -> Pfpeers_EchoReply {
        var reply = Pfpeers_EchoReply()
        reply.data = Data(repeating: 0x61, count: payloadSize)
        return reply
    }
}

/// Serves EchoService on `fd` from a thread; stops at end of stream.
final class RawEchoHost: @unchecked Sendable {
    private let thread: Thread

    init(fd: Int32, payloadSize: Int) {
        var bindReply = IPCFrame()
        bindReply.msgBindServiceReply.success = true
        bindReply.msgBindServiceReply.serviceID = 1
        bindReply.msgBindServiceReply.methods = ["Echo", "StreamEcho"].enumerated().map { index, name in
            var method = IPCFrame.BindServiceReply.MethodInfo()
            method.id = UInt32(index + 1)
            method.name = name
            return method
        }
        // The reply's IPCFrame without request_id: [0x32 len InvokeMethodReply{...}].
        var replyFrame = IPCFrame()
        replyFrame.msgInvokeMethodReply.success = true
        replyFrame.msgInvokeMethodReply.hasMore = false
        replyFrame.msgInvokeMethodReply.replyProto = try! RawWire.echoReply(payloadSize: payloadSize).serializedBytes()
        let suffix: [UInt8] = try! replyFrame.serializedBytes()
        let bindTemplate = bindReply
        thread = Thread {
            var input = [UInt8](repeating: 0, count: 256 * 1024)
            var output = [UInt8](repeating: 0, count: suffix.count + 32)
            while let size = RawWire.readFrame(fd, into: &input) {
                // request_id (field 2) is the first field our client writes.
                guard size > 1, input[0] == 0x10 else { continue }
                var requestID: UInt64 = 0, shift: UInt64 = 0, index = 1
                while index < size {
                    let byte = input[index]
                    requestID |= UInt64(byte & 0x7F) << shift
                    shift += 7
                    index += 1
                    if byte & 0x80 == 0 { break }
                }
                if size > index, input[index] == 0x1A {  // msg_bind_service
                    var bound = bindTemplate
                    bound.requestID = requestID
                    let bytes = RawWire.frame(bound)
                    guard EchoBenchmark.writeFully(fd, bytes, count: bytes.count) else { break }
                    continue
                }
                // [len][0x10 varint(id)][suffix]
                var length = 5
                output[4] = 0x10
                var rest = requestID
                while rest >= 0x80 {
                    output[length] = UInt8(rest & 0x7F) | 0x80
                    rest >>= 7
                    length += 1
                }
                output[length] = UInt8(rest)
                length += 1
                for byte in suffix {
                    output[length] = byte
                    length += 1
                }
                let payload = UInt32(length - 4)
                output[0] = UInt8(truncatingIfNeeded: payload)
                output[1] = UInt8(truncatingIfNeeded: payload >> 8)
                output[2] = UInt8(truncatingIfNeeded: payload >> 16)
                output[3] = UInt8(truncatingIfNeeded: payload >> 24)
                guard EchoBenchmark.writeFully(fd, output, count: length) else { break }
            }
            close(fd)
        }
        thread.start()
    }
}

/// Drives an EchoService host over `fd` with blocking reads and writes on the caller's thread.
final class RawEchoClient {
    private let fd: Int32
    private let request: [UInt8]
    private var input = [UInt8](repeating: 0, count: 256 * 1024)

    /// Binds EchoService (waiting for the reply) and prepares one Echo call.
    init(fd: Int32, payloadSize: Int) {
        self.fd = fd
        var bind = IPCFrame()
        bind.requestID = 1
        bind.msgBindService.serviceName = "EchoService"
        let bindBytes = RawWire.frame(bind)
        precondition(EchoBenchmark.writeFully(fd, bindBytes, count: bindBytes.count))
        _ = RawWire.readFrame(fd, into: &input)
        var echo = Pfpeers_EchoRequest()
        echo.data = Data(repeating: 0x61, count: payloadSize)
        var invoke = IPCFrame()
        invoke.requestID = 2
        invoke.msgInvokeMethod.serviceID = 1
        invoke.msgInvokeMethod.methodID = 1
        invoke.msgInvokeMethod.argsProto = try! echo.serializedBytes()
        invoke.msgInvokeMethod.dropReply = false
        request = RawWire.frame(invoke)
    }

    /// One Echo call, answered.
    func roundTrip() {
        precondition(EchoBenchmark.writeFully(fd, request, count: request.count))
        precondition(RawWire.readFrame(fd, into: &input) != nil)
    }

    func close() { Glibc.close(fd) }
}
