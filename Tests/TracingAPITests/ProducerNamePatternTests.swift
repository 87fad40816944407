// The producer-name patterns of trace configs: the Perl/ECMAScript syntax current Perfetto's
// `base::Regex` reads (RE2, PCRE2 or std::regex in ECMAScript mode), whole-name matching, the
// patterns that do not compile, and hostile patterns that would make a backtracking matcher take
// exponential time or a naive compiler loop over empty repetitions (these tests would never
// finish with either).

import Testing

@testable import TracingAPI

@Suite("Producer name patterns")
struct ProducerNamePatternTests {
    private func matches(_ pattern: String, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        guard let compiled = ProducerNamePattern(pattern) else {
            Issue.record("\"\(pattern)\" does not compile", sourceLocation: sourceLocation)
            return false
        }
        return compiled.wholeMatch(name)
    }

    @Test("typical patterns of trace configs")
    func typicalPatterns() {
        #expect(matches("com.example.*", "com.example.app"))
        #expect(matches("com.example.*", "com.example."))
        #expect(matches("com.example.*", "comXexample"))
        #expect(!matches("com.example.*", "org.example.app"))
        #expect(matches("com\\.example\\..*", "com.example.app"))
        #expect(!matches("com\\.example\\..*", "comXexample.app"))
        #expect(matches("traced_probes|heapprofd", "traced_probes"))
        #expect(matches("traced_probes|heapprofd", "heapprofd"))
        #expect(!matches("traced_probes|heapprofd", "traced_probesheapprofd"))
        #expect(!matches("traced_probes|heapprofd", "traced"))
        #expect(matches("producer_[0-9]+", "producer_42"))
        #expect(!matches("producer_[0-9]+", "producer_"))
        #expect(!matches("producer_[0-9]+", "producer_4a"))
        #expect(matches(".*", ""))
        #expect(matches(".*", "anything at all: ünïcödé 🎉"))
        #expect(matches("\\w+", "traced_probes2"))
        #expect(!matches("\\w+", "traced-probes"))
        #expect(matches("com\\.google\\.\\w+:\\d+", "com.google.app:1234"))
        #expect(matches("(org|com)\\.(example|test)_?[0-9]*", "org.test_7"))
        #expect(matches("(org|com)\\.(example|test)_?[[:digit:]]*", "com.example"))
    }

    @Test("counted repetition")
    func countedRepetition() {
        #expect(!matches("a{2,3}", "a"))
        #expect(matches("a{2,3}", "aa"))
        #expect(matches("a{2,3}", "aaa"))
        #expect(!matches("a{2,3}", "aaaa"))
        #expect(matches("a{3}", "aaa"))
        #expect(!matches("a{3}", "aaaa"))
        #expect(matches("a{2,}", "aaaaaaa"))
        #expect(!matches("a{2,}", "a"))
        #expect(matches("(ab){0,2}c", "ababc"))
        #expect(matches("(ab){0,2}c", "c"))
        #expect(!matches("(ab){0,2}c", "abababc"))
        #expect(matches("x{100}", String(repeating: "x", count: 100)))
        // Counts up to 1,000, as RE2 takes them (100 was the limit, and `.{0,1000}` matched
        // nothing: outside tester, round eight).
        #expect(matches(".{0,1000}", String(repeating: "y", count: 1000)))
        #expect(!matches(".{0,1000}", String(repeating: "y", count: 1001)))
        #expect(matches("[a-z]{0,300}", "producer"))
        #expect(matches("(a{100}){10}", String(repeating: "a", count: 1000)))
    }

    @Test("lazy quantifiers match the same whole names")
    func lazyQuantifiers() {
        #expect(matches("a*?b", "aaab"))
        #expect(matches("fo*?", "foo"))
        #expect(matches("a+?", "aa"))
        #expect(!matches("a+?", ""))
        #expect(matches("a??b", "ab"))
        #expect(matches("a{1,3}?", "aaa"))
    }

    @Test("stacked quantifiers do not compile", arguments: [
        "a**", "a+*", "a{2}{3}", "a?{2}", "a*??", "a+?+",
    ])
    func stackedQuantifiers(pattern: String) {
        #expect(ProducerNamePattern(pattern) == nil)
    }

    @Test("character classes")
    func characterClasses() {
        #expect(matches("[abc]+", "cab"))
        #expect(!matches("[abc]+", "cad"))
        #expect(matches("[a-z_]+", "heap_profd"))
        #expect(!matches("[a-z]+", "Heap"))
        #expect(matches("[^.]+", "noDots"))
        #expect(!matches("[^.]+", "a.b"))
        #expect(matches("[a-]+", "a-a"))
        #expect(matches("[-a]+", "-a-"))
        #expect(matches("[é-ü]", "ö"))
        #expect(matches("[a-c-]+", "a-b"))
        #expect(matches("[--/]+", "-./"))
        #expect(!matches("[--/]", ","))
        #expect(matches("[[]", "["))
        #expect(matches("[a[]+", "[a["))
    }

