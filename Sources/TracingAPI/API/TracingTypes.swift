// Short names for the Perfetto messages and ids the tracing API speaks in. The messages are
// generated from Protos/perfetto (Perfetto's names and field numbers); unknown fields survive
// decoding and encoding, so configs written for real Perfetto pass through untouched.

/// `perfetto.protos.TraceConfig`.
public typealias TraceConfig = Perfetto_Protos_TraceConfig
/// `perfetto.protos.DataSourceConfig`.
public typealias DataSourceConfig = Perfetto_Protos_DataSourceConfig
/// `perfetto.protos.DataSourceDescriptor`.
public typealias DataSourceDescriptor = Perfetto_Protos_DataSourceDescriptor
/// `perfetto.protos.CommitDataRequest`.
public typealias CommitDataRequest = Perfetto_Protos_CommitDataRequest
/// `perfetto.protos.TraceStats`.
public typealias TraceStats = Perfetto_Protos_TraceStats
/// `perfetto.protos.TracingServiceState`.
public typealias TracingServiceState = Perfetto_Protos_TracingServiceState
/// `perfetto.protos.TracingServiceCapabilities`.
public typealias TracingServiceCapabilities = Perfetto_Protos_TracingServiceCapabilities
/// `perfetto.protos.ObservableEvents`.
public typealias ObservableEvents = Perfetto_Protos_ObservableEvents
/// `perfetto.protos.CloneSessionRequest`: which session to clone.
public typealias CloneSessionRequest = Perfetto_Protos_CloneSessionRequest
/// `perfetto.protos.CloneSessionResponse`: whether the clone was made, and its id.
public typealias CloneSessionResponse = Perfetto_Protos_CloneSessionResponse
/// `perfetto.protos.TracePacket`.
public typealias TracePacket = Perfetto_Protos_TracePacket

/// A data source instance, unique within the service.
public typealias DataSourceInstanceID = UInt64
/// A flush request, unique within the service.
public typealias FlushRequestID = UInt64
/// A trace buffer, unique within the service (`DataSourceConfig.target_buffer`).
public typealias BufferID = UInt16
/// A trace writer, unique within its producer.
public typealias WriterID = UInt16
/// A connected producer, unique within the service.
public typealias ProducerID = UInt16
/// A tracing session, unique within the service.
public typealias TracingSessionID = UInt64

/// Flags of a flush request (`FlushFlags` in Perfetto, passed through as its 64-bit value).
public struct FlushFlags: Sendable, Hashable {
    public var rawValue: UInt64
    public init(rawValue: UInt64 = 0) { self.rawValue = rawValue }
}

/// One packet of a trace, as the service hands it to a consumer: the producer's bytes followed
/// by the fields the service vouches for (trusted uid, pid and packet sequence id).
public struct TracePacketData: Sendable, Hashable {
    /// The encoded `perfetto.protos.TracePacket`.
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// Decodes the packet with swift-protobuf.
    public func decode() throws -> TracePacket {
        try TracePacket(serializedBytes: bytes)
    }
}
