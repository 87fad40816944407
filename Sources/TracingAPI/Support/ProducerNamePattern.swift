// The producer-name patterns of trace configs (`producer_name_regex_filter` of a data source,
// `producer_name_regex` of a trigger), matched against the whole producer name as Perfetto's
// traced does: `base::Regex::FullMatch`, whose backends (PCRE2 or RE2 where Perfetto is built
// with them, `std::regex` in ECMAScript mode otherwise, as on this machine) all read the common
// Perl/ECMAScript syntax. Older traced versions read POSIX extended patterns; current ones do
// not, and a pattern such as `\w+` silently matched nothing here when this read ERE (outside
// tester, round seven).
//
// The patterns come from consumers and are hostile input. A backtracking matcher (std::regex,
// PCRE2, Swift's Regex) takes exponential time on `(a*)*b`: Perfetto's traced spins at 100% on
// it against a 16-character name. So a pattern is parsed here, compiled to a Thompson NFA and run
// over the name's Unicode scalars with a set of states, never backtracking: a match costs
// O(NFA size × name length), whatever the pattern (RE2's guarantee). And where traced aborts on a
// pattern it cannot compile (`CreateOrCheck`), here the config is refused, saying which.
//
// Supported (the syntax RE2, PCRE2 and ECMAScript share):
// - literals; `.` matches any scalar but `\n` and `\r` (std::regex's ECMAScript `.`);
// - escapes: `\d \D \w \W \s \S` (ASCII classes: digits, `[A-Za-z0-9_]`, ` \t\n\v\f\r`),
//   `\b \B` (word boundaries), `\t \n \r \f \v \0`, `\xHH`, `\uHHHH`, `\cX`, and a backslash
//   before any character that is not an ASCII letter or digit, which is that character;
// - bracket expressions `[abc]`, `[a-z]`, `[^...]` with those escapes inside (`\b` there is a
//   backspace, `\]`, `\\`, `\-` literals), a `-` first or last a literal, `[]` matching nothing
//   and `[^]` anything, the POSIX classes `[:alpha:]`, `[:digit:]`, `[:alnum:]`, `[:space:]`,
//   `[:upper:]`, `[:lower:]`, `[:punct:]`, `[:xdigit:]`, `[:blank:]`, `[:cntrl:]`, `[:graph:]`,
//   `[:print:]` (and libstdc++'s `[:d:]`, `[:s:]`, `[:w:]`, names in any case) in ASCII;
// - groups `( )` and `(?: )`, alternation `|` (empty alternatives too), the quantifiers `* + ?`
//   `{n}` `{n,}` `{n,m}` (n, m at most 1,000, as in RE2) and their lazy forms `*?` ... (which match the same
//   names: only a whole match counts), after a character, a class or a group; the anchors `^`
//   and `$` (the start and the end of the name).
// Anything else does not compile: back-references (`\1`, `\k<x>`; no linear-time matcher has
// them, RE2 neither), lookaround `(?=`, `(?!`, `(?<=`, named groups and flags `(?i)`, `\p{..}`,
// other escaped letters (`\q`), a `{` that does not start a quantifier, quantified anchors
// (`^*`) or stacked quantifiers (`a**`), a pattern longer than 1,024 scalars, nested deeper than
// 100 groups, or whose NFA would take more than 10,000 states (the size is computed before
// anything is emitted, and the compiler also stops after a fixed amount of work). A config with a
// pattern that does not compile is refused (EnableTracing); one that arrives otherwise
// (ChangeTraceConfig) matches nothing. A match whose cost (NFA states × name length) would pass 4
// million steps, some 20 ms, is refused too (no match): producer names are the producers' words
// and may be long, so a large pattern against a long name must not hold the loop either.
//
// One difference stays on purpose: std::regex and PCRE2 (without its UTF mode) read the bytes of
// the UTF-8 name, this matcher its Unicode scalars, as RE2 does, so `.` and a bracket expression
// read a whole non-ASCII scalar here (`a.c` matches "aéc"). Patterns and names in ASCII, as
// producer names are, match the same.

