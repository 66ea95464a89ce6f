import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import Logging
import NIOCore
import NIOPosix
import Synchronization
import SystemPackage

/// The local API: a Unix stream socket, one JSON request line and one answer per connection, served by SwiftNIO.
///
/// A slow, silent or hostile client cannot hold the agent or lock others out:
/// - the whole request must arrive within ``requestDeadline`` (not per read: a byte every second does not keep a
///   connection), and be at most 64 KiB (64 MiB from root and the etcd sync user, whose snapshots can be large);
/// - a connection lives at most ``connectionDeadline``, answer included, so a client that never reads its answer
///   is dropped;
/// - each non-root user may hold ``perUserLimit`` connections at once, all non-root users together
///   ``sharedLimit``, and root has ``rootReserve`` more that nobody else can take;
/// - the caller is who the kernel says is on the other end (SO_PEERCRED, SO_PEERGROUPS), never what a request
///   claims; if that cannot be read completely the connection is refused.
public final class LocalAPIServer: Sendable {
    public static let requestDeadline = TimeAmount.seconds(2)
    public static let connectionDeadline = TimeAmount.seconds(60)
    public static let perUserLimit = 8
    public static let sharedLimit = 96
    public static let rootReserve = 32

    let path: String
    let listening: Int32
    let agent: Agent
    let logger: Logger
    let admission = Admission()
    let group: MultiThreadedEventLoopGroup

    /// Binds the socket (mode 0660, group `group`) without serving it yet: connections wait in the backlog until
    /// `run`.
    public init(path: String, group groupName: String?, agent: Agent, logger: Logger) throws {
        self.path = path
        self.agent = agent
        self.logger = logger
        var gid: gid_t?
        if let groupName {
            gid = Accounts.groupID(named: groupName)
            if gid == nil {
                logger.warning(
                    "socket group does not exist; only root can use the socket",
                    metadata: ["api.socket": "\(path)", "api.group": "\(groupName)"])
            }
        }
        try Self.removeStaleSocket(path)
        listening = try UnixSocket.listen(path: path, group: gid)
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// A socket file left by an agent that is gone is removed; one that answers belongs to a running agent.
    static func removeStaleSocket(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw AgentError("\(path) exists and is not a socket; refusing to replace it")
        }
        if let probe = try? UnixSocket.connect(path) {
            close(probe)
            throw AgentError("another drawbridged is already serving \(path)")
        }
        unlink(path)
    }

    /// Serves until graceful shutdown; then stops accepting, lets requests in progress finish, and removes the
    /// socket file.
    ///
    /// Each connection is served by a ``RequestHandler`` on the API's event loop: the request line is read there,
    /// a task of its own (off the loop) decodes it and has the agent answer it, and the loop writes the answer and
    /// closes. A request costs one task and one hand-back to the loop (an async channel per connection cost several
    /// more thread hops, each a wake-up of a thread).
    public func run(until shutdown: Shutdown) async throws {
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            // A client may send its request and close its side at once (`nc -N`): the answer must still go out.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let peer = Result { () throws(SystemError) -> PeerCredentials in
                        let read = try? channel.pipeline.syncOperations.withUnsafeTransportIfAvailable(
                            of: NIOBSDSocket.Handle.self
                        ) { descriptor in Result { () throws(SystemError) in try UnixSocket.peer(of: descriptor) } }
                        guard let read else { throw SystemError("getsockopt(SO_PEERCRED)", errno: .notSupported) }
                        return try read.get()
                    }
                    // Only root and the etcd sync user may send a large request (a snapshot of etcd's grants).
                    let limit =
                        (try? peer.get()).map { agent.etcdAuthority.maySync($0.uid) } == true
                        ? LocalAPI.maximumSyncRequestBytes : LocalAPI.maximumRequestBytes
                    guard connections.add(channel) else { throw OpenConnections.Stopped() }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder(limit: limit)))
                    try channel.pipeline.syncOperations.addHandler(RequestHandler(server: self, peer: peer))
                }
            }
            .withBoundSocket(NIOBSDSocket.Handle(listening)).get()
        logger.info("local API listening", metadata: ["api.socket": "\(path)"])
        shutdown.onTrigger { server.close(promise: nil) }
        // Until the shutdown closes the listening channel (or it fails on its own).
        try? await server.closeFuture.get()
        // Connections still waiting for their request are closed; those with a request in progress close once
        // their answer is written (within their lifetime at most).
        for channel in connections.stop() { try? await channel.closeFuture.get() }
        // A request's channel may have closed (its client hung up) while the agent still answers it: the loop must
        // outlive every answer's write.
        await connections.requestsEnded()
        unlink(path)
        try? await group.shutdownGracefully()
    }

    let connections = OpenConnections()

    static func encode(_ response: LocalAPI.Response) -> ByteBuffer {
        if var bytes = response.handWrittenJSON() {
            bytes.append(0x0a)
            return ByteBuffer(bytes: bytes)
        }
        var bytes = (try? LocalAPI.encoder().encode(response)) ?? Data(#"{"ok":false}"#.utf8)
        bytes.append(0x0a)
        return ByteBuffer(bytes: bytes)
    }

    /// Names for the credentials: user and groups as the system's databases know them.
    static func caller(_ peer: PeerCredentials) -> Caller {
        var seen = Set<gid_t>()
        let groups = ([peer.gid] + peer.groups).filter { seen.insert($0).inserted }.map(Accounts.groupName)
        return Caller(uid: peer.uid, user: Accounts.userName(peer.uid), groups: groups)
    }
}

