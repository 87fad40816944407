// Weak references for the objects every call goes through (clients, hosts, proxies,
// connections, loops), without Swift's `weak`.
//
// A `weak` reference gives its object a side table, and from then on every retain and release
// of that object takes the runtime's slow path: for the objects on a call's path, about a sixth
// of an in-memory call. These hold an unowned reference instead, which keeps only the object's
// memory alive (no side table), and load the object by asking the runtime to retain it unless
// it has begun to deinitialize (`swift_tryRetain`): a weak load, with the same answers, even
// while the object's last strong reference goes on another thread. What it costs: an object
// that is gone keeps its memory (not its fields) until the last anchor to it goes.
//
// * A reference is read and written like any variable: not written on one thread while read
//   on another (with these, that would be a use after free, not only a wrong answer). The
//   ones in the IPC core are loop-bound, or behind a lock.
// * Loads read only `address`: copying an anchor would retain and release its unowned part.
// * No unowned reference here is Optional ("no object" is a nil anchor). With Swift 6.3.1, an
//   Optional unowned or unowned(unsafe) reference (to a class or an existential) inside a
//   struct or an enum payload breaks the enum layout around it: a Dictionary lookup of a
//   missing key returns a value, and Optionals made in generic code read wrong in specialized
//   code (WeakTests). The delegate boxes below keep theirs in a class, which is not affected;
//   never move it into a struct.

import CSwiftRuntime

/// The memory of an object, kept without keeping the object alive, and its address.
package struct ObjectAnchor {
    private unowned(safe) let anchor: AnyObject
    /// Where the object is. Read this, not the anchor, to load it.
    package let address: UnsafeMutableRawPointer

    package init(_ object: AnyObject) {
        anchor = object
        address = Unmanaged.passUnretained(object).toOpaque()
    }

    /// The object at `address`, retained, or nil if there is none or it has begun to
    /// deinitialize. `address` must come from an anchor that is held, and not written by
    /// another thread, until this returns.
    @inline(__always)
    package static func load<Object: AnyObject>(_ address: UnsafeMutableRawPointer?, as type: Object.Type = Object.self)
        -> Object?
    {
        guard let address, swift_tryRetain(address) != nil else { return nil }
        return Unmanaged<Object>.fromOpaque(address).takeRetainedValue()
    }

    /// `read()` while the object at `address` is held, or nil if it is gone or going. For a
    /// reference kept `unowned(unsafe)` beside the anchor (a delegate, whose type is an
    /// existential): `read` copies it, which is safe while the object is held.
    @inline(__always)
    package static func load<Value>(_ address: UnsafeMutableRawPointer?, _ read: () -> Value?) -> Value? {
        guard let address, swift_tryRetain(address) != nil else { return nil }
        let held = Unmanaged<AnyObject>.fromOpaque(address).takeRetainedValue()
        return withExtendedLifetime(held) { read() }
    }

    /// Whether this anchors `object` (no retain: the anchor keeps the address from being
    /// reused, so it names the same object even once that object is gone).
    package func refers(to object: AnyObject) -> Bool {
        address == Unmanaged.passUnretained(object).toOpaque()
    }
}

/// Holds `object` weakly: nil once it has begun to deinitialize.
package struct Weak<Object: AnyObject> {
    private var anchor: ObjectAnchor?
    package init(_ object: Object?) { anchor = object.map { ObjectAnchor($0) } }

    package var object: Object? {
        @inline(__always) get { withExtendedLifetime(anchor) { ObjectAnchor.load(anchor?.address) } }
        set { anchor = newValue.map { ObjectAnchor($0) } }
    }

    /// Whether this references `object`, gone or not, without retaining anything: for a table
    /// entry an object removes in its own deinit, where ``object`` already reads nil (and where
    /// a load under the table's lock could end up releasing the last reference to another
    /// object, whose deinit would take the same lock).
    package func refers(to object: AnyObject) -> Bool {
        anchor?.refers(to: object) ?? false
    }
}

/// A weak reference in a box of its own, for a task that is made once and posted many times:
/// reading it is one load, where a ``Weak`` captured by value is copied on every run.
/// Unchecked Sendable like ``UncheckedSendableBox``: the object is only used on its loop.
package final class WeakBox<Object: AnyObject>: @unchecked Sendable {
    private let anchor: ObjectAnchor?
    package init(_ object: Object?) { anchor = object.map { ObjectAnchor($0) } }
    package var object: Object? { withExtendedLifetime(anchor) { ObjectAnchor.load(anchor?.address) } }
}

/// A connection's delegate, held weakly without a side table: what connections store, so that
/// the clients and hosts they deliver to keep fast reference counting. Loop-bound.
package final class WeakConnectionDelegate {
    @exclusivity(unchecked) private var anchor: ObjectAnchor?
    /// Copied only while `anchor`'s object is held (a delegate's type is an existential, which
    /// `Weak` cannot hold).
    @exclusivity(unchecked) private unowned(unsafe) var reference: (any IPCConnectionDelegate)?

    package init() {}

    package var delegate: (any IPCConnectionDelegate)? {
        get { ObjectAnchor.load(anchor?.address) { reference } }
        set {
            anchor = newValue.map { ObjectAnchor($0) }
            reference = newValue
        }
    }
}

/// A listener's delegate (a host), held like ``WeakConnectionDelegate``. Loop-bound.
package final class WeakListenerDelegate {
    @exclusivity(unchecked) private var anchor: ObjectAnchor?
    @exclusivity(unchecked) private unowned(unsafe) var reference: (any IPCListenerDelegate)?

    package init() {}

    package var delegate: (any IPCListenerDelegate)? {
        get { ObjectAnchor.load(anchor?.address) { reference } }
        set {
            anchor = newValue.map { ObjectAnchor($0) }
            reference = newValue
        }
    }
}
