// Tracks (timelines) events go on, and flows that link events across them. Ids are derived as
// Perfetto's SDK derives them (track.h, track.cc), so tracks of the same id from different
// writers, threads or SDKs are the same track.

import IPCProtocol

/// A timeline for events: a thread's (the default), the process's, or one the app names.
///
/// Slices on one track must nest. Use an async track for work that overlaps other work or
/// moves between threads.
public struct Track: Sendable, Hashable {
    /// The track's id in the trace.
    public let uuid: UInt64
    /// The parent track's id (0: none).
    public let parentUUID: UInt64
    /// The track's name, written in its descriptor (nil: unnamed).
    public let name: String?
    /// Whether a descriptor must be written before events on it (thread and process tracks are
    /// described when a sequence starts).
    let needsDescriptor: Bool

    init(uuid: UInt64, parentUUID: UInt64, name: String?, needsDescriptor: Bool = true) {
        self.uuid = uuid
        self.parentUUID = parentUUID
        self.name = name
        self.needsDescriptor = needsDescriptor
    }

    /// The process's own track.
    public static var process: Track { Track(uuid: ProcessIdentity.uuid, parentUUID: 0, name: nil, needsDescriptor: false) }

    /// An async track of this process with an app-chosen `id` (Perfetto's `Track(id)`): the
    /// same id is the same track wherever it is used in the process.
    public static func async(_ id: UInt64, name: String? = nil) -> Track {
        Track(uuid: id ^ ProcessIdentity.uuid, parentUUID: ProcessIdentity.uuid, name: name)
    }

    /// An async track shown under `parent` (e.g. work that overlaps its parent's other work).
    public static func async(_ id: UInt64, name: String? = nil, parent: Track) -> Track {
        Track(uuid: id ^ parent.uuid, parentUUID: parent.uuid, name: name)
    }

    /// A named track of this process (Perfetto's `NamedTrack`): `name` and `id` pick it.
    public static func named(_ name: String, id: UInt64 = 0) -> Track {
        let uuid = (id ^ FNV1a.hash(name) ^ 0xCD57_1EC5_EAD3_7024) ^ ProcessIdentity.uuid
        return Track(uuid: uuid, parentUUID: ProcessIdentity.uuid, name: name)
    }

    /// A named track shared by every process (Perfetto's `NamedTrack::Global`).
    public static func global(_ name: String, id: UInt64 = 0) -> Track {
        Track(uuid: id ^ FNV1a.hash(name) ^ 0xCD57_1EC5_EAD3_7024, parentUUID: 0, name: name)
    }
}

/// A track of counter values (a graph in the UI), described once per sequence.
public struct CounterTrack: Sendable, Hashable {
    /// What the values count.
    public enum Unit: Int, Sendable { case unspecified = 0, timeNanoseconds = 1, count = 2, sizeBytes = 3 }

    public let uuid: UInt64
    public let name: String
    public let unit: Unit

    /// A counter track of this process named `name`.
    public init(_ name: String, unit: Unit = .unspecified, id: UInt64 = 0) {
        self.name = name
        self.unit = unit
        uuid = (id ^ FNV1a.hash(name) ^ 0xb1a4_a67d_7970_839e) ^ ProcessIdentity.uuid
    }
}

/// A flow: an arrow in the UI from one event to the next event that carries the same flow.
/// Pass it to the events it links; the last one terminates it.
public struct Flow: Sendable, Hashable {
    /// The flow's id in the trace.
    public let id: UInt64

    /// A flow scoped to this process (Perfetto's `Flow::ProcessScoped`).
    public static func process(_ id: UInt64) -> Flow { Flow(id: id ^ ProcessIdentity.uuid) }
    /// A flow that links events across processes (Perfetto's `Flow::Global`): both sides must
    /// agree on the id.
    public static func global(_ id: UInt64) -> Flow { Flow(id: id) }
}
