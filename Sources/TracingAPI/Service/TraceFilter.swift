// Perfetto's trace filter (TraceConfig.trace_filter): bytecode that says, message type by message
// type, which fields of a packet may reach the consumer. The service runs every packet it reads
// out through it (trusted fields included; the trace stats are not), as traced does.
//
// The bytecode (bytecode_v2 if set, else bytecode) is packed varints: words of
// `field_id << 3 | opcode`, a message's rules in field order, ended by END_OF_MESSAGE (0); the
// last word is the FNV-1a checksum of the others. Opcodes: 1 a simple field, 2 a range of simple
// fields (next word: its length), 3 a nested message (next word: its message index), 4 a string
// to filter, 5 the same with a semantic type (next word). Message 0 describes `Trace`; packets
// are filtered from the message its field 1 (`packet`) names.
//
// Filtering copies allowed varints and fixed fields with their tags re-encoded, allowed
// length-delimited fields as they are, and recurses into allowed nested messages, whose
// length is rewritten in as many bytes as the original took (so the output is byte for byte
// what traced writes). A packet that does not parse, or nests deeper than `maxDepth`, is read
// out empty, as is one of which nothing is allowed (traced keeps one packet per packet).
//
// Not supported, and refused when asked for (so nothing is let through that a rule would have
// redacted): string filter rules (`string_filter_chain`, `string_filter_chain_v54`) and the
// bytecode overlay (`bytecode_overlay_v54`). Without rules, a string field to filter passes as
// it is, as in traced.

import IPCProtocol

/// A compiled trace filter.
struct TraceFilter {
    /// `config` compiled, or why it cannot be used (traced's messages where it has one).
    static func load(_ config: TraceConfig.TraceFilter) -> Result<TraceFilter, ConfigError> {
        if !config.stringFilterChain.rules.isEmpty || !config.stringFilterChainV54.rules.isEmpty {
            return .failure(ConfigError("trace_filter: string filter rules are not supported by this service"))
        }
        if !config.bytecodeOverlayV54.isEmpty {
            return .failure(ConfigError("trace_filter: bytecode_overlay_v54 is not supported by this service"))
        }
        do {
            return .success(try TraceFilter(config))
        } catch .invalidBytecode {
            return .failure(ConfigError("Trace filter bytecode invalid"))
        } catch {
            return .failure(ConfigError("Failed to set filter root."))
        }
    }

    /// Why a config's filter cannot be used.
    struct ConfigError: Error {
        let message: String
        init(_ message: String) { self.message = message }
    }

    enum LoadError: Error {
        case invalidBytecode
        /// Field 1 of message 0 (Trace.packet) is not an allowed nested message.
        case noPacketRoot
    }

    /// Nesting deeper than this drops the packet (a packet may nest a message in itself).
    static let maxDepth = 100

    // A rule word: the allowed bit and what the field is.
    private static let allowedBit: UInt32 = 1 << 31
    private static let simpleField: UInt32 = 0x7FFF_FFFF
    private static let stringField: UInt32 = 0x7FFF_FFFE
    private static let stringFieldWithType: UInt32 = 0x7FFF_0000
    private static let semanticTypeMask: UInt32 = 0xFFFF
    /// Fields below this are looked up by index; others in ranges.
    private static let directlyIndexed: UInt32 = 128

    private struct Message {
        var direct: [UInt32] = []
        var ranges: [(start: UInt32, end: UInt32, rule: UInt32)] = []
    }

    private let messages: [Message]
    private let root: Int

    init(_ config: TraceConfig.TraceFilter) throws(LoadError) {
        try self.init(bytecode: [UInt8](config.bytecodeV2.isEmpty ? config.bytecode : config.bytecodeV2))
    }

    init(bytecode: [UInt8]) throws(LoadError) {
        let words = try Self.verifiedWords(bytecode)
        var messages: [Message] = []
        var current = Message()
        var highestNested: UInt32 = 0
        var index = 0
        var endedWithMessage = true
        while index < words.count {
            let word = words[index]
            let opcode = word & 7
            let field = word >> 3
            let hasNext = index + 1 < words.count
            endedWithMessage = opcode == 0
            if field == 0 && opcode != 0 { throw .invalidBytecode }
            switch opcode {
            case 1, 3, 4, 5:
                var rule: UInt32
                switch opcode {
                case 1: rule = Self.simpleField
                case 4: rule = Self.stringField
                case 5:
                    guard hasNext else { throw .invalidBytecode }
                    index += 1
                    rule = Self.stringFieldWithType | (words[index] & Self.semanticTypeMask)
                default:
                    guard hasNext else { throw .invalidBytecode }
                    index += 1
                    rule = words[index]
                    highestNested = max(highestNested, rule)
                }
                if field < Self.directlyIndexed {
                    Self.allow(field, rule, in: &current)
                } else {
                    current.ranges.append((field, field &+ 1, Self.allowedBit | rule))
                }
            case 2:
                guard hasNext else { throw .invalidBytecode }
                index += 1
                let end = field &+ words[index]
                var id = field
                while id < end && id < Self.directlyIndexed {
                    Self.allow(id, Self.simpleField, in: &current)
                    id += 1
                }
                if id < end { current.ranges.append((id, end, Self.allowedBit | Self.simpleField)) }
            case 0:
                // Ranges come in field order and may not overlap.
                for (previous, next) in zip(current.ranges, current.ranges.dropFirst()) where next.start < previous.end {
                    throw .invalidBytecode
                }
                messages.append(current)
                current = Message()
            default:
                throw .invalidBytecode
            }
            index += 1
        }
        guard endedWithMessage, highestNested == 0 || Int(highestNested) < messages.count else { throw .invalidBytecode }
        self.messages = messages
        // The service filters packets, one level below Trace: start at what Trace.packet names.
        let packet = Self.rule(for: 1, in: messages.first)
        guard packet & Self.allowedBit != 0, Self.isNested(packet & ~Self.allowedBit) else { throw .noPacketRoot }
        root = Int(packet & ~Self.allowedBit)
    }

