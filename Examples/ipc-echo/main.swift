// Temporary stand-in until the RPC layer lands: round-trips a few frames through the codec.
import Foundation
import IPCProtocol

var frame = IPCFrame()
frame.requestID = 1
frame.msgBindService.serviceName = "EchoService"
let bytes = try FrameSerializer.serialize(frame)
let deserializer = try FrameDeserializer()
deserializer.receiveSpace.copyBytes(from: bytes)
try deserializer.endReceive(byteCount: bytes.count)
while let decoded = deserializer.popNextFrame() {
    print("encoded \(bytes.count) bytes, decoded: request \(decoded.requestID) bind \(decoded.msgBindService.serviceName)")
}
