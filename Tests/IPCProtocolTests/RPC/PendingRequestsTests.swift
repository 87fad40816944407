// The outstanding-call table: found by id whatever order replies come back in, outstanding
// calls listed in request order, and storage bounded by the live entries even when one call
// stays open for ever (a stream) while thousands come and go behind it.

import Testing

@testable import IPCProtocol

@Suite("Pending requests table")
struct PendingRequestsTests {
    @Test func repliesInAnyOrderFindTheirCall() {
        var table = PendingRequests<String>()
        for id in 1...100 as ClosedRange<UInt64> { table.insert("call \(id)", for: id) }
        // Back, front, middle, then every other one.
        #expect(table.removeValue(for: 100) == "call 100")
        #expect(table.removeValue(for: 1) == "call 1")
        #expect(table.removeValue(for: 50) == "call 50")
        #expect(table.removeValue(for: 50) == nil)
        #expect(table[51] == "call 51")
        for id in stride(from: 2, through: 99, by: 2) as StrideThrough<UInt64> where id != 50 {
            #expect(table.removeValue(for: id) == "call \(id)")
        }
        #expect(table.count == 49)  // the odd ids 3...99
        #expect(table.values == stride(from: 3, through: 99, by: 2).map { "call \($0)" })
        #expect(table[1000] == nil)
        #expect(table.removeValue(for: 0) == nil)
    }

    @Test func oneLongLivedCallDoesNotMakeTheTableGrow() {
        var table = PendingRequests<Int>()
        table.insert(0, for: 1)  // a stream that stays open
        for id in 2...100_000 as ClosedRange<UInt64> {
            table.insert(Int(id), for: id)
            #expect(table.removeValue(for: id) == Int(id))
        }
        #expect(table.count == 1)
        #expect(table.values == [0])
        #expect(table.storageCountForTesting <= 64)
    }

    @Test func removingWhereAndContains() {
        var table = PendingRequests<Int>()
        for id in 1...10 as ClosedRange<UInt64> { table.insert(Int(id), for: id) }
        table.removeAll { $0 % 3 == 0 }
        #expect(table.values == [1, 2, 4, 5, 7, 8, 10])
        #expect(table.contains { $0 == 7 })
        #expect(!table.contains { $0 == 9 })
        table.removeAll()
        #expect(table.isEmpty && table.values.isEmpty)
        table.insert(42, for: 11)
        #expect(table[11] == 42)
    }
}
