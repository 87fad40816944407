// The producer-name patterns of trace configs (`producer_name_regex_filter` of a data source,
// `producer_name_regex` of a trigger), matched against the whole producer name as Perfetto
// does: `std::regex_match` with `std::regex(pattern, std::regex::extended)`, that is POSIX
// extended regular expressions (ERE) as libstdc++ reads them, not ECMAScript.
//
// The patterns come from consumers and are hostile input. Swift's Regex backtracks: `(a*)*b`
// against a name of 26 `a`s kept the service's only event loop busy for 30 s, and every
// further `a` doubles that. So a pattern is parsed here, compiled to a Thompson NFA and run
// over the name's Unicode scalars with a set of states, never backtracking: a match costs
// O(NFA size × name length), whatever the pattern.
//
// Supported (ERE, as libstdc++'s `_Scanner` and `_Compiler` in bits/regex_scanner.tcc and
// bits/regex_compiler.tcc read it in extended mode):
// - literals; `.` matches any scalar but NUL (libstdc++'s POSIX `_AnyMatcher` compares only
//   against '\0': unlike ECMAScript, `.` matches '\n' and '\r'); `]` and `}` alone are literals.
// - `\` before one of `.[\()*+?{|^$` is that character (`_M_eat_escape_posix`). Before any
//   other character that is not an ASCII letter or digit (`\]`, `\}`, `\/`, `\-`, `\é`, ...) it
//   stands for that character, as libstdc++ reads it in its default GNU mode (under
//   __STRICT_ANSI__ it throws error_escape). Before an ASCII letter or digit it does not
//   compile: libstdc++ reads `\d` as a plain `d` (GNU mode) or throws (strict mode), never as
//   a digit class as ECMAScript does, and `\n`, `\1`, `\x41`, `\b` are no escapes in ERE either;
//   refusing these is safer than silently matching the letter.
// - bracket expressions `[abc]`, `[a-z]`, `[^...]`: a `]` first (after `[` or `[^`) is a
//   literal, so `[]` and `[^]` are unterminated; a backslash is a literal backslash; `-` is a
//   literal first or last (`[-a]`, `[a-]`) and may end a range (`[!--]`), but a range after a
//   range (`[a-c-e]`), from a class (`[[:alpha:]-z]`) or reversed (`[z-a]`) does not compile;
//   a `[` not followed by `:`, `.` or `=` is a literal; the classes `[:alpha:]`, `[:digit:]`, `[:alnum:]`,
//   `[:space:]`, `[:upper:]`, `[:lower:]`, `[:punct:]`, `[:xdigit:]`, `[:blank:]`,
//   `[:cntrl:]`, `[:graph:]`, `[:print:]` and libstdc++'s `[:d:]`, `[:s:]`, `[:w:]` (names in
//   any case), with ASCII semantics. Collating symbols `[.x.]` and equivalence classes `[=x=]`
//   do not compile.
// - groups `( )`, alternation `|` (empty alternatives included), the quantifiers `* + ?` `{n}`
//   `{n,}` `{n,m}` (n, m at most 100) after a character, a bracket expression or a group, and
//   the anchors `^` and `$` anywhere (the start and the end of the name). A `{` always starts
//   an interval, as in libstdc++: `a{`, `a{,2}`, `a{x}`, `{1}` do not compile. A group that
//   can only match the empty string, such as `(^)` or `()`, may be repeated: `(^)*` is `(^)?`,
//   `(^){3}` is `^`.
// Anything else does not compile: `^*` (libstdc++ repeats no bare anchor), `(?:`, `(?=` and the
// other ECMAScript groups, stacked quantifiers `a**`, `a{2}{3}` and so the ECMAScript lazy forms
// `a*?`, `a+?`, `a??`, `a{1,2}?` (POSIX leaves stacked quantifiers undefined; libstdc++ would
// read `a*?` as `(a*)?`), NUL outside a bracket expression, a pattern longer than 1,024
// scalars, nested deeper than 100 groups, or whose NFA would take more than 10,000 states (the
// size is computed before anything is emitted, and the compiler also stops after a fixed amount
// of work). A pattern that does not compile matches nothing. A match whose cost (NFA states ×
// name length) would pass 4 million steps, some 20 ms, is refused too (no match): producer names
// are the producers' words and may be long, so a large pattern against a long name must not hold
// the loop either.
//
// One difference stays on purpose: libstdc++ matches the bytes of the UTF-8 name, this matcher
// its Unicode scalars, so `.` and a bracket expression read a whole non-ASCII scalar here (`a.c`
// matches "aéc"). Patterns and names in ASCII, as producer names are, match the same.

