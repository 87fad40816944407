// The in-process backends as one-value choices, and the registry of direct hosts.

import IPCProtocol
import Synchronization

extension IPCBackend {
    /// Frames over in-memory connections named `name`, on `loop`: the full wire path with no
    /// kernel involved. Host and client must use the same `network` (the process-wide one by
    /// default) and the same loop.
    public static func inProcess(
        _ name: String, loop: any IPCEventLoop, network: InProcessNetwork = .shared
    ) -> IPCBackend {
        .transport(InProcessTransport(loop: loop, network: network), address: name)
    }

    /// The direct short circuit: proxies call the host's service implementations with request
    /// values, no encoding and no frames, on `loop`. Host and client must use the same
    /// `network` and the same loop.
    public static func direct(
        _ name: String, loop: any IPCEventLoop, network: InProcessNetwork = .shared
    ) -> IPCBackend {
        IPCBackend(.direct(network, name: name, loop: loop))
    }
}

extension InProcessNetwork: IPCDirectRegistry {
    public func registerDirectHost(_ host: IPCHost, name: String) throws(IPCError) {
        var holder: IPCHost?  // released after the lock: a host's deinit takes the lock
        let taken = directHosts.withLock { table -> Bool in
            holder = table[name]?.object
            if holder != nil { return true }
            table[name] = Weak(host)
            return false
        }
        holder = nil
        if taken { throw IPCError(.addressInUse, "a direct host already uses \"\(name)\"", address: name) }
    }

    public func unregisterDirectHost(_ host: IPCHost, name: String) {
        directHosts.withLock { table in
            if table[name]?.refers(to: host) == true { table[name] = nil }
        }
    }

    public func directHost(named name: String) -> IPCHost? {
        directHosts.withLock { $0[name]?.object }
    }
}

