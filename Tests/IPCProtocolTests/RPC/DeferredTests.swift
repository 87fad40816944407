// Deferred's promises: resolved once, rejected once, rejects itself when dropped unresolved,
// rebinding rejects the previous callback, it can be moved and resolved later, and a stream
// stays open until a final reply.

import FoundationEssentials
import IPCEchoService
import IPCProtocol
import Testing

@Suite("Deferred")
struct DeferredTests {
    final class Log {
        var results: [AsyncResult<Int>] = []
        var callback: (AsyncResult<Int>) -> Void { { [unowned self] in results.append($0) } }
        var values: [Int?] { results.map(\.message) }
    }

    @Test func resolvesExactlyOnce() {
        let log = Log()
        let deferred = Deferred<Int>(log.callback)
        deferred.resolve(1)
        deferred.resolve(2)
        deferred.reject()
        #expect(log.values == [1])
        #expect(!deferred.isBound)
    }

    @Test func rejectsExactlyOnce() {
        let log = Log()
        let deferred = Deferred<Int>(log.callback)
        deferred.reject(IPCError(.remoteFailure, "no"))
        deferred.resolve(3)
        #expect(log.results.count == 1)
        #expect(log.results[0].error?.code == .remoteFailure)
    }

    @Test func rejectsItselfWhenReleasedUnresolved() {
        let log = Log()
        do { _ = Deferred<Int>(log.callback) }
        #expect(log.results.count == 1)
        #expect(log.results[0].isSuccess == false)
    }

    @Test func releasingAResolvedDeferredDoesNothingMore() {
        let log = Log()
        do { Deferred<Int>(log.callback).resolve(5) }
        #expect(log.values == [5])
    }

    @Test func rebindingRejectsThePreviousCallback() {
        let first = Log(), second = Log()
        let deferred = Deferred<Int>(first.callback)
        deferred.bind(second.callback)
        deferred.resolve(9)
        #expect(first.results.map(\.error?.code) == [.cancelled])
        #expect(second.values == [9])
    }

    @Test func unboundDeferredIgnoresResolution() {
        let deferred = Deferred<Int>()
        deferred.resolve(1)
        #expect(!deferred.isBound)
    }

    @Test func canBeMovedAndResolvedLater() {
        let log = Log()
        var parked: [Deferred<Int>] = []
        func handler(_ reply: Deferred<Int>) { parked.append(reply) }
        handler(Deferred(log.callback))
        #expect(log.results.isEmpty)
        parked.removeFirst().resolve(42)
        #expect(log.values == [42])
    }

    @Test func streamsUntilAFinalReply() {
        let log = Log()
        let deferred = Deferred<Int>(log.callback)
        deferred.resolve(1, hasMore: true)
        deferred.resolve(2, hasMore: true)
        #expect(deferred.isBound)
        deferred.resolve(3)
        deferred.resolve(4, hasMore: true)
        #expect(log.values == [1, 2, 3])
        #expect(log.results.map(\.hasMore) == [true, true, false])
    }

    @Test func streamingDeferredRejectsItselfWhenReleasedMidStream() {
        let log = Log()
        do {
            let deferred = Deferred<Int>(log.callback)
            deferred.resolve(1, hasMore: true)
        }
        #expect(log.values == [1, nil])
        #expect(log.results.last?.hasMore == false)
    }

    /// A reply the service serialized itself reaches an in-process caller decoded; bytes that
    /// do not decode reject the call instead of delivering garbage.
    @Test func serializedRepliesAreDecodedForInProcessCallers() throws {
        var results: [AsyncResult<Pfpeers_EchoReply>] = []
        let deferred = Deferred<Pfpeers_EchoReply> { results.append($0) }
        var reply = Pfpeers_EchoReply()
        reply.data = Data("hi".utf8)
        reply.seq = 7
        let bytes: [UInt8] = try reply.serializedBytes()
        deferred.resolve(serializedSize: bytes.count, hasMore: true) { $0.copyBytes(from: bytes) }
        deferred.resolve(serializedSize: 2, hasMore: false) { $0.copyBytes(from: [0xFF, 0xFF]) }
        deferred.resolve(serializedSize: bytes.count, hasMore: false) { $0.copyBytes(from: bytes) }
        #expect(results.count == 2)
        #expect(results.first?.message == reply && results.first?.hasMore == true)
        #expect(results.last?.message == nil && results.last?.error?.code == .remoteFailure)
    }
}
