// Serializing a frame and handing it to a connection, shared by Host and Client.

import Logging

extension IPCConnection {
    /// Frames `frame` and sends it with `fd` attached. Returns false if it could not be
    /// encoded (too large: logged) or the connection refused it.
    @discardableResult
    func sendFrame(_ frame: IPCFrame, fd: Int32? = nil, maxPayloadSize: Int, logger: Logger) -> Bool {
        let bytes: [UInt8]
        do {
            bytes = try FrameSerializer.serialize(frame, maxPayloadSize: maxPayloadSize)
        } catch {
            logger.error("cannot send frame for request \(frame.requestID): \(error)")
            return false
        }
        return bytes.withUnsafeBytes { send($0, fd: fd) }
    }
}
