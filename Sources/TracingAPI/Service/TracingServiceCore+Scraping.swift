// Shared-memory scraping (Perfetto's smb_scraping_mode): on flush, on stop and when a producer
// disconnects, the service copies chunks the producer finished or is still filling but has not
// committed, so a producer that dies loses nothing it had finished writing. The chunks keep
// their states (the producer still owns them); the trace buffer reads each packet once,
// whichever copy brings it first.

extension TracingServiceCore {
    /// Scrapes every producer that had an instance in `session`, into the session's buffers.
    func scrapeSharedMemory(for session: TracingSession) {
        for id in session.producersWithInstances.sorted() {
            guard let endpoint = producer(id) else { continue }
            scrapeSharedMemory(of: endpoint, into: Set(session.bufferIDs))
        }
    }

    /// Scrapes `producer` into `targets` (every buffer it may write into when nil).
    func scrapeSharedMemory(of producer: LocalProducerEndpoint, into targets: Set<BufferID>? = nil) {
        guard producer.scrapesSharedMemory, !producer.writers.isEmpty,
              let memory = producer.readableSharedMemory else { return }
        for chunk in memory.scrapeChunks() {
            // Only writers the producer registered, into buffers it was given.
            guard let target = producer.writers[chunk.header.writerID],
                  producer.allowedTargetBuffers.contains(target), targets?.contains(target) ?? true,
                  let buffer = buffers[target] else { continue }
            buffer.copyChunk(
                chunk.bytes, header: chunk.header, producer: producer.serial, uid: producer.uid, pid: producer.pid,
                machineID: producer.machineID, isComplete: chunk.isComplete)
        }
    }
}
