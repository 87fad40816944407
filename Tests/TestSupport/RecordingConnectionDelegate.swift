// A connection delegate that records everything, for transport tests.

import IPCProtocol

/// Records a connection's events, its received bytes and fds, in order.
public final class RecordingConnectionDelegate: IPCConnectionDelegate {
    public enum Event: Equatable, CustomStringConvertible {
        case connected
        case failedToConnect(IPCError.Code)
        case disconnected(IPCError.Code?)

        public var description: String {
            switch self {
            case .connected: return "connected"
            case .failedToConnect(let code): return "failedToConnect(\(code))"
            case .disconnected(let code): return "disconnected(\(code.map { "\($0)" } ?? "orderly"))"
            }
        }
    }

    public private(set) var events: [Event] = []
    public private(set) var errors: [IPCError] = []
    public private(set) var received: [UInt8] = []
    public private(set) var receivedFDs: [ScopedFD] = []
    /// Called after each receive, e.g. to close the connection from inside the callback.
    public var onReceive: ((any IPCConnection) -> Void)?
    public var onConnect: ((any IPCConnection) -> Void)?
    private let space: UnsafeMutableRawBufferPointer

    public init(receiveSpace: Int = 64 * 1024) {
        space = .allocate(byteCount: receiveSpace, alignment: 16)
    }

    deinit { space.deallocate() }

    public var isConnected: Bool { events.last == .connected }
    public var isDisconnected: Bool {
        if case .disconnected = events.last { return true }
        if case .failedToConnect = events.last { return true }
        return false
    }

    public func connectionDidConnect(_ connection: any IPCConnection) {
        events.append(.connected)
        onConnect?(connection)
    }

    public func connection(_ connection: any IPCConnection, didFailToConnect error: IPCError) {
        events.append(.failedToConnect(error.code))
        errors.append(error)
    }

    public func connection(_ connection: any IPCConnection, didDisconnect error: IPCError?) {
        events.append(.disconnected(error?.code))
        if let error { errors.append(error) }
    }

    public func receiveSpace(for connection: any IPCConnection) -> UnsafeMutableRawBufferPointer {
        space
    }

    public func connection(_ connection: any IPCConnection, didReceive byteCount: Int, fileDescriptor: ScopedFD?) {
        received.append(contentsOf: UnsafeRawBufferPointer(rebasing: space[0..<byteCount]))
        if let fileDescriptor { receivedFDs.append(fileDescriptor) }
        onReceive?(connection)
    }
}

/// Accepts connections, giving each a fresh recording delegate.
public final class RecordingListenerDelegate: IPCListenerDelegate {
    public private(set) var connections: [any IPCConnection] = []
    public private(set) var delegates: [RecordingConnectionDelegate] = []
    /// Runs on each accept, after the delegate is set.
    public var onAccept: ((any IPCConnection, RecordingConnectionDelegate) -> Void)?

    public init() {}

    public func listener(_ listener: any IPCListener, didAccept connection: any IPCConnection) {
        let delegate = RecordingConnectionDelegate()
        connection.delegate = delegate
        connections.append(connection)
        delegates.append(delegate)
        onAccept?(connection, delegate)
    }

    public func dropAll() {
        connections.forEach { $0.close() }
        connections.removeAll()
        delegates.removeAll()
    }
}
