// The app-facing API: slices, instants, counters and flows in categories, on the calling
// thread's track or on tracks the app names. A call site in a category no session records
// costs one relaxed atomic load and a branch (the check is inlined into the caller); an enabled
// one writes straight into shared memory, interning its static name and category.

import Synchronization

/// Track events for Swift apps: Perfetto's `TRACE_EVENT` family.
///
/// ```swift
/// extension TrackEventCategory { static let app = TrackEventCategory("app") }
///
/// try TrackEvent.initialize([.app])                        // in-process; or backends: [.system]
/// TrackEvent.slice(.app, "LoadConfig") { loadConfig() }
/// TrackEvent.begin(.app, "Request") { $0.add("id", requestID) }
/// TrackEvent.end(.app)
/// TrackEvent.counter(.app, CounterTrack("queue depth"), queue.count)
/// ```
///
/// Names are static strings (interned once per thread and session) or, with the `String`
/// overloads, any string (written inline). Events on the thread's track must nest: `end` closes
/// the thread's innermost open slice. Use ``Track`` for work that overlaps or moves between
/// threads. Nothing here blocks: when the shared memory is full, events are dropped and the
/// trace says so.
public enum TrackEvent {
    // MARK: Slices

    /// Begins a slice named `name` on `track` (the calling thread's, by default).
    @inlinable
    public static func begin(
        _ category: TrackEventCategory, _ name: StaticString, track: Track? = nil, flow: Flow? = nil,
        terminatingFlow: Flow? = nil
    ) {
        event(.sliceBegin, category, name, track: track, flow: flow, terminatingFlow: terminatingFlow)
    }

    /// Begins a slice with debug annotations: `arguments` adds them (it must not write events).
    @inlinable
    public static func begin(
        _ category: TrackEventCategory, _ name: StaticString, track: Track? = nil, flow: Flow? = nil,
        terminatingFlow: Flow? = nil, _ arguments: (inout TrackEventArguments) -> Void
    ) {
        event(.sliceBegin, category, name, track: track, flow: flow, terminatingFlow: terminatingFlow, arguments)
    }

    /// Begins a slice whose name is made at run time (written inline, not interned).
    @inlinable
    public static func begin(
        _ category: TrackEventCategory, dynamicName name: String, track: Track? = nil, flow: Flow? = nil,
        terminatingFlow: Flow? = nil, _ arguments: ((inout TrackEventArguments) -> Void)? = nil
    ) {
        event(.sliceBegin, category, dynamicName: name, track: track, flow: flow, terminatingFlow: terminatingFlow, arguments)
    }