/// Counts connections per user, so no one user (nor all of them together) can take every slot, and root always
/// finds one.
final class Admission: Sendable {
    private let state = Mutex<(total: Int, shared: Int, perUser: [uid_t: Int])>((0, 0, [:]))

    func enter(_ uid: uid_t) -> Bool {
        state.withLock { state in
            let total = LocalAPIServer.sharedLimit + LocalAPIServer.rootReserve
            if uid == 0 {
                guard state.total < total else { return false }
            } else {
                guard state.total < total, state.shared < LocalAPIServer.sharedLimit,
                    state.perUser[uid, default: 0] < LocalAPIServer.perUserLimit
                else { return false }
                state.shared += 1
                state.perUser[uid, default: 0] += 1
            }
            state.total += 1
            return true
        }
    }

    func leave(_ uid: uid_t) {
        state.withLock { state in
            state.total -= 1
            if uid != 0 {
                state.shared -= 1
                state.perUser[uid, default: 1] -= 1
                if state.perUser[uid] == 0 { state.perUser[uid] = nil }
            }
        }
    }
}

/// Splits the inbound bytes into lines (without the newline), refusing a line longer than the limit.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    let limit: Int

    struct TooLong: Error, CustomStringConvertible {
        var limit: Int
        var description: String { "request larger than \(limit) bytes" }
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if let newline = buffer.readableBytesView.firstIndex(of: 0x0a) {
            let length = newline - buffer.readerIndex
            guard length <= limit else { throw TooLong(limit: limit) }
            let line = buffer.readSlice(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(wrapInboundOut(line))
            return .continue
        }
        guard buffer.readableBytes <= limit else { throw TooLong(limit: limit) }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        // A request without its newline at the end of input is still a request.
        if try decode(context: context, buffer: &buffer) == .continue { return .continue }
        if buffer.readableBytes > 0, let line = buffer.readSlice(length: buffer.readableBytes) {
            context.fireChannelRead(wrapInboundOut(line))
        }
        return .needMoreData
    }
}

/// The API's open connections, so that a shutdown can close the idle ones and wait for the others.
final class OpenConnections: Sendable {
    private struct State {
        var open = true
        var channels: [ObjectIdentifier: (channel: any Channel, busy: Bool)] = [:]
        /// Requests begun whose answer's write has not completed.
        var inFlight = 0
        var drained: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    /// Thrown by the child channel initializer once the server has stopped: NIO closes the channel.
    struct Stopped: Error {}

    /// A connection was accepted; false once the server has stopped.
    func add(_ channel: any Channel) -> Bool {
        state.withLock { state in
            guard state.open else { return false }
            state.channels[ObjectIdentifier(channel)] = (channel, false)
            return true
        }
    }

    /// Its request is about to be served; false once the server has stopped (the request is then not served).
    /// Each `true` is matched by one ``end()`` once the answer's write has completed.
    func begin(_ channel: any Channel) -> Bool {
        state.withLock { state in
            guard state.open else { return false }
            state.channels[ObjectIdentifier(channel)]?.busy = true
            state.inFlight += 1
            return true
        }
    }

    func end() {
        let drained = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.inFlight -= 1
            guard state.inFlight == 0 else { return nil }
            defer { state.drained = nil }
            return state.drained
        }
        drained?.resume()
    }

