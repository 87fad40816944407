// tracebox traced: the tracing service on real sockets, until SIGINT or SIGTERM.

import ArgumentParser
import IPCProtocol
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

struct TracedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "traced",
        abstract: "Run the tracing service: ProducerPort on the producer socket(s), ConsumerPort on the consumer socket.")

    @Option(name: .customLong("producer-socket"), help: "Producer address(es), comma-separated (default: $PERFETTO_PRODUCER_SOCK_NAME, else Perfetto's).")
    var producerSocket: String?

    @Option(name: .customLong("consumer-socket"), help: "Consumer address (default: $PERFETTO_CONSUMER_SOCK_NAME, else Perfetto's).")
    var consumerSocket: String?

    @Option(help: "IPC backend: unix (epoll) or libuv.")
    var backend: BackendChoice = .unix

    func run() throws {
        let producerAddresses = producerSocket.map { $0.split(separator: ",").map(String.init) }
            ?? TracingSocketNames.producerAddresses
        let consumerAddress = consumerSocket ?? TracingSocketNames.consumer
        let runner = try CommandLoop(backend: backend)
        let service = TracingServiceCore(eventLoop: runner.loop)
        let host: TracingServiceHost
        do {
            host = try TracingServiceHost(
                service: service,
                producerBackends: producerAddresses.map { .transport(runner.transport, address: $0) },
                consumerBackend: .transport(runner.transport, address: consumerAddress))
        } catch {
            printError("tracebox traced: \(Self.describe(error))")
            throw ExitCode.failure
        }
        var stopping = false
        runner.onTerminationSignal {
            // Files of write_into_file sessions get their last data; socket files go away.
            service.shutDown()
            host.close()
            stopping = true
        }
        say("tracebox traced: producers at \(host.producerAddresses.joined(separator: ",")), consumers at \(host.consumerAddress ?? consumerAddress) (pid \(getpid()), \(backend.rawValue))")
        runner.run(until: { stopping })
    }

    /// One line a person can act on.
    static func describe(_ error: IPCError) -> String {
        let address = error.address.map { " \($0)" } ?? ""
        switch error.code {
        case .addressInUse: return "cannot listen at\(address): a service is already running there"
        case .invalidAddress: return "invalid address\(address): \(error.message)"
        default:
            if error.errno == EACCES { return "cannot listen at\(address): permission denied" }
            return "cannot listen at\(address): \(error.message)"
        }
    }
}