    /// Ends the innermost open slice on `track` (the calling thread's, by default).
    @inlinable
    public static func end(_ category: TrackEventCategory, track: Track? = nil, flow: Flow? = nil) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        guard track != nil || flow != nil else {
            return TrackEventWriting.writeSimple(category, mask, kind: .sliceEnd, name: "")
        }
        TrackEventWriting.write(category, mask, TrackEventSpec(kind: .sliceEnd, track: track, flow: flow))
    }

    /// Ends the innermost open slice, adding debug annotations to it.
    @inlinable
    public static func end(
        _ category: TrackEventCategory, track: Track? = nil, _ arguments: (inout TrackEventArguments) -> Void
    ) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        withoutActuallyEscaping(arguments) { arguments in
            TrackEventWriting.write(category, mask, TrackEventSpec(kind: .sliceEnd, track: track), arguments: arguments)
        }
    }

    /// Runs `body` inside a slice on the calling thread's track (ended even if `body` throws).
    @inlinable
    public static func slice<Result>(
        _ category: TrackEventCategory, _ name: StaticString, flow: Flow? = nil, _ body: () throws -> Result
    ) rethrows -> Result {
        begin(category, name, flow: flow)
        defer { end(category) }
        return try body()
    }

    /// Runs async `body` inside a slice on an async track of its own: the body may move between
    /// threads and overlap other work, and the slice still nests correctly.
    public static func slice<Result>(
        _ category: TrackEventCategory, _ name: StaticString, flow: Flow? = nil,
        isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> Result
    ) async rethrows -> Result {
        guard category.isEnabled else { return try await body() }
        let track = Track.async(nextAsyncTrackID(), name: "\(name)")
        begin(category, name, track: track, flow: flow)
        defer { end(category, track: track) }
        return try await body()
    }

    // One body for slice beginnings and instants, which differ only in their kind. Inlined
    // into each public entry point, so the disabled path stays one load and one branch.

    @inlinable @inline(__always)
    static func event(
        _ kind: TrackEventSpec.Kind, _ category: TrackEventCategory, _ name: StaticString, track: Track?, flow: Flow?,
        terminatingFlow: Flow?
    ) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        guard track != nil || flow != nil || terminatingFlow != nil else {
            return TrackEventWriting.writeSimple(category, mask, kind: kind, name: name)
        }
        TrackEventWriting.write(
            category, mask,
            TrackEventSpec(kind: kind, name: .interned(name), track: track, flow: flow, terminatingFlow: terminatingFlow))
    }

    @inlinable @inline(__always)
    static func event(
        _ kind: TrackEventSpec.Kind, _ category: TrackEventCategory, _ name: StaticString, track: Track?, flow: Flow?,
        terminatingFlow: Flow?, _ arguments: (inout TrackEventArguments) -> Void
    ) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        withoutActuallyEscaping(arguments) { arguments in
            TrackEventWriting.write(
                category, mask,
                TrackEventSpec(kind: kind, name: .interned(name), track: track, flow: flow, terminatingFlow: terminatingFlow),
                arguments: arguments)
        }
    }

    @inlinable @inline(__always)
    static func event(
        _ kind: TrackEventSpec.Kind, _ category: TrackEventCategory, dynamicName name: String, track: Track?, flow: Flow?,
        terminatingFlow: Flow?, _ arguments: ((inout TrackEventArguments) -> Void)?
    ) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        TrackEventWriting.write(
            category, mask,
            TrackEventSpec(kind: kind, name: .inline(name), track: track, flow: flow, terminatingFlow: terminatingFlow),
            arguments: arguments)
    }

    // MARK: Instants and counters

    /// An instant event named `name` on `track` (the calling thread's, by default).
    @inlinable
    public static func instant(
        _ category: TrackEventCategory, _ name: StaticString, track: Track? = nil, flow: Flow? = nil,
        terminatingFlow: Flow? = nil
    ) {
        event(.instant, category, name, track: track, flow: flow, terminatingFlow: terminatingFlow)
    }

    /// An instant event with debug annotations.
    @inlinable
    public static func instant(
        _ category: TrackEventCategory, _ name: StaticString, track: Track? = nil, flow: Flow? = nil,
        terminatingFlow: Flow? = nil, _ arguments: (inout TrackEventArguments) -> Void
    ) {
        event(.instant, category, name, track: track, flow: flow, terminatingFlow: terminatingFlow, arguments)
    }

    /// An instant event whose name is made at run time (written inline, not interned).
    @inlinable
    public static func instant(
        _ category: TrackEventCategory, dynamicName name: String, track: Track? = nil, flow: Flow? = nil,
        terminatingFlow: Flow? = nil, _ arguments: ((inout TrackEventArguments) -> Void)? = nil
    ) {
        event(.instant, category, dynamicName: name, track: track, flow: flow, terminatingFlow: terminatingFlow, arguments)
    }

    /// Ends the innermost open slice on `track`, with optional annotations (for callers that
    /// hold an optional closure, such as bridges from other tracing APIs).
    @inlinable
    public static func end(
        _ category: TrackEventCategory, track: Track?, flow: Flow? = nil,
        arguments: ((inout TrackEventArguments) -> Void)?
    ) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        TrackEventWriting.write(category, mask, TrackEventSpec(kind: .sliceEnd, track: track, flow: flow), arguments: arguments)
    }

    /// A counter value (a point in `track`'s graph).
    @inlinable
    public static func counter(_ category: TrackEventCategory, _ track: CounterTrack, _ value: Int64) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        TrackEventWriting.writeCounter(category, mask, track, int: value, double: 0)
    }

    /// A counter value (a point in `track`'s graph).
    @inlinable
    public static func counter(_ category: TrackEventCategory, _ track: CounterTrack, _ value: Int) {
        counter(category, track, Int64(value))
    }

    /// A counter value (a point in `track`'s graph).
    @inlinable
    public static func counter(_ category: TrackEventCategory, _ track: CounterTrack, _ value: Double) {
        let mask = category.enabledMask
        guard mask != 0 else { return }
        TrackEventWriting.writeCounter(category, mask, track, int: nil, double: value)
    }

    // MARK: Threads

    /// Hands what the calling thread wrote so far to the service (threads that end do this by
    /// themselves; the service also reads what idle threads finished when a session flushes or
    /// stops).
    public static func flush() {
        TrackEventWriting.flushCurrentThread()
    }

    /// A track id no other `slice` has used in this process.
    static func nextAsyncTrackID() -> UInt64 {
        asyncTrackIDs.wrappingAdd(1, ordering: .relaxed).newValue | (1 << 62)
    }
}

/// Ids of the async tracks `TrackEvent.slice` makes.
private let asyncTrackIDs = Atomic<UInt64>(0)
