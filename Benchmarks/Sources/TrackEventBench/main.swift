// The cost of a track event call site, in the form other tracing libraries report it, so the
// figures can be set beside them (Perfetto's C++ SDK run the same way):
//
//   swift build -c release --product TrackEventBench && .build/release/TrackEventBench [ITERATIONS]
//
// An in-process session records category `bench` (64 MiB ring buffer); `off` is disabled.
// Prints exactly one line per case, then the trace's size:
//   te disabled_pair ns_per_op=<x.x>       begin+end in a disabled category
//   te enabled_pair ns_per_op=<x.x>        begin+end, interned static name, no arguments
//   te enabled_pair_2args ns_per_op=<x.x>  the same with two int debug annotations
//   te counter ns_per_op=<x.x>             one int counter value
//   te trace_bytes=<n> packets=<n>

import TracingAPI
import TrackEvent

#if canImport(Glibc)
import Glibc
#endif

extension TrackEventCategory {
    static let bench = TrackEventCategory("bench")
    static let off = TrackEventCategory("off")
}

let iterations = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 1_000_000

func nanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Runs `body` `iterations` times (after a warm-up) and returns nanoseconds per run.
func measure(_ body: () -> Void) -> Double {
    for _ in 0..<min(iterations / 10, 10_000) { body() }
    let start = nanoseconds()
    for _ in 0..<iterations { body() }
    return Double(nanoseconds() - start) / Double(iterations)
}

func format(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

try TrackEvent.initialize([.bench, .off], backends: [.inProcess], producerName: "TrackEventBench")
let session = try TrackEventSession.start(.trackEvent(enabling: ["bench"], disabling: ["*"], bufferSizeKB: 64 * 1024))
let queue = CounterTrack("bench counter")
var counterValue: Int64 = 0

let disabled = measure {
    TrackEvent.begin(.off, "disabled")
    TrackEvent.end(.off)
}
let enabled = measure {
    TrackEvent.begin(.bench, "enabled")
    TrackEvent.end(.bench)
}
let enabledWithArguments = measure {
    TrackEvent.begin(.bench, "enabled_2args") { arguments in
        arguments.add("a", 1)
        arguments.add("b", 2)
    }
    TrackEvent.end(.bench)
}
let counter = measure {
    counterValue &+= 1
    TrackEvent.counter(.bench, queue, counterValue)
}
let trace = try session.stop()

print("te disabled_pair ns_per_op=\(format(disabled))")
print("te enabled_pair ns_per_op=\(format(enabled))")
print("te enabled_pair_2args ns_per_op=\(format(enabledWithArguments))")
print("te counter ns_per_op=\(format(counter))")
print("te trace_bytes=\(trace.file.count) packets=\(trace.packets.count)")
