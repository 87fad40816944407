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
    private let buffer: PacketBuffer
    private let sequence: TrackEventSequence

    init(buffer: PacketBuffer, sequence: TrackEventSequence) {
        self.buffer = buffer
        self.sequence = sequence
    }

    /// Adds `name: value` (signed integer).
    public mutating func add(_ name: StaticString, _ value: Int) {
        annotation(name) { buffer.varintField(4, UInt64(bitPattern: Int64(value))) }
    }
    /// Adds `name: value` (unsigned integer).
    public mutating func add(_ name: StaticString, _ value: UInt) {
        annotation(name) { buffer.varintField(3, UInt64(value)) }
    }
    /// Adds `name: value` (floating point).
    public mutating func add(_ name: StaticString, _ value: Double) {
        annotation(name) { buffer.fixed64Field(5, value.bitPattern) }
    }
    /// Adds `name: value` (boolean).
    public mutating func add(_ name: StaticString, _ value: Bool) {
        annotation(name) { buffer.varintField(2, value ? 1 : 0) }
    }
    /// Adds `name: value` (string).
    public mutating func add(_ name: StaticString, _ value: String) {
        annotation(name) { buffer.stringField(6, value) }
    }

    /// Adds `name: value`, any ``DebugValue`` (dictionaries and arrays nest).
    public mutating func add(_ name: StaticString, _ value: DebugValue) {
        annotation(name) { DebugValue.write(value, into: buffer) }
    }

    /// Adds `name: value` with a name made at run time (written inline, not interned).
    public mutating func add(dynamicName name: String, _ value: DebugValue) {
        buffer.nested(4) {
            buffer.stringField(10, name)
            DebugValue.write(value, into: buffer)
        }
    }

    /// One TrackEvent.debug_annotations entry named `name` (interned), its value from `value`.
    @inline(__always)
    private func annotation(_ name: StaticString, _ value: () -> Void) {
        buffer.nested(4) {
            if name.hasPointerRepresentation {
                buffer.varintField(1, sequence.internAnnotationName(name))  // name_iid
            } else {
                buffer.staticStringField(10, name)
            }
            value()
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
    static func write(_ value: DebugValue, into buffer: PacketBuffer) {
        switch value {
        case .int(let number): buffer.varintField(4, UInt64(bitPattern: number))
        case .uint(let number): buffer.varintField(3, number)
        case .double(let number): buffer.fixed64Field(5, number.bitPattern)
        case .bool(let flag): buffer.varintField(2, flag ? 1 : 0)
        case .string(let text): buffer.stringField(6, text)
        case .dictionary(let entries):
            for entry in entries {
                buffer.nested(11) {  // dict_entries: the key inline, never interned
                    buffer.stringField(10, entry.key)
                    write(entry.value, into: buffer)
                }
            }
        case .array(let values):
            for item in values {
                buffer.nested(12) { write(item, into: buffer) }  // array_values
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

    /// Runs `body` with the calling thread's state (made on first use), without counting a
    /// reference to it: the thread holds it until it ends.
    @inline(__always)
    static func withThreadState(_ body: (TrackEventThreadState) -> Void) {
        if let pointer = pthread_getspecific(threadKey) {
            Unmanaged<TrackEventThreadState>.fromOpaque(pointer)._withUnsafeGuaranteedRef(body)
            return
        }
        let state = Unmanaged.passRetained(TrackEventThreadState())
        pthread_setspecific(threadKey, state.toOpaque())
        state._withUnsafeGuaranteedRef(body)
    }

    /// The common case, kept free of anything that needs reference counting: a slice begin or
    /// end, or an instant, on the thread's track, with a static name and nothing else.
    @usableFromInline
    static func writeSimple(_ category: TrackEventCategory, _ mask: UInt32, kind: TrackEventSpec.Kind, name: StaticString) {
        guard name.hasPointerRepresentation else {
            write(category, mask, TrackEventSpec(kind: kind, name: .interned(name)))
            return
        }
        let timestamp = bootTimeNanoseconds()
        withThreadState { thread in
            thread.forEachSequence(in: mask) { sequence in
                encodeSimple(category, kind: kind, name: name, timestamp: timestamp, into: sequence)
            }
        }
    }

    private static func encodeSimple(
        _ category: TrackEventCategory, kind: TrackEventSpec.Kind, name: StaticString, timestamp: UInt64,
        into sequence: TrackEventSequence
    ) {
        let buffer = sequence.buffer
        buffer.reset()
        buffer.varintField(8, timestamp)
        buffer.varintField(13, 2)  // SEQ_NEEDS_INCREMENTAL_STATE
        guard kind != .sliceEnd else {
            buffer.nested(11) { buffer.varintField(9, kind.rawValue) }
            sequence.writer.writePacket(bytes: buffer.bytes)
            return
        }
        let categoryIID = sequence.internCategory(category)
        let nameIID = sequence.internName(name)
        buffer.nested(11) {
            buffer.varintField(9, kind.rawValue)
            buffer.varintField(3, categoryIID.iid)
            buffer.varintField(10, nameIID.iid)
        }
        if categoryIID.isNew || nameIID.isNew {
            buffer.nested(12) {
                if categoryIID.isNew {
                    buffer.nested(1) {
                        buffer.varintField(1, categoryIID.iid)
                        buffer.stringField(2, category.name)
                    }
                }
                if nameIID.isNew {
                    buffer.nested(2) {
                        buffer.varintField(1, nameIID.iid)
                        buffer.staticStringField(2, name)
                    }
                }
            }
        }
        sequence.writer.writePacket(bytes: buffer.bytes)
    }

    /// A counter value, without the general path's bookkeeping.
    @usableFromInline
    static func writeCounter(_ category: TrackEventCategory, _ mask: UInt32, _ track: CounterTrack, int: Int64?, double: Double) {
        let timestamp = bootTimeNanoseconds()
        withThreadState { thread in
            thread.forEachSequence(in: mask) { sequence in
                sequence.describe(track, timestamp: timestamp)
                let buffer = sequence.buffer
                buffer.reset()
                buffer.varintField(8, timestamp)
                buffer.varintField(13, 2)
                buffer.nested(11) {
                    buffer.varintField(9, TrackEventSpec.Kind.counter.rawValue)
                    buffer.varintField(11, track.uuid)
                    if let int {
                        buffer.varintField(30, UInt64(bitPattern: int))
                    } else {
                        buffer.fixed64Field(44, double.bitPattern)
                    }
                }
                sequence.writer.writePacket(bytes: buffer.bytes)
            }
        }
    }

    /// Writes the event into every instance in `mask`.
    @usableFromInline
    static func write(
        _ category: TrackEventCategory, _ mask: UInt32, _ spec: TrackEventSpec,
        arguments: ((inout TrackEventArguments) -> Void)? = nil
    ) {
        let timestamp = spec.timestamp ?? bootTimeNanoseconds()
        withThreadState { thread in
            thread.forEachSequence(in: mask) { sequence in
                encode(category, spec, timestamp: timestamp, arguments: arguments, into: sequence)
            }
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
        let buffer = sequence.buffer
        buffer.reset()
        buffer.varintField(8, timestamp)
        buffer.varintField(13, 2)  // SEQ_NEEDS_INCREMENTAL_STATE
        buffer.nested(11) {  // track_event
            buffer.varintField(9, spec.kind.rawValue)
            if named {
                buffer.varintField(3, categoryIID.iid)
                switch spec.name {
                case .interned(let name) where name.hasPointerRepresentation: buffer.varintField(10, nameIID.iid)
                case .interned(let name): buffer.staticStringField(23, name)
                case .inline(let name): buffer.stringField(23, name)
                case .none: break
                }
            }
            if let track = spec.track { buffer.varintField(11, track.uuid) }
            if let counterTrack = spec.counterTrack { buffer.varintField(11, counterTrack.uuid) }
            switch spec.counter {
            case .int(let value)?: buffer.varintField(30, UInt64(bitPattern: value))
            case .double(let value)?: buffer.fixed64Field(44, value.bitPattern)
            case nil: break
            }
            if let flow = spec.flow { buffer.fixed64Field(47, flow.id) }
            if let flow = spec.terminatingFlow { buffer.fixed64Field(48, flow.id) }
            if let arguments {
                var annotations = TrackEventArguments(buffer: buffer, sequence: sequence)
                arguments(&annotations)
            }
        }
        if categoryIID.isNew || nameIID.isNew || !sequence.newAnnotationNames.isEmpty {
            buffer.nested(12) {  // interned_data
                if categoryIID.isNew {
                    buffer.nested(1) {  // event_categories
                        buffer.varintField(1, categoryIID.iid)
                        buffer.stringField(2, category.name)
                    }
                }
                if nameIID.isNew, case .interned(let name) = spec.name {
                    buffer.nested(2) {  // event_names
                        buffer.varintField(1, nameIID.iid)
                        buffer.staticStringField(2, name)
                    }
                }
                for entry in sequence.newAnnotationNames {
                    buffer.nested(3) {  // debug_annotation_names
                        buffer.varintField(1, entry.iid)
                        buffer.staticStringField(2, entry.name)
                    }
                }
            }
        }
        sequence.writer.writePacket(bytes: buffer.bytes)
    }

    /// Sends what the calling thread wrote so far for every instance.
    static func flushCurrentThread() {
        guard let pointer = pthread_getspecific(threadKey) else { return }
        let thread = Unmanaged<TrackEventThreadState>.fromOpaque(pointer).takeUnretainedValue()
        for sequence in thread.allSequences { sequence.writer.flush() }
    }
}
