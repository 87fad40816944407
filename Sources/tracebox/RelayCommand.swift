// tracebox relay: Perfetto's traced_relay. Listens where this machine's producers look for
// traced and carries them to the service on another machine, until SIGINT or SIGTERM.

import ArgumentParser
import IPCProtocol
import TracingAPI

#if canImport(Glibc)
import Glibc
#endif

struct RelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Carry this machine's producers to a tracing service on another machine or VM (Perfetto's traced_relay).",
        discussion: """
            The host's service must listen on a TCP or vsock producer address with the relay endpoint on, e.g.
              tracebox traced --enable-relay-endpoint --producer-socket /tmp/perfetto-producer,0.0.0.0:20001
            and a recording on the host sees this machine's data sources with trace_all_machines: true in its config.
            """)

    @Option(name: .customLong("relay-socket"), help: "The host service's producer address: host:port or vsock://cid:port (default: $PERFETTO_RELAY_SOCK_NAME).")
    var relaySocket: String?

    @Option(name: .customLong("producer-socket"), help: "Where local producers connect, comma-separated (default: $PERFETTO_PRODUCER_SOCK_NAME, else Perfetto's).")
    var producerSocket: String?

    @Option(name: .customLong("machine-name"), help: "This machine's name in traces, matched by machine_name_filter (default: $PERFETTO_MACHINE_NAME, else the kernel's name).")
    var machineName: String?

    @Option(name: .customLong("machine-id-hint"), help: "What the host derives this machine's id from (default: the boot id).")
    var machineIDHint: String?

    @Option(name: .customLong("clock-sync-interval-ms"), help: "Milliseconds between clock exchanges with the host.")
    var clockSyncIntervalMs: Int = 30_000

    @Option(name: .customLong("set-socket-permissions"), help: "Mode of the producer socket file, octal (default 0666).")
    var socketMode: String?

    @Option(help: "IPC backend: unix (epoll) or libuv.")
    var backend: BackendChoice = .unix

    func run() throws {
        guard let host = relaySocket ?? TracingSocketNames.relay, !host.isEmpty else {
            printError("tracebox relay: no host service: pass --relay-socket host:port (or vsock://cid:port), or set \(TracingSocketNames.relayEnvironmentVariable)")
            throw ExitCode.failure
        }
        let producerAddresses = producerSocket.map { $0.split(separator: ",").map(String.init) }
            ?? TracingSocketNames.producerAddresses
        var options = TracingRelay.Options()
        options.machineName = machineName
        options.machineIDHint = machineIDHint
        options.clockSyncInterval = .milliseconds(max(clockSyncIntervalMs, 10))
        if let socketMode {
            guard let mode = UInt32(socketMode, radix: 8), mode <= 0o777 else {
                printError("tracebox relay: --set-socket-permissions wants an octal mode, e.g. 0660")
                throw ExitCode.failure
            }
            options.listenerOptions.socketFileMode = mode
        } else {
            options.listenerOptions.socketFileMode = 0o666
        }
        let runner = try CommandLoop(backend: backend)
        let relay: TracingRelay
        do {
            relay = try TracingRelay(
                transport: runner.transport, producerAddresses: producerAddresses, hostAddress: host, options: options)
        } catch {
            printError("tracebox relay: \(TracedCommand.describe(error))")
            throw ExitCode.failure
        }
        var stopping = false
        runner.onTerminationSignal {
            relay.close()
            stopping = true
        }
        say("tracebox relay: producers at \(relay.producerAddresses.joined(separator: ",")), host at \(host) (pid \(getpid()), \(backend.rawValue))")
        runner.run(until: { stopping })
    }
}
