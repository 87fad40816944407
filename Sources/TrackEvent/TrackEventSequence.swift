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
    /// One sequence per slot, held as unmanaged references so the hot path does not count them
    /// (each is retained once, here, and released when replaced or when the thread ends).
    private let sequences: UnsafeMutablePointer<Unmanaged<TrackEventSequence>?>
    /// The epoch the sequences were last checked against (see `trackEventEpoch`).
    @exclusivity(unchecked) private var seenEpoch: UInt64 = 0

    init() {
        let identity = ThreadIdentity.current()
        tid = identity.tid
        threadName = identity.name
        trackUUID = UInt64(UInt32(bitPattern: identity.tid)) ^ ProcessIdentity.uuid
        sequences = .allocate(capacity: TrackEventRuntime.maxInstances)
        sequences.initialize(repeating: nil, count: TrackEventRuntime.maxInstances)
    }

    deinit {
        for slot in 0..<TrackEventRuntime.maxInstances { sequences[slot]?.release() }
        sequences.deallocate()
    }

    /// ``withSequence(for:_:)`` for each slot set in `mask` (each session that records the
    /// category), lowest first.
    @inline(__always)
    func forEachSequence(in mask: UInt32, _ body: (TrackEventSequence) -> Void) {
        var remaining = mask
        while remaining != 0 {
            let slot = remaining.trailingZeroBitCount
            remaining &= remaining - 1
            withSequence(for: slot, body)
        }
    }

    /// Runs `body` with the sequence for `slot`: as it is when nothing changed since this thread
    /// last looked (one relaxed load); otherwise made (or remade, for a new instance in the
    /// slot), with its incremental state reset if the service asked. Not run if the slot has no
    /// instance now.
    @inline(__always)
    func withSequence(for slot: Int, _ body: (TrackEventSequence) -> Void) {
        let epoch = trackEventEpoch.load(ordering: .acquiring)
        if epoch == seenEpoch, let sequence = sequences[slot] {
            sequence._withUnsafeGuaranteedRef { sequence in
                if recoverFromDrops(sequence) { body(sequence) }
            }
            return
        }
        guard let sequence = refresh(slot, runtime: .shared, epoch: epoch) else { return }
        sequence._withUnsafeGuaranteedRef { sequence in
            if recoverFromDrops(sequence) { body(sequence) }
        }
    }

    /// The slow path: checks the slot's instance and clear requests.
    private func refresh(_ slot: Int, runtime: TrackEventRuntime, epoch: UInt64) -> Unmanaged<TrackEventSequence>? {
        // Every slot is looked at again later: only this one is known current now.
        if epoch != seenEpoch {
            seenEpoch = epoch
            for other in 0..<TrackEventRuntime.maxInstances where other != slot { revalidate(other, runtime: runtime, create: false) }
        }
        return revalidate(slot, runtime: runtime, create: true)
    }

    @discardableResult
    private func revalidate(_ slot: Int, runtime: TrackEventRuntime, create: Bool) -> Unmanaged<TrackEventSequence>? {
        let slotState = runtime.slotStates[slot]
        let generation = slotState.generation.load(ordering: .acquiring)
        var current = sequences[slot]
        if let existing = current, existing.takeUnretainedValue().generation != generation {
            existing.release()
            sequences[slot] = nil
            current = nil
        }
        if current == nil {
            guard create, let instance = runtime.slot(slot), instance.generation == generation,
                  let writer = instance.arbiter.createTraceWriter(targetBuffer: instance.targetBuffer, policy: .drop)
            else { return nil }
            current = Unmanaged.passRetained(TrackEventSequence(writer: writer, generation: generation))
            sequences[slot] = current
        }
        guard let current else { return nil }
        let sequence = current.takeUnretainedValue()
        let clearGeneration = slotState.clearGeneration.load(ordering: .relaxed)
        if sequence.clearGeneration != clearGeneration {
            sequence.reset(clearGeneration: clearGeneration, thread: self)
        }
        return current
    }

    /// After the writer dropped packets (shared memory was full), readers cannot trust what
    /// this sequence interned: start it afresh, as Perfetto's SDK does. False while the
    /// sequence could not be started afresh (its events are dropped until it can).
    @inline(__always)
    func recoverFromDrops(_ sequence: TrackEventSequence) -> Bool {
        guard sequence.needsReset || sequence.writer.packetsDropped != sequence.droppedAtReset else { return true }
        sequence.reset(clearGeneration: sequence.clearGeneration ?? 0, thread: self)
        return !sequence.needsReset
    }

    /// Every sequence this thread has now.
    var allSequences: [TrackEventSequence] {
        (0..<TrackEventRuntime.maxInstances).compactMap { sequences[$0]?.takeUnretainedValue() }
    }
}

