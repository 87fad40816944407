// Track events as a viewer sees them: recorded in-process with TrackEventSession, read back by
// TraceReader (the generated messages, not the writer's code).

import Dispatch
import TracingAPI
import Testing
import TrackEvent

extension TrackEventCategory {
    static let app = TrackEventCategory("app", description: "the app under test")
    static let net = TrackEventCategory("net.requests", tags: ["io"])
    static let verbose = TrackEventCategory("app.verbose", tags: ["debug"])
    static let off = TrackEventCategory("off")
}

/// Track events are process-wide: every test shares one in-process service.
func initializeTrackEvents() throws {
    try TrackEvent.initialize([.app, .net, .verbose, .off], backends: [.inProcess], producerName: "track-event-tests")
}

@Suite("Track events", .serialized)
struct TrackEventTests {
    init() throws { try initializeTrackEvents() }

    private func record(_ config: TraceConfig = .trackEvent(disabling: ["off"]), _ body: () -> Void) throws -> ReadTrace {
        let session = try TrackEventSession.start(config)
        body()
        let trace = try session.stop()
        return ReadTrace(trace.decodedPackets)
    }

    @Test func slicesNestOnTheThreadTrackWithInternedNames() throws {
        let trace = try record {
            TrackEvent.slice(.app, "outer") {
                TrackEvent.slice(.app, "inner") {}
                TrackEvent.slice(.app, "inner") {}
            }
            TrackEvent.begin(.app, "manual") { $0.add("count", 3); $0.add("label", "x") }
            TrackEvent.end(.app)
        }
        #expect(trace.problems == [])
        #expect(trace.slices.map(\.name) == ["outer", "inner", "inner", "manual"])
        #expect(trace.slices.map(\.depth) == [0, 1, 1, 0])
        #expect(trace.slices.allSatisfy { $0.end != nil && $0.end! >= $0.begin })
        #expect(trace.slices.allSatisfy { $0.category == "app" })
        #expect(trace.slices[3].arguments == ["count": "3", "label": "x"])
        let track = try #require(trace.slices.first?.track)
        #expect(trace.tracks[track]?.thread.tid == Int64(CPerfettoIPC_gettid()))
        #expect(trace.tracks[track]?.thread.pid == getpid())
    }

    @Test func disabledCategoriesWriteNothing() throws {
        let trace = try record(.trackEvent(enabling: ["app"], disabling: ["*"])) {
            TrackEvent.slice(.off, "never") {}
            TrackEvent.instant(.net, "not enabled")
            TrackEvent.instant(.verbose, "debug-tagged")
            TrackEvent.instant(.app, "yes")
        }
        #expect(trace.slices.isEmpty)
        #expect(trace.instants.map(\.name) == ["yes"])
        #expect(!TrackEventCategory.off.isEnabled, "off again after the session")
    }

    @Test func debugTaggedCategoriesNeedToBeNamed() throws {
        let byDefault = try record(.trackEvent()) { TrackEvent.instant(.verbose, "hidden") }
        #expect(byDefault.instants.isEmpty, "`debug` keeps a category off unless named")
        let named = try record(.trackEvent(enabling: ["app.verbose"])) { TrackEvent.instant(.verbose, "shown") }
        #expect(named.instants.map(\.name) == ["shown"])
    }

    @Test func countersFlowsAndNamedTracks() throws {
        let depth = CounterTrack("queue depth", unit: .count)
        let ratio = CounterTrack("hit ratio")
        let requests = Track.named("requests")
        let flow = Flow.process(42)
        let trace = try record {
            for value in [1, 5, 2] { TrackEvent.counter(.app, depth, value) }
            TrackEvent.counter(.app, ratio, 0.75)
            TrackEvent.begin(.app, "send", flow: flow)
            TrackEvent.end(.app)
            TrackEvent.begin(.app, "handle", track: requests, terminatingFlow: flow)
            TrackEvent.end(.app, track: requests)
        }
        #expect(trace.problems == [])
        #expect(trace.counters[depth.uuid] == [1, 5, 2])
        #expect(trace.counters[ratio.uuid] == [0.75])
        #expect(trace.tracks[depth.uuid]?.name == "queue depth")
        #expect(trace.tracks[depth.uuid]?.counter.unit == .count)
        let send = try #require(trace.slices.first { $0.name == "send" })
        let handle = try #require(trace.slices.first { $0.name == "handle" })
        #expect(send.flows == [flow.id])
        #expect(handle.terminatingFlows == [flow.id])
        #expect(handle.track == requests.uuid)
        #expect(trace.tracks[requests.uuid]?.name == "requests")
    }

