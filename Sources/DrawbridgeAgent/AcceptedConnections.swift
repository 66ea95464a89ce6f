import NIOCore
import Synchronization

/// Holds every connection a NIO server accepted from the moment its `NIOAsyncChannel` exists until a task takes it,
/// and closes the ones never taken when the server stops.
///
/// NIO hands accepted connections to the server's async stream and drops those still queued when the listening
/// channel closes (swift-nio issue 2813). A dropped `NIOAsyncChannel` whose writer was never finished traps the
/// process ("Deinited NIOAsyncWriter without calling finish()"): a client that connected just as the agent stopped
/// ended it with SIGILL instead of a clean exit. Held here, such a connection is finished and closed like any other.
/// The metrics server uses it; the local API serves its connections with a channel handler (`RequestHandler`) and
/// has no async channels to lose.
final class AcceptedConnections<Inbound: Sendable, Outbound: Sendable>: Sendable {
    typealias Connection = NIOAsyncChannel<Inbound, Outbound>

    private struct State {
        var open = true
        var held: [ObjectIdentifier: Connection] = [:]
    }

    private let state = Mutex(State())

    /// Thrown by a child channel initializer once the server has stopped: no async channel is made, and NIO closes
    /// the channel before it becomes active.
    struct Stopped: Error {}

    /// Makes the async channel of a connection just accepted (`make`, in the child channel initializer, on the
    /// channel's event loop) and takes charge of it; once ``closeUntaken()`` has run, makes nothing and throws
    /// ``Stopped``.
    func hold(_ make: () throws -> Connection) throws -> Connection {
        try state.withLock { state in
            guard state.open else { throw Stopped() }
            let connection = try make()
            state.held[ObjectIdentifier(connection.channel)] = connection
            return connection
        }
    }

    /// The server's loop took the connection: from now on whoever serves it closes it.
    func take(_ connection: Connection) {
        _ = state.withLock { $0.held.removeValue(forKey: ObjectIdentifier(connection.channel)) }
    }

    /// After the server's stream ended: holds nothing more, and closes each connection nobody took (through its
    /// async channel, which finishes the writer).
    func closeUntaken() async {
        let untaken = state.withLock { state in
            state.open = false
            defer { state.held = [:] }
            return Array(state.held.values)
        }
        for connection in untaken { try? await connection.executeThenClose { _, _ in } }
    }
}
