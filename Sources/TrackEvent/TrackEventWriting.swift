// Encodes one event into every instance that records its category, as Perfetto's SDK writes
// TrackEvents: interned category and name (their interned_data in the same packet the first
// time a sequence uses them), the default thread track left implicit, an explicit track (its
// descriptor written first, once), flows as fixed64 ids, debug annotations with interned names.

import CPerfettoIPCLinux
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

/// What one event is, apart from its category.
@usableFromInline
struct TrackEventSpec {
    @usableFromInline enum Kind: UInt64 { case sliceBegin = 1, sliceEnd = 2, instant = 3, counter = 4 }
    @usableFromInline enum Name {
        case none
        case interned(StaticString)
        case inline(String)
    }
    @usableFromInline enum Counter {
        case int(Int64)
        case double(Double)
    }

    @usableFromInline var kind: Kind
    @usableFromInline var name: Name
    @usableFromInline var track: Track?
    @usableFromInline var counterTrack: CounterTrack?
    @usableFromInline var counter: Counter?
    @usableFromInline var flow: Flow?
    @usableFromInline var terminatingFlow: Flow?
    @usableFromInline var timestamp: UInt64?

    @usableFromInline
    init(kind: Kind, name: Name = .none, track: Track? = nil, flow: Flow? = nil, terminatingFlow: Flow? = nil) {
        self.kind = kind
        self.name = name
        self.track = track
        self.flow = flow
        self.terminatingFlow = terminatingFlow
    }
}

/// Debug annotations of one event, written straight into its packet.
///
/// Names are static strings, interned per sequence. Values: integers, doubles, booleans,
/// strings, and nested dictionaries and arrays (``DebugValue``).
public struct TrackEventArguments {
    private var event: TracePacketBuilder
    private let sequence: TrackEventSequence

    init(event: TracePacketBuilder, sequence: TrackEventSequence) {
        self.event = event
        self.sequence = sequence
    }

    /// Adds `name: value` (signed integer).
    public mutating func add(_ name: StaticString, _ value: Int) { add(name, .int(Int64(value))) }
    /// Adds `name: value` (unsigned integer).
    public mutating func add(_ name: StaticString, _ value: UInt) { add(name, .uint(UInt64(value))) }
    /// Adds `name: value` (floating point).
    public mutating func add(_ name: StaticString, _ value: Double) { add(name, .double(value)) }
    /// Adds `name: value` (boolean).
    public mutating func add(_ name: StaticString, _ value: Bool) { add(name, .bool(value)) }
    /// Adds `name: value` (string).
    public mutating func add(_ name: StaticString, _ value: String) { add(name, .string(value)) }

    /// Adds `name: value`, any ``DebugValue`` (dictionaries and arrays nest).
    public mutating func add(_ name: StaticString, _ value: DebugValue) {
        let sequence = self.sequence
        event.appendNested(4) { annotation in  // TrackEvent.debug_annotations
            if name.hasPointerRepresentation {
                annotation.appendVarint(1, sequence.internAnnotationName(name))  // name_iid
            } else {
                annotation.appendString(10, "\(name)")
            }
            DebugValue.write(value, into: &annotation)
        }
    }
}

/// A debug annotation's value.
public indirect enum DebugValue: Sendable, Hashable {
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case bool(Bool)
    case string(String)
    /// Keyed values, in order (shown as `name.key` in the UI).
    case dictionary([DebugEntry])
    /// Values, in order (shown as `name[i]`).
    case array([DebugValue])

    /// Writes the value fields of a DebugAnnotation.
    static func write(_ value: DebugValue, into annotation: inout TracePacketBuilder) {
        switch value {
        case .int(let number): annotation.appendInt(4, number)
        case .uint(let number): annotation.appendVarint(3, number)
        case .double(let number): annotation.appendDouble(5, number)
        case .bool(let flag): annotation.appendBool(2, flag)
        case .string(let text): annotation.appendString(6, text)
        case .dictionary(let entries):
            for entry in entries {
                annotation.appendNested(11) { nested in  // dict_entries: name inline, never interned
                    nested.appendString(10, entry.key)
                    write(entry.value, into: &nested)
                }
            }
        case .array(let values):
            for item in values {
                annotation.appendNested(12) { nested in write(item, into: &nested) }  // array_values
            }
        }
    }
}

/// One entry of a ``DebugValue/dictionary(_:)``.
public struct DebugEntry: Sendable, Hashable {
    public var key: String
    public var value: DebugValue
    public init(_ key: String, _ value: DebugValue) {
        self.key = key
        self.value = value
    }
}