    /// Returns once every request begun has had its answer written (or its write failed).
    func requestsEnded() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.inFlight == 0 { return true }
                state.drained = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    func remove(_ channel: any Channel) {
        _ = state.withLock { $0.channels.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Accepts nothing more, closes the connections without a request in progress, and returns every connection
    /// still open (to wait for).
    func stop() -> [any Channel] {
        let open = state.withLock { state in
            state.open = false
            return Array(state.channels.values)
        }
        for connection in open where !connection.busy { connection.channel.close(promise: nil) }
        return open.map(\.channel)
    }
}

/// One connection of the local API, on the API's event loop: reads one request line, has it decoded and answered
/// by the agent in a task of its own, writes the answer and closes.
///
/// A slow, silent or hostile client cannot hold the agent: the request must arrive within
/// ``LocalAPIServer/requestDeadline`` of the accept, the whole connection ends by
/// ``LocalAPIServer/connectionDeadline`` (both set here on the loop, so neither wakes it), and connections beyond
/// the caller's share are answered `busy` (after their request is read, so that the close does not reset a client
/// still sending and the client gets to read why).
final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: LocalAPIServer
    private let peer: Result<PeerCredentials, SystemError>
    /// The uid that holds one of the admission's places while the connection is open.
    private var admitted: uid_t?
    private var busyRefusal = false
    /// A request line arrived (further lines are ignored).
    private var taken = false
    private var lifetime: Scheduled<Void>?
    private var requestDeadline: Scheduled<Void>?

    init(server: LocalAPIServer, peer: Result<PeerCredentials, SystemError>) {
        self.server = server
        self.peer = peer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        let loop = context.eventLoop.assumeIsolated()
        lifetime = loop.scheduleTask(in: LocalAPIServer.connectionDeadline) { channel.close(promise: nil) }
        requestDeadline = loop.scheduleTask(in: LocalAPIServer.requestDeadline) { channel.close(promise: nil) }
        if case .success(let peer) = peer {
            if server.admission.enter(peer.uid) {
                admitted = peer.uid
            } else {
                busyRefusal = true
                server.logger.warning("connection refused: limit reached", metadata: ["api.peer.uid": "\(peer.uid)"])
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        lifetime?.cancel()
        requestDeadline?.cancel()
        if let admitted { server.admission.leave(admitted) }
        admitted = nil
        server.connections.remove(context.channel)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !taken else { return }
        taken = true
        requestDeadline?.cancel()
        // One request per connection: nothing more is read (a client streaming bytes after its request would
        // otherwise keep the loop reading and discarding them for the connection's whole lifetime).
        _ = try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        let line = unwrapInboundIn(data)
        let peer: PeerCredentials
        switch self.peer {
        case .failure(let error):
            server.logger.warning(
                "refused a connection whose caller could not be identified", metadata: ["error": "\(error)"])
            return answer(context, .failure(.init(code: .internal, message: "cannot identify the caller: \(error)")))
        case .success(let value):
            peer = value
        }
        guard !busyRefusal else {
            return answer(
                context,
                .failure(
                    .init(
                        code: .busy,
                        message: "too many connections from uid \(peer.uid) (or from all users) at once; try again")))
        }
        let channel = context.channel
        // A request that arrives as the agent stops is not begun (its client sees the connection close unanswered).
        guard server.connections.begin(channel) else { return context.close(promise: nil) }
        let agent = server.agent
        let connections = server.connections
        let logger = server.logger
        // Decoded in the task too, not on the loop: a sync request may be 64 MiB, and the loop serves every
        // connection.
        Task {
            let response: LocalAPI.Response
            switch LocalAPI.decode(Array(buffer: line)) {
            case .failure(let failure):
                logger.warning(
                    "bad API request", metadata: ["api.peer.uid": "\(peer.uid)", "api.error": "\(failure.message)"])
                response = .failure(failure)
            case .success(let command):
                let clock = ContinuousClock()
                let started = clock.now
                response = await agent.handle(command, from: LocalAPIServer.caller(peer))
                agent.metrics.observeRequest(command.verb, clock.now - started)
            }
            let bytes = LocalAPIServer.encode(response)
            // The answer goes out whole before the close (a close drops what is still queued: a long `list` would
            // arrive cut short).
            channel.writeAndFlush(bytes).whenComplete { _ in
                channel.close(promise: nil)
                connections.end()
            }
        }
    }

    private func answer(_ context: ChannelHandlerContext, _ response: LocalAPI.Response) {
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(LocalAPIServer.encode(response))).assumeIsolated().whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The client closed its side without a request (a partial last line was already read as one): nothing to
        // answer.
        if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent, !taken {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? LineDecoder.TooLong, !taken {
            taken = true
            requestDeadline?.cancel()
            return answer(context, .failure(.init(code: .badRequest, message: "\(error)")))
        }
        // The client went away or the connection broke: nothing to answer.
        server.logger.debug("API connection ended early", metadata: ["error": "\(error)"])
        if !taken { context.close(promise: nil) }
    }
}
