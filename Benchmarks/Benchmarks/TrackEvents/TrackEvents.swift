// Track event call sites, beside their floor in the same run, with the allocations they make.
// Each iteration is 1,000 events into an in-process session (64 MiB ring buffer, category
// `bench` recorded, `off` not):
//   two boot-time clock reads (floor):  what an enabled begin + end cannot avoid
//   disabled pair:                      begin + end in a category no session enables
//   enabled pair:                       begin + end, interned static name, no arguments
//   enabled pair, 2 int annotations:    the same with two debug annotations
//   counter:                            one int value on a counter track
// In steady state an event allocates nothing (mallocs are per 1,000 events and include the
// chunks the service takes).
import Benchmark
import Glibc
import TracingAPI
import TrackEvent

let eventsPerIteration = 1_000

extension TrackEventCategory {
    static let bench = TrackEventCategory("bench")
    static let off = TrackEventCategory("off")
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], timeUnits: .microseconds, maxDuration: .seconds(3))

    try! TrackEvent.initialize([.bench, .off], backends: [.inProcess], producerName: "TrackEvents")
    let session = try! TrackEventSession.start(
        .trackEvent(enabling: ["bench"], disabling: ["*"], bufferSizeKB: 64 * 1024))
    let counterTrack = CounterTrack("bench counter")

    Benchmark("two boot-time clock reads (floor)") { benchmark in
        var now = timespec()
        for _ in benchmark.scaledIterations {
            for _ in 0..<eventsPerIteration {
                clock_gettime(CLOCK_BOOTTIME, &now)
                blackHole(now.tv_nsec)
                clock_gettime(CLOCK_BOOTTIME, &now)
                blackHole(now.tv_nsec)
            }
        }
    }

    Benchmark("disabled pair") { benchmark in
        for _ in benchmark.scaledIterations {
            for _ in 0..<eventsPerIteration {
                TrackEvent.begin(.off, "disabled")
                TrackEvent.end(.off)
            }
        }
    }

    Benchmark("enabled pair") { benchmark in
        for _ in benchmark.scaledIterations {
            for _ in 0..<eventsPerIteration {
                TrackEvent.begin(.bench, "enabled")
                TrackEvent.end(.bench)
            }
        }
    }

    Benchmark("enabled pair, 2 int annotations") { benchmark in
        for _ in benchmark.scaledIterations {
            for _ in 0..<eventsPerIteration {
                TrackEvent.begin(.bench, "enabled_2args") { arguments in
                    arguments.add("a", 1)
                    arguments.add("b", 2)
                }
                TrackEvent.end(.bench)
            }
        }
    }

    Benchmark("counter") { benchmark in
        var value: Int64 = 0
        for _ in benchmark.scaledIterations {
            for _ in 0..<eventsPerIteration {
                value &+= 1
                TrackEvent.counter(.bench, counterTrack, value)
            }
        }
        blackHole(session)
    }
}
