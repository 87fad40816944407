// A listening stream socket on an event loop that watches fds.
//
// Binding a unix socket file follows Perfetto's rules plus ours:
// * a live socket of our uid at the path (something accepts a connect) is never stolen:
//   addressInUse, also when another listener binds the path between our check and ours;
// * a stale one (connect refused) is replaced;
// * another user's file there, whatever it is, is replaced, as traced does: in a directory
//   anyone may write (/tmp) it would otherwise keep us from starting, or take our clients;
//   if we may not remove it, addressInUse names its owner;
// * a requested file mode is applied before the path becomes visible: we bind a temporary
//   name in the same directory, chmod it, listen, then link() it to the final path, so no
//   peer can ever connect through a file with the wrong mode;
// * the file is removed again when the listener closes, if it is still the one it bound (a
//   service started at the same path since, after the file was removed, keeps its own).

import CPerfettoIPCLinux
import Glibc
import IPCProtocol

/// A listening socket that hands accepted connections to its delegate.
final class SocketListener: IPCListener {
    let address: String
    private let loop: any IPCEventLoop
    private let options: ConnectionOptions
    private let isUnixDomain: Bool
    /// Held weakly, without giving the delegate (a host) a side table (IPCProtocol's Weak.swift).
    private var delegate: (any IPCListenerDelegate)? {
        get { delegateStorage.delegate }
        set { delegateStorage.delegate = newValue }
    }
    private let delegateStorage = WeakListenerDelegate()
    private var fd: Int32
    private var watch: (any FileDescriptorWatch)?
    private let socketFile: SocketFile?
    /// A failed accept was reported and none has succeeded since.
    private var acceptFailureReported = false

    init(
        fd: Int32, address: String, socketFile: SocketFile?, isUnixDomain: Bool, options: ConnectionOptions,
        loop: any IPCEventLoop, delegate: any IPCListenerDelegate
    ) throws(IPCError) {
        self.fd = fd
        self.address = address
        self.socketFile = socketFile
        self.isUnixDomain = isUnixDomain
        self.options = options
        self.loop = loop
        self.delegate = delegate
        watch = try loop.watch(fd, for: .readable) { [weak self] _ in self?.acceptPending() }
    }

    deinit { close() }

    func close() {
        guard fd >= 0 else { return }
        watch?.cancel()
        watch = nil
        Syscall.close(fd)
        fd = -1
        socketFile?.removeIfUnchanged()
    }

    private func acceptPending() {
        // Bounded per wake-up so a connect storm cannot starve other work on the loop.
        for _ in 0..<64 where fd >= 0 {
            let accepted = CPerfettoIPC_accept4(fd, nil, nil, Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue))
            if accepted < 0 {
                let error = errno
                if error == EINTR || error == ECONNABORTED { continue }
                if error == EAGAIN || error == EWOULDBLOCK { return }
                // Out of descriptors (EMFILE, ENFILE) or kernel memory: the peer stays queued.
                reportAcceptFailure(errno: error)
                pauseAccepting()
                return
            }
            acceptFailureReported = false
            let connection = SocketConnection(
                fd: accepted, state: .connecting, address: address, isUnixDomain: isUnixDomain,
                options: options, loop: loop)
            do {
                try connection.becomeConnected()
            } catch {
                connection.close()
                continue
            }
            guard let delegate else {
                connection.close()
                continue
            }
            delegate.listener(self, didAccept: connection)
        }
    }

    /// Tells the delegate once per run of failures: the retries below would repeat it ten
    /// times a second.
    private func reportAcceptFailure(errno error: Int32) {
        guard !acceptFailureReported else { return }
        acceptFailureReported = true
        delegate?.listener(self, didFailToAccept: .systemCall("accept", errno: error, address: address))
    }

    /// Stops polling the listening socket for a moment instead of spinning on a connection
    /// it cannot accept now (the socket stays readable while the peer waits).
    private func pauseAccepting() {
        watch?.setEvents([])
        _ = loop.scheduleTask(after: .milliseconds(100)) { [weak self] in
            self?.watch?.setEvents(.readable)
        }
    }
}
