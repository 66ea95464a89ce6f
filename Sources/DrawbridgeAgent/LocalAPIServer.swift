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
    let accepted = AcceptedConnections<ByteBuffer, ByteBuffer>()
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

    struct Connection: Sendable {
        var channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        var peer: Result<PeerCredentials, SystemError>
        /// Closes the connection at ``connectionDeadline``, answer included.
        var lifetime: Scheduled<Void>
        /// Closes the connection at ``requestDeadline`` unless the request has arrived (cancelled then).
        var requestDeadline: Scheduled<Void>
    }

    /// Serves until graceful shutdown; then stops accepting, lets requests in progress finish, and removes the
    /// socket file.
    public func run(until shutdown: Shutdown) async throws {
        let agent = self.agent
        let accepted = self.accepted
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            // A client may send its request and close its side at once (`nc -N`): the answer must still go out.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(NIOBSDSocket.Handle(listening)) { channel in
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
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder(limit: limit)))
                    // Both deadlines run from the accept, and are set here on the channel's own loop: set from the
                    // task that serves the connection, each would wake the loop (they are cancelled from there,
                    // which does not).
                    let loop = channel.eventLoop.assumeIsolated()
                    return Connection(
                        channel: try accepted.hold { try NIOAsyncChannel(wrappingChannelSynchronously: channel) },
                        peer: peer,
                        lifetime: loop.scheduleTask(in: Self.connectionDeadline) { channel.close(promise: nil) },
                        requestDeadline: loop.scheduleTask(in: Self.requestDeadline) { channel.close(promise: nil) })
                }
            }
        logger.info("local API listening", metadata: ["api.socket": "\(path)"])
        shutdown.onTrigger { server.channel.close(promise: nil) }
        try await withThrowingDiscardingTaskGroup { tasks in
            // Whatever ends the stream, connections accepted and not yet served are closed, not dropped.
            defer { tasks.addTask { await accepted.closeUntaken() } }
            try await server.executeThenClose { connections in
                for try await connection in connections {
                    accepted.take(connection.channel)
                    tasks.addTask { await self.serve(connection) }
                }
            }
        }
        unlink(path)
        try? await group.shutdownGracefully()
    }

    private func serve(_ connection: Connection) async {
        let channel = connection.channel.channel
        // Whatever happens, the connection ends by its lifetime (cancelled when it ends sooner, so an idle agent
        // has no timer left behind), and the request must have arrived by its deadline.
        let deadline = connection.requestDeadline
        defer {
            deadline.cancel()
            connection.lifetime.cancel()
        }
        let peer: PeerCredentials
        switch connection.peer {
        case .failure(let error):
            logger.warning("refused a connection whose caller could not be identified", metadata: ["error": "\(error)"])
            await respond(connection, .failure(.init(code: .internal, message: "cannot identify the caller: \(error)")))
            return
        case .success(let value):
            peer = value
        }
        guard admission.enter(peer.uid) else {
            logger.warning("connection refused: limit reached", metadata: ["api.peer.uid": "\(peer.uid)"])
            await respond(
                connection,
                .failure(
                    .init(
                        code: .busy,
                        message: "too many connections from uid \(peer.uid) (or from all users) at once; try again")))
            return
        }
        defer { admission.leave(peer.uid) }
        // The whole request must arrive within the deadline, however it trickles in.
        do {
            try await connection.channel.executeThenClose { inbound, outbound in
                var lines = inbound.makeAsyncIterator()
                let line: ByteBuffer?
                do {
                    line = try await lines.next()
                } catch let error as LineDecoder.TooLong {
                    deadline.cancel()
                    try await Self.send(.failure(.init(code: .badRequest, message: "\(error)")), on: channel)
                    return
                }
                deadline.cancel()
                guard let line else { return }
                let response: LocalAPI.Response
                switch LocalAPI.decode(Array(buffer: line)) {
                case .failure(let failure):
                    logger.warning(
                        "bad API request", metadata: ["api.peer.uid": "\(peer.uid)", "api.error": "\(failure.message)"])
                    response = .failure(failure)
                case .success(let command):
                    let clock = ContinuousClock()
                    let started = clock.now
                    response = await agent.handle(command, from: Self.caller(peer))
                    agent.metrics.observeRequest(command.verb, clock.now - started)
                }
                try await Self.send(response, on: channel)
                _ = outbound
            }
        } catch {
            // The client went away or the deadline closed the connection: nothing to answer.
            logger.debug("API connection ended early", metadata: ["api.peer.uid": "\(peer.uid)", "error": "\(error)"])
        }
    }

    /// Answers without serving: the request is read first (within the deadline), so that closing does not reset
    /// a client still sending and the client gets to read the answer.
    private func respond(_ connection: Connection, _ response: LocalAPI.Response) async {
        let channel = connection.channel.channel
        try? await connection.channel.executeThenClose { inbound, _ in
            var lines = inbound.makeAsyncIterator()
            _ = try? await lines.next()
            try await Self.send(response, on: channel)
        }
    }

    /// Writes the answer and waits until all of it is in the socket: the connection is closed right after, and a
    /// close drops what is still queued (a long `list` would arrive cut short).
    static func send(_ response: LocalAPI.Response, on channel: any Channel) async throws {
        try await channel.writeAndFlush(encode(response)).get()
    }

    static func encode(_ response: LocalAPI.Response) -> ByteBuffer {
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
