// The process-wide state of track events: the registered categories, and up to 32 running
// track_event instances (one per session that enabled the data source, on any backend).
//
// Threads read it without locks on the hot path: a category's bitmask says which instance
// slots record it; each slot's generation says whether a thread's writer for the slot still
// belongs to the instance in it, and its clear generation whether the thread must reset its
// incremental state. Slots change only on the tracing loop (start, stop, clear), under a lock.

import IPCProtocol
import Synchronization
import TracingAPI

/// One instance slot's counters, read by writing threads without locks.
final class InstanceSlotState: Sendable {
    /// Bumped whenever the slot gets a new instance (or loses one).
    let generation = Atomic<UInt64>(0)
    /// Bumped when the service asks to clear incremental state.
    let clearGeneration = Atomic<UInt64>(0)
}

/// What a thread needs to make a writer for an instance.
struct InstanceSlot {
    var instanceID: DataSourceInstanceID
    var producer: ObjectIdentifier
    var arbiter: SharedMemoryArbiter
    var targetBuffer: BufferID
    var config: Perfetto_Protos_TrackEventConfig
    var generation: UInt64
}

/// Bumped on every change of any slot (an instance started or stopped, a clear requested): a
/// thread that has seen the current epoch uses its sequences as they are, without looking at
/// the slots (one relaxed load instead of two per instance).
let trackEventEpoch = Atomic<UInt64>(1)

final class TrackEventRuntime: Sendable {
    static let maxInstances = 32
    static let shared = TrackEventRuntime()

    let slotStates: [InstanceSlotState] = (0..<TrackEventRuntime.maxInstances).map { _ in InstanceSlotState() }
    private struct State {
        var categories: [TrackEventCategory] = []
        var slots: [InstanceSlot?] = Array(repeating: nil, count: TrackEventRuntime.maxInstances)
    }
    private let state = ThreadLock(State())

    // MARK: Categories

    /// Adds categories (once each); running instances that want them start recording them.
    /// Returns whether any was new.
    @discardableResult
    func register(_ categories: [TrackEventCategory]) -> Bool {
        state.withLock { state in
            var added = false
            for category in categories where !state.categories.contains(category) {
                category.registrationSlot.store(state.categories.count, ordering: .relaxed)
                state.categories.append(category)
                added = true
                for (index, slot) in state.slots.enumerated() {
                    guard let slot, CategoryMatching.isEnabled(name: category.name, tags: category.tags, config: slot.config)
                    else { continue }
                    category.enabledInstances.bitwiseOr(1 << UInt32(index), ordering: .relaxed)
                }
            }
            return added
        }
    }

    var categories: [TrackEventCategory] { state.withLock { $0.categories } }

    /// The `track_event` data source's descriptor, listing every registered category.
    func descriptor() -> DataSourceDescriptor {
        var descriptor = DataSourceDescriptor()
        descriptor.name = "track_event"
        descriptor.willNotifyOnStart = true
        descriptor.willNotifyOnStop = true
        descriptor.handlesIncrementalStateClear = true
        var events = Perfetto_Protos_TrackEventDescriptor()
        for category in categories {
            var entry = Perfetto_Protos_TrackEventCategory()
            entry.name = category.name
            if let text = category.description { entry.description_p = text }
            entry.tags = category.tags
            events.availableCategories.append(entry)
        }
        descriptor.trackEventDescriptor = events
        return descriptor
    }

    // MARK: Instances (on the tracing loop)

    /// Takes a slot for a started instance and turns its categories on. Nil when all 32 slots
    /// are taken (the instance then records nothing).
    func start(
        instanceID: DataSourceInstanceID, producer: ObjectIdentifier, arbiter: SharedMemoryArbiter,
        targetBuffer: BufferID, config: Perfetto_Protos_TrackEventConfig
    ) -> Int? {
        state.withLock { state in
            guard let index = state.slots.firstIndex(where: { $0 == nil }) else { return nil }
            let generation = slotStates[index].generation.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
            state.slots[index] = InstanceSlot(
                instanceID: instanceID, producer: producer, arbiter: arbiter, targetBuffer: targetBuffer, config: config,
                generation: generation)
            trackEventEpoch.wrappingAdd(1, ordering: .releasing)
            for category in state.categories
            where CategoryMatching.isEnabled(name: category.name, tags: category.tags, config: config) {
                category.enabledInstances.bitwiseOr(1 << UInt32(index), ordering: .relaxed)
            }
            return index
        }
    }

    /// Turns the instance's categories off and frees its slot; returns the arbiter to flush.
    func stop(instanceID: DataSourceInstanceID, producer: ObjectIdentifier) -> SharedMemoryArbiter? {
        state.withLock { state in
            guard let index = state.slots.firstIndex(where: { $0?.instanceID == instanceID && $0?.producer == producer }),
                  let slot = state.slots[index] else { return nil }
            for category in state.categories {
                category.enabledInstances.bitwiseAnd(~(1 << UInt32(index)), ordering: .relaxed)
            }
            state.slots[index] = nil
            slotStates[index].generation.wrappingAdd(1, ordering: .acquiringAndReleasing)
            trackEventEpoch.wrappingAdd(1, ordering: .releasing)
            return slot.arbiter
        }
    }

    /// Stops every instance of `producer` (its service went away).
    func stopAll(producer: ObjectIdentifier) {
        let ids = state.withLock { $0.slots.compactMap { $0?.producer == producer ? $0?.instanceID : nil } }
        for id in ids { _ = stop(instanceID: id, producer: producer) }
    }

    /// Asks every thread to reset its incremental state for these instances.
    func clearIncrementalState(instanceIDs: [DataSourceInstanceID], producer: ObjectIdentifier) {
        state.withLock { state in
            for (index, slot) in state.slots.enumerated() where slot?.producer == producer {
                guard let slot, instanceIDs.contains(slot.instanceID) else { continue }
                slotStates[index].clearGeneration.wrappingAdd(1, ordering: .relaxed)
            }
            trackEventEpoch.wrappingAdd(1, ordering: .releasing)
        }
    }

    /// The instance in slot `index`, for a thread making a writer for it.
    func slot(_ index: Int) -> InstanceSlot? {
        state.withLock { $0.slots[index] }
    }
}
