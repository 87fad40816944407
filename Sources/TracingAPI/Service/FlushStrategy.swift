// When a started session asks its producers to flush, as Perfetto's service decides it
// (tracing_service_impl.cc, EnableTracing):
// * without write_into_file: every flush_period_ms, if set;
// * with write_into_file, write_flush_mode AUTO (or unset): every 5 s when the file is written
//   at least that often, otherwise before each write; flush_period_ms is ignored;
// * write_flush_mode ENABLED: before each write; DISABLED: every flush_period_ms, if set.
// The file is written every file_write_period_ms (5 s if unset), never more often than every
// 100 ms. So a config cannot make a file-backed session flush its producers every millisecond
// unless it asks for it in so many words (DISABLED and flush_period_ms), as in Perfetto.

enum FlushStrategy: Equatable {
    case none
    case periodic(milliseconds: UInt32)
    case beforeEachWrite

    static let defaultFileWritePeriodMs: UInt32 = 5_000
    static let minFileWritePeriodMs: UInt32 = 100

    init(_ config: TraceConfig) {
        let periodic: FlushStrategy = config.flushPeriodMs > 0 ? .periodic(milliseconds: config.flushPeriodMs) : .none
        guard config.writeIntoFile else {
            self = periodic
            return
        }
        switch config.writeFlushMode {
        case .writeFlushDisabled:
            self = periodic
        case .writeFlushEnabled:
            self = .beforeEachWrite
        default:
            self = Self.fileWritePeriodMs(config) <= Self.defaultFileWritePeriodMs
                ? .periodic(milliseconds: Self.defaultFileWritePeriodMs) : .beforeEachWrite
        }
    }

    /// How often a session with write_into_file writes its file.
    static func fileWritePeriodMs(_ config: TraceConfig) -> UInt32 {
        max(config.fileWritePeriodMs == 0 ? defaultFileWritePeriodMs : config.fileWritePeriodMs, minFileWritePeriodMs)
    }
}