    @Test("escapes in a bracket expression")
    func escapesInBrackets() {
        #expect(matches("[\\d.]+", "1.2"))
        #expect(!matches("[\\d.]+", "d"))
        #expect(matches("[\\\\]", "\\"))
        #expect(matches("[\\]a]+", "]a]"))
        #expect(matches("[a\\-z]+", "-az"))
        #expect(!matches("[a\\-z]", "b"))
        #expect(matches("[^\\s]+", "nothing"))
        #expect(!matches("[^\\s]+", "a blank"))
        #expect(matches("[\\w-]+", "a-b_c"))
        #expect(matches("[\\W]", "-"))
        #expect(!matches("[\\W]", "W"))
        #expect(matches("[\\x41-\\x43]+", "ABC"))
        #expect(matches("[\\b]", "\u{08}"), "a backspace in brackets")
        #expect(matches("[\\n\\t]+", "\n\t"))
    }

    @Test("`[]` matches nothing and `[^]` anything")
    func emptyBrackets() {
        #expect(!matches("a[]", "a"))
        #expect(!matches("a[]", "a]"))
        #expect(matches("[^]", "\n"))
        #expect(matches("[]]", "]") == false)
        #expect(matches("x[^]*", "x\nanything"))
    }

    @Test("POSIX character classes, in ASCII")
    func posixClasses() {
        #expect(matches("[[:alpha:]]+", "abcXYZ"))
        #expect(!matches("[[:alpha:]]", "1"))
        #expect(!matches("[[:alpha:]]", "é"))
        #expect(matches("[[:digit:]]+", "0123456789"))
        #expect(!matches("[[:digit:]]", "a"))
        #expect(matches("[[:alnum:]]+", "a1Z9"))
        #expect(!matches("[[:alnum:]]", "_"))
        #expect(matches("[[:space:]]+", " \t\n\r\u{0B}\u{0C}"))
        #expect(!matches("[[:space:]]", "\u{A0}"))
        #expect(matches("[[:upper:]]+", "ABC"))
        #expect(!matches("[[:upper:]]", "a"))
        #expect(matches("[[:lower:]]+", "abc"))
        #expect(!matches("[[:lower:]]", "A"))
        #expect(matches("[[:punct:]]+", "!/:@[`{~"))
        #expect(!matches("[[:punct:]]", "a"))
        #expect(!matches("[[:punct:]]", " "))
        #expect(matches("[[:xdigit:]]+", "09afAF"))
        #expect(!matches("[[:xdigit:]]", "g"))
        #expect(matches("[[:blank:]]+", " \t"))
        #expect(!matches("[[:blank:]]", "\n"))
        #expect(matches("[[:cntrl:]]+", "\u{0}\u{1F}\u{7F}"))
        #expect(!matches("[[:cntrl:]]", " "))
        #expect(matches("[[:graph:]]+", "!a~"))
        #expect(!matches("[[:graph:]]", " "))
        #expect(matches("[[:print:]]+", " !a~"))
        #expect(!matches("[[:print:]]", "\t"))
        // libstdc++'s names are case-insensitive, and it knows `d`, `s` and `w` too.
        #expect(matches("[[:ALPHA:]]", "a"))
        #expect(matches("[[:w:]]+", "a_1"))
        #expect(matches("[[:d:][:s:]]+", "1 2"))
        // Mixed with other items, negated, and a dash after a class at the end.
        #expect(matches("[_[:alpha:]][_[:alnum:]]*", "_producer2"))
        #expect(!matches("[_[:alpha:]][_[:alnum:]]*", "2producer"))
        #expect(matches("[^[:digit:]]+", "abc"))
        #expect(!matches("[^[:digit:]]+", "a1"))
        #expect(matches("[[:alpha:]-]+", "a-b"))
    }

    @Test("escapes")
    func escapes() {
        #expect(matches("\\d+", "0123456789"))
        #expect(!matches("\\d", "a"))
        #expect(matches("\\D\\W\\S", "a-x"))
        #expect(!matches("\\S", " "))
        #expect(matches("a\\sb", "a\tb"))
        #expect(matches("\\t\\n\\r\\f\\v\\0", "\t\n\r\u{0C}\u{0B}\u{0}"))
        #expect(matches("\\x66oo", "foo"))
        #expect(matches("\\u0066oo", "foo"))
        #expect(matches("\\u00e9t\\u00e9", "été"))
        #expect(matches("\\cJ", "\n"))
        #expect(matches("a\\.b", "a.b"))
        #expect(!matches("a\\.b", "axb"))
        #expect(matches("\\\\", "\\"))
        #expect(matches("\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\^\\$\\/\\-", "*+?()[]{}|^$/-"))
        #expect(matches("\\.\\[\\]\\{\\}", ".[]{}"))
        #expect(matches("\\é", "é"))
        #expect(matches("a}b]", "a}b]"))
    }

