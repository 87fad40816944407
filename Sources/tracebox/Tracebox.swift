// tracebox: Perfetto's programs as one executable, on swift-perfetto-ipc.
//
//   tracebox traced     the tracing service (Perfetto's traced)
//   tracebox perfetto   the recorder and query client (Perfetto's perfetto)
//   tracebox relay      carries this machine's producers to a service on another (traced_relay)
//   tracebox producer   a producer for tests and demos
//   tracebox demo       the whole system on temporary sockets, recorded into a .pftrace
//
// Addresses follow Perfetto's rules: a flag, else PERFETTO_PRODUCER_SOCK_NAME /
// PERFETTO_CONSUMER_SOCK_NAME, else /run/perfetto/ or /tmp (TracingSocketNames); the relay's
// host: --relay-socket, else PERFETTO_RELAY_SOCK_NAME.

import ArgumentParser

@main
struct Tracebox: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tracebox",
        abstract: "Perfetto's tracing service, recorder and a test producer, on swift-perfetto-ipc.",
        subcommands: [
            TracedCommand.self, PerfettoCommand.self, RelayCommand.self, ProducerCommand.self, DemoCommand.self,
        ])
}