/// A producer-name pattern of a trace config (Perl/ECMAScript syntax, as RE2 reads it),
/// compiled to match in linear time.
///
/// ```swift
/// let pattern = ProducerNamePattern("com.example.*")
/// pattern?.wholeMatch("com.example.app")  // true
/// ```
struct ProducerNamePattern: Sendable {
    /// The longest pattern that compiles, in Unicode scalars.
    static let maxPatternLength = 1024
    /// The largest count a `{n,m}` quantifier may give.
    static let maxRepetition = 1000
    /// The deepest nesting of groups that compiles.
    static let maxGroupDepth = 100
    /// The most NFA states a pattern may compile to.
    static let maxStates = 10_000
    /// The most steps (NFA states × name length in scalars) a match may take; a longer match
    /// answers false.
    static let maxMatchSteps = 4_000_000

    private let program: [Instruction]

    /// Compiles `pattern`; nil when it has a syntax error, uses a feature outside the supported
    /// subset (back-references, lookaround, unknown escapes, stacked quantifiers, ...) or is too
    /// large (see the limits above).
    init?(_ pattern: String) {
        let scalars = Array(pattern.unicodeScalars)
        guard scalars.count <= Self.maxPatternLength else { return nil }
        var parser = Parser(scalars: scalars)
        guard let node = parser.parse() else { return nil }
        // The size is known before anything is emitted: no pattern makes the compiler loop
        // over copies of its items only to be refused at the end.
        guard node.stateCount < Self.maxStates else { return nil }  // and one for `accept`
        var compiler = Compiler()
        guard compiler.emit(node), compiler.append(.accept) else { return nil }
        program = compiler.program
    }

    /// Whether the pattern matches all of `name` (not merely a part of it).
    func wholeMatch(_ name: String) -> Bool {
        var steps = Self.maxMatchSteps
        return wholeMatch(name, stepsLeft: &steps) == true
    }

    /// The steps matching `name` may take at most: NFA states × (name length + 1).
    func matchSteps(_ name: String) -> Int {
        matchSteps(length: name.unicodeScalars.count)
    }

    private func matchSteps(length: Int) -> Int {
        program.count * (length + 1)
    }

    /// Whether the pattern matches all of `name`, charging the match's steps (at most
    /// ``matchSteps(_:)``, charged whole) to `stepsLeft`; nil, and nothing charged, when
    /// `stepsLeft` cannot pay for it.
    func wholeMatch(_ name: String, stepsLeft: inout Int) -> Bool? {
        let input = Array(name.unicodeScalars)
        let steps = matchSteps(length: input.count)
        guard steps <= min(stepsLeft, Self.maxMatchSteps) else { return nil }
        stepsLeft -= steps
        var current = StateSet(count: program.count)
        var next = StateSet(count: program.count)
        var stack: [Int] = []
        addState(0, between: nil, and: input.first?.value, to: &current, stack: &stack)
        for (index, scalar) in input.enumerated() {
            next.removeAll()
            let following = index + 1 < input.count ? input[index + 1].value : nil
            for state in current.members {
                guard case .scalar(let set) = program[state], set.contains(scalar.value) else { continue }
                addState(state + 1, between: scalar.value, and: following, to: &next, stack: &stack)
            }
            if next.members.isEmpty { return false }
            swap(&current, &next)
        }
        return current.members.contains { if case .accept = program[$0] { true } else { false } }
    }

    /// Adds `state` and every state reachable from it without reading a scalar, at the position
    /// between the scalars `before` and `after` (nil at the start and at the end of the name).
    private func addState(_ state: Int, between before: UInt32?, and after: UInt32?, to set: inout StateSet, stack: inout [Int]) {
        stack.append(state)
        while let state = stack.popLast() {
            guard set.insert(state) else { continue }
            switch program[state] {
            case .jump(let target):
                stack.append(target)
            case .split(let first, let second):
                stack.append(second)
                stack.append(first)
            case .start:
                if before == nil { stack.append(state + 1) }
            case .end:
                if after == nil { stack.append(state + 1) }
            case .wordBoundary(let wanted):
                let isBoundary = ScalarSet.isWord(before) != ScalarSet.isWord(after)
                if isBoundary == wanted { stack.append(state + 1) }
            case .scalar, .accept:
                break
            }
        }
    }
}