    @Test("back-references and unknown escapes do not compile", arguments: [
        "(f)(o)\\2", "(a)\\1", "\\k<a>", "\\01", "\\q", "\\p{L}", "\\x4", "\\xZZ", "\\u12",
        "\\uD800", "\\c1", "[a]\\Z", "[\\q]", "[\\1]",
    ])
    func unsupportedEscapes(pattern: String) {
        #expect(ProducerNamePattern(pattern) == nil)
    }

    @Test("word boundaries")
    func wordBoundaries() {
        #expect(matches("fo\\b.*", "fo bar"))
        #expect(!matches("fo\\b.*", "foo"))
        #expect(matches("\\bfoo\\b", "foo"))
        #expect(matches("a\\B.*", "ab"))
        #expect(!matches("a\\B.*", "a b"))
        #expect(matches("\\b", "") == false, "no word, no boundary")
        #expect(matches("\\B", ""))
        #expect(ProducerNamePattern("\\b*") == nil, "an assertion takes no quantifier")
    }

    @Test("the dot is one scalar, anything but a line feed or a carriage return")
    func dot() {
        #expect(matches("a.c", "aéc"))
        #expect(matches("a.c", "a🎉c"))
        #expect(!matches("a.c", "a\nc"))
        #expect(!matches("a.c", "a\rc"))
        #expect(!matches(".*", "foo\nbar"))
        #expect(matches("a.c", "a\u{2028}c"))
        #expect(matches("a.c", "a\u{0}c"))
        #expect(!matches("...", "ab"))
    }

    @Test("the whole name must match")
    func wholeMatch() {
        #expect(!matches("abc", "abcd"))
        #expect(!matches("abc", "xabc"))
        #expect(matches("abc", "abc"))
        #expect(!matches("abc", ""))
        #expect(matches("", ""))
        #expect(!matches("", "a"))
        #expect(matches("a|", ""))
        #expect(matches("()", ""))
    }

    @Test("anchors are the start and the end of the name")
    func anchors() {
        #expect(matches("^abc$", "abc"))
        #expect(matches("^abc", "abc"))
        #expect(matches("abc$", "abc"))
        #expect(!matches("^abc$", "abcd"))
        #expect(matches("^a|^b", "b"))
        #expect(!matches("a^b", "ab"))
        #expect(!matches("a$b", "ab"))
        #expect(matches("a$|b", "a"))
    }

    @Test("a group that can only match the empty string may be repeated")
    func zeroWidthRepetition() {
        #expect(matches("(^)*abc", "abc"))
        #expect(matches("(^)+abc", "abc"))
        #expect(matches("(^){3}abc", "abc"))
        #expect(matches("a(^)*", "a"))
        #expect(!matches("a(^)+", "a"))
        #expect(!matches("a(^){1,5}", "a"))
        #expect(matches("a($)+", "a"))
        #expect(matches("(^|$)*a", "a"))
        #expect(matches("((^)*)*a", "a"))
        #expect(matches("a(){5}b", "ab"))
        #expect(matches("a(b{0})*c", "ac"))
        #expect(matches("x{0,0}y", "y"))
        #expect(matches("(^a|b)*", "ab"))
        #expect(!matches("(^a|b)*", "ba"))
    }

    @Test("non-capturing groups")
    func nonCapturingGroups() {
        #expect(matches("(?:f)oo", "foo"))
        #expect(matches("(?:ab|cd)+", "abcdab"))
        #expect(!matches("(?:ab|cd)+", "abc"))
    }

    @Test("patterns that do not compile", arguments: [
        "(", "a)", "[a", "(?=a)", "(?!a)", "(?<=a)", "(?<!a)", "(?<name>a)", "(?i)a", "(?",
        "*a", "+", "?", "a{", "a{2", "a{,2}", "a{3,2}", "a{1001}", "a{1,1001}", "a{x}", "{1}", "a|{1}",
        "^*", "$+", "a^?", "(*a)", "\\", "a\\", "a|(b",
        "[z-a]", "[a-c-e]", "[[:alpha:]-z]", "[a-[:alpha:]]", "[a--]", "[\\d-z]", "[a-\\d]",
        "[[:foo:]]", "[[:alpha]]", "[[:alpha:", "[[.a.]]", "[[=a=]]", "[[",
    ])
    func rejected(pattern: String) {
        #expect(ProducerNamePattern(pattern) == nil)
    }

