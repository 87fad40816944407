// An app instrumented with track events and swift-distributed-tracing, recorded wherever the
// first argument says:
//
//   swift run traced-app                 records in-process, writes traced-app.pftrace
//   swift run traced-app system          writes into the system's tracing service (start
//                                        `tracebox traced`, record with `tracebox perfetto`)
//
// It handles a few "requests" concurrently: each a span (swift-distributed-tracing) with
// attributes and child spans, plus track events of its own: slices, a counter, a flow.

import Instrumentation
import Tracing
import TracingAPI
import TrackEvent
import TrackEventTracing

#if canImport(Glibc)
import Glibc
#endif

extension TrackEventCategory {
    static let app = TrackEventCategory("app", description: "the example app's own events")
}

let useSystem = CommandLine.arguments.dropFirst().first == "system"
try TrackEvent.initialize([.app, .distributedTracing], backends: [useSystem ? .system() : .inProcess])
let tracer = PerfettoTracer()
InstrumentationSystem.bootstrap(tracer)   // every swift-distributed-tracing library now records

let session = useSystem ? nil : try TrackEventSession.start(.trackEvent(enabling: ["app", "tracing"], disabling: ["*"]))
if useSystem {
    // A system session starts the data source when it starts: wait for it (up to 10 s), so the
    // work below is recorded from its first event.
    let clock = ContinuousClock()
    let deadline = clock.now + .seconds(10)
    while !TrackEventCategory.app.isEnabled, clock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
}
let queueDepth = CounterTrack("in-flight requests", unit: .count)

/// One request: a span with attributes, a child span, and events of the app's own.
func handle(_ id: Int) async {
    await withSpan("GET /items/\(id)", ofKind: .server) { span in
        span.attributes["http.method"] = "GET"
        span.attributes["item.id"] = id
        TrackEvent.slice(.app, "parse request") { _ = (0..<1_000).reduce(0, +) }
        await withSpan("load item") { load in
            load.attributes["db.table"] = "items"
            try? await Task.sleep(for: .milliseconds(2 + id % 3))
        }
        span.addEvent(SpanEvent(name: "responded"))
    }
}

await withTaskGroup(of: Void.self) { group in
    for id in 0..<6 {
        TrackEvent.counter(.app, queueDepth, id + 1)
        group.addTask { await handle(id) }
    }
}
TrackEvent.counter(.app, queueDepth, 0)
TrackEvent.instant(.app, "all requests handled")

if let session {
    let trace = try session.stop()
    let file = "traced-app.pftrace"
    let fd = open(file, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
    let bytes = trace.file
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    print("wrote \(file): \(trace.packets.count) packets, \(bytes.count) bytes; open it at https://ui.perfetto.dev")
} else {
    tracer.forceFlush()
    print("done: the events went to the system's tracing service")
}