// MARK: - Scalar sets

/// A set of Unicode scalar values, as sorted, disjoint ranges.
private struct ScalarSet: Sendable {
    static let maxScalar: UInt32 = 0x10FFFF

    /// What `.` matches: anything but `\n` and `\r`, as std::regex's ECMAScript `.`.
    static let dot = ScalarSet([0...0x09, 0x0B...0x0C, 0x0E...maxScalar])
    /// `\d`, `\w`, `\s`, in ASCII: the bracket classes `[:d:]`, `[:w:]`, `[:s:]`.
    static let digit = ScalarSet(namedClassRanges("d")!)
    static let word = ScalarSet(namedClassRanges("w")!)
    static let space = ScalarSet(namedClassRanges("s")!)

    /// Whether `value` is a word character (`\w`); nil, the edge of the name, is not.
    static func isWord(_ value: UInt32?) -> Bool {
        guard let value else { return false }
        return value < 0x80 && word.contains(value)
    }

    private(set) var ranges: [ClosedRange<UInt32>]

    /// The union of `ranges`, in any order and overlapping or not (sorted once).
    init(_ ranges: [ClosedRange<UInt32>]) {
        var merged: [ClosedRange<UInt32>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, range.lowerBound <= last.upperBound &+ 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        self.ranges = merged
    }

    init(scalar: UInt32) {
        ranges = [scalar...scalar]
    }

    func contains(_ value: UInt32) -> Bool {
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < value {
                low = middle + 1
            } else if ranges[middle].lowerBound > value {
                high = middle
            } else {
                return true
            }
        }
        return false
    }

    func inverted() -> ScalarSet {
        var result: [ClosedRange<UInt32>] = []
        var next: UInt32 = 0
        for range in ranges {
            if range.lowerBound > next { result.append(next...(range.lowerBound - 1)) }
            guard range.upperBound < Self.maxScalar else { return ScalarSet(result) }
            next = range.upperBound + 1
        }
        result.append(next...Self.maxScalar)
        return ScalarSet(result)
    }
}

/// The ranges of a named class of a bracket expression (`[:alpha:]`), in ASCII; nil for a
/// name libstdc++'s `regex_traits::lookup_classname` does not know. The name is in any case.
private func namedClassRanges(_ name: String) -> [ClosedRange<UInt32>]? {
    let digit: [ClosedRange<UInt32>] = [0x30...0x39]
    let upper: [ClosedRange<UInt32>] = [0x41...0x5A]
    let lower: [ClosedRange<UInt32>] = [0x61...0x7A]
    let space: [ClosedRange<UInt32>] = [0x09...0x0D, 0x20...0x20]
    switch name.lowercased() {
    case "alpha": return upper + lower
    case "digit", "d": return digit
    case "alnum": return digit + upper + lower
    case "w": return digit + upper + lower + [0x5F...0x5F]
    case "space", "s": return space
    case "upper": return upper
    case "lower": return lower
    case "punct": return [0x21...0x2F, 0x3A...0x40, 0x5B...0x60, 0x7B...0x7E]
    case "xdigit": return digit + [0x41...0x46, 0x61...0x66]
    case "blank": return [0x09...0x09, 0x20...0x20]
    case "cntrl": return [0x00...0x1F, 0x7F...0x7F]
    case "graph": return [0x21...0x7E]
    case "print": return [0x20...0x7E]
    default: return nil
    }
}

// MARK: - Parsing

