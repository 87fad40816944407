// A ready-made consumer: runs one session and hands back its packets or a trace file. For tools
// and tests that want "record this config" rather than the callback protocol.

import IPCProtocol

/// Records one tracing session through a ``ConsumerEndpoint`` and collects its trace.
///
/// ```swift
/// let recorder = TraceRecorder(service: service)
/// recorder.start(config)
/// // ... later, on the loop:
/// recorder.stop { result in try? result.get() /* [TracePacketData] */ }
/// ```
/// Loop-bound, like the endpoint it wraps.
public final class TraceRecorder: Consumer {
    /// The endpoint, for calls the recorder does not wrap (flush, stats, events).
    public private(set) var endpoint: (any ConsumerEndpoint)!
    /// Packets read so far.
    public private(set) var packets: [TracePacketData] = []
    /// Set once the session ended; empty on a clean stop.
    public private(set) var disabledError: String?
    private var pendingStop: ((Result<[TracePacketData], TracingError>) -> Void)?
    private var reading = false

    /// Connects to `service` as a consumer acting for `uid`.
    public init(service: any TracingService, uid: UInt32 = 0) {
        endpoint = service.connectConsumer(self, uid: uid)
    }

    /// Enables and starts a session with `config`.
    public func start(_ config: TraceConfig, outputFile: ScopedFD? = nil) {
        endpoint.enableTracing(config, outputFile: outputFile)
    }

    /// Stops the session (unless it already stopped), reads the whole trace and calls
    /// `completion` with it, or with the reason the session failed.
    public func stop(_ completion: @escaping (Result<[TracePacketData], TracingError>) -> Void) {
        pendingStop = completion
        if disabledError != nil {
            readAll()
        } else {
            endpoint.disableTracing()
        }
    }

    /// The trace so far as a Perfetto trace file.
    public var traceFile: [UInt8] { TraceFile.encode(packets) }

    private func readAll() {
        guard !reading else { return }
        if let error = disabledError, !error.isEmpty {
            finish(.failure(TracingError(.invalidState, error)))
            return
        }
        reading = true
        endpoint.readBuffers()
    }

    private func finish(_ result: Result<[TracePacketData], TracingError>) {
        let completion = pendingStop
        pendingStop = nil
        completion?(result)
    }

    // MARK: Consumer

    /// Records the end of the session; a pending ``stop(_:)`` goes on to read the trace.
    public func onTracingDisabled(error: String) {
        disabledError = error
        if pendingStop != nil { readAll() }
    }

    /// Collects packets; the last batch completes a pending ``stop(_:)``.
    public func onTraceData(_ packets: [TracePacketData], hasMore: Bool) {
        self.packets.append(contentsOf: packets)
        if !hasMore, reading {
            reading = false
            finish(.success(self.packets))
        }
    }
}
