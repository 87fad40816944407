// The producer-name patterns of trace configs: the ECMAScript subset they support, whole-name
// matching, the patterns that do not compile, and hostile patterns that would make a
// backtracking matcher take exponential time (these tests would never finish with one).

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
        #expect(matches("(?:org|com)\\.(example|test)_?\\d*", "org.test_7"))
        #expect(matches("(?:org|com)\\.(example|test)_?\\d*", "com.example"))
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
    }

    @Test("lazy quantifiers match the same whole names")
    func lazyQuantifiers() {
        #expect(matches("a*?b", "aaab"))
        #expect(matches("a+?", "aaa"))
        #expect(matches("a??b", "ab"))
        #expect(matches("a{1,3}?", "aaa"))
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
        #expect(matches("[\\d.]+", "1.2.3"))
        #expect(matches("[\\]\\\\]+", "]\\]"))
        #expect(matches("[^\\s]+", "nospace"))
        #expect(!matches("[^\\s]+", "a space"))
        #expect(matches("[\\W]", "-"))
        #expect(!matches("[]", "a"))
        #expect(matches("[^]", "\n"))
        #expect(matches("[é-ü]", "ö"))
    }

    @Test("escapes")
    func escapes() {
        #expect(matches("a\\.b", "a.b"))
        #expect(!matches("a\\.b", "axb"))
        #expect(matches("\\\\", "\\"))
        #expect(matches("\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\^\\$\\/\\-", "*+?()[]{}|^$/-"))
        #expect(matches("\\d\\d", "42"))
        #expect(!matches("\\d", "x"))
        #expect(matches("\\w+", "abc_09XYZ"))
        #expect(!matches("\\w", "-"))
        #expect(matches("\\s", " "))
        #expect(matches("\\D\\W\\S", "x-y"))
        #expect(!matches("\\D", "5"))
        #expect(matches("\\x41\\u00e9\\t", "Aé\t"))
        #expect(matches("a}b]", "a}b]"))
    }

    @Test("the dot is one scalar, and no line terminator")
    func dot() {
        #expect(matches("a.c", "aéc"))
        #expect(matches("a.c", "a🎉c"))
        #expect(!matches("a.c", "a\nc"))
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

    @Test("patterns that do not compile", arguments: [
        "(", "a)", "[a", "\\1", "(?=a)", "(?!a)", "(?<=a)", "(?<!a)", "(?<name>a)",
        "*a", "a**", "+", "?", "a{", "a{2", "a{,2}", "a{3,2}", "a{101}", "a{1,101}", "^*",
        "\\", "[z-a]", "[\\d-z]", "\\b", "\\B", "\\q", "\\01", "\\x4", "\\u12", "a|(b",
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
