// What `tracebox perfetto --query` prints, from a state a service sent: bounded by the state's
// size whatever it repeats, every name escaped.

import Testing
import TracingAPI

@testable import tracebox

@Suite struct ServiceStateReportTests {
    @Test func aStateThatRepeatsProducerIdsPrintsEachDataSourceOnce() {
        var state = TracingServiceState()
        // A hostile service: 400 producers all named 1, and 400 data sources of producer 1.
        state.producers = (0..<400).map { _ in
            var producer = TracingServiceState.Producer()
            producer.id = 1
            producer.name = "p"
            return producer
        }
        state.dataSources = (0..<400).map { index in
            var source = TracingServiceState.DataSource()
            source.producerID = 1
            source.dsDescriptor.name = "ds\(index)"
            return source
        }
        let lines = ServiceStateReport(state).text.split(separator: "\n")
        // It printed 400 x 400 data source lines before.
        #expect(lines.filter { $0.hasPrefix("      data source ") }.count == 400)
        #expect(lines.filter { $0.hasPrefix("  1: p") }.count == 400)
        #expect(lines.count == 2 + 400 + 400 + 1)
    }
}