    @Test("patterns too long or too large do not compile")
    func tooLarge() {
        #expect(ProducerNamePattern(String(repeating: "a", count: 1024)) != nil)
        #expect(ProducerNamePattern(String(repeating: "a", count: 1025)) == nil)
        #expect(ProducerNamePattern("((a{100}){100}){100}") == nil)
        #expect(ProducerNamePattern(String(repeating: "(", count: 101) + String(repeating: ")", count: 101)) == nil)
        #expect(ProducerNamePattern(String(repeating: "(", count: 100) + String(repeating: ")", count: 100)) != nil)
        // The size is known before emitting: just over the limit, and far over it.
        #expect(ProducerNamePattern("(a{100}){99}") != nil)
        #expect(ProducerNamePattern("((a{100}){100}){100}(b{100}){100}") == nil)
        #expect(ProducerNamePattern("((((((a{100}){100}){100}){100}){100}){100}){100}") == nil)
    }

    @Test("repeated items that compile to nothing do not make the compiler loop", arguments: [
        "((((((){100}){100}){100}){100}){100}){100}",
        "((((((){100}){100}){100}){100}){100}){100}a",
        "(((((((?:){100}){100}){100}){100}){100}){100}",
        "((((((a{0}){100}){100}){100}){100}){100}){100}",
        "((((((x{0,0}){100}){100}){100}){100}){100}){100}",
        "((((((^){100}){100}){100}){100}){100}){100}",
        "(((((($){100}){100}){100}){100}){100}){100}",
        "((((((^|$){100}){100}){100}){100}){100}){100}",
        "((((((()*){100}){100}){100}){100}){100}){100}",
        "(((((((^)*){100}){100}){100}){100}){100}){100}",
        "((((((()()()()()()){100}){100}){100}){100}){100}){100}",
        "((((((|){100}){100}){100}){100}){100}){100}",
        "((((((^|){100}){100}){100}){100}){100}){100}",
    ])
    func emptyRepetitions(pattern: String) {
        // Each either does not compile or compiles to a small pattern; with a naive compiler
        // these made 100^6 calls and never returned.
        guard let compiled = ProducerNamePattern(pattern) else { return }
        let expectsA = pattern.hasSuffix("a")
        #expect(compiled.wholeMatch(expectsA ? "a" : "") == true)
        #expect(compiled.wholeMatch(expectsA ? "" : "a") == false)
    }

    @Test("the empty-repetition patterns compile")
    func emptyRepetitionsCompile() {
        #expect(ProducerNamePattern("((((((){100}){100}){100}){100}){100}){100}") != nil)
        #expect(ProducerNamePattern("((((((a{0}){100}){100}){100}){100}){100}){100}") != nil)
        #expect(ProducerNamePattern("((((((^){100}){100}){100}){100}){100}){100}") != nil)
        #expect(ProducerNamePattern("((((((|){100}){100}){100}){100}){100}){100}") != nil)
        #expect(ProducerNamePattern("((((((?:){100}){100}){100}){100}){100}){100}") != nil)
    }

    @Test("a large class compiles")
    func largeClass() throws {
        // 1,000 atoms, in descending order: the ranges are normalized once.
        let scalars = (0..<1000).map { Character(Unicode.Scalar(0x4E00 + 2 * (999 - $0))!) }
        let pattern = try #require(ProducerNamePattern("[" + String(scalars) + "]+"))
        #expect(pattern.wholeMatch("\u{4E00}\u{4E02}\u{55CE}"))
        #expect(!pattern.wholeMatch("\u{4E01}"))
    }

    @Test("hostile patterns take linear time")
    func hostilePatterns() {
        let a5000 = String(repeating: "a", count: 5000)
        #expect(!matches("(a*)*b", a5000))
        #expect(!matches("(.*.*)*X", String(repeating: "x", count: 5000)))
        #expect(!matches("(a|a)*b", a5000))
        #expect(!matches("(a+)+b", a5000))
        #expect(!matches("((a{1,10}){1,10}){1,10}b", a5000))
        #expect(matches("(a*)*", a5000))
        #expect(matches("(.*.*)*X", String(repeating: "x", count: 5000) + "X"))
    }

    @Test("a match that would take too many steps answers no")
    func matchBudget() throws {
        // Some thousands of states: a name of 1,000 scalars is within the budget, one of 4,000 is not.
        let pattern = try #require(ProducerNamePattern("(a{1,100}){1,10}.*"))
        #expect(pattern.wholeMatch(String(repeating: "a", count: 1_000)))
        #expect(!pattern.wholeMatch(String(repeating: "a", count: 4_000)))
        // Short patterns are never refused for long names of the size a producer may have.
        #expect(matches("a*", String(repeating: "a", count: 100_000)))
    }
}
