// A logger that drops everything: for hosts that tests drive into failures on purpose (frames
// too large, stalled peers), so the test output stays quiet unless a test fails. The tests
// assert on what the peer sees, not on log lines.

import Logging

extension Logger {
    /// Logs nothing.
    public static let quiet = Logger(label: "perfetto.ipc.test", factory: { _ in SwiftLogNoOpLogHandler() })
}
