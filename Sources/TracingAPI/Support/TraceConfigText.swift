// Trace configs in Perfetto's text format (`buffers { size_kb: 1024 } duration_ms: 2000`), as
// `perfetto --txt` reads them. SwiftProtobuf parses the text; when it refuses it, the config is
// split into its fields (with their lines) and each is tried on its own, inside its enclosing
// blocks, so the error names the field and the line that are wrong.

import SwiftProtobuf

/// A text config that does not parse: what is wrong, and where.
public struct TraceConfigTextError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The line (1-based) of the offending field, when it could be found.
    public var line: Int?
    /// The field's name as written, when it could be found.
    public var field: String?
    /// What is wrong.
    public var reason: String

    public var description: String {
        switch (line, field) {
        case let (line?, field?): return "line \(line): \(reason) \"\(field)\""
        case let (line?, nil): return "line \(line): \(reason)"
        default: return reason
        }
    }
}

extension TraceConfig {
    /// Parses a config in Perfetto's text format. Field names are those of Perfetto's protos.
    ///
    /// - Throws: ``TraceConfigTextError`` naming the line and the field that are wrong (an
    ///   unknown field, a value of the wrong kind, an unknown enum value).
    public init(textFormat text: String) throws(TraceConfigTextError) {
        do {
            self = try TraceConfig(textFormatString: text)
        } catch {
            throw TraceConfigTextLocator(text: text).locate(error)
        }
    }
}

/// Finds the field a parse error comes from.
struct TraceConfigTextLocator {
    /// One field as written: `name: value` or `name { ... }`.
    struct Entry {
        var name: String
        var line: Int
        /// The text of the whole field, name included.
        var text: Substring
        /// Fields inside its block (nil for `name: value`).
        var children: [Entry]?
        /// The opening and closing text around the children of a block.
        var open: Substring = ""
        var close: Substring = ""
    }

    let text: String

    func locate(_ error: any Error) -> TraceConfigTextError {
        let reason = Self.reason(error)
        guard let entries = Parser(text: text).entries() else { return TraceConfigTextError(reason: reason) }
        return find(in: entries, path: []) ?? TraceConfigTextError(reason: reason)
    }

    /// The first entry that fails when written alone inside `path` (the blocks around it).
    private func find(in entries: [Entry], path: [Entry]) -> TraceConfigTextError? {
        for entry in entries {
            let alone = wrap(String(entry.text), in: path)
            guard let failure = Self.failure(alone) else { continue }
            if let children = entry.children, !children.isEmpty,
               Self.failure(wrap(String(entry.open) + String(entry.close), in: path)) == nil,
               let inner = find(in: children, path: path + [entry]) {
                return inner
            }
            return TraceConfigTextError(line: entry.line, field: entry.name, reason: Self.reason(failure))
        }
        return nil
    }

    private func wrap(_ inner: String, in path: [Entry]) -> String {
        path.reversed().reduce(inner) { text, block in String(block.open) + " " + text + " " + String(block.close) }
    }

    private static func failure(_ text: String) -> (any Error)? {
        do {
            _ = try TraceConfig(textFormatString: text)
            return nil
        } catch {
            return error
        }
    }

    private static func reason(_ error: any Error) -> String {
        guard let error = error as? TextFormatDecodingError else { return "the config does not parse" }
        switch error {
        case .unknownField: return "unknown field"
        case .unrecognizedEnumValue: return "unknown enum value in"
        case .malformedNumber: return "not a valid number in"
        case .malformedText: return "malformed text at"
        case .invalidUTF8: return "invalid UTF-8 in"
        case .truncated: return "the config ends too early in"
        default: return "cannot parse"
        }
    }

    /// A tokenizer just good enough to find fields, their lines and their blocks.
    struct Parser {
        let text: String
        private var index: String.Index
        private var line = 1

        init(text: String) {
            self.text = text
            index = text.startIndex
        }

        func entries() -> [Entry]? {
            var parser = self
            return parser.block(until: nil)
        }

        private mutating func block(until closer: Character?) -> [Entry]? {
            var entries: [Entry] = []
            while true {
                skipSpaceAndComments()
                guard index < text.endIndex else { return closer == nil ? entries : nil }
                if let closer, text[index] == closer {
                    return entries
                }
                if text[index] == "," || text[index] == ";" {
                    text.formIndex(after: &index)
                    continue
                }
                guard let entry = field() else { return nil }
                entries.append(entry)
            }
        }

        private mutating func field() -> Entry? {
            let start = index
            let fieldLine = line
            let name = identifier()
            guard !name.isEmpty else { return nil }
            skipSpaceAndComments()
            var hasColon = false
            if index < text.endIndex, text[index] == ":" {
                hasColon = true
                text.formIndex(after: &index)
                skipSpaceAndComments()
            }
            guard index < text.endIndex else { return nil }
            let opener = text[index]
            if opener == "{" || opener == "<" {
                let closer: Character = opener == "{" ? "}" : ">"
                text.formIndex(after: &index)
                let open = text[start..<index]
                guard let children = block(until: closer) else { return nil }
                let closeStart = index
                text.formIndex(after: &index)
                return Entry(
                    name: name, line: fieldLine, text: text[start..<index], children: children, open: open,
                    close: text[closeStart..<index])
            }
            guard hasColon else { return nil }
            if opener == "[" {
                guard skipBalanced(from: "[", to: "]") else { return nil }
            } else {
                skipScalar()
            }
            return Entry(name: name, line: fieldLine, text: text[start..<index], children: nil)
        }

        private mutating func identifier() -> String {
            var name = ""
            while index < text.endIndex, text[index].isLetter || text[index].isNumber || text[index] == "_"
                || text[index] == "." || text[index] == "[" && name.isEmpty {
                name.append(text[index])
                text.formIndex(after: &index)
            }
            return name
        }

        private mutating func skipScalar() {
            if index < text.endIndex, text[index] == "\"" || text[index] == "'" {
                skipString()
                // Adjacent strings concatenate.
                skipSpaceAndComments()
                if index < text.endIndex, text[index] == "\"" || text[index] == "'" { skipScalar() }
                return
            }
            while index < text.endIndex, !text[index].isWhitespace, !"{}<>[],;#".contains(text[index]) {
                text.formIndex(after: &index)
            }
        }

        private mutating func skipString() {
            let quote = text[index]
            text.formIndex(after: &index)
            while index < text.endIndex, text[index] != quote {
                if text[index] == "\\" { text.formIndex(after: &index) }
                if index < text.endIndex {
                    if text[index].isNewline { line += 1 }
                    text.formIndex(after: &index)
                }
            }
            if index < text.endIndex { text.formIndex(after: &index) }
        }

        private mutating func skipBalanced(from opener: Character, to closer: Character) -> Bool {
            var depth = 0
            while index < text.endIndex {
                let character = text[index]
                if character == "\"" || character == "'" {
                    skipString()
                    continue
                }
                if character.isNewline { line += 1 }
                text.formIndex(after: &index)
                if character == opener { depth += 1 }
                if character == closer {
                    depth -= 1
                    if depth == 0 { return true }
                }
            }
            return false
        }

        private mutating func skipSpaceAndComments() {
            while index < text.endIndex {
                let character = text[index]
                if character == "#" {
                    while index < text.endIndex, !text[index].isNewline { text.formIndex(after: &index) }
                } else if character.isWhitespace {
                    if character.isNewline { line += 1 }
                    text.formIndex(after: &index)
                } else {
                    return
                }
            }
        }
    }
}
