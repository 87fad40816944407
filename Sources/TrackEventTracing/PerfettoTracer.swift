// swift-distributed-tracing, recorded as Perfetto track events: any library instrumented with
// swift-distributed-tracing (servers, HTTP clients, databases) shows up in a Perfetto trace once
// the app bootstraps this tracer.
//
// * A span is a slice on an async track. A child joins its parent's track while the parent is
//   the innermost open slice there; a child that would overlap a sibling gets a track of its own
//   under its parent's, so concurrent spans never break each other's nesting.
// * Attributes become debug annotations (written with the span's end, which Perfetto merges into
//   the slice); events become instants on the span's track; links become flows between the two
//   spans' tracks; errors and an error status become an `error` annotation on the end.
// * A span that ends while a span opened after it on the same track is still open is ended when
//   that one ends (slices on a track must nest).

import Instrumentation
import IPCProtocol
import Synchronization
import Tracing
import TrackEvent

extension TrackEventCategory {
    /// The default category of spans recorded by ``PerfettoTracer``.
    public static let distributedTracing = TrackEventCategory(
        "tracing", description: "Spans recorded through swift-distributed-tracing")
}

/// A swift-distributed-tracing `Tracer` that records spans as Perfetto slices.
///
/// ```swift
/// try TrackEvent.initialize([.distributedTracing], backends: [.system()])
/// InstrumentationSystem.bootstrap(PerfettoTracer())
/// ```
public struct PerfettoTracer: Tracer {
    public typealias Span = PerfettoSpan

    /// The category spans are recorded under (register it with `TrackEvent.initialize`).
    public let category: TrackEventCategory

    /// A tracer recording into `category`.
    public init(category: TrackEventCategory = .distributedTracing) {
        self.category = category
        TrackEvent.register([category])
    }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> PerfettoSpan {
        PerfettoSpan(operationName: operationName, parentContext: context(), kind: kind, category: category)
    }

    public func forceFlush() {
        TrackEvent.flush()
    }

    /// Writes the span's flow id as `perfetto-flow`, so the process that receives the carrier
    /// can link its spans to this one.
    public func inject<Carrier, Inject: Injector>(
        _ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard let span = context[PerfettoSpanKey.self] else { return }
        injector.inject(String(span.flow.id), forKey: Self.flowHeader, into: &carrier)
        // The flow's first end: where the call left this process.
        TrackEvent.instant(category, "propagated", track: span.node.track, flow: span.flow)
    }

    /// Reads `perfetto-flow`: the spans started in `context` link back to the remote span.
    public func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract
    ) where Extract.Carrier == Carrier {
        guard let text = extractor.extract(key: Self.flowHeader, from: carrier), let id = UInt64(text) else { return }
        context[RemoteFlowKey.self] = Flow.global(id)
    }

    /// The carrier key spans propagate their flow under.
    public static let flowHeader = "perfetto-flow"
}

/// What a span leaves in its context for children, links and propagation.
final class SpanIdentity: Sendable {
    let id: UInt64
    let node: TrackNode
    let flow: Flow

    init(id: UInt64, node: TrackNode) {
        self.id = id
        self.node = node
        flow = Flow.global(id ^ 0x5EED_F10E_D15C_0000)
    }
}

enum PerfettoSpanKey: InstrumentationContextKey {
    typealias Value = SpanIdentity
    static var nameOverride: String? { "perfetto-span" }
}

enum RemoteFlowKey: InstrumentationContextKey {
    typealias Value = Flow
    static var nameOverride: String? { "perfetto-remote-flow" }
}

/// An async track and the spans open on it, innermost last.
final class TrackNode: Sendable {
    let track: Track
    struct State {
        var open: [UInt64] = []
        /// Spans that ended while a later span on the track was still open, with their end's
        /// annotations: ended as soon as the spans above them end.
        var deferred: [UInt64: [(String, DebugValue)]] = [:]
    }
    let state = ThreadLock(State())

    init(track: Track) {
        self.track = track
    }
}

private let spanIDs = Atomic<UInt64>(0)

/// A span recorded as a Perfetto slice. Thread-safe.
public final class PerfettoSpan: Tracing.Span {
    private struct State {
        var operationName: String
        var attributes = SpanAttributes()
        var errors: [String] = []
        var status: SpanStatus?
        var ended = false
    }

    public let context: InstrumentationContext
    private let identity: SpanIdentity
    private let category: TrackEventCategory
    private let state: ThreadLock<State>

