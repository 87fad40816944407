// What the service checks and adds on every packet a producer wrote (Perfetto's
// packet_stream_validator.cc and the trusted fields of TracingServiceImpl::ReadBuffers).
//
// Producers must not forge what only the service may say: a packet that sets any of the
// reserved fields (or is not a well-formed message) is dropped and counted as invalid. Packets
// that pass get the trusted fields appended, so the result still parses as one TracePacket
// and the service's values win over anything earlier in the bytes.

enum PacketValidation {
    /// TracePacket fields only the service may write.
    static let reservedFields: Set<Int> = [
        3,    // trusted_uid
        10,   // trusted_packet_sequence_id
        33,   // trace_config
        35,   // trace_stats
        36,   // synchronization_marker
        50,   // compressed_packets
        69,   // service_event
        79,   // trusted_pid
        98,   // machine_id
        124,  // trace_provenance
        125,  // protovms
        133,  // zstd_compressed_packets
    ]

    /// Whether a producer's packet is a well-formed message free of reserved fields.
    static func isAcceptable(_ packet: [UInt8]) -> Bool {
        packet.withUnsafeBytes { bytes in
            ProtoEncoding.forEachField(in: bytes) { !reservedFields.contains($0) }
        }
    }

    /// Appends the service-written fields, in the order Perfetto writes them.
    static func appendTrustedFields(
        to packet: inout [UInt8], uid: UInt32, sequenceID: UInt32, pid: Int32?, machineID: UInt32 = 0,
        previousPacketDropped: Bool = false
    ) {
        ProtoEncoding.appendInt32Field(TracePacketField.trustedUID, Int32(bitPattern: uid), to: &packet)
        ProtoEncoding.appendVarintField(TracePacketField.trustedPacketSequenceID, UInt64(sequenceID), to: &packet)
        if let pid { ProtoEncoding.appendInt32Field(TracePacketField.trustedPID, pid, to: &packet) }
        // Only packets of other machines say which (0, this machine, is left out as in Perfetto).
        if machineID != 0 { ProtoEncoding.appendVarintField(TracePacketField.machineID, UInt64(machineID), to: &packet) }
        if previousPacketDropped {
            ProtoEncoding.appendVarintField(TracePacketField.previousPacketDropped, 1, to: &packet)
        }
    }
}

/// Field numbers of `perfetto.protos.TracePacket` the service writes by hand.
enum TracePacketField {
    static let trustedUID = 3
    static let timestamp = 8
    static let trustedPacketSequenceID = 10
    static let previousPacketDropped = 42
    static let trustedPID = 79
    static let machineID = 98
    static let forTesting = 900
}
