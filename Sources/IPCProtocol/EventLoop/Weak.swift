// A weak reference as a value: for tables and posted tasks that must not keep an object alive.

/// Holds `object` weakly.
package struct Weak<Object: AnyObject> {
    package weak var object: Object?
    package init(_ object: Object?) { self.object = object }
}

/// A weak reference in a box of its own, for a task that is made once and posted many times:
/// reading it is one weak load, where a ``Weak`` captured by value is copied on every run.
/// Unchecked Sendable like ``UncheckedSendableBox``: the object is only used on its loop.
package final class WeakBox<Object: AnyObject>: @unchecked Sendable {
    package weak var object: Object?
    package init(_ object: Object?) { self.object = object }
}
