// Loads the real Perfetto conversations copied from ../shared/interop into Fixtures/interop.
//
// Each `connN.decoded.txt` lists every frame the recording proxy saw, in order, with a summary
// line (direction, request id, what the frame is) and the frame's exact bytes. The raw streams
// `connN.c2s.bin` / `connN.s2c.bin` hold the same frames back to back.

import Foundation

/// One frame as the recording proxy described it.
struct CapturedFrame {
    enum Direction: String { case clientToServer = "C->S", serverToClient = "S->C" }
    enum Kind: Equatable {
        case bindService(name: String)
        case bindServiceReply(success: Bool, serviceID: UInt32, methods: [(UInt32, String)])
        case invokeMethod(service: String, method: String, dropReply: Bool)
        case reply(service: String, method: String, success: Bool, hasMore: Bool)
        case other(String)

        static func == (lhs: Kind, rhs: Kind) -> Bool { "\(lhs)" == "\(rhs)" }
    }

    var index: Int
    var direction: Direction
    var requestID: UInt64
    var kind: Kind
    var carriesFD: Bool
    /// The frame exactly as sent, length prefix included.
    var bytes: [UInt8]
}

/// One recorded connection: its two raw streams and the proxy's account of them.
struct CapturedConversation {
    var name: String
    var clientToServer: [UInt8]
    var serverToClient: [UInt8]
    var frames: [CapturedFrame]

    func frames(_ direction: CapturedFrame.Direction) -> [CapturedFrame] {
        frames.filter { $0.direction == direction }
    }

    static var fixturesRoot: URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/interop")
    }

    /// Every `connN` of every captured folder.
    static func all() throws -> [CapturedConversation] {
        let fm = FileManager.default
        var result: [CapturedConversation] = []
        for folder in try fm.contentsOfDirectory(atPath: fixturesRoot.path).sorted() {
            let dir = fixturesRoot.appendingPathComponent(folder)
            guard let files = try? fm.contentsOfDirectory(atPath: dir.path) else { continue }
            for file in files.sorted() where file.hasSuffix(".decoded.txt") {
                let conn = String(file.dropLast(".decoded.txt".count))
                result.append(try load(folder: folder, connection: conn))
            }
        }
        return result
    }

    static func load(folder: String, connection: String) throws -> CapturedConversation {
        let dir = fixturesRoot.appendingPathComponent(folder)
        func bytes(_ suffix: String) throws -> [UInt8] {
            [UInt8](try Data(contentsOf: dir.appendingPathComponent("\(connection).\(suffix)")))
        }
        let text = try String(
            contentsOf: dir.appendingPathComponent("\(connection).decoded.txt"), encoding: .utf8)
        return CapturedConversation(
            name: "\(folder)/\(connection)",
            clientToServer: try bytes("c2s.bin"),
            serverToClient: try bytes("s2c.bin"),
            frames: parse(text))
    }

    static func parse(_ text: String) -> [CapturedFrame] {
        var frames: [CapturedFrame] = []
        var pending: CapturedFrame?
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("hex: "), var frame = pending {
                frame.bytes = hexBytes(String(trimmed.dropFirst(5)))
                frames.append(frame)
                pending = nil
            } else if let frame = parseSummary(trimmed) {
                pending = frame
            }
        }
        return frames
    }

    /// `#3   t=0.0013 C->S len=21    req=2   InvokeMethod EchoService.Echo(...) [+1 fd via …]`
    private static func parseSummary(_ line: String) -> CapturedFrame? {
        guard line.hasPrefix("#"), let index = Int(line.dropFirst().prefix { $0.isNumber }) else {
            return nil
        }
        let tokens = line.split(separator: " ", omittingEmptySubsequences: true)
        guard tokens.count >= 6, let direction = CapturedFrame.Direction(rawValue: String(tokens[2])),
            tokens[4].hasPrefix("req="), let requestID = UInt64(tokens[4].dropFirst(4))
        else { return nil }
        // Everything after the `req=` token describes the frame.
        let reqRange = line.range(of: String(tokens[4]))!
        let description = line[reqRange.upperBound...].trimmingCharacters(in: .whitespaces)
        return CapturedFrame(
            index: index, direction: direction, requestID: requestID,
            kind: parseKind(description), carriesFD: description.contains("[+1 fd via SCM_RIGHTS]"),
            bytes: [])
    }

    private static func parseKind(_ text: String) -> CapturedFrame.Kind {
        if text.hasPrefix("BindServiceReply(") {
            let success = text.contains("success=True")
            let serviceID = UInt32(field(text, "service_id=") ?? "0") ?? 0
            var methods: [(UInt32, String)] = []
            if let open = text.range(of: "methods=["), let close = text.range(of: "]", range: open.upperBound..<text.endIndex) {
                for item in text[open.upperBound..<close.lowerBound].split(separator: ",") {
                    let parts = item.trimmingCharacters(in: .whitespaces).split(separator: ":")
                    if parts.count == 2, let id = UInt32(parts[0]) { methods.append((id, String(parts[1]))) }
                }
            }
            return .bindServiceReply(success: success, serviceID: serviceID, methods: methods)
        }
        if text.hasPrefix("BindService(\"") {
            let name = text.dropFirst("BindService(\"".count).prefix { $0 != "\"" }
            return .bindService(name: String(name))
        }
        if text.hasPrefix("InvokeMethod ") {
            let (service, method) = serviceAndMethod(text.dropFirst("InvokeMethod ".count))
            let dropReply = text.hasSuffix(" drop_reply") || text.contains(") drop_reply")
            return .invokeMethod(service: service, method: method, dropReply: dropReply)
        }
        if text.hasPrefix("Reply ") {
            let (service, method) = serviceAndMethod(text.dropFirst("Reply ".count))
            return .reply(
                service: service, method: method, success: text.contains("success=True"),
                hasMore: text.contains("has_more=True"))
        }
        return .other(text)
    }

    private static func serviceAndMethod(_ text: Substring) -> (String, String) {
        let qualified = text.prefix { $0 != "(" && $0 != " " }
        let parts = qualified.split(separator: ".", maxSplits: 1)
        return (String(parts.first ?? ""), String(parts.count > 1 ? parts[1] : ""))
    }

    private static func field(_ text: String, _ key: String) -> String? {
        guard let range = text.range(of: key) else { return nil }
        return String(text[range.upperBound...].prefix { $0.isNumber })
    }

    static func hexBytes(_ hex: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            bytes.append(UInt8(hexValue(high) << 4 | hexValue(low)))
        }
        return bytes
    }

    private static func hexValue(_ c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        default: return c - UInt8(ascii: "A") + 10
        }
    }
}