    /// `packet` with only what the filter allows, or nil if it does not parse.
    func filter(_ packet: UnsafeRawBufferPointer) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(packet.count)
        guard filterMessage(packet, message: root, depth: 0, into: &output) else { return nil }
        return output
    }

    // MARK: Filtering

    private func filterMessage(_ input: UnsafeRawBufferPointer, message: Int, depth: Int, into output: inout [UInt8]) -> Bool {
        guard depth < Self.maxDepth else { return false }
        var at = 0
        while at < input.count {
            guard let tag = ProtoEncoding.readVarint(input, at: &at) else { return false }
            let field = UInt32(truncatingIfNeeded: tag >> 3)
            guard field != 0 else { return false }
            let rule = Self.rule(for: field, in: message < messages.count ? messages[message] : nil)
            let allowed = rule & Self.allowedBit != 0
            let kind = rule & ~Self.allowedBit
            switch tag & 7 {
            case 0:
                guard let value = ProtoEncoding.readVarint(input, at: &at) else { return false }
                if allowed && kind == Self.simpleField {
                    ProtoEncoding.appendVarint(UInt64(field) << 3, to: &output)
                    ProtoEncoding.appendVarint(value, to: &output)
                }
            case 1, 5:
                let size = tag & 7 == 1 ? 8 : 4
                guard input.count - at >= size else { return false }
                if allowed && kind == Self.simpleField {
                    ProtoEncoding.appendVarint(UInt64(field) << 3 | (tag & 7), to: &output)
                    output.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[at..<(at + size)]))
                }
                at += size
            case 2:
                guard let length = ProtoEncoding.readVarint(input, at: &at), length <= UInt64(input.count - at) else { return false }
                let body = UnsafeRawBufferPointer(rebasing: input[at..<(at + Int(length))])
                at += Int(length)
                guard allowed else { continue }
                ProtoEncoding.appendVarint(UInt64(field) << 3 | 2, to: &output)
                if Self.isNested(kind) && length > 0 {
                    // The nested message's new length is written in as many bytes as its old
                    // length takes at least, as traced writes it: a length the producer padded
                    // (protozero writes nested lengths in 4 bytes) comes out unpadded.
                    let width = ProtoEncoding.varintSize(length)
                    let lengthAt = output.count
                    output.append(contentsOf: repeatElement(0, count: width))
                    guard filterMessage(body, message: Int(kind), depth: depth + 1, into: &output) else { return false }
                    Self.storePaddedVarint(UInt64(output.count - lengthAt - width), width: width, in: &output, at: lengthAt)
                } else {
                    ProtoEncoding.appendVarint(length, to: &output)
                    output.append(contentsOf: body)
                }
            default:
                return false  // groups and unknown wire types
            }
        }
        return true
    }

    // MARK: Rules

    private static func isNested(_ kind: UInt32) -> Bool { kind < stringFieldWithType }

    private static func allow(_ field: UInt32, _ rule: UInt32, in message: inout Message) {
        if message.direct.count <= Int(field) { message.direct.append(contentsOf: repeatElement(0, count: Int(field) + 1 - message.direct.count)) }
        message.direct[Int(field)] = allowedBit | rule
    }

    /// The rule of `field`: by index below 128, else by binary search in the ranges (sorted
    /// and disjoint once loaded), so that a consumer's bytecode of thousands of ranges cannot
    /// make reads, which run on the service's loop, slow for everyone.
    private static func rule(for field: UInt32, in message: Message?) -> UInt32 {
        guard let message else { return 0 }
        if field < UInt32(message.direct.count) { return message.direct[Int(field)] }
        var low = 0
        var high = message.ranges.count
        while low < high {
            let middle = (low + high) / 2
            let range = message.ranges[middle]
            if field < range.start {
                high = middle
            } else if field >= range.end {
                low = middle + 1
            } else {
                return range.rule
            }
        }
        return 0
    }

    // MARK: Encoding

    /// The bytecode's words without the checksum, if it parses and its checksum holds.
    private static func verifiedWords(_ bytecode: [UInt8]) throws(LoadError) -> [UInt32] {
        var words: [UInt32] = []
        let parsed: Bool = bytecode.withUnsafeBytes { bytes in
            var at = 0
            while at < bytes.count {
                guard let value = ProtoEncoding.readVarint(bytes, at: &at) else { return false }
                words.append(UInt32(truncatingIfNeeded: value))
            }
            return true
        }
        guard parsed, let checksum = words.popLast() else { throw .invalidBytecode }
        // FNV-1a over each word's four little-endian bytes, as Perfetto's FnvHasher.
        var hasher = FNV1a()
        for word in words { hasher.combine(value: word.littleEndian) }
        guard UInt32(truncatingIfNeeded: hasher.value) == checksum else { throw .invalidBytecode }
        return words
    }

    /// `value` as a varint of exactly `width` bytes (continuation bits on all but the last).
    private static func storePaddedVarint(_ value: UInt64, width: Int, in output: inout [UInt8], at offset: Int) {
        var value = value
        for index in 0..<width {
            let more: UInt8 = index < width - 1 ? 0x80 : 0
            output[offset + index] = UInt8(truncatingIfNeeded: value & 0x7F) | more
            value >>= 7
        }
    }
}
