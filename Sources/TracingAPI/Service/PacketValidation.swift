// What the service checks and adds on every packet a producer wrote (Perfetto's
// packet_stream_validator.cc and the trusted fields of TracingServiceImpl::ReadBuffers).
//
// Producers must not forge what only the service may say: a packet that sets any of the
// reserved fields (or is not a well-formed message) is dropped and counted as invalid. Packets
// that pass get the trusted fields appended (`TrustedFields`, in TracePacketParts.swift), so the
// result still parses as one TracePacket and the service's values win over anything earlier in
// the bytes.

enum PacketValidation {
    /// Whether a TracePacket field is one only the service may write.
    @inline(__always)
    static func isReserved(_ field: Int) -> Bool {
        switch field {
        case 3,    // trusted_uid
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
             133:  // zstd_compressed_packets
            return true
        default:
            return false
        }
    }

    /// Whether a producer's packet is a well-formed message free of reserved fields.
    static func isAcceptable(_ packet: UnsafeRawBufferPointer) -> Bool {
        ProtoEncoding.forEachField(in: packet) { !isReserved($0) }
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
