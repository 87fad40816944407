// Delayed tasks of one loop: a binary min-heap ordered by deadline, then by insertion order so
// tasks due at the same instant run in the order they were scheduled. Cancelled tasks are
// dropped lazily when they reach the top. Shared by the backends' loops (real or virtual time).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Monotonic nanoseconds, the real-time loops' clock.
package func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Whole nanoseconds in a (non-negative) duration.
package func nanoseconds(_ duration: Duration) -> UInt64 {
    let (seconds, attoseconds) = duration.components
    return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds / 1_000_000_000))
}

/// A handle for a task in a `TimerQueue`.
package final class TimerTask: ScheduledTask {
    package let deadline: UInt64
    let sequence: UInt64
    package var action: (() -> Void)?

    /// Prevents the task from running. Idempotent.
    package func cancel() { action = nil }

    init(deadline: UInt64, sequence: UInt64, action: @escaping () -> Void) {
        self.deadline = deadline
        self.sequence = sequence
        self.action = action
    }

    func precedes(_ other: TimerTask) -> Bool {
        deadline != other.deadline ? deadline < other.deadline : sequence < other.sequence
    }
}

/// Loop-confined queue of delayed tasks.
package struct TimerQueue {
    private var heap: [TimerTask] = []
    private var nextSequence: UInt64 = 0

    package init() {}

    package mutating func schedule(deadline: UInt64, _ action: @escaping () -> Void) -> TimerTask {
        let task = TimerTask(deadline: deadline, sequence: nextSequence, action: action)
        nextSequence += 1
        heap.append(task)
        siftUp(heap.count - 1)
        return task
    }

    /// The earliest deadline of a live task, dropping cancelled ones on top.
    package mutating func nextDeadline() -> UInt64? {
        while let top = heap.first, top.action == nil { _ = popTop() }
        return heap.first?.deadline
    }

    /// Removes and returns the actions due at `now`, in order.
    package mutating func popDue(now: UInt64) -> [() -> Void] {
        var due: [() -> Void] = []
        while let top = heap.first, top.deadline <= now {
            _ = popTop()
            if let action = top.action {
                top.action = nil
                due.append(action)
            }
        }
        return due
    }

    package var isEmpty: Bool { heap.isEmpty }

    private mutating func popTop() -> TimerTask {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
        return top
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { return }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].precedes(heap[smallest]) { smallest = left }
            if right < heap.count, heap[right].precedes(heap[smallest]) { smallest = right }
            guard smallest != parent else { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
