// Reads a recorded trace back the way a viewer does, decoding with the generated messages (not
// the writer's code): per sequence, interning tables that reset on SEQ_INCREMENTAL_STATE_CLEARED;
// packets that need incremental state before any reset are skipped; slices stacked per track.

import TracingAPI
import TrackEvent

struct ReadSlice: Equatable {
    var name: String
    var category: String
    var track: UInt64
    var depth: Int
    var begin: UInt64
    var end: UInt64?
    var arguments: [String: String] = [:]
    var flows: [UInt64] = []
    var terminatingFlows: [UInt64] = []
}

struct ReadTrace {
    var slices: [ReadSlice] = []
    var instants: [ReadSlice] = []
    var counters: [UInt64: [Double]] = [:]
    /// Track uuid -> descriptor (thread, process, named, counter).
    var tracks: [UInt64: Perfetto_Protos_TrackDescriptor] = [:]
    /// Problems a viewer would show (an end without a begin, a name it cannot resolve, ...).
    var problems: [String] = []
    var categoriesSeen: Set<String> = []
    /// Packets a viewer skips because data was lost before them on their sequence.
    var skippedAfterLoss = 0

    init(_ packets: [TracePacket]) {
        struct SequenceState {
            var valid = false
            var names: [UInt64: String] = [:]
            var categories: [UInt64: String] = [:]
            var annotationNames: [UInt64: String] = [:]
            var defaultTrack: UInt64 = 0
            var lostData = false
        }
        var sequences: [UInt32: SequenceState] = [:]
        // Events are resolved in the order of their sequence (interning), then applied in the
        // order of their timestamps, as Perfetto's trace processor does: a slice begun on one
        // thread may end on another, whose chunk can come first in the file.
        struct ResolvedEvent {
            var timestamp: UInt64
            var order: Int
            var type: Perfetto_Protos_TrackEvent.TypeEnum
            var slice: ReadSlice
            var counterValue: Double
        }
        var timeline: [ResolvedEvent] = []
        for packet in packets {
            guard packet.trustedPacketSequenceID > 1 else { continue }
            var state = sequences[packet.trustedPacketSequenceID] ?? SequenceState()
            // Data was lost just before this packet: what the sequence interned may be gone.
            if packet.previousPacketDropped != 0 && packet.sequenceFlags & 1 == 0 {
                state.valid = false
                state.lostData = true
            }
            if packet.sequenceFlags & 1 != 0 {
                state = SequenceState()
                state.valid = true
            }
            if packet.hasTracePacketDefaults {
                state.defaultTrack = packet.tracePacketDefaults.trackEventDefaults.trackUuid
            }
            if packet.sequenceFlags & 2 != 0 && !state.valid {
                // A viewer skips it, as Perfetto's trace processor does. Only a sequence that
                // never lost data yet has no valid state is a writer's mistake.
                if packet.previousPacketDropped == 0 && !state.lostData {
                    problems.append("packet needing incremental state before any reset")
                }
                skippedAfterLoss += 1
                sequences[packet.trustedPacketSequenceID] = state
                continue
            }
            if packet.hasInternedData {
                for entry in packet.internedData.eventNames { state.names[entry.iid] = entry.name }
                for entry in packet.internedData.eventCategories { state.categories[entry.iid] = entry.name }
                for entry in packet.internedData.debugAnnotationNames { state.annotationNames[entry.iid] = entry.name }
            }
            switch packet.data {
            case .trackDescriptor(let descriptor)?:
                tracks[descriptor.uuid] = descriptor
            case .trackEvent(let event)?:
                let track = event.hasTrackUuid ? event.trackUuid : state.defaultTrack
                var name = ""
                switch event.nameField {
                case .nameIid(let iid)?:
                    if let resolved = state.names[iid] { name = resolved } else { problems.append("unresolved name iid \(iid)") }
                case .name(let inline)?: name = inline
                case nil: break
                }
                var categories = event.categories
                for iid in event.categoryIids {
                    if let resolved = state.categories[iid] { categories.append(resolved) } else { problems.append("unresolved category iid \(iid)") }
                }
                categoriesSeen.formUnion(categories)
                var arguments: [String: String] = [:]
                for annotation in event.debugAnnotations {
                    var key = "?"
                    switch annotation.nameField {
                    case .nameIid(let iid)?: key = state.annotationNames[iid] ?? "?"
                    case .name(let inline)?: key = inline
                    case nil: break
                    }
                    arguments[key] = Self.describe(annotation)
                }
                var value = 0.0
                switch event.counterValueField {
                case .counterValue(let number)?: value = Double(number)
                case .doubleCounterValue(let number)?: value = number
                case nil: break
                }
                timeline.append(ResolvedEvent(
                    timestamp: packet.timestamp, order: timeline.count, type: event.type,
                    slice: ReadSlice(
                        name: name, category: categories.joined(separator: ","), track: track, depth: 0,
                        begin: packet.timestamp, arguments: arguments, flows: event.flowIds,
                        terminatingFlows: event.terminatingFlowIds),
                    counterValue: value))
            default:
                break
            }
            sequences[packet.trustedPacketSequenceID] = state
        }

        var open: [UInt64: [Int]] = [:]  // track -> indexes into slices
        timeline.sort { ($0.timestamp, $0.order) < ($1.timestamp, $1.order) }
        for event in timeline {
            let track = event.slice.track
            switch event.type {
            case .sliceBegin:
                var slice = event.slice
                slice.depth = open[track, default: []].count
                slices.append(slice)
                open[track, default: []].append(slices.count - 1)
            case .sliceEnd:
                guard let index = open[track]?.popLast() else {
                    problems.append("end without a begin on track \(track)")
                    continue
                }
                slices[index].end = event.timestamp
                slices[index].arguments.merge(event.slice.arguments) { $1 }
            case .instant:
                instants.append(event.slice)
            case .counter:
                counters[track, default: []].append(event.counterValue)
                if tracks[track]?.hasCounter != true { problems.append("counter on undescribed track \(track)") }
            default:
                break
            }
        }
    }

    static func describe(_ annotation: Perfetto_Protos_DebugAnnotation) -> String {
        switch annotation.value {
        case .intValue(let value)?: return "\(value)"
        case .uintValue(let value)?: return "\(value)"
        case .doubleValue(let value)?: return "\(value)"
        case .boolValue(let value)?: return "\(value)"
        case .stringValue(let value)?: return value
        default: break
        }
        if !annotation.dictEntries.isEmpty {
            return "{" + annotation.dictEntries.map { "\($0.name): \(describe($0))" }.joined(separator: ", ") + "}"
        }
        if !annotation.arrayValues.isEmpty {
            return "[" + annotation.arrayValues.map(describe).joined(separator: ", ") + "]"
        }
        return ""
    }

    /// The thread name of a thread track.
    func threadName(_ track: UInt64) -> String? {
        tracks[track].flatMap { $0.hasThread ? $0.thread.threadName : nil }
    }
}
