import DrawbridgeCore
import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The Prometheus endpoint: HTTP/1.1 on the one address the policy's `metrics.listen` names, answering only
/// `GET /metrics` (and `HEAD`), one request per connection.
///
/// It runs on an event loop of its own and only reads the agent (one short call per scrape), so a slow or hostile
/// client cannot hold up requests, repairs or expiry: the request head must arrive within ``requestDeadline``, a
/// connection lives at most ``connectionDeadline``, at most ``connectionLimit`` are served at once (the rest are
/// closed at once), and a request head larger than NIO's parser allows is answered 400. If the address cannot be
/// bound the agent runs on without metrics and says so in `drawbridge status`.
public final class MetricsServer: Sendable {
    public static let requestDeadline = TimeAmount.seconds(5)
    public static let connectionDeadline = TimeAmount.seconds(15)
    public static let connectionLimit = 16

    let settings: MetricsSettings
    let agent: Agent
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    private let open = Atomic<Int>(0)

    public init(settings: MetricsSettings, agent: Agent, logger: Logger) {
        self.settings = settings
        self.agent = agent
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Serves until graceful shutdown. A bind failure is logged and reported, never fatal: enforcement does not
    /// depend on metrics.
    public func run(until shutdown: Shutdown) async {
        let server: NIOAsyncChannel<Connection, Never>
        let accepted = AcceptedConnections<HTTPServerRequestPart, HTTPServerResponsePart>()
        do {
            server = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: settings.address.description, port: Int(settings.port)) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withPipeliningAssistance: false, withErrorHandling: true)
                        return try accepted.hold { try Connection(wrappingChannelSynchronously: channel) }
                    }
                }
        } catch {
            logger.error(
                "cannot serve metrics; the agent runs on without them",
                metadata: ["metrics.listen": "\(settings.listen)", "error": "\(error)"])
            var note = "metrics: cannot listen on \(settings.listen): \(error)"
            if let failure = error as? IOError, failure.errnoCode == EAFNOSUPPORT || failure.errnoCode == EPERM {
                note += " (the packaged unit allows no IP sockets; `systemctl edit drawbridge` can add "
                    + "RestrictAddressFamilies=AF_INET AF_INET6 and IPAddressAllow=localhost, see the README's Metrics)"
            }
            await agent.addWarning(note)
            await shutdown.wait()
            try? await group.shutdownGracefully()
            return
        }
        logger.info("metrics listening", metadata: ["metrics.listen": "\(settings.listen)"])
        shutdown.onTrigger { server.channel.close(promise: nil) }
        do {
            try await withThrowingDiscardingTaskGroup { tasks in
                // Whatever ends the stream, connections accepted and not yet served are closed, not dropped.
                defer { tasks.addTask { await accepted.closeUntaken() } }
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        accepted.take(connection)
                        guard open.add(1, ordering: .relaxed).newValue <= Self.connectionLimit else {
                            open.subtract(1, ordering: .relaxed)
                            // Closed through the async channel (a channel dropped unfinished traps NIO's writer).
                            tasks.addTask { try? await connection.executeThenClose { _, _ in } }
                            continue
                        }
                        tasks.addTask {
                            await self.serve(connection)
                            self.open.subtract(1, ordering: .relaxed)
                        }
                    }
                }
            }
        } catch {
            logger.warning("metrics listener ended", metadata: ["error": "\(error)"])
        }
        try? await group.shutdownGracefully()
    }

    private func serve(_ connection: Connection) async {
        let channel = connection.channel
        let lifetime = channel.eventLoop.scheduleTask(in: Self.connectionDeadline) { channel.close(promise: nil) }
        let deadline = channel.eventLoop.scheduleTask(in: Self.requestDeadline) { channel.close(promise: nil) }
        defer {
            lifetime.cancel()
            deadline.cancel()
        }
        do {
            try await connection.executeThenClose { inbound, outbound in
                var parts = inbound.makeAsyncIterator()
                guard case .head(let head) = try await parts.next() else { return }
                deadline.cancel()
                let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                let (status, body): (HTTPResponseStatus, [UInt8])
                var headers = HTTPHeaders()
                if head.method != .GET && head.method != .HEAD {
                    (status, body) = (.methodNotAllowed, Array("only GET /metrics is served\n".utf8))
                    headers.add(name: "Allow", value: "GET, HEAD")
                } else if path != "/metrics" {
                    (status, body) = (.notFound, Array("only GET /metrics is served\n".utf8))
                } else {
                    (status, body) = (.ok, await agent.metricsText())
                }
                headers.add(
                    name: "Content-Type",
                    value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
                headers.add(name: "Content-Length", value: String(body.count))
                headers.add(name: "Connection", value: "close")
                try await outbound.write(.head(HTTPResponseHead(version: head.version, status: status, headers: headers)))
                if head.method != .HEAD {
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
                }
                try await outbound.write(.end(nil))
            }
        } catch {
            logger.debug("metrics connection ended early", metadata: ["error": "\(error)"])
        }
    }
}

/// Serves the metrics endpoint when the policy asks for one.
public struct MetricsService: AgentService {
    public var name: String { "MetricsService" }
    let server: MetricsServer

    public init(server: MetricsServer) { self.server = server }

    public func run(until shutdown: Shutdown) async throws { await server.run(until: shutdown) }
}