/// A writer and its incremental state.
final class TrackEventSequence {
    let writer: TraceWriter
    let generation: UInt64
    /// The clear generation this state was reset for (nil: never reset, a new sequence).
    var clearGeneration: UInt64?
    // Unchecked exclusivity: one thread at a time uses a sequence; no access spans user code.
    @exclusivity(unchecked) private var nextNameIID: UInt64 = 1
    @exclusivity(unchecked) private var nextCategoryIID: UInt64 = 1
    @exclusivity(unchecked) private var nextAnnotationNameIID: UInt64 = 1
    @exclusivity(unchecked) private var eventNames: [UnsafeRawPointer: UInt64] = [:]
    /// Interned category iids by the category's registration index (0: not yet interned).
    @exclusivity(unchecked) private var categories: [UInt64] = []
    @exclusivity(unchecked) private var annotationNames: [UnsafeRawPointer: UInt64] = [:]
    var seenTracks: Set<UInt64> = []
    /// Annotation names first used by the packet being written (interned with it).
    @exclusivity(unchecked) var newAnnotationNames: [(iid: UInt64, name: StaticString)] = []
    /// Where events are encoded before they are copied into shared memory.
    let buffer = PacketBuffer()
    /// The last name looked up, which loops and paired begin/end hit again and again.
    @exclusivity(unchecked) private var lastName: (key: UnsafeRawPointer, iid: UInt64)?
    /// The writer's drop count when the state was last reset.
    @exclusivity(unchecked) private(set) var droppedAtReset: UInt64 = 0
    /// The last reset was itself dropped: events wait for one that makes it.
    @exclusivity(unchecked) private(set) var needsReset = false

    init(writer: TraceWriter, generation: UInt64) {
        self.writer = writer
        self.generation = generation
    }

    deinit { writer.close() }

    // MARK: Interning (iids start at 1 per sequence and per kind)

    func internName(_ name: StaticString) -> (iid: UInt64, isNew: Bool) {
        let key = UnsafeRawPointer(name.utf8Start)
        if let lastName, lastName.key == key { return (lastName.iid, false) }
        if let iid = eventNames[key] {
            lastName = (key, iid)
            return (iid, false)
        }
        let iid = nextNameIID
        nextNameIID += 1
        eventNames[key] = iid
        lastName = (key, iid)
        return (iid, true)
    }

    func internCategory(_ category: TrackEventCategory) -> (iid: UInt64, isNew: Bool) {
        let index = category.registrationIndex
        if index < categories.count, categories[index] != 0 { return (categories[index], false) }
        if index >= categories.count { categories.append(contentsOf: repeatElement(0, count: index + 1 - categories.count)) }
        let iid = nextCategoryIID
        nextCategoryIID += 1
        categories[index] = iid
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
        let droppedBefore = writer.packetsDropped
        defer {
            droppedAtReset = writer.packetsDropped
            needsReset = droppedAtReset != droppedBefore
        }
        eventNames.removeAll(keepingCapacity: true)
        lastName = nil
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