    @Test func debugAnnotationsOfEveryKind() throws {
        let trace = try record {
            TrackEvent.instant(.app, "values") { args in
                args.add("int", -3)
                args.add("uint", UInt(7))
                args.add("double", 2.5)
                args.add("bool", true)
                args.add("string", "text")
                args.add("dict", .dictionary([DebugEntry("a", .int(1)), DebugEntry("b", .array([.bool(false), .string("z")]))]))
            }
        }
        #expect(trace.instants.first?.arguments == [
            "int": "-3", "uint": "7", "double": "2.5", "bool": "true", "string": "text", "dict": "{a: 1, b: [false, z]}",
        ])
    }

    @Test func threadsGetTheirOwnSequencesAndTracks() throws {
        let threads = 4
        let trace = try record {
            let group = DispatchGroup()
            for index in 0..<threads {
                group.enter()
                Thread.run(name: "worker-\(index)") {
                    for _ in 0..<50 { TrackEvent.slice(.app, "work") { TrackEvent.instant(.app, "tick") } }
                    group.leave()
                }
            }
            group.wait()
        }
        #expect(trace.problems == [])
        let perTrack = Dictionary(grouping: trace.slices, by: \.track)
        #expect(perTrack.count == threads)
        #expect(perTrack.values.allSatisfy { $0.count == 50 && $0.allSatisfy { $0.end != nil } })
        #expect(Set(perTrack.keys.compactMap { trace.threadName($0) }) == Set((0..<threads).map { "worker-\($0)" }))
    }

    @Test func twoSessionsAtOnceGetWhatTheirConfigsAsk() throws {
        let appOnly = try TrackEventSession.start(.trackEvent(enabling: ["app"], disabling: ["*"]))
        let netOnly = try TrackEventSession.start(.trackEvent(enabling: ["net.*"], disabling: ["*"]))
        TrackEvent.instant(.app, "for the first")
        TrackEvent.instant(.net, "for the second")
        let first = ReadTrace(try appOnly.stop().decodedPackets)
        TrackEvent.instant(.net, "second only, after the first stopped")
        let second = ReadTrace(try netOnly.stop().decodedPackets)
        #expect(first.instants.map(\.name) == ["for the first"])
        #expect(second.instants.map(\.name) == ["for the second", "second only, after the first stopped"])
    }

    @Test func namesResolveAcrossClearedIncrementalState() throws {
        var config = TraceConfig.trackEvent(enabling: ["app"], disabling: ["*"])
        config.incrementalStateConfig.clearPeriodMs_p = 20
        let session = try TrackEventSession.start(config)
        // Events keep coming (one every 100 µs, a pace the shared memory keeps up with) while
        // the service clears incremental state several times.
        let start = DispatchTime.now().uptimeNanoseconds
        var written = 0
        while DispatchTime.now().uptimeNanoseconds < start + 200_000_000 {
            guard DispatchTime.now().uptimeNanoseconds >= start + UInt64(written) * 100_000 else { continue }
            TrackEvent.slice(.app, "repeated") { TrackEvent.instant(.app, "inside") }
            written += 1
        }
        let packets = try session.stop().decodedPackets
        let resets = packets.filter { $0.trustedPacketSequenceID > 1 && $0.sequenceFlags & 1 != 0 }
        #expect(resets.count >= 3, "the incremental state was cleared and set up again")
        let trace = ReadTrace(packets)
        #expect(trace.problems == [])
        #expect(trace.slices.count == written)
        #expect(Set(trace.slices.map(\.name)) == ["repeated"])
        #expect(trace.instants.count == written)
    }

    @Test func aThreadThatLostEventsStartsItsStateAfresh() throws {
        // A tiny buffer of shared memory is not what this needs: flooding it from one thread
        // makes the writer drop, and whatever survives must still read back cleanly.
        // The ring buffer holds it all: losses happen only in the writer.
        let session = try TrackEventSession.start(.trackEvent(enabling: ["app"], disabling: ["*"], bufferSizeKB: 64 * 1024))
        for _ in 0..<200_000 { TrackEvent.slice(.app, "flood") {} }
        let packets = try session.stop().decodedPackets
        let trace = ReadTrace(packets)
        let problems = trace.problems.filter { !$0.hasPrefix("end without a begin") }
        #expect(problems.isEmpty, "names always resolve: \(problems.count) problems, first \(problems.prefix(3))")
        #expect(trace.slices.allSatisfy { $0.name == "flood" })
        let resets = packets.filter { $0.trustedPacketSequenceID > 1 && $0.sequenceFlags & 1 != 0 }.count
        let losses = packets.filter { $0.trustedPacketSequenceID > 1 && $0.previousPacketDropped != 0 }.count
        #expect(resets >= losses, "every loss is followed by a fresh start (\(resets) resets, \(losses) losses)")
        #expect(trace.skippedAfterLoss < trace.slices.count, "most of what survived is readable")
    }

    @Test func asyncSlicesGetTracksOfTheirOwn() async throws {
        let session = try TrackEventSession.start(.trackEvent(enabling: ["app"], disabling: ["*"]))
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    await TrackEvent.slice(.app, "request") {
                        await Task.yield()
                        TrackEvent.instant(.app, "step")
                    }
                }
            }
        }
        let trace = ReadTrace(try await session.stop().decodedPackets)
        #expect(trace.problems == [])
        let requests = trace.slices.filter { $0.name == "request" }
        #expect(requests.count == 3)
        #expect(Set(requests.map(\.track)).count == 3, "overlapping async slices never share a track")
        #expect(requests.allSatisfy { $0.end != nil && $0.depth == 0 })
    }
}

/// A plain thread for tests.
enum Thread {
    static func run(name: String, _ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable {
            let name: String
            let body: @Sendable () -> Void
            init(_ name: String, _ body: @escaping @Sendable () -> Void) {
                self.name = name
                self.body = body
            }
        }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(name, body)).toOpaque()
        pthread_create(&thread, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            CPerfettoIPC_setThreadName(box.name)
            box.body()
            return nil
        }, box)
        pthread_detach(thread)
    }
}

import CPerfettoIPCLinux
import Glibc
