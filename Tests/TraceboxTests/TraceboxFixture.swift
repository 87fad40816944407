// What every suite of tracebox processes shares: a fresh folder per test holding the socket
// files, the processes' output and the traces, and the ways to start `tracebox` programs in it.

import Foundation
import Glibc
import Testing
import TestSupport
import TracingAPI

/// A suite whose tests run `tracebox` programs on sockets in `directory`.
protocol TraceboxFixture: AnyObject {
    var directory: TemporaryDirectory { get }
}

extension TraceboxFixture {
    var producerSocket: String { directory.path + "/producer.sock" }
    var consumerSocket: String { directory.path + "/consumer.sock" }

    /// The programs find the sockets through Perfetto's variables.
    var environment: [String: String] {
        ["PERFETTO_PRODUCER_SOCK_NAME": producerSocket, "PERFETTO_CONSUMER_SOCK_NAME": consumerSocket]
    }

    func start(_ arguments: [String], name: String, wrapper: [String] = []) throws -> Subprocess {
        try Subprocess(arguments, environment: environment, directory: directory.path, name: name, wrapper: wrapper)
    }

    /// `tracebox traced`, once it says where it listens.
    func startService(_ extra: [String] = [], name: String = "traced") throws -> Subprocess {
        let service = try start(["traced"] + extra, name: name)
        let up = poll(seconds: 20) { service.standardOutput.contains("tracebox traced: producers at") }
        try #require(up, "traced did not start: \(service.standardError)")
        return service
    }

    /// A text config file.
    func config(_ text: String, name: String = "config.txt") throws -> String {
        let path = directory.path + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `perfetto --query`'s output, once it shows `expected` (or the last one after 20 s).
    func query(until expected: String, name: String, wrapper: [String] = []) -> String {
        var output = ""
        _ = poll(seconds: 20) {
            guard let query = try? self.start(["perfetto", "--query"], name: name, wrapper: wrapper), query.wait() == 0 else {
                return false
            }
            output = query.standardOutput
            return output.contains(expected)
        }
        return output
    }

    /// The packets of a trace file.
    func trace(_ path: String) throws -> [TracePacket] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return try TraceFile.decodePackets(bytes).map { try $0.decode() }
    }
}