/// The per-thread entry point of the hot path.
@usableFromInline
enum TrackEventWriting {
    /// The calling thread's state (a pthread key; released, with its writers, when the thread
    /// ends).
    private static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        let created = pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<TrackEventThreadState>.fromOpaque(pointer).release()
        }
        precondition(created == 0, "pthread_key_create failed")
        return key
    }()

    static var threadState: TrackEventThreadState {
        if let pointer = pthread_getspecific(threadKey) {
            return Unmanaged<TrackEventThreadState>.fromOpaque(pointer).takeUnretainedValue()
        }
        let state = TrackEventThreadState()
        pthread_setspecific(threadKey, Unmanaged.passRetained(state).toOpaque())
        return state
    }

    /// Writes the event into every instance in `mask`.
    @usableFromInline
    static func write(
        _ category: TrackEventCategory, _ mask: UInt32, _ spec: TrackEventSpec,
        arguments: ((inout TrackEventArguments) -> Void)? = nil
    ) {
        let thread = threadState
        let runtime = TrackEventRuntime.shared
        let timestamp = spec.timestamp ?? bootTimeNanoseconds()
        var remaining = mask
        while remaining != 0 {
            let slot = remaining.trailingZeroBitCount
            remaining &= remaining - 1
            guard let sequence = thread.sequence(for: slot, runtime: runtime) else { continue }
            encode(category, spec, timestamp: timestamp, arguments: arguments, into: sequence)
        }
    }

    private static func encode(
        _ category: TrackEventCategory, _ spec: TrackEventSpec, timestamp: UInt64,
        arguments: ((inout TrackEventArguments) -> Void)?, into sequence: TrackEventSequence
    ) {
        if let track = spec.track { sequence.describe(track, timestamp: timestamp) }
        if let counterTrack = spec.counterTrack { sequence.describe(counterTrack, timestamp: timestamp) }
        // Begins and instants name their category and carry their name; ends and counters do not.
        let named = spec.kind == .sliceBegin || spec.kind == .instant
        let categoryIID = named ? sequence.internCategory(category) : (iid: 0, isNew: false)
        var nameIID: (iid: UInt64, isNew: Bool) = (0, false)
        if named, case .interned(let name) = spec.name, name.hasPointerRepresentation {
            nameIID = sequence.internName(name)
        }
        sequence.newAnnotationNames.removeAll(keepingCapacity: true)
        sequence.writer.newTracePacket { packet in
            packet.appendVarint(8, timestamp)
            packet.appendVarint(13, 2)  // SEQ_NEEDS_INCREMENTAL_STATE
            packet.appendNested(11) { event in  // track_event
                event.appendVarint(9, spec.kind.rawValue)
                if named {
                    event.appendVarint(3, categoryIID.iid)
                    switch spec.name {
                    case .interned(let name) where name.hasPointerRepresentation: event.appendVarint(10, nameIID.iid)
                    case .interned(let name): event.appendString(23, "\(name)")
                    case .inline(let name): event.appendString(23, name)
                    case .none: break
                    }
                }
                if let track = spec.track { event.appendVarint(11, track.uuid) }
                if let counterTrack = spec.counterTrack { event.appendVarint(11, counterTrack.uuid) }
                switch spec.counter {
                case .int(let value)?: event.appendInt(30, value)
                case .double(let value)?: event.appendDouble(44, value)
                case nil: break
                }
                if let flow = spec.flow { event.appendFixed64(47, flow.id) }
                if let flow = spec.terminatingFlow { event.appendFixed64(48, flow.id) }
                if let arguments {
                    var annotations = TrackEventArguments(event: event, sequence: sequence)
                    arguments(&annotations)
                }
            }
            guard categoryIID.isNew || nameIID.isNew || !sequence.newAnnotationNames.isEmpty else { return }
            packet.appendNested(12) { interned in  // interned_data
                if categoryIID.isNew {
                    interned.appendNested(1) { entry in  // event_categories
                        entry.appendVarint(1, categoryIID.iid)
                        entry.appendString(2, category.name)
                    }
                }
                if nameIID.isNew, case .interned(let name) = spec.name {
                    interned.appendNested(2) { entry in  // event_names
                        entry.appendVarint(1, nameIID.iid)
                        entry.appendBytes(2, UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
                    }
                }
                for entry in sequence.newAnnotationNames {
                    interned.appendNested(3) { item in  // debug_annotation_names
                        item.appendVarint(1, entry.iid)
                        item.appendBytes(
                            2, UnsafeRawBufferPointer(start: entry.name.utf8Start, count: entry.name.utf8CodeUnitCount))
                    }
                }
            }
        }
    }

    /// Sends what the calling thread wrote so far for every instance.
    static func flushCurrentThread() {
        guard let pointer = pthread_getspecific(threadKey) else { return }
        let thread = Unmanaged<TrackEventThreadState>.fromOpaque(pointer).takeUnretainedValue()
        for sequence in thread.sequences { sequence?.writer.flush() }
    }
}
