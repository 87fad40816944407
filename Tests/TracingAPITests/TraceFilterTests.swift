// Perfetto's trace filter bytecode, compiled and run as traced runs it: rules per message type,
// nested messages recursed into with their lengths rewritten in place, a checksum that must
// hold, and a packet that does not parse dropped whole.

import Testing

@testable import TracingAPI

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Bytecode as Perfetto's filter compiler writes it: packed varint words, then their checksum.
enum FilterBytecode {
    static func simple(_ field: UInt32) -> [UInt32] { [field << 3 | 1] }
    static func range(_ field: UInt32, count: UInt32) -> [UInt32] { [field << 3 | 2, count] }
    static func nested(_ field: UInt32, message: UInt32) -> [UInt32] { [field << 3 | 3, message] }
    static let endOfMessage: [UInt32] = [0]

    static func encode(_ words: [UInt32], corruptChecksum: Bool = false) -> [UInt8] {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for word in words {
            for shift in stride(from: 0, to: 32, by: 8) {
                hash ^= UInt64((word >> UInt32(shift)) & 0xFF)
                hash = hash &* 0x0000_0100_0000_01B3
            }
        }
        var bytes: [UInt8] = []
        for word in words + [UInt32(truncatingIfNeeded: hash) ^ (corruptChecksum ? 1 : 0)] {
            ProtoEncoding.appendVarint(UInt64(word), to: &bytes)
        }
        return bytes
    }

    /// Trace{packet → 1}, TracePacket{timestamp, for_testing → 2}, TestEvent{str, counter}.
    static let timestampAndTestStrings = encode(
        nested(1, message: 1) + endOfMessage
            + simple(8) + nested(900, message: 2) + endOfMessage
            + simple(1) + simple(3) + endOfMessage)
}

@Suite("Trace filter")
struct TraceFilterTests {
    /// timestamp 5, for_testing { str "ab", seq_value 7, counter 9 }, trusted_uid 1000.
    static let packet: [UInt8] = [0x40, 0x05, 0xA2, 0x38, 0x08, 0x0A, 0x02, 0x61, 0x62, 0x10, 0x07, 0x18, 0x09, 0x18, 0xE8, 0x07]

    @Test func keepsWhatEachMessageAllowsAndRewritesNestedLengths() throws {
        let filter = try TraceFilter(bytecode: FilterBytecode.timestampAndTestStrings)
        let kept = Self.packet.withUnsafeBytes { filter.filter($0) }
        // seq_value and trusted_uid are gone; for_testing's length (8 → 6) is rewritten in place.
        #expect(kept == [0x40, 0x05, 0xA2, 0x38, 0x06, 0x0A, 0x02, 0x61, 0x62, 0x18, 0x09])
    }

    @Test func aNestedLengthKeepsTheWidthItHad() throws {
        // A TestEvent of 200 bytes (a two-byte length) filtered down to 4 bytes: the length is
        // written in two bytes still, as traced writes it.
        var input: [UInt8] = [0xA2, 0x38, 0xC8, 0x01, 0x0A, 0x02, 0x61, 0x62, 0x12, 0xC1, 0x01]
        input += [UInt8](repeating: 0x7A, count: 193)
        let filter = try TraceFilter(bytecode: FilterBytecode.timestampAndTestStrings)
        let kept = input.withUnsafeBytes { filter.filter($0) }
        #expect(kept == [0xA2, 0x38, 0x84, 0x00, 0x0A, 0x02, 0x61, 0x62])
    }

    @Test func aPaddedNestedLengthComesOutInTheWidthItsValueTakes() throws {
        // protozero writes nested lengths padded to 4 bytes; traced's filter writes the new
        // length in the bytes the old value takes at least (one here), and so does ours (the
        // padding stayed: outside tester, round seven).
        let input: [UInt8] = [0xA2, 0x38, 0x88, 0x80, 0x80, 0x00, 0x0A, 0x02, 0x61, 0x62, 0x10, 0x07, 0x18, 0x09]
        let filter = try TraceFilter(bytecode: FilterBytecode.timestampAndTestStrings)
        let kept = input.withUnsafeBytes { filter.filter($0) }
        #expect(kept == [0xA2, 0x38, 0x06, 0x0A, 0x02, 0x61, 0x62, 0x18, 0x09])
    }

    @Test func aFieldAllowedAsSimplePassesWhole() throws {
        let filter = try TraceFilter(bytecode: FilterBytecode.encode(
            FilterBytecode.nested(1, message: 1) + FilterBytecode.endOfMessage + FilterBytecode.simple(900) + FilterBytecode.endOfMessage))
        let kept = Self.packet.withUnsafeBytes { filter.filter($0) }
        #expect(kept == Array(Self.packet[2..<13]))
    }

