// Where the tracing service listens, as Perfetto decides it (src/tracing/ipc/default_socket.cc):
// an environment variable wins (even when empty, as in Perfetto); otherwise /run/perfetto/ when
// that folder can be entered, else /tmp.
// Producers may be served on several addresses at once (a comma-separated list).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The addresses of the system tracing service's sockets, resolved as Perfetto resolves them.
public enum TracingSocketNames {
    /// The variable naming the producer socket(s): `PERFETTO_PRODUCER_SOCK_NAME`.
    public static let producerEnvironmentVariable = "PERFETTO_PRODUCER_SOCK_NAME"
    /// The variable naming the consumer socket: `PERFETTO_CONSUMER_SOCK_NAME`.
    public static let consumerEnvironmentVariable = "PERFETTO_CONSUMER_SOCK_NAME"
    /// The variable naming the relay's host service: `PERFETTO_RELAY_SOCK_NAME`.
    public static let relayEnvironmentVariable = "PERFETTO_RELAY_SOCK_NAME"

    /// The producer socket a producer connects to: the first of ``producerAddresses``.
    public static var producer: String { producerAddresses[0] }

    /// Every producer address a service listens on: `PERFETTO_PRODUCER_SOCK_NAME` split at
    /// commas, else Perfetto's default for this machine.
    public static var producerAddresses: [String] {
        if let value = environment(producerEnvironmentVariable) {
            let addresses = value.split(separator: ",").map(String.init).filter { !$0.isEmpty }
            if !addresses.isEmpty { return addresses }
        }
        return [runDirectoryIsUsable ? "/run/perfetto/traced-producer.sock" : "/tmp/perfetto-producer"]
    }

    /// The consumer socket: `PERFETTO_CONSUMER_SOCK_NAME`, else Perfetto's default.
    public static var consumer: String {
        if let value = environment(consumerEnvironmentVariable) { return value }
        return runDirectoryIsUsable ? "/run/perfetto/traced-consumer.sock" : "/tmp/perfetto-consumer"
    }

    /// The host service a relay forwards to (`PERFETTO_RELAY_SOCK_NAME`), if set.
    public static var relay: String? { environment(relayEnvironmentVariable) }

    /// Perfetto uses /run/perfetto/ when the folder can be entered (`access(X_OK)`).
    private static var runDirectoryIsUsable: Bool {
        access("/run/perfetto/", X_OK) == 0
    }

    private static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
