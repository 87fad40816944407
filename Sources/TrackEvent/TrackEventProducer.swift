// The `track_event` data source as a producer: registered with a tracing service (in-process
// or the system's), it turns categories on and off as sessions start and stop it, asks threads
// to reset their incremental state when the service says so, and answers flushes. All of it
// on the tracing loop; threads only see atomics (TrackEventRuntime).

import IPCProtocol
import TracingAPI

final class TrackEventProducer: Producer {
    var endpoint: (any ProducerEndpoint)!
    private let runtime: TrackEventRuntime
    private(set) var connected = false

    init(runtime: TrackEventRuntime) {
        self.runtime = runtime
    }

    private var id: ObjectIdentifier { ObjectIdentifier(self) }

    /// Registers (or, after new categories, updates) the data source.
    func publishDescriptor(update: Bool) {
        if update { endpoint.updateDataSource(runtime.descriptor()) } else { endpoint.registerDataSource(runtime.descriptor()) }
    }

    func onConnect() { connected = true }

    func onDisconnect() {
        connected = false
        runtime.stopAll(producer: id)
    }

    func startDataSource(_ instance: DataSourceInstanceID, config: DataSourceConfig) {
        defer { endpoint.notifyDataSourceStarted(instance) }
        guard let arbiter = endpoint.sharedMemoryArbiter else { return }
        _ = runtime.start(
            instanceID: instance, producer: id, arbiter: arbiter,
            targetBuffer: BufferID(truncatingIfNeeded: config.targetBuffer), config: config.trackEventConfig)
    }

    func stopDataSource(_ instance: DataSourceInstanceID) {
        // Categories off first; then what threads finished goes out before "stopped".
        let arbiter = runtime.stop(instanceID: instance, producer: id)
        arbiter?.flushPendingCommitData()
        endpoint.notifyDataSourceStopped(instance)
    }

    func flush(_ request: FlushRequestID, dataSources: [DataSourceInstanceID], flags: FlushFlags) {
        // Complete chunks are committed with the acknowledgement; the service scrapes the ones
        // threads are still filling (our writers count every finished packet for it).
        endpoint.notifyFlushComplete(request)
    }

    func clearIncrementalState(_ dataSources: [DataSourceInstanceID]) {
        runtime.clearIncrementalState(instanceIDs: dataSources, producer: id)
    }
}
