// What a consumer can do to its session besides running it: detach from it (the session
// outlives the consumer's connection) and attach to it again from another connection of the
// same uid, by key; change which producers its data sources run on.

import IPCProtocol

extension TracingServiceCore {
    /// Detaches `consumer` from its session under `key`. Fails when it has no session or its
    /// uid already has a session detached under that key (Perfetto's rules).
    func detach(consumer: LocalConsumerEndpoint, key: String) -> Bool {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }) else { return false }
        let taken = sessions.values.contains { $0.detachKey == key && $0.consumerUID == consumer.uid }
        guard !taken else { return false }
        session.detachKey = key
        session.consumerID = 0
        consumer.sessionID = nil
        return true
    }

    /// Attaches `consumer` to the session its uid detached under `key`; returns the session's
    /// config, or nil when the consumer has a session already or there is no such session.
    func attach(consumer: LocalConsumerEndpoint, key: String) -> TraceConfig? {
        guard consumer.sessionID == nil,
              let session = sessions.values.first(where: { $0.detachKey == key && $0.consumerUID == consumer.uid })
        else { return nil }
        session.detachKey = nil
        session.consumerID = consumer.connectionID
        consumer.sessionID = session.id
        return session.config
    }

    /// Takes the new producer filters of the session's data sources (the only change Perfetto
    /// applies) and sets up instances on producers that match now.
    func changeTraceConfig(consumer: LocalConsumerEndpoint, _ newConfig: TraceConfig) {
        guard let session = consumer.sessionID.flatMap({ sessions[$0] }),
              session.state == .configured || session.state == .started else { return }
        for newEntry in newConfig.dataSources {
            guard let index = session.config.dataSources.firstIndex(where: { $0.config.name == newEntry.config.name })
            else { continue }
            session.config.dataSources[index].producerNameFilter = newEntry.producerNameFilter
            session.config.dataSources[index].producerNameRegexFilter = newEntry.producerNameRegexFilter
            let entry = session.config.dataSources[index]
            for producer in connectedProducers where producer.dataSources[entry.config.name] != nil {
                let running = session.instances.contains {
                    $0.producerID == producer.id && $0.name == entry.config.name && $0.state != .stopped
                }
                guard !running, matches(entry, producer: producer) else { continue }
                setUpInstance(entry, producer: producer, session: session)
                if session.state == .started, let last = session.instances.indices.last {
                    startInstance(at: last, of: session)
                }
            }
        }
    }
}