/// A producer-name pattern of a trace config (POSIX ERE), compiled to match in linear time.
///
/// ```swift
/// let pattern = ProducerNamePattern("com.example.*")
/// pattern?.wholeMatch("com.example.app")  // true
/// ```
struct ProducerNamePattern: Sendable {
    /// The longest pattern that compiles, in Unicode scalars.
    static let maxPatternLength = 1024
    /// The largest count a `{n,m}` quantifier may give.
    static let maxRepetition = 100
    /// The deepest nesting of groups that compiles.
    static let maxGroupDepth = 100
    /// The most NFA states a pattern may compile to.
    static let maxStates = 10_000
    /// The most steps (NFA states × name length in scalars) a match may take; a longer match
    /// answers false.
    static let maxMatchSteps = 4_000_000

    private let program: [Instruction]

    /// Compiles `pattern`; nil when it has a syntax error, uses a feature outside the supported
    /// subset (escaped letters, collating symbols, stacked quantifiers, ...) or is too large
    /// (see the limits above).
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
        addState(0, position: 0, length: input.count, to: &current, stack: &stack)
        for (index, scalar) in input.enumerated() {
            next.removeAll()
            for state in current.members {
                guard case .scalar(let set) = program[state], set.contains(scalar.value) else { continue }
                addState(state + 1, position: index + 1, length: input.count, to: &next, stack: &stack)
            }
            if next.members.isEmpty { return false }
            swap(&current, &next)
        }
        return current.members.contains { if case .accept = program[$0] { true } else { false } }
    }

    /// Adds `state` and every state reachable from it without reading a scalar, at `position`
    /// of an input of `length` scalars.
    private func addState(_ state: Int, position: Int, length: Int, to set: inout StateSet, stack: inout [Int]) {
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
                if position == 0 { stack.append(state + 1) }
            case .end:
                if position == length { stack.append(state + 1) }
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

    /// What `.` matches: anything but NUL, as libstdc++'s POSIX `_AnyMatcher`.
    static let dot = ScalarSet([1...maxScalar])

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
        case .scalar, .start, .end:
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
        case .start, .end: true
        case .sequence(let nodes), .choice(let nodes): nodes.allSatisfy(\.isZeroWidth)
        case .repeated(let item, _, let max): max == 0 || item.isZeroWidth
        }
    }
}

/// A recursive-descent parser of POSIX extended regular expressions as libstdc++ reads them
/// (see the file's header); every method returns nil on a pattern that does not compile.
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
                // An anchor is an assertion, no atom: libstdc++ repeats none (`^*` is an error).
                position += 1
                item = scalar == "^" ? .start : .end
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
        // Stacked quantifiers (`a**`, and so the ECMAScript lazy forms `a*?`) are undefined in
        // POSIX; they do not compile.
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
            return parseEscape().map { .scalar($0) }
        case "*", "+", "?", "{":
            return nil  // nothing to repeat, or a brace that is no quantifier
        case "\0":
            return nil  // libstdc++'s extended grammar refuses NUL
        default:
            return .scalar(ScalarSet(scalar: scalar.value))
        }
    }

    /// After `(`: the group up to its `)`. ERE has no `(?...)` groups: `(?` has nothing to
    /// repeat and does not compile.
    private mutating func parseGroup() -> Node? {
        depth += 1
        guard depth <= ProducerNamePattern.maxGroupDepth, let node = parseChoice(), current == ")" else { return nil }
        position += 1
        depth -= 1
        return node
    }

    /// After `\`, outside a bracket expression.
    private mutating func parseEscape() -> ScalarSet? {
        guard let scalar = current else { return nil }
        position += 1
        // `\d`, `\n`, `\1`, `\x41`, `\b`...: no escape of ERE; libstdc++ reads a plain letter or
        // digit or throws, so they do not compile (see the header).
        if scalar.isASCII, scalar.properties.isAlphabetic || digitValue(scalar) != nil { return nil }
        // A special character (`.[\()*+?{|^$`) or any other: that character.
        return ScalarSet(scalar: scalar.value)
    }

    /// One item of a bracket expression.
    private enum BracketItem {
        case scalar(UInt32)
        case named([ClosedRange<UInt32>])
        case dash
        case close
    }

    /// After `[`: the bracket expression up to its `]`, following libstdc++'s
    /// `_M_insert_bracket_matcher` and `_M_expression_term` in POSIX mode. The ranges are
    /// collected and normalized once, at the end.
    private mutating func parseBracket() -> ScalarSet? {
        var negated = false
        if current == "^" {
            negated = true
            position += 1
        }
        var ranges: [ClosedRange<UInt32>] = []
        // The last single scalar, not yet added: it may start a range.
        var pending: UInt32?
        // Whether the last item was a named class (no range may start there).
        var afterClass = false
        // A `]` first is a literal, and so is a `-`.
        if current == "]" || current == "-" {
            pending = current!.value
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
                // A range needs a single scalar before; `[[:alpha:]-z]` and `[a-c-e]` are errors.
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

    /// The next item inside a bracket expression (a backslash is a literal backslash).
    private mutating func parseBracketItem() -> BracketItem? {
        guard let scalar = current else { return nil }  // no `]`
        position += 1
        switch scalar {
        case "]":
            return .close
        case "-":
            return .dash
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
