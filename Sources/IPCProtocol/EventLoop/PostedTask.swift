// A task waiting in a loop's queue.
//
// Loops keep their queues as arrays of this struct, not of bare closures: an array stores its
// elements at the generic abstraction level, so putting a `() -> Void` in one wraps it in a
// reabstraction thunk, a heap allocation per posted task. A closure in a concrete struct's
// field is stored as it is.

/// A closure posted to a loop with `execute`.
package struct PostedTask: Sendable {
    package let run: @Sendable () -> Void

    @inline(__always)
    package init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}
