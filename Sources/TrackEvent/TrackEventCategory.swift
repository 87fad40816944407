// Categories: what an app declares its events under, and what a trace config turns on.
//
// Each category carries one bit per running track_event instance (a session that enabled it),
// so a call site in a category no session wants costs one relaxed atomic load and a branch.

import Synchronization

/// A category of track events, declared once by the app and published to the tracing service
/// in the `track_event` data source's descriptor.
///
/// ```swift
/// extension TrackEventCategory {
///     static let rendering = TrackEventCategory("rendering", description: "Frames and layers")
///     static let verbose = TrackEventCategory("rendering.verbose", tags: ["debug"])
/// }
/// ```
///
/// Tags `slow` and `debug` keep a category off unless a config names it (Perfetto's rule).
public final class TrackEventCategory: Sendable, Hashable {
    /// The category's name, as configs match it.
    public let name: String
    /// What the category covers, for people (shown by the Perfetto UI's record page).
    public let description: String?
    /// Tags configs may enable or disable the category by.
    public let tags: [String]
    /// Bit `i` set: the track_event instance in slot `i` records this category.
    @usableFromInline let enabledInstances = Atomic<UInt32>(0)
    /// The category's position among registered ones (-1 until registered): sequences keep
    /// their interned category ids in an array indexed by it.
    let registrationSlot = Atomic<Int>(-1)

    var registrationIndex: Int { max(registrationSlot.load(ordering: .relaxed), 0) }

    /// Declares a category. Declare each once (a `static let`) and register it with
    /// ``TrackEvent/register(_:)`` or ``TrackEvent/initialize(_:)``.
    public init(_ name: String, description: String? = nil, tags: [String] = []) {
        self.name = name
        self.description = description
        self.tags = tags
    }

    /// Whether any session records this category now.
    @inlinable
    public var isEnabled: Bool { enabledMask != 0 }

    /// The instances recording this category: one relaxed load.
    @inlinable
    var enabledMask: UInt32 { enabledInstances.load(ordering: .relaxed) }

    public static func == (lhs: TrackEventCategory, rhs: TrackEventCategory) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}