    @Test func rangesAllowRunsOfFields() throws {
        let filter = try TraceFilter(bytecode: FilterBytecode.encode(
            FilterBytecode.nested(1, message: 1) + FilterBytecode.endOfMessage + FilterBytecode.range(3, count: 200)
                + FilterBytecode.endOfMessage))
        // 8 (timestamp) and 200 (below 203) pass; 900 and 203 do not.
        let input: [UInt8] = [0x40, 0x05, 0xC0, 0x0C, 0x01, 0xD8, 0x0C, 0x02, 0xA2, 0x38, 0x00]
        #expect(input.withUnsafeBytes { filter.filter($0) } == [0x40, 0x05, 0xC0, 0x0C, 0x01])
    }

    @Test func fieldsAreFoundAmongThousandsOfRanges() throws {
        var words = FilterBytecode.nested(1, message: 1) + FilterBytecode.endOfMessage
        for index in UInt32(0)..<3000 { words += FilterBytecode.range(200 + index * 10, count: 5) }
        let filter = try TraceFilter(bytecode: FilterBytecode.encode(words + FilterBytecode.endOfMessage))
        for field: UInt32 in [200, 204, 205, 209, 29_994, 29_995, 30_194, 30_195, 199] {
            var input: [UInt8] = []
            ProtoEncoding.appendVarint(UInt64(field) << 3, to: &input)
            input.append(0x01)
            let allowed = field >= 200 && field < 30_195 && (field - 200) % 10 < 5
            #expect(input.withUnsafeBytes { filter.filter($0) } == (allowed ? input : []), "field \(field)")
        }
    }

    @Test func packetsThatDoNotParseAreDropped() throws {
        let filter = try TraceFilter(bytecode: FilterBytecode.timestampAndTestStrings)
        let truncated: [UInt8] = [0xA2, 0x38, 0x08, 0x0A, 0x02]
        #expect(truncated.withUnsafeBytes { filter.filter($0) } == nil)
        let group: [UInt8] = [0x43]
        #expect(group.withUnsafeBytes { filter.filter($0) } == nil)
        // A message nested in itself past the depth limit.
        let selfNesting = try TraceFilter(bytecode: FilterBytecode.encode(
            FilterBytecode.nested(1, message: 1) + FilterBytecode.endOfMessage + FilterBytecode.nested(900, message: 1)
                + FilterBytecode.endOfMessage))
        var deep: [UInt8] = []
        for _ in 0..<(TraceFilter.maxDepth + 1) {
            var outer: [UInt8] = [0xA2, 0x38]
            ProtoEncoding.appendVarint(UInt64(deep.count), to: &outer)
            deep = outer + deep
        }
        #expect(deep.withUnsafeBytes { selfNesting.filter($0) } == nil)
    }

    @Test func badBytecodeIsRefusedWithTracedsMessages() {
        func error(_ bytecode: [UInt8], _ change: (inout TraceConfig.TraceFilter) -> Void = { _ in }) -> String? {
            var config = TraceConfig.TraceFilter()
            config.bytecode = Data(bytecode)
            change(&config)
            guard case .failure(let failure) = TraceFilter.load(config) else { return nil }
            return failure.message
        }
        let words = FilterBytecode.nested(1, message: 1) + FilterBytecode.endOfMessage + FilterBytecode.simple(900) + FilterBytecode.endOfMessage
        #expect(error(FilterBytecode.encode(words)) == nil)
        #expect(error(FilterBytecode.encode(words, corruptChecksum: true)) == "Trace filter bytecode invalid")
        #expect(error([]) == "Trace filter bytecode invalid")
        #expect(error([0xFF, 0xFF]) == "Trace filter bytecode invalid", "a varint that never ends")
        #expect(error(FilterBytecode.encode([900 << 3 | 7] + FilterBytecode.endOfMessage)) == "Trace filter bytecode invalid")
        #expect(error(FilterBytecode.encode(FilterBytecode.simple(0) + FilterBytecode.endOfMessage)) == "Trace filter bytecode invalid")
        #expect(error(FilterBytecode.encode(FilterBytecode.nested(1, message: 5) + FilterBytecode.endOfMessage)) == "Trace filter bytecode invalid")
        #expect(error(FilterBytecode.encode(FilterBytecode.simple(1))) == "Trace filter bytecode invalid", "no end of message")
        #expect(error(FilterBytecode.encode(FilterBytecode.range(200, count: 10) + FilterBytecode.range(205, count: 10) + FilterBytecode.endOfMessage))
            == "Trace filter bytecode invalid", "overlapping ranges")
        #expect(error(FilterBytecode.encode(FilterBytecode.simple(1) + FilterBytecode.endOfMessage)) == "Failed to set filter root.")
        // bytecode_v2 is used when present.
        #expect(error([0x00]) { $0.bytecodeV2 = Data(FilterBytecode.encode(words)) } == nil)
        // What this service cannot apply is refused, never skipped.
        #expect(error(FilterBytecode.encode(words)) {
            var rule = TraceConfig.TraceFilter.StringFilterRule()
            rule.regexPattern = "secret"
            $0.stringFilterChain.rules = [rule]
        } == "trace_filter: string filter rules are not supported by this service")
        #expect(error(FilterBytecode.encode(words)) { $0.bytecodeOverlayV54 = Data([0x00]) }
            == "trace_filter: bytecode_overlay_v54 is not supported by this service")
    }
}
