// A TracingServiceCore served over IPC, as traced serves itself: ProducerPort on every producer
// address (and RelayPort beside it when relays are welcome), ConsumerPort on the consumer
// address, all on the service's loop.

import IPCProtocol
import Logging

/// Serves a ``TracingServiceCore`` to producers and consumers in other processes.
///
/// ```swift
/// let service = TracingServiceCore(eventLoop: loop)
/// let host = try TracingServiceHost(
///     service: service,
///     producerBackends: [.unixSocket("/tmp/perfetto-producer", loop: loop)],
///     consumerBackend: .unixSocket("/tmp/perfetto-consumer", loop: loop))
/// ```
///
/// Loop-bound: create and close it on the service's loop.
public final class TracingServiceHost {
    /// The service being served.
    public let service: TracingServiceCore
    /// One host per producer address, each exposing ``ProducerPortService``.
    public let producerHosts: [IPCHost]
    /// The host exposing ``ConsumerPortService``.
    public let consumerHost: IPCHost
    /// The ProducerPort of each producer address, in the order of `producerBackends` (one per
    /// host, as traced has one per socket: client ids are per host).
    public let producerPorts: [ProducerPortService]
    /// The ConsumerPort.
    public let consumerPort: ConsumerPortService
    /// The default of `maxClientsPerUID`: far more processes than one user runs, far fewer
    /// descriptors than a service has (an outside tester's uid 65534 opened 21,000 connections
    /// and starved every other client of the service, as it starves Perfetto's traced).
    public static let defaultMaxClientsPerUID = 1024
    /// The RelayPort of each producer address, if relays are welcome.
    public let relayPorts: [RelayPortService]

    /// Producers connected through every producer address.
    public var connectedProducerCount: Int { producerPorts.reduce(0) { $0 + $1.connectedProducerCount } }

    /// Listens at every producer backend and at the consumer backend. Loop-only.
    ///
    /// - Parameters:
    ///   - enablesRelayEndpoint: also expose ``RelayPortService`` on the producer addresses, so
    ///     relays of other machines (`tracebox relay`, Perfetto's traced_relay) can report
    ///     their machine and sync clocks (traced's `--enable-relay-endpoint`). Producers of
    ///     other machines are served either way.
    ///   - maxClientsPerUID: the most producers, and the most consumers, one uid other than
    ///     root may have connected at once (``IPCHost/maxClientsPerUID``); past it newcomers
    ///     are closed, so that no uid can take every descriptor of the service. Nil: no limit.
    ///   - logger: where the hosts log the peers they drop (bad frames, stalled readers).
    /// - Throws: ``IPCError`` if an address cannot be listened on, or none is given; nothing
    ///   stays listening then.
    public init(
        service: TracingServiceCore, producerBackends: [IPCBackend], consumerBackend: IPCBackend,
        enablesRelayEndpoint: Bool = false, maxClientsPerUID: Int? = TracingServiceHost.defaultMaxClientsPerUID,
        logger: Logger = Logger(label: "perfetto.tracing.host")
    ) throws(IPCError) {
        guard !producerBackends.isEmpty else { throw IPCError(.invalidAddress, "a tracing service needs a producer address") }
        self.service = service
        producerPorts = producerBackends.map { _ in ProducerPortService(service: service) }
        consumerPort = ConsumerPortService(service: service)
        relayPorts = enablesRelayEndpoint ? producerBackends.map { _ in RelayPortService(service: service) } : []
        var hosts: [IPCHost] = []
        do {
            for (index, backend) in producerBackends.enumerated() {
                let host = try IPCHost(backend: backend, logger: logger)
                host.maxClientsPerUID = maxClientsPerUID
                host.expose(producerPorts[index])
                if enablesRelayEndpoint { host.expose(relayPorts[index]) }
                hosts.append(host)
            }
            consumerHost = try IPCHost(backend: consumerBackend, logger: logger)
            consumerHost.maxClientsPerUID = maxClientsPerUID
        } catch {
            for host in hosts { host.close() }
            throw error
        }
        consumerHost.expose(consumerPort)
        producerHosts = hosts
    }

    /// The addresses producers connect to (TCP port 0 resolved).
    public var producerAddresses: [String] { producerHosts.compactMap(\.address) }
    /// The address consumers connect to.
    public var consumerAddress: String? { consumerHost.address }

    /// Stops listening and drops every producer and consumer (their sessions end unless
    /// detached). Loop-only; idempotent.
    public func close() {
        for host in producerHosts { host.close() }
        consumerHost.close()
    }
}
