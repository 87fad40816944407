// A logger that keeps what it is told, for tests that assert what a component says (a warning
// once per outage, not once per retry). Thread-safe: components may log from their loop thread
// while the test reads.

import Logging
import Synchronization

/// Log lines kept in memory, as "<level>: <message>".
public final class LogRecord: Sendable {
    private let lines = Mutex<[String]>([])

    public init() {}

    /// A logger whose every line (trace level and up) lands here.
    public var logger: Logger {
        var logger = Logger(label: "perfetto.test.recorded", factory: { _ in RecordingLogHandler(record: self) })
        logger.logLevel = .trace
        return logger
    }

    /// What was logged so far.
    public var all: [String] { lines.withLock { $0 } }

    /// Lines at `level` so far.
    public func lines(at level: Logger.Level) -> [String] {
        all.filter { $0.hasPrefix("\(level): ") }
    }

    fileprivate func append(_ line: String) {
        lines.withLock { $0.append(line) }
    }
}

private struct RecordingLogHandler: LogHandler {
    let record: LogRecord
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        record.append("\(event.level): \(event.message)")
    }
}
