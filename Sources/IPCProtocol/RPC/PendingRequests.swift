// Calls waiting for their reply, by request id.
//
// Request ids are handed out in increasing order and replies mostly come back in that order, so
// the table is two parallel arrays sorted by id: an entry is found at the front (the usual case),
// at the back, or by binary search, with no hashing. (A Dictionary<UInt64, _> hashed every
// insert, lookup and removal with SipHash: 3-4% of a direct call.) Removing an entry leaves a
// hole; the front advances past holes, and holes behind a long-lived entry (a stream that stays
// open, such as ProducerPort's GetAsyncCommand) are squeezed out once they outnumber the live
// entries, so the arrays stay within about twice the live entries.

/// Outstanding requests keyed by increasing request ids. Loop-confined, like its owner.
@usableFromInline
struct PendingRequests<Value> {
    private var ids: [UInt64] = []
    private var slots: [Value?] = []
    /// Index of the first slot that may be live.
    private var head = 0
    /// Live entries.
    @usableFromInline private(set) var count = 0

    @usableFromInline init() {}

    var isEmpty: Bool { count == 0 }

    /// Slots in use, live or not (tests check the table does not grow without bound).
    var storageCountForTesting: Int { slots.count }

    /// Adds `value` for `id`, which must be greater than every id added before.
    @usableFromInline
    mutating func insert(_ value: Value, for id: UInt64) {
        precondition(ids.last.map { id > $0 } ?? true, "request ids must increase")
        ids.append(id)
        slots.append(value)
        count += 1
    }

    /// The value for `id`, if it is outstanding.
    subscript(id: UInt64) -> Value? {
        guard let index = index(of: id) else { return nil }
        return slots[index]
    }

    /// Removes and returns the value for `id`, if it is outstanding.
    @usableFromInline
    @discardableResult
    mutating func removeValue(for id: UInt64) -> Value? {
        guard let index = index(of: id), let value = slots[index] else { return nil }
        slots[index] = nil
        count -= 1
        compact()
        return value
    }

    /// Removes every entry whose value matches `shouldRemove`.
    mutating func removeAll(where shouldRemove: (Value) -> Bool) {
        for index in head..<slots.count {
            if let value = slots[index], shouldRemove(value) {
                slots[index] = nil
                count -= 1
            }
        }
        compact()
    }

    /// Removes every entry, keeping the storage.
    mutating func removeAll() {
        if slots.count == 1 {
            // The usual case, one call in flight: removeLast is a fraction of what the
            // general removeAll(keepingCapacity:) costs.
            ids.removeLast()
            slots.removeLast()
        } else {
            ids.removeAll(keepingCapacity: true)
            slots.removeAll(keepingCapacity: true)
        }
        head = 0
        count = 0
    }

    /// The outstanding values, in request order.
    var values: [Value] {
        slots[head...].compactMap { $0 }
    }

    /// Whether any outstanding value matches `predicate`.
    func contains(where predicate: (Value) -> Bool) -> Bool {
        slots[head...].contains { $0.map(predicate) ?? false }
    }

    private func index(of id: UInt64) -> Int? {
        guard head < ids.count else { return nil }
        if ids[head] == id { return head }
        if ids[ids.count - 1] == id { return ids.count - 1 }
        var low = head
        var high = ids.count - 1
        while low <= high {
            let middle = (low + high) / 2
            if ids[middle] == id { return middle }
            if ids[middle] < id { low = middle + 1 } else { high = middle - 1 }
        }
        return nil
    }

    private mutating func compact() {
        if count == 0 {
            removeAll()
            return
        }
        while slots[head] == nil { head += 1 }
        let holes = slots.count - head - count
        guard head >= 32 || holes >= 32 else { return }
        if holes > count {
            // Squeeze out every hole (and the front) at once.
            var keptIDs: [UInt64] = []
            var kept: [Value?] = []
            keptIDs.reserveCapacity(count * 2)
            kept.reserveCapacity(count * 2)
            for index in head..<slots.count where slots[index] != nil {
                keptIDs.append(ids[index])
                kept.append(slots[index])
            }
            ids = keptIDs
            slots = kept
            head = 0
        } else if head * 2 >= slots.count {
            ids.removeSubrange(0..<head)
            slots.removeSubrange(0..<head)
            head = 0
        }
    }
}
