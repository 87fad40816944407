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

    @Flag(
        name: .customLong("enable-relay-endpoint"),
        help: "Also serve RelayPort on the producer addresses, for relays of other machines (tracebox relay, traced_relay); give a TCP or vsock producer address too, e.g. --producer-socket /tmp/perfetto-producer,0.0.0.0:20001.")
    var enableRelayEndpoint = false

    @Option(
        name: .customLong("set-socket-permissions"),
        help: "Group and mode of the socket files, as Perfetto's traced takes them: <producer group>:<producer mode>:<consumer group>:<consumer mode>, e.g. traced-producer:0660:traced-consumer:0660 (default: mode 0666, anyone may connect; sessions stay per uid).")
    var socketPermissions: String?

    /// Who may connect to a socket file: its mode, and the group to give it (nil: ours).
    struct SocketPermissions: Equatable {
        var producerGroup: gid_t?
        var producerMode: UInt32
        var consumerGroup: gid_t?
        var consumerMode: UInt32

        /// Anyone may connect, as to Perfetto's sockets on Android: the service keeps each
        /// uid's sessions to itself, and stamps every packet with its producer's uid.
        static let `default` = SocketPermissions(producerGroup: nil, producerMode: 0o666, consumerGroup: nil, consumerMode: 0o666)

        /// Parses `<producer group>:<producer mode>:<consumer group>:<consumer mode>`.
        init?(parsing text: String, groupID: (String) -> gid_t? = SocketPermissions.groupID) {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 4, !parts.contains(where: \.isEmpty),
                  let producerMode = UInt32(parts[1], radix: 8), producerMode <= 0o777,
                  let consumerMode = UInt32(parts[3], radix: 8), consumerMode <= 0o777,
                  let producerGroup = groupID(parts[0]), let consumerGroup = groupID(parts[2]) else { return nil }
            self.init(producerGroup: producerGroup, producerMode: producerMode, consumerGroup: consumerGroup, consumerMode: consumerMode)
        }

        init(producerGroup: gid_t?, producerMode: UInt32, consumerGroup: gid_t?, consumerMode: UInt32) {
            self.producerGroup = producerGroup
            self.producerMode = producerMode
            self.consumerGroup = consumerGroup
            self.consumerMode = consumerMode
        }

        /// A group by name, or by number.
        static func groupID(_ name: String) -> gid_t? {
            if let group = getgrnam(name) { return group.pointee.gr_gid }
            return gid_t(name)
        }
    }

    func run() throws {
        let producerAddresses = producerSocket.map { $0.split(separator: ",").map(String.init) }
            ?? TracingSocketNames.producerAddresses
        let consumerAddress = consumerSocket ?? TracingSocketNames.consumer
        let permissions: SocketPermissions
        if let socketPermissions {
            guard let parsed = SocketPermissions(parsing: socketPermissions) else {
                printError("tracebox traced: --set-socket-permissions wants <producer group>:<mode>:<consumer group>:<mode> with existing groups and octal modes, e.g. traced-producer:0660:traced-consumer:0660")
                throw ExitCode.failure
            }
            permissions = parsed
        } else {
            permissions = .default
        }
        var producerOptions = ConnectionOptions()
        producerOptions.socketFileMode = permissions.producerMode
        var consumerOptions = ConnectionOptions()
        consumerOptions.socketFileMode = permissions.consumerMode
        let runner = try CommandLoop(backend: backend)
        let service = TracingServiceCore(eventLoop: runner.loop)
        let host: TracingServiceHost
        do {
            host = try TracingServiceHost(
                service: service,
                producerBackends: producerAddresses.map { .transport(runner.transport, address: $0, options: producerOptions) },
                consumerBackend: .transport(runner.transport, address: consumerAddress, options: consumerOptions),
                enablesRelayEndpoint: enableRelayEndpoint)
        } catch {
            printError("tracebox traced: \(Self.describe(error))")
            throw ExitCode.failure
        }
        // The mode was set before the socket files appeared; a group only widens it afterwards.
        for (address, group) in producerAddresses.map({ ($0, permissions.producerGroup) }) + [(consumerAddress, permissions.consumerGroup)] {
            guard let group, case .unixPath(let path)? = try? SocketAddress(parsing: address) else { continue }
            guard chown(path, uid_t.max, group) == 0 else {
                printError("tracebox traced: cannot give \(path) to group \(group): \(String(cString: strerror(errno)))")
                host.close()
                throw ExitCode.failure
            }
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
        case .addressInUse where error.errno == EADDRINUSE:
            return "cannot listen at\(address): a service is already running there"
        case .addressInUse: return "cannot listen at\(address): \(error.message)"
        case .invalidAddress: return "invalid address\(address): \(error.message)"
        default:
            if error.errno == EACCES { return "cannot listen at\(address): permission denied" }
            return "cannot listen at\(address): \(error.message)"
        }
    }
}