/// A parsed pattern.
private indirect enum Node {
    /// One scalar out of a set.
    case scalar(ScalarSet)
    /// `^`: the start of the name.
    case start
    /// `$`: the end of the name.
    case end
    /// `\b` (true) or `\B` (false): a word boundary, or none.
    case wordBoundary(Bool)
    /// Each in turn (empty: matches the empty string).
    case sequence([Node])
    /// Any one of them.
    case choice([Node])
    /// The node `min` to `max` times (`max` nil: unbounded). A node that can only match the
    /// empty string is only ever repeated `{0,1}`, and one that compiles to no state never (see
    /// `Parser.repeated(_:min:max:)`).
    case repeated(Node, min: Int, max: Int?)

    /// The NFA states the node compiles to, saturating past ``ProducerNamePattern/maxStates``;
    /// computed over the tree, without expanding repetitions.
    var stateCount: Int {
        let cap = ProducerNamePattern.maxStates + 1
        switch self {
        case .scalar, .start, .end, .wordBoundary:
            return 1
        case .sequence(let items):
            return items.reduce(0) { Swift.min(cap, $0 + $1.stateCount) }
        case .choice(let alternatives):
            let states = alternatives.reduce(0) { Swift.min(cap, $0 + $1.stateCount) }
            return Swift.min(cap, states + 2 * (alternatives.count - 1))
        case .repeated(let item, let min, let max):
            let size = item.stateCount
            guard let max else { return Swift.min(cap, size * min + size + 2) }
            return Swift.min(cap, size * min + (size + 1) * (max - min))
        }
    }

    /// Whether the node can only match the empty string (it reads no scalar).
    var isZeroWidth: Bool {
        switch self {
        case .scalar: false
        case .start, .end, .wordBoundary: true
        case .sequence(let nodes), .choice(let nodes): nodes.allSatisfy(\.isZeroWidth)
        case .repeated(let item, _, let max): max == 0 || item.isZeroWidth
        }
    }
}

/// A recursive-descent parser of the supported syntax (see the file's header); every method
/// returns nil on a pattern that does not compile.
private struct Parser {
    let scalars: [Unicode.Scalar]
    var position = 0
    var depth = 0

    init(scalars: [Unicode.Scalar]) {
        self.scalars = scalars
    }

    private var current: Unicode.Scalar? { position < scalars.count ? scalars[position] : nil }

    private func peek(_ offset: Int) -> Unicode.Scalar? {
        position + offset < scalars.count ? scalars[position + offset] : nil
    }

    mutating func parse() -> Node? {
        guard let node = parseChoice(), current == nil else { return nil }
        return node
    }

    /// `a|b|...`, up to a `)` or the end.
    private mutating func parseChoice() -> Node? {
        var alternatives: [Node] = []
        while true {
            guard let sequence = parseSequence() else { return nil }
            alternatives.append(sequence)
            guard current == "|" else { break }
            position += 1
        }
        return alternatives.count == 1 ? alternatives[0] : .choice(alternatives)
    }

