// One thread's writer for one track_event instance: a packet sequence with its incremental
// state (interning tables, tracks already described), as Perfetto's SDK keeps it per
// TraceWriter. A sequence starts (and restarts after the service clears incremental state)
// with a packet flagged SEQ_INCREMENTAL_STATE_CLEARED that sets the packet defaults, followed
// by the thread's and the process's track descriptors; every later packet is flagged
// SEQ_NEEDS_INCREMENTAL_STATE.

import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

/// The calling thread's sequences, one per instance slot; released when the thread ends.
final class TrackEventThreadState {
    let tid: Int32
    let threadName: String?
    let trackUUID: UInt64
    var sequences: [TrackEventSequence?] = Array(repeating: nil, count: TrackEventRuntime.maxInstances)

    init() {
        let identity = ThreadIdentity.current()
        tid = identity.tid
        threadName = identity.name
        trackUUID = UInt64(UInt32(bitPattern: identity.tid)) ^ ProcessIdentity.uuid
    }

    /// The sequence for `slot`, made (or remade, for a new instance in the slot) as needed, with
    /// its incremental state reset if the service asked. Nil if the slot has no instance now.
    func sequence(for slot: Int, runtime: TrackEventRuntime) -> TrackEventSequence? {
        let slotState = runtime.slotStates[slot]
        let generation = slotState.generation.load(ordering: .acquiring)
        var sequence = sequences[slot]
        if sequence?.generation != generation {
            sequences[slot] = nil
            sequence = nil
            guard let instance = runtime.slot(slot), instance.generation == generation,
                  let writer = instance.arbiter.createTraceWriter(targetBuffer: instance.targetBuffer, policy: .drop)
            else { return nil }
            sequence = TrackEventSequence(writer: writer, generation: generation)
            sequences[slot] = sequence
        }
        guard let sequence else { return nil }
        let clearGeneration = slotState.clearGeneration.load(ordering: .relaxed)
        if sequence.clearGeneration != clearGeneration {
            sequence.reset(clearGeneration: clearGeneration, thread: self)
        }
        return sequence
    }
}

/// A writer and its incremental state.
final class TrackEventSequence {
    let writer: TraceWriter
    let generation: UInt64
    /// The clear generation this state was reset for (nil: never reset, a new sequence).
    var clearGeneration: UInt64?
    private var nextNameIID: UInt64 = 1
    private var nextCategoryIID: UInt64 = 1
    private var nextAnnotationNameIID: UInt64 = 1
    private var eventNames: [UnsafeRawPointer: UInt64] = [:]
    private var categories: [ObjectIdentifier: UInt64] = [:]
    private var annotationNames: [UnsafeRawPointer: UInt64] = [:]
    var seenTracks: Set<UInt64> = []
    /// Annotation names first used by the packet being written (interned with it).
    var newAnnotationNames: [(iid: UInt64, name: StaticString)] = []

    init(writer: TraceWriter, generation: UInt64) {
        self.writer = writer
        self.generation = generation
    }

    deinit { writer.close() }

    // MARK: Interning (iids start at 1 per sequence and per kind)

    func internName(_ name: StaticString) -> (iid: UInt64, isNew: Bool) {
        let key = UnsafeRawPointer(name.utf8Start)
        if let iid = eventNames[key] { return (iid, false) }
        let iid = nextNameIID
        nextNameIID += 1
        eventNames[key] = iid
        return (iid, true)
    }

    func internCategory(_ category: TrackEventCategory) -> (iid: UInt64, isNew: Bool) {
        let key = ObjectIdentifier(category)
        if let iid = categories[key] { return (iid, false) }
        let iid = nextCategoryIID
        nextCategoryIID += 1
        categories[key] = iid
        return (iid, true)
    }

    func internAnnotationName(_ name: StaticString) -> UInt64 {
        let key = UnsafeRawPointer(name.utf8Start)
        if let iid = annotationNames[key] { return iid }
        let iid = nextAnnotationNameIID
        nextAnnotationNameIID += 1
        annotationNames[key] = iid
        newAnnotationNames.append((iid, name))
        return iid
    }

    // MARK: Reset

    /// Starts the sequence's incremental state afresh and describes the thread and process.
    func reset(clearGeneration: UInt64, thread: TrackEventThreadState) {
        self.clearGeneration = clearGeneration
        eventNames.removeAll(keepingCapacity: true)
        categories.removeAll(keepingCapacity: true)
        annotationNames.removeAll(keepingCapacity: true)
        nextNameIID = 1
        nextCategoryIID = 1
        nextAnnotationNameIID = 1
        seenTracks.removeAll(keepingCapacity: true)
        let now = bootTimeNanoseconds()
        let pid = getpid()
        writer.newTracePacket { packet in
            packet.appendVarint(8, now)
            packet.appendVarint(13, 1)  // SEQ_INCREMENTAL_STATE_CLEARED
            packet.appendNested(59) { defaults in  // trace_packet_defaults
                defaults.appendVarint(58, 6)  // timestamp_clock_id: BOOTTIME
                defaults.appendNested(11) { $0.appendVarint(11, thread.trackUUID) }  // track_event_defaults.track_uuid
            }
        }
        writer.newTracePacket { packet in
            packet.appendVarint(8, now)
            packet.appendVarint(13, 2)  // SEQ_NEEDS_INCREMENTAL_STATE
            packet.appendNested(60) { track in
                track.appendVarint(1, thread.trackUUID)
                track.appendVarint(5, ProcessIdentity.uuid)
                track.appendNested(4) { descriptor in
                    descriptor.appendInt(1, Int64(pid))
                    descriptor.appendInt(2, Int64(thread.tid))
                    if let name = thread.threadName { descriptor.appendString(5, name) }
                }
            }
        }
        writer.newTracePacket { packet in
            packet.appendVarint(8, now)
            packet.appendVarint(13, 2)
            packet.appendNested(60) { track in
                track.appendVarint(1, ProcessIdentity.uuid)
                track.appendNested(3) { descriptor in
                    descriptor.appendInt(1, Int64(pid))
                    descriptor.appendString(6, ProcessIdentity.name)
                }
            }
        }
    }

    /// Describes `track` once per incremental state.
    func describe(_ track: Track, timestamp: UInt64) {
        guard track.needsDescriptor, seenTracks.insert(track.uuid).inserted else { return }
        writer.newTracePacket { packet in
            packet.appendVarint(8, timestamp)
            packet.appendVarint(13, 2)
            packet.appendNested(60) { descriptor in
                descriptor.appendVarint(1, track.uuid)
                if track.parentUUID != 0 { descriptor.appendVarint(5, track.parentUUID) }
                if let name = track.name { descriptor.appendString(2, name) }
            }
        }
    }

    /// Describes `track` once per incremental state.
    func describe(_ track: CounterTrack, timestamp: UInt64) {
        guard seenTracks.insert(track.uuid).inserted else { return }
        writer.newTracePacket { packet in
            packet.appendVarint(8, timestamp)
            packet.appendVarint(13, 2)
            packet.appendNested(60) { descriptor in
                descriptor.appendVarint(1, track.uuid)
                descriptor.appendVarint(5, ProcessIdentity.uuid)
                descriptor.appendString(2, track.name)
                descriptor.appendNested(8) { counter in
                    if track.unit != .unspecified { counter.appendVarint(3, UInt64(track.unit.rawValue)) }
                }
            }
        }
    }
}
