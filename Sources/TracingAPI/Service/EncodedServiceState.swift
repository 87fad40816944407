// QueryServiceState as ConsumerPort sends it: a TracingServiceState message in bytes.
//
// Every producer and data source is in the state, and a consumer that polls it (a UI, a
// script waiting for a data source to show up) asks again and again while they rarely
// change. Their part of the message is encoded once and kept until a producer connects or
// goes or a data source is registered, updated or unregistered; each query encodes only the
// sessions and counts, and the reply goes on with the kept bytes (shared, never copied per
// query). Protobuf reads the fields of a message in any order and appends repeated fields, so
// the two parts parse as the whole state.

import SwiftProtobuf

/// The producers (field 1) and data sources (field 2) of a TracingServiceState, encoded.
struct EncodedProducers {
    var bytes: [UInt8]
    /// The producers it shows: a producer whose endpoint was released is gone from the state
    /// before its disconnect is processed, as ``TracingServiceCore/connectedProducers`` says.
    var producerIDs: [ProducerID]
}

extension TracingServiceCore {
    /// A producer or data source came, went or changed: the kept encoding is stale.
    func producersChanged() {
        encodedProducers = nil
    }

    /// ``serviceState(sessionsOnly:for:)`` encoded as a `TracingServiceState`, in parts whose
    /// bytes concatenate to it: the sessions and counts, then the kept producers part (shared,
    /// not copied: a query waiting on a slow consumer holds no copy of it). Nil if it cannot be
    /// encoded.
    func encodedServiceState(sessionsOnly: Bool, for uid: UInt32) -> [[UInt8]]? {
        guard let bytes: [UInt8] = try? serviceState(sessionsOnly: true, for: uid).serializedBytes() else { return nil }
        if sessionsOnly { return [bytes] }
        guard let producersPart = currentEncodedProducers() else { return nil }
        return [bytes, producersPart]
    }

    private func currentEncodedProducers() -> [UInt8]? {
        let live = connectedProducers
        if let kept = encodedProducers, kept.producerIDs.elementsEqual(live.lazy.map(\.id)) {
            return kept.bytes
        }
        var part = TracingServiceState()
        appendProducers(live, to: &part)
        guard let bytes: [UInt8] = try? part.serializedBytes() else { return nil }
        encodedProducers = EncodedProducers(bytes: bytes, producerIDs: live.map(\.id))
        return bytes
    }
}
