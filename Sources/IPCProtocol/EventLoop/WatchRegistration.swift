// The bookkeeping of one file-descriptor watch, shared by loops that keep a table of them
// (epoll, manual). The loop supplies what changing and cancelling mean to it.

/// A registered watch: its descriptor, events and handler. Loop-bound.
package final class WatchRegistration<Loop: AnyObject>: FileDescriptorWatch {
    package let id: UInt64
    package let fd: Int32
    package private(set) var events: FileDescriptorEvents
    /// Weak without a side table for the loop (Weak.swift): every task posted retains it.
    private let loopReference: Weak<Loop>
    private var loop: Loop? { loopReference.object }
    private var handler: ((FileDescriptorEvents) -> Void)?
    private let applyEvents: (Loop, WatchRegistration) -> Void
    private let remove: (Loop, WatchRegistration) -> Void

    /// `applyEvents` runs when the events change, `remove` once when the watch is cancelled.
    package init(
        id: UInt64, fd: Int32, events: FileDescriptorEvents, loop: Loop,
        handler: @escaping (FileDescriptorEvents) -> Void,
        applyEvents: @escaping (Loop, WatchRegistration) -> Void,
        remove: @escaping (Loop, WatchRegistration) -> Void
    ) {
        self.id = id
        self.fd = fd
        self.events = events
        self.loopReference = Weak(loop)
        self.handler = handler
        self.applyEvents = applyEvents
        self.remove = remove
    }

    /// Calls the handler, unless cancelled.
    package func fire(_ readiness: FileDescriptorEvents) {
        handler?(readiness)
    }

    package func setEvents(_ events: FileDescriptorEvents) {
        guard handler != nil, events != self.events else { return }
        self.events = events
        if let loop { applyEvents(loop, self) }
    }

    package func cancel() {
        guard handler != nil else { return }
        handler = nil
        if let loop { remove(loop, self) }
    }
}