    init(operationName: String, parentContext: InstrumentationContext, kind: SpanKind, category: TrackEventCategory) {
        self.category = category
        let id = spanIDs.wrappingAdd(1, ordering: .relaxed).newValue
        let parent = parentContext[PerfettoSpanKey.self]
        let remote = parentContext[RemoteFlowKey.self]
        let kindName = "\(kind)"
        let begin = { (node: TrackNode, track: inout TrackNode.State) in
            track.open.append(id)
            TrackEvent.begin(category, dynamicName: operationName, track: node.track, terminatingFlow: remote) { arguments in
                arguments.add("span.kind", kindName)
            }
        }
        // Join the parent's track if the parent is its innermost open slice (checked and taken
        // under the track's lock); otherwise a track of its own, under the parent's (or the
        // process's, for a root span).
        var node = parent?.node
        if let parent, let parentNode = node {
            let joined = parentNode.state.withLock { track -> Bool in
                guard track.open.last == parent.id else { return false }
                begin(parentNode, &track)
                return true
            }
            if !joined { node = nil }
        }
        if node == nil {
            let fresh = TrackNode(
                track: parent.map { .async(id, name: operationName, parent: $0.node.track) }
                    ?? .async(id | (1 << 61), name: operationName))
            fresh.state.withLock { begin(fresh, &$0) }
            node = fresh
        }
        identity = SpanIdentity(id: id, node: node!)
        var context = parentContext
        context[PerfettoSpanKey.self] = identity
        self.context = context
        state = ThreadLock(State(operationName: operationName))
    }

    public var operationName: String {
        get { state.withLock { $0.operationName } }
        set { state.withLock { $0.operationName = newValue } }
    }

    public var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        set { state.withLock { $0.attributes = newValue } }
    }

    public var isRecording: Bool { state.withLock { !$0.ended } }

    public func setStatus(_ status: SpanStatus) {
        state.withLock { $0.status = status }
    }

    /// An instant on the span's track, its attributes as annotations.
    public func addEvent(_ event: SpanEvent) {
        let values = Self.annotations(event.attributes)
        TrackEvent.instant(category, dynamicName: event.name, track: identity.node.track) { arguments in
            for (name, value) in values { arguments.add(dynamicName: name, value) }
        }
    }

    public func recordError<Instant: TracerInstant>(
        _ error: Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant
    ) {
        state.withLock { $0.errors.append(String(describing: error)) }
        let values = Self.annotations(attributes)
        TrackEvent.instant(category, dynamicName: "error", track: identity.node.track) { arguments in
            arguments.add(dynamicName: "error", .string(String(describing: error)))
            for (name, value) in values { arguments.add(dynamicName: name, value) }
        }
    }

    /// A flow from the linked span to this one (an instant on each span's track carries it).
    public func addLink(_ link: SpanLink) {
        guard let other = link.context[PerfettoSpanKey.self] else { return }
        let flow = Flow.global(other.flow.id ^ identity.id)
        TrackEvent.instant(category, "link", track: other.node.track, flow: flow)
        TrackEvent.instant(category, "linked", track: identity.node.track, terminatingFlow: flow)
    }

    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let annotations: [(String, DebugValue)]? = state.withLock { state in
            guard !state.ended else { return nil }
            state.ended = true
            var values = Self.annotations(state.attributes)
            if !state.errors.isEmpty { values.append(("error", .string(state.errors.joined(separator: "; ")))) }
            if let status = state.status, status.code == .error {
                values.append(("error", .string(status.message ?? "error")))
            }
            return values
        }
        guard let annotations else { return }
        let node = identity.node
        let id = identity.id
        let category = self.category
        node.state.withLock { track in
            guard track.open.last == id else {
                if track.open.contains(id) { track.deferred[id] = annotations }
                return
            }
            track.open.removeLast()
            Self.writeEnd(category, node.track, annotations)
            // Spans below that ended already end now.
            while let top = track.open.last, let pending = track.deferred.removeValue(forKey: top) {
                track.open.removeLast()
                Self.writeEnd(category, node.track, pending)
            }
        }
    }

    private static func writeEnd(_ category: TrackEventCategory, _ track: Track, _ annotations: [(String, DebugValue)]) {
        TrackEvent.end(category, track: track, arguments: annotations.isEmpty ? nil : { arguments in
            for (name, value) in annotations { arguments.add(dynamicName: name, value) }
        })
    }

    /// Span attributes as debug annotation values.
    static func annotations(_ attributes: SpanAttributes) -> [(String, DebugValue)] {
        var values: [(String, DebugValue)] = []
        attributes.forEach { name, attribute in
            let value: DebugValue
            switch attribute {
            case .int32(let number): value = .int(Int64(number))
            case .int64(let number): value = .int(number)
            case .double(let number): value = .double(number)
            case .bool(let flag): value = .bool(flag)
            case .string(let text): value = .string(text)
            case .int32Array(let numbers): value = .array(numbers.map { .int(Int64($0)) })
            case .int64Array(let numbers): value = .array(numbers.map { .int($0) })
            case .doubleArray(let numbers): value = .array(numbers.map { .double($0) })
            case .boolArray(let flags): value = .array(flags.map { .bool($0) })
            case .stringArray(let texts): value = .array(texts.map { .string($0) })
            case .stringConvertible(let item): value = .string(item.description)
            case .stringConvertibleArray(let items): value = .array(items.map { .string($0.description) })
            default: value = .string("\(attribute)")
            }
            values.append((name, value))
        }
        return values
    }
}
