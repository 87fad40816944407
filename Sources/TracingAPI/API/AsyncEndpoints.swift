// `async` forms of the endpoint calls that produce a result. They hop onto the endpoint's loop,
// make the callback call there, and resume with what the callback got.

import IPCProtocol

extension ConsumerEndpoint {
    /// Flushes the session; true when every data source acknowledged in time.
    public func flush(timeoutMs: UInt32 = 0, flags: FlushFlags = FlushFlags()) async -> Bool {
        let endpoint = UncheckedSendableBox(self as any ConsumerEndpoint)
        return await withCheckedContinuation { continuation in
            let loop = eventLoop
            loop.execute {
                endpoint.value.flush(timeoutMs: timeoutMs, flags: flags) { continuation.resume(returning: $0) }
            }
        }
    }

    /// The service's producers, data sources and sessions.
    public func queryServiceState(sessionsOnly: Bool = false) async -> TracingServiceState {
        let endpoint = UncheckedSendableBox(self as any ConsumerEndpoint)
        let state: UncheckedSendableBox<TracingServiceState> = await withCheckedContinuation { continuation in
            let loop = eventLoop
            loop.execute {
                endpoint.value.queryServiceState(sessionsOnly: sessionsOnly) { _, state in
                    continuation.resume(returning: UncheckedSendableBox(state))
                }
            }
        }
        return state.value
    }

    /// What the service supports.
    public func queryCapabilities() async -> TracingServiceCapabilities {
        let endpoint = UncheckedSendableBox(self as any ConsumerEndpoint)
        let capabilities: UncheckedSendableBox<TracingServiceCapabilities> = await withCheckedContinuation {
            continuation in
            let loop = eventLoop
            loop.execute {
                endpoint.value.queryCapabilities { continuation.resume(returning: UncheckedSendableBox($0)) }
            }
        }
        return capabilities.value
    }
}

extension ProducerEndpoint {
    /// Returns once the service has processed everything this producer sent before.
    public func sync() async {
        let endpoint = UncheckedSendableBox(self as any ProducerEndpoint)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let loop = eventLoop
            loop.execute { endpoint.value.sync { continuation.resume() } }
        }
    }
}
