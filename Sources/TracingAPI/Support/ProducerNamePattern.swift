// The producer-name patterns of trace configs (`producer_name_regex_filter` of a data source,
// `producer_name_regex` of a trigger), matched against the whole producer name as Perfetto
// does with std::regex (ECMAScript grammar).
//
// The patterns come from consumers and are hostile input. Swift's Regex backtracks: `(a*)*b`
// against a name of 26 `a`s kept the service's only event loop busy for 30 s, and every
// further `a` doubles that. So a pattern is parsed here, compiled to a Thompson NFA and run
// over the name's Unicode scalars with a set of states, never backtracking: a match costs
// O(NFA size × name length), whatever the pattern.
//
// Supported (an ECMAScript subset): literals, `.`, escapes (`\d \w \s \D \W \S`, `\t \n \r
// \f \v \0`, `\xHH`, `\uHHHH`, and any escaped scalar that is not an ASCII letter or digit
// stands for itself), classes `[abc]` `[a-z]` `[^...]` with escapes inside (`[]` matches
// nothing, `[^]` any scalar), groups `( )` and `(?: )`, alternation `|`, quantifiers `* + ?`
// `{n}` `{n,}` `{n,m}` (n, m at most 100) and their lazy forms (the same set of whole
// matches), and the anchors `^` and `$` anywhere (the start and the end of the name).
// Anything else does not compile: backreferences, lookaround, named groups, `\b`, a lone `{`,
// a pattern longer than 1,024 scalars, nested deeper than 100 groups, or whose NFA would take
// more than 10,000 states. A pattern that does not compile matches nothing. A match whose cost
// (NFA states × name length) would pass 4 million steps, some 20 ms, is refused too (no match):
// producer names are the producers' words and may be long, so a large pattern against a long name
// must not hold the loop either.

