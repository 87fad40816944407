// swift-distributed-tracing spans as a viewer sees them in the recorded trace.

import Instrumentation
import Tracing
import TracingAPI
import Testing
import TrackEvent
import TrackEventTracing

@Suite("PerfettoTracer", .serialized)
struct PerfettoTracerTests {
    let tracer = PerfettoTracer()

    init() throws { try initializeTrackEvents() }

    private func record(_ body: () async throws -> Void) async throws -> ReadTrace {
        let session = try TrackEventSession.start(.trackEvent(enabling: ["tracing"], disabling: ["*"]))
        try await body()
        return ReadTrace(try await session.stop().decodedPackets)
    }

    @Test func nestedSpansNestAndCarryTheirAttributes() async throws {
        let trace = try await record {
            await tracer.withSpan("request", context: .topLevel) { request in
                request.attributes["http.method"] = "GET"
                request.attributes["http.status"] = 200
                await tracer.withSpan("query", context: request.context) { query in
                    await Task.yield()
                    query.attributes["rows"] = 3
                    query.addEvent(SpanEvent(name: "cache miss"))
                }
            }
        }
        #expect(trace.problems == [])
        let request = try #require(trace.slices.first { $0.name == "request" })
        let query = try #require(trace.slices.first { $0.name == "query" })
        #expect(query.track == request.track, "a sequential child nests on its parent's track")
        #expect(query.depth == 1)
        #expect(request.arguments["http.method"] == "GET")
        #expect(request.arguments["http.status"] == "200")
        #expect(query.arguments["rows"] == "3")
        #expect(trace.instants.map(\.name) == ["cache miss"])
        #expect(request.end != nil && query.end != nil && query.end! <= request.end!)
    }

    @Test func concurrentChildrenNeverBreakEachOthersNesting() async throws {
        let trace = try await record {
            // Eight children open at once under one parent, as a fan-out of concurrent requests
            // makes them, ended in the order they started (not the reverse).
            let parent = tracer.startSpan("fan-out", context: .topLevel)
            let children = (0..<8).map { tracer.startSpan("child \($0)", context: parent.context) }
            for child in children.reversed() {
                tracer.startSpan("grandchild", context: child.context).end()
            }
            for child in children { child.end() }
            parent.end()
        }
        #expect(trace.problems == [], "every end closes its own begin")
        let parent = try #require(trace.slices.first { $0.name == "fan-out" })
        let children = trace.slices.filter { $0.name.hasPrefix("child ") }
        #expect(children.count == 8)
        #expect(children.allSatisfy { $0.end != nil })
        #expect(children.first?.track == parent.track, "the first child joins its parent's track")
        #expect(Set(children.dropFirst().map(\.track)).count == 7, "the overlapping ones get tracks of their own")
        #expect(children.dropFirst().allSatisfy { trace.tracks[$0.track]?.parentUuid == parent.track })
        let grandchildren = trace.slices.filter { $0.name == "grandchild" }
        #expect(grandchildren.count == 8)
        #expect(Set(grandchildren.map(\.track)) == Set(children.map(\.track)), "each nests under its own parent")
    }

    @Test func spansOfConcurrentTasksRecordWhole() async throws {
        let trace = try await record {
            await tracer.withSpan("fan-out", context: .topLevel) { parent in
                await withTaskGroup(of: Void.self) { group in
                    for index in 0..<8 {
                        group.addTask {
                            await tracer.withSpan("task \(index)", context: parent.context) { _ in await Task.yield() }
                        }
                    }
                }
            }
        }
        #expect(trace.problems == [])
        #expect(trace.slices.filter { $0.name.hasPrefix("task ") && $0.end != nil }.count == 8)
    }

    @Test func errorsLinksAndOutOfOrderEnds() async throws {
        struct Failure: Error, CustomStringConvertible { var description: String { "database unavailable" } }
        let trace = try await record {
            let first = tracer.startSpan("first", context: .topLevel)
            let second = tracer.startSpan("second", context: .topLevel)
            second.addLink(first)
            second.recordError(Failure())
            second.end()
            // A parent that ends before its child is closed once the child ends.
            let parent = tracer.startSpan("parent", context: .topLevel)
            let child = tracer.startSpan("child", context: parent.context)
            parent.end()
            child.end()
            first.end()
        }
        #expect(trace.problems == [])
        let second = try #require(trace.slices.first { $0.name == "second" })
        #expect(second.arguments["error"] == "database unavailable")
        let link = try #require(trace.instants.first { $0.name == "link" })
        let linked = try #require(trace.instants.first { $0.name == "linked" })
        #expect(link.flows == linked.terminatingFlows && !link.flows.isEmpty)
        let parent = try #require(trace.slices.first { $0.name == "parent" })
        let child = try #require(trace.slices.first { $0.name == "child" })
        #expect(child.track == parent.track && child.depth == 1)
        #expect(parent.end != nil && child.end != nil && child.end! <= parent.end!)
    }

    @Test func contextPropagationLinksSpansAcrossProcesses() async throws {
        struct Headers: Injector, Extractor {
            func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
            func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
        }
        let trace = try await record {
            let client = tracer.startSpan("client call", context: .topLevel)
            var headers: [String: String] = [:]
            tracer.inject(client.context, into: &headers, using: Headers())
            #expect(headers[PerfettoTracer.flowHeader] != nil)
            // The other side (another process, in real life) continues from the headers.
            var received = InstrumentationContext.topLevel
            tracer.extract(headers, into: &received, using: Headers())
            tracer.startSpan("server handle", context: received).end()
            client.end()
        }
        let sent = try #require(trace.instants.first { $0.name == "propagated" })
        let handled = try #require(trace.slices.first { $0.name == "server handle" })
        #expect(!sent.flows.isEmpty)
        #expect(handled.terminatingFlows == sent.flows, "one flow from the call to the handler")
    }
}
