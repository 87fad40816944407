// Config checks traced makes besides the limits: the longest duration (7 days; 24 hours with
// `enable_extra_guardrails`), the extra guardrails themselves, and `lockdown_mode`, each refused
// with traced's message.
//
// `enable_extra_guardrails` (set by Android's statsd for unsupervised traces): no deferred
// start, buffer sizes in multiples of 4 KiB, 128 MiB of buffers in all (or the config's
// `guardrail_overrides.max_tracing_buffer_size_kb`, if larger), and five minutes between two
// such sessions of the same unique name (the empty name too).
//
// `lockdown_mode` SET: producers of uids other than the service's are refused at connection
// and not started in new sessions, until a config CLEARs it. In traced any consumer may set it,
// and so lock every other uid's producers out; here only root and the service's own uid may
// change it, and a config of another uid that tries is refused.

#if canImport(Glibc)
import Glibc
#endif

extension TracingServiceCore {
    /// The longest `duration_ms` (and `trigger_timeout_ms`) `config` may ask for.
    static func maxDurationMs(_ config: TraceConfig) -> UInt32 {
        config.enableExtraGuardrails ? 24 * 3_600_000 : 7 * 24 * 3_600_000
    }

    /// The most buffer memory a guardrailed session may ask for, in KiB.
    static let guardrailMaxBufferKb: UInt32 = 128 * 1024
    /// Boot-time nanoseconds between two guardrailed sessions of the same unique name.
    static let guardrailSessionNameInterval: UInt64 = 300 * 1_000_000_000
    /// Names remembered for that; the oldest go first past it (a flood of names weakens the
    /// rule for the oldest instead of growing without bound).
    static let maxGuardrailedSessionNames = 1024

    func durationError(_ config: TraceConfig) -> String? {
        let limit = Self.maxDurationMs(config)
        guard config.durationMs > limit else { return nil }
        return "Requested too long trace (\(config.durationMs)ms  > \(limit) ms)"
    }

    /// Why a session with `enable_extra_guardrails` may not start; records its start when it may.
    func guardrailError(_ config: TraceConfig) -> String? {
        guard config.enableExtraGuardrails else { return nil }
        if config.deferredStart { return "deferred_start=true is not supported in unsupervised traces" }
        var totalKb: UInt64 = 0
        for buffer in config.buffers {
            if buffer.sizeKb % 4 != 0 { return "buffers.size_kb must be a multiple of 4, got \(buffer.sizeKb)" }
            totalKb += UInt64(buffer.sizeKb)
        }
        let maxKb = max(Self.guardrailMaxBufferKb, config.guardrailOverrides.maxTracingBufferSizeKb)
        if totalKb > UInt64(maxKb) { return "Requested too large trace buffer (\(totalKb)kB  > \(maxKb) kB)" }
        let now = ServiceClock.nanoseconds(CLOCK_BOOTTIME)
        guardrailedSessionStarts = guardrailedSessionStarts.filter { now &- $0.value < Self.guardrailSessionNameInterval }
        let name = config.uniqueSessionName
        if let previous = guardrailedSessionStarts[name] {
            return "A trace with unique session name \"\(name)\" began less than 300s ago "
                + "(\((now &- previous) / 1_000_000_000)s)"
        }
        if guardrailedSessionStarts.count >= Self.maxGuardrailedSessionNames,
           let oldest = guardrailedSessionStarts.min(by: { $0.value < $1.value }) {
            guardrailedSessionStarts[oldest.key] = nil
        }
        guardrailedSessionStarts[name] = now
        return nil
    }

    /// Why `uid` may not set or clear the lockdown; applies the change when it may.
    func lockdownError(_ config: TraceConfig, uid: UInt32) -> String? {
        switch config.lockdownMode {
        case .lockdownSet, .lockdownClear:
            guard uid == 0 || uid == options.serviceUID else {
                return "lockdown_mode may be changed only by root or the service's user (uid \(options.serviceUID))"
            }
            lockdown = config.lockdownMode == .lockdownSet
            return nil
        default:
            return nil
        }
    }
}