/// A producer-name pattern of a trace config, compiled to match in linear time.
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
    /// subset (backreferences, lookaround, ...) or is too large (see the limits above).
    init?(_ pattern: String) {
        let scalars = Array(pattern.unicodeScalars)
        guard scalars.count <= Self.maxPatternLength else { return nil }
        var parser = Parser(scalars: scalars)
        guard let node = parser.parse() else { return nil }
        var compiler = Compiler()
        guard compiler.emit(node), compiler.append(.accept) else { return nil }
        program = compiler.program
    }

    /// Whether the pattern matches all of `name` (not merely a part of it).
    func wholeMatch(_ name: String) -> Bool {
        let input = Array(name.unicodeScalars)
        guard program.count * (input.count + 1) <= Self.maxMatchSteps else { return false }
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

    static let digits = ScalarSet([0x30...0x39])
    static let wordCharacters = ScalarSet([0x30...0x39, 0x41...0x5A, 0x5F...0x5F, 0x61...0x7A])
    /// ECMAScript's WhiteSpace and LineTerminator.
    static let whitespace = ScalarSet([
        0x09...0x0D, 0x20...0x20, 0xA0...0xA0, 0x1680...0x1680, 0x2000...0x200A,
        0x2028...0x2029, 0x202F...0x202F, 0x205F...0x205F, 0x3000...0x3000, 0xFEFF...0xFEFF,
    ])
    /// What `.` matches: anything but a line terminator.
    static let dot = ScalarSet([0x0A...0x0A, 0x0D...0x0D, 0x2028...0x2029]).inverted()

    private(set) var ranges: [ClosedRange<UInt32>]

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

    func union(_ other: ScalarSet) -> ScalarSet {
        ScalarSet(ranges + other.ranges)
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
    /// The node `min` to `max` times (`max` nil: unbounded).
    case repeated(Node, min: Int, max: Int?)
}

/// A recursive-descent parser of the supported ECMAScript subset; every method returns nil on
/// a pattern that does not compile.
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

    /// Quantified atoms, up to a `|`, a `)` or the end.
    private mutating func parseSequence() -> Node? {
        var items: [Node] = []
        while let scalar = current, scalar != "|", scalar != ")" {
            guard let atom = parseAtom() else { return nil }
            guard let item = parseQuantifier(of: atom) else { return nil }
            items.append(item)
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    /// The quantifier after `atom`, if any.
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
        switch atom {
        case .start, .end: return nil  // nothing to repeat
        default: break
        }
        // The lazy form matches the same whole names.
        if current == "?" { position += 1 }
        return .repeated(atom, min: min, max: max)
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
            return parseClass().map { .scalar($0) }
        case ".":
            return .scalar(.dot)
        case "^":
            return .start
        case "$":
            return .end
        case "\\":
            return parseEscape(inClass: false).map { .scalar($0) }
        case "*", "+", "?", "{":
            return nil  // nothing to repeat, or a brace that is no quantifier
        default:
            return .scalar(ScalarSet(scalar: scalar.value))
        }
    }

    /// After `(`: `(...)` or `(?:...)`; lookaround and named groups do not compile.
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

    /// After `[`: the class up to its `]`.
    private mutating func parseClass() -> ScalarSet? {
        var negated = false
        if current == "^" {
            negated = true
            position += 1
        }
        var set = ScalarSet([])
        while true {
            guard let scalar = current else { return nil }  // no `]`
            if scalar == "]" {
                position += 1
                break
            }
            guard let first = parseClassAtom() else { return nil }
            if current == "-", let after = peek(1), after != "]" {
                position += 1
                guard let last = parseClassAtom(),
                      let low = first.single, let high = last.single, low <= high else { return nil }
                set = set.union(ScalarSet([low...high]))
            } else {
                set = set.union(first)
            }
        }
        return negated ? set.inverted() : set
    }

    /// One scalar or escape inside a class.
    private mutating func parseClassAtom() -> ScalarSet? {
        guard let scalar = current else { return nil }
        position += 1
        if scalar == "\\" { return parseEscape(inClass: true) }
        return ScalarSet(scalar: scalar.value)
    }

    /// After `\`.
    private mutating func parseEscape(inClass: Bool) -> ScalarSet? {
        guard let scalar = current else { return nil }
        position += 1
        switch scalar {
        case "d": return .digits
        case "D": return ScalarSet.digits.inverted()
        case "w": return .wordCharacters
        case "W": return ScalarSet.wordCharacters.inverted()
        case "s": return .whitespace
        case "S": return ScalarSet.whitespace.inverted()
        case "t": return ScalarSet(scalar: 0x09)
        case "n": return ScalarSet(scalar: 0x0A)
        case "v": return ScalarSet(scalar: 0x0B)
        case "f": return ScalarSet(scalar: 0x0C)
        case "r": return ScalarSet(scalar: 0x0D)
        case "b" where inClass: return ScalarSet(scalar: 0x08)
        case "0":
            // `\0` is NUL; `\0` followed by a digit is an octal escape, not supported.
            if let next = current, digitValue(next) != nil { return nil }
            return ScalarSet(scalar: 0)
        case "x": return parseHex(digits: 2)
        case "u": return parseHex(digits: 4)
        default:
            // Other letters and digits are features not supported (backreferences, `\b`,
            // `\c`, `\p`, ...) or errors; anything else stands for itself.
            if scalar.isASCII, scalar.properties.isAlphabetic || digitValue(scalar) != nil { return nil }
            return ScalarSet(scalar: scalar.value)
        }
    }

    /// `digits` hexadecimal digits, after `\x` or `\u`.
    private mutating func parseHex(digits: Int) -> ScalarSet? {
        var value: UInt32 = 0
        for _ in 0..<digits {
            guard let scalar = current, let digit = hexValue(scalar) else { return nil }
            value = value * 16 + digit
            position += 1
        }
        // A lone surrogate (`\uD800`) is no scalar of a Swift string: it matches nothing.
        return ScalarSet(scalar: value)
    }

    private func hexValue(_ scalar: Unicode.Scalar) -> UInt32? {
        switch scalar {
        case "0"..."9": scalar.value - 0x30
        case "a"..."f": scalar.value - 0x61 + 10
        case "A"..."F": scalar.value - 0x41 + 10
        default: nil
        }
    }
}

extension ScalarSet {
    /// The one scalar of a set of one, for a range's bounds.
    fileprivate var single: UInt32? {
        ranges.count == 1 && ranges[0].lowerBound == ranges[0].upperBound ? ranges[0].lowerBound : nil
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
/// `append` return false once the NFA would exceed ``ProducerNamePattern/maxStates``.
private struct Compiler {
    var program: [Instruction] = []

    mutating func append(_ instruction: Instruction) -> Bool {
        guard program.count < ProducerNamePattern.maxStates else { return false }
        program.append(instruction)
        return true
    }

    mutating func emit(_ node: Node) -> Bool {
        switch node {
        case .scalar(let set):
            return append(.scalar(set))
        case .start:
            return append(.start)
        case .end:
            return append(.end)
        case .sequence(let items):
            return items.allSatisfy { emit($0) }
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
            for _ in 0..<min {
                guard emit(item) else { return false }
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
                splits.append(program.count)
                guard append(.split(program.count + 1, 0)), emit(item) else { return false }
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
