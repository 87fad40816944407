// A lock around a value, on pthread_mutex.
//
// Used for the few pieces of state that cross threads (posted-task queues, async call state).
// pthread_mutex rather than Synchronization.Mutex because ThreadSanitizer intercepts it: the
// standard library's Mutex synchronizes through code TSan does not instrument, and TSan then
// reports races on the state it protects (seen in `scripts/sanitize.sh thread`).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a `pthread_mutex_t`. Thread-safe.
package final class ThreadLock<Value>: @unchecked Sendable {
    // @unchecked Sendable: `value` is only touched while `mutex` is held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    // Unchecked exclusivity: the mutex already serializes every access (a nested withLock
    // would deadlock first), and the dynamic check cost more than the lock on hot paths.
    @exclusivity(unchecked) private var value: Value

    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    @inline(__always)
    package func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
