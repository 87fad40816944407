// A weak reference as a value: for tables and posted tasks that must not keep an object alive.

/// Holds `object` weakly.
package struct Weak<Object: AnyObject> {
    package weak var object: Object?
    package init(_ object: Object?) { self.object = object }
}