    /// Quantified atoms and anchors, up to a `|`, a `)` or the end. Nested sequences are
    /// flattened and empty ones dropped, so every item of a sequence compiles to some state.
    private mutating func parseSequence() -> Node? {
        var items: [Node] = []
        while let scalar = current, scalar != "|", scalar != ")" {
            let item: Node
            if scalar == "^" || scalar == "$" {
                // An anchor is an assertion, no atom: none is repeated (`^*` is an error).
                position += 1
                item = scalar == "^" ? .start : .end
            } else if scalar == "\\", let next = peek(1), next == "b" || next == "B" {
                position += 2
                item = .wordBoundary(next == "b")
                // Assertions take no quantifier either.
                if let following = current, "*+?{".unicodeScalars.contains(following) { return nil }
            } else {
                guard let atom = parseAtom(), let quantified = parseQuantifier(of: atom) else { return nil }
                item = quantified
            }
            if case .sequence(let inner) = item {
                items.append(contentsOf: inner)
            } else {
                items.append(item)
            }
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    /// The quantifier after `atom`, if any; a second quantifier does not compile.
    private mutating func parseQuantifier(of atom: Node) -> Node? {
        let min: Int
        let max: Int?
        switch current {
        case "*":
            (min, max) = (0, nil)
            position += 1
        case "+":
            (min, max) = (1, nil)
            position += 1
        case "?":
            (min, max) = (0, 1)
            position += 1
        case "{":
            guard let bounds = parseBraces() else { return nil }
            (min, max) = bounds
        default:
            return atom
        }
        // A lazy form (`a*?`) matches the same whole names; a quantifier after that, or a
        // second one (`a**`), has nothing to repeat.
        if current == "?" { position += 1 }
        if let next = current, next == "*" || next == "+" || next == "?" || next == "{" { return nil }
        return Self.repeated(atom, min: min, max: max)
    }

    /// `item` `min` to `max` times, simplified so that no repetition is of a node that can only
    /// match the empty string: such a node (`()`, `(^)`, `(^|$)`) matches the same however many
    /// times it is repeated, once or not at all. This keeps `((){100}){100}...` from costing
    /// 100^k compiler steps for no state at all.
    private static func repeated(_ item: Node, min: Int, max: Int?) -> Node {
        if max == 0 { return .sequence([]) }
        if item.isZeroWidth {
            if case .sequence(let items) = item, items.isEmpty { return item }
            return min >= 1 ? item : .repeated(item, min: 0, max: 1)
        }
        if min == 1, max == 1 { return item }
        return .repeated(item, min: min, max: max)
    }

    /// `{n}`, `{n,}` or `{n,m}`.
    private mutating func parseBraces() -> (Int, Int?)? {
        position += 1
        guard let min = parseNumber() else { return nil }
        var max: Int? = min
        if current == "," {
            position += 1
            if current == "}" {
                max = nil
            } else {
                guard let number = parseNumber() else { return nil }
                max = number
            }
        }
        guard current == "}" else { return nil }
        position += 1
        if let max, max < min { return nil }
        return (min, max)
    }

    /// Decimal digits, at most ``ProducerNamePattern/maxRepetition``.
    private mutating func parseNumber() -> Int? {
        var value = 0
        var digits = 0
        while let scalar = current, let digit = digitValue(scalar) {
            value = value * 10 + digit
            digits += 1
            position += 1
            guard value <= ProducerNamePattern.maxRepetition else { return nil }
        }
        return digits > 0 ? value : nil
    }

    private func digitValue(_ scalar: Unicode.Scalar) -> Int? {
        ("0"..."9").contains(scalar) ? Int(scalar.value - 0x30) : nil
    }

    private mutating func parseAtom() -> Node? {
        guard let scalar = current else { return nil }
        position += 1
        switch scalar {
        case "(":
            return parseGroup()
        case "[":
            return parseBracket().map { .scalar($0) }
        case ".":
            return .scalar(.dot)
        case "\\":
            return parseEscape(inBrackets: false).map { .scalar($0) }
        case "*", "+", "?", "{":
            return nil  // nothing to repeat, or a brace that is no quantifier
        default:
            return .scalar(ScalarSet(scalar: scalar.value))
        }
    }

    /// After `(`: the group up to its `)`. Of the `(?...)` groups only `(?:` compiles.
    private mutating func parseGroup() -> Node? {
        if current == "?" {
            guard peek(1) == ":" else { return nil }
            position += 2
        }
        depth += 1
        guard depth <= ProducerNamePattern.maxGroupDepth, let node = parseChoice(), current == ")" else { return nil }
        position += 1
        depth -= 1
        return node
    }

    /// After `\`: the scalars the escape stands for. In a bracket expression `\b` is a
    /// backspace (outside one, the parser takes `\b` and `\B` as assertions before this).
    private mutating func parseEscape(inBrackets: Bool) -> ScalarSet? {
        guard let scalar = current else { return nil }
        position += 1
        switch scalar {
        case "d": return .digit
        case "D": return ScalarSet.digit.inverted()
        case "w": return .word
        case "W": return ScalarSet.word.inverted()
        case "s": return .space
        case "S": return ScalarSet.space.inverted()
        case "t": return ScalarSet(scalar: 0x09)
        case "n": return ScalarSet(scalar: 0x0A)
        case "v": return ScalarSet(scalar: 0x0B)
        case "f": return ScalarSet(scalar: 0x0C)
        case "r": return ScalarSet(scalar: 0x0D)
        case "b" where inBrackets: return ScalarSet(scalar: 0x08)
        case "0":
            // NUL, unless digits follow (an octal escape or a back-reference: neither compiles).
            if let next = current, digitValue(next) != nil { return nil }
            return ScalarSet(scalar: 0)
        case "x": return parseHex(digits: 2)
        case "u": return parseHex(digits: 4)
        case "c":
            guard let letter = current, letter.isASCII, letter.properties.isAlphabetic else { return nil }
            position += 1
            return ScalarSet(scalar: letter.value % 32)
        default:
            // Other letters and digits (`\1`, `\k`, `\p`, `\q`...) are back-references, classes
            // RE2 and ECMAScript read differently, or errors: they do not compile.
            if scalar.isASCII, scalar.properties.isAlphabetic || digitValue(scalar) != nil { return nil }
            return ScalarSet(scalar: scalar.value)
        }
    }

    /// `digits` hexadecimal digits: the scalar they name.
    private mutating func parseHex(digits: Int) -> ScalarSet? {
        var value: UInt32 = 0
        for _ in 0..<digits {
            guard let scalar = current, scalar.isASCII, let digit = UInt32(String(scalar), radix: 16) else { return nil }
            value = value * 16 + digit
            position += 1
        }
        // `\uD800`...: a surrogate is no scalar.
        return Unicode.Scalar(value) == nil ? nil : ScalarSet(scalar: value)
    }

    /// One item of a bracket expression.
    private enum BracketItem {
        case scalar(UInt32)
        /// A class: `[:alpha:]`, or an escape such as `\d` (no range may start or end there).
        case named([ClosedRange<UInt32>])
        case dash
        case close
    }

    /// After `[`: the bracket expression up to its `]`. The ranges are collected and
    /// normalized once, at the end.
    private mutating func parseBracket() -> ScalarSet? {
        var negated = false
        if current == "^" {
            negated = true
            position += 1
        }
        var ranges: [ClosedRange<UInt32>] = []
        // The last single scalar, not yet added: it may start a range.
        var pending: UInt32?
        // Whether the last item was a class (no range may start there).
        var afterClass = false
        // A `-` first is a literal.
        if current == "-" {
            pending = 0x2D
            position += 1
        }
        while true {
            guard let item = parseBracketItem() else { return nil }
            switch item {
            case .close:
                if let pending { ranges.append(pending...pending) }
                let set = ScalarSet(ranges)
                return negated ? set.inverted() : set
            case .scalar(let value):
                if let pending { ranges.append(pending...pending) }
                pending = value
                afterClass = false
            case .named(let classRanges):
                if let pending { ranges.append(pending...pending) }
                pending = nil
                ranges.append(contentsOf: classRanges)
                afterClass = true
            case .dash:
                guard let next = parseBracketItem() else { return nil }
                if case .close = next {
                    // `-]`: a literal dash at the end.
                    if let pending { ranges.append(pending...pending) }
                    ranges.append(0x2D...0x2D)
                    let set = ScalarSet(ranges)
                    return negated ? set.inverted() : set
                }
                // A range needs a single scalar on each side: `[[:alpha:]-z]`, `[\d-z]` and
                // `[a-c-e]` are errors.
                guard !afterClass, let low = pending else { return nil }
                let high: UInt32
                switch next {
                case .scalar(let value): high = value
                case .dash: high = 0x2D  // `x--`
                case .named, .close: return nil
                }
                guard low <= high else { return nil }
                ranges.append(low...high)
                pending = nil
            }
        }
    }

    /// The next item inside a bracket expression.
    private mutating func parseBracketItem() -> BracketItem? {
        guard let scalar = current else { return nil }  // no `]`
        position += 1
        switch scalar {
        case "]":
            return .close
        case "-":
            return .dash
        case "\\":
            guard let set = parseEscape(inBrackets: true) else { return nil }
            if set.ranges.count == 1, set.ranges[0].lowerBound == set.ranges[0].upperBound {
                return .scalar(set.ranges[0].lowerBound)
            }
            return .named(set.ranges)
        case "[":
            switch current {
            case nil:
                return nil
            case ":":
                position += 1
                // The name runs to the first `:`, which must be followed by `]`.
                var name = ""
                while let scalar = current, scalar != ":" {
                    name.unicodeScalars.append(scalar)
                    position += 1
                }
                guard current == ":", peek(1) == "]", let ranges = namedClassRanges(name) else { return nil }
                position += 2
                return .named(ranges)
            case ".", "=":
                return nil  // collating symbols and equivalence classes: not supported
            default:
                return .scalar(scalar.value)
            }
        default:
            return .scalar(scalar.value)
        }
    }
}

// MARK: - The NFA

/// A state of the NFA; state `i` goes on to `i + 1` unless it says otherwise.
private enum Instruction: Sendable {
    /// Reads one scalar of the set.
    case scalar(ScalarSet)
    /// Goes on to both states.
    case split(Int, Int)
    case jump(Int)
    /// Goes on only at the start of the name.
    case start
    /// Goes on only at the end of the name.
    case end
    /// Goes on only at a word boundary (true) or only elsewhere (false).
    case wordBoundary(Bool)
    /// The whole pattern matched.
    case accept
}

/// Compiles a ``Node`` to a list of ``Instruction``s (Thompson's construction); `emit` and
/// `append` return false once the NFA would exceed ``ProducerNamePattern/maxStates``, or once
/// `emit` has run more than ``Compiler/maxEmits`` times.
private struct Compiler {
    /// A backstop on the compiler's work, whatever the checks before it: every node the parser
    /// makes compiles to some state or has several parts, so a pattern within maxStates takes
    /// at most some 2 × maxStates calls of `emit`.
    static let maxEmits = 4 * ProducerNamePattern.maxStates

    var program: [Instruction] = []
    private var emits = 0

    mutating func append(_ instruction: Instruction) -> Bool {
        guard program.count < ProducerNamePattern.maxStates else { return false }
        program.append(instruction)
        return true
    }

    mutating func emit(_ node: Node) -> Bool {
        emits += 1
        guard emits <= Self.maxEmits else { return false }
        switch node {
        case .scalar(let set):
            return append(.scalar(set))
        case .start:
            return append(.start)
        case .end:
            return append(.end)
        case .wordBoundary(let wanted):
            return append(.wordBoundary(wanted))
        case .sequence(let items):
            for item in items {
                guard emit(item) else { return false }
            }
            return true
        case .choice(let alternatives):
            // split(first, next split) first; jump(end) ... last alternative; end
            var jumps: [Int] = []
            for alternative in alternatives.dropLast() {
                let split = program.count
                guard append(.split(split + 1, 0)), emit(alternative) else { return false }
                jumps.append(program.count)
                guard append(.jump(0)) else { return false }
                program[split] = .split(split + 1, program.count)
            }
            guard let last = alternatives.last, emit(last) else { return false }
            for jump in jumps { program[jump] = .jump(program.count) }
            return true
        case .repeated(let item, let min, let max):
            // Emit the item once and, should it compile to nothing (the parser makes no such
            // repetition), do not repeat it.
            let before = program.count
            if min > 0 {
                guard emit(item) else { return false }
                if program.count == before { return true }
                for _ in 1..<min {
                    guard emit(item) else { return false }
                }
            }
            guard let max else {
                // loop: split(body, end); body; jump(loop); end
                let loop = program.count
                guard append(.split(loop + 1, 0)), emit(item), append(.jump(loop)) else { return false }
                program[loop] = .split(loop + 1, program.count)
                return true
            }
            // Up to max - min optional copies; skipping one skips the rest.
            var splits: [Int] = []
            for _ in min..<max {
                let split = program.count
                splits.append(split)
                guard append(.split(split + 1, 0)), emit(item) else { return false }
                if program.count == split + 1 { break }  // an empty item: one optional copy is all
            }
            for split in splits { program[split] = .split(split + 1, program.count) }
            return true
        }
    }
}

/// A set of NFA states, in the order they were added, with constant-time insertion.
private struct StateSet {
    private(set) var members: [Int] = []
    private var isMember: [Bool]

    init(count: Int) {
        isMember = Array(repeating: false, count: count)
        members.reserveCapacity(count)
    }

    /// Inserts `state`; false when it was there already.
    mutating func insert(_ state: Int) -> Bool {
        guard !isMember[state] else { return false }
        isMember[state] = true
        members.append(state)
        return true
    }

    mutating func removeAll() {
        for state in members { isMember[state] = false }
        members.removeAll(keepingCapacity: true)
    }
}
