import DrawbridgeCore
import Etcd
import FoundationEssentials
import Glibc
import HostSystem
import Logging

/// What `drawbridge-etcd sync` needs to run.
public struct SyncSettings: Sendable {
    /// The directories to follow and the status key to write.
    public var layout: EtcdLayout
    /// The members, TLS and credentials (the password already read).
    public var configuration: EtcdConfiguration
    /// The agent's socket.
    public var agent: AgentClient
    /// A complete snapshot is sent at least this often, whatever the watch says: the safety net for anything lost
    /// between etcd, this process and the agent.
    public var fullResyncInterval: Duration = .seconds(600)
    /// The status key's lease; it is kept alive every third of this, and the key vanishes this long after the
    /// process does.
    public var statusTTL: Duration = .seconds(30)
    /// The status key is written at most once per this interval.
    public var statusInterval: Duration = .milliseconds(500)
    /// The waits between attempts to reach etcd (across its endpoints) and the agent.
    public var etcdBackoff = Backoff()
    public var agentBackoff = Backoff()

    public init(layout: EtcdLayout, configuration: EtcdConfiguration, agent: AgentClient) {
        self.layout = layout
        self.configuration = configuration
        self.agent = agent
    }
}

/// `drawbridge-etcd sync`: follows this host's directories in etcd and hands every change to the agent.
///
/// The algorithm, in the order things happen:
/// 1. Connect to an endpoint (rotating across them after each failure, with jittered exponential backoff capped at
///    30 s and reset once a watch is established).
/// 2. Read every directory at one revision R (the first read gives R, the others are read at R) and send the agent
///    one complete `etcd-sync` with every key: the snapshot.
/// 3. Watch every directory from R + 1 (each from its own resume point after a reconnect) and send each watch
///    response whole as one incremental `etcd-sync`.
/// 4. On a compaction past a resume point, read everything again and send a complete snapshot: events are never
///    skipped silently. On a lost connection, tell the agent (`etcd-connection`), back off, reconnect and resume;
///    a resume that fails with compaction reads everything again.
/// 5. When the agent cannot be reached or answers an error — or answers from a different process than before —
///    it may have lost what it was sent: the etcd side goes on, and once the agent answers again it gets a complete
///    snapshot read anew from etcd, never the changes it missed.
/// 6. Every 10 minutes a complete snapshot anyway.
///
/// Meanwhile the host's status key (`<prefix>/v1/status/<host>`, on a lease of its own) says what the agent
/// applied and refused, written at most twice a second.
///
/// Everything happens in ``run()``, one event at a time: watch responses, failures and timers arrive through one
/// queue, so the state below has a single owner and needs no lock.
public final class SyncDaemon {
    enum Event: Sendable {
        case connect
        case watch(generation: Int, EtcdWatchResponse)
        case watchFailed(generation: Int, EtcdError)
        case leaseLost(generation: Int)
        case agentRetry
        case resync
        case writeStatus
        case stop
    }

    enum TimerKind: Hashable {
        case connect, agentRetry, resync, writeStatus

        var event: Event {
            switch self {
            case .connect: .connect
            case .agentRetry: .agentRetry
            case .resync: .resync
            case .writeStatus: .writeStatus
            }
        }
    }

    /// Stops a running daemon from another task (a signal handler).
    public struct Handle: Sendable {
        let inbox: AsyncStream<Event>.Continuation

        /// Ends ``SyncDaemon/run()``: the watch stops, the status lease is revoked, the agent is told.
        public func stop() { inbox.yield(.stop) }
    }

    /// One connection to one member, and the tasks that use it.
    struct Connection {
        let client: EtcdClient
        let generation: Int
        var run: Task<Void, Never>
        var watch: Task<Void, Never>?
        var keepAlive: Task<Void, Never>?
        /// Directories whose watcher etcd created.
        var created: Set<String> = []
        var announced = false

        var endpoint: String { client.endpoint.url }
    }

    let settings: SyncSettings
    let logger: Logger
    let events: AsyncStream<Event>
    let inbox: AsyncStream<Event>.Continuation
    var timers: [TimerKind: Task<Void, Never>] = [:]

    // The etcd side.
    var connection: Connection?
    var generation = 0
    var endpointIndex = 0
    var etcdBackoff: Backoff
    /// Where each directory's watch resumes; empty before the first snapshot.
    var resume: [String: Int64] = [:]
    /// The revision of the last snapshot the agent took: watch events at or below it are in it already.
    var coveredRevision: Int64 = 0
    var latestRevision: Int64?
    var reportedConnected: Bool?
    var reportedProgress: Int64 = 0
    var resyncDue = false

    // The agent side.
    var agentNeedsSnapshot = true
    /// nil while the agent answers; else why it did not.
    var agentProblem: String?
    var agentProcess: pid_t?
    var agentBackoff: Backoff
    var outcomes = AgentOutcomes()

    // The status key.
    var lease: EtcdLease?
    var statusDirty = false
    var statusDenied = false
    var lastStatusWrite: ContinuousClock.Instant?

    public init(settings: SyncSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        (events, inbox) = AsyncStream<Event>.makeStream()
        etcdBackoff = settings.etcdBackoff
        agentBackoff = settings.agentBackoff
    }

    public var handle: Handle { Handle(inbox: inbox) }

    var directories: [String] { settings.layout.directories }

    /// Runs until ``Handle/stop()``.
    public func run() async {
        logger.notice(
            "following etcd",
            metadata: [
                "etcd.host": "\(settings.layout.host)", "etcd.directories": "\(directories.joined(separator: " "))",
                "etcd.endpoints": "\(settings.configuration.endpoints.map(\.url).joined(separator: " "))",
                "agent.socket": "\(settings.agent.socketPath)",
            ])
        inbox.yield(.connect)
        loop: for await event in events {
            switch event {
            case .stop:
                break loop
            case .connect:
                timers[.connect] = nil
                await connect()
            case .watch(let generation, let response):
                if generation == connection?.generation { await handle(response) }
            case .watchFailed(let generation, let error):
                if generation == connection?.generation { await watchFailed(error) }
            case .leaseLost(let generation):
                if generation == connection?.generation {
                    logger.warning("the status lease expired; granting a new one")
                    lease = nil
                    markStatusDirty()
                }
            case .agentRetry:
                timers[.agentRetry] = nil
                await retryAgent()
            case .resync:
                timers[.resync] = nil
                await resync()
            case .writeStatus:
                timers[.writeStatus] = nil
                await writeStatus()
            }
        }
        await shutdown()
    }

    // MARK: etcd

    func connect() async {
        let endpoints = settings.configuration.endpoints
        let endpoint = endpoints[endpointIndex % endpoints.count]
        generation += 1
        let client: EtcdClient
        do {
            client = try EtcdClient(configuration: settings.configuration, endpoint: endpoint)
        } catch {
            await lostEtcd(error, endpoint: endpoint.url)
            return
        }
        logger.info("connecting", metadata: ["etcd.endpoint": "\(endpoint.url)"])
        let run = Task { _ = try? await client.run() }
        connection = Connection(client: client, generation: generation, run: run)
        do throws(EtcdError) {
            if resume.isEmpty || agentNeedsSnapshot || resyncDue { try await snapshot() }
            startWatch()
            startKeepAlive()
            markStatusDirty()
        } catch {
            await lostEtcd(error, endpoint: endpoint.url)
        }
    }

    /// Reads every directory at one revision and sends the agent a complete snapshot.
    func snapshot() async throws(EtcdError) {
        guard let client = connection?.client else { return }
        var attempt = 0
        var revision: Int64 = 0
        var keyValues: [EtcdKeyValue] = []
        while true {
            do throws(EtcdError) {
                let first = try await client.range(prefix: directories[0])
                revision = first.revision
                keyValues = first.keyValues
                for directory in directories.dropFirst() {
                    keyValues += try await client.range(prefix: directory, revision: revision).keyValues
                }
                break
            } catch {
                // Compacted between the first read and the others: read again, at the new newest revision.
                guard error.code == .compacted, attempt < 3 else { throw error }
                attempt += 1
            }
        }
        latestRevision = max(latestRevision ?? 0, revision)
        for directory in directories { resume[directory] = max(resume[directory] ?? 0, revision + 1) }
        coveredRevision = max(coveredRevision, revision)
        resyncDue = false

        var changes: [SyncChange] = []
        var unusableKeys: [(key: String, problem: String)] = []
        changes.reserveCapacity(keyValues.count)
        for keyValue in keyValues {
            if let problem = SyncChange.keyProblem(keyValue.key) {
                unusableKeys.append((keyValue.key, problem))
            } else {
                changes.append(.written(key: keyValue.key, value: keyValue.value))
            }
        }
        let request = SyncRequest(revision: revision, complete: true, changes: changes)
        let delivered = await deliver(request)
        await announceConnected(revision: revision)
        guard delivered else { return }
        for (key, problem) in unusableKeys {
            logger.warning(
                "a key cannot be passed to the agent", metadata: ["etcd.key": "\(TextCheck.escaped(key))", "problem": "\(problem)"])
            outcomes.refuseLocally(key: key, reason: "not passed to the agent: \(problem)")
        }
        let counts = outcomes.byKey.values.reduce(into: (applied: 0, refused: 0)) { counts, outcome in
            if case .applied = outcome { counts.applied += 1 } else { counts.refused += 1 }
        }
        logger.info(
            "sent a complete snapshot",
            metadata: [
                "etcd.revision": "\(revision)", "etcd.keys": "\(keyValues.count)", "agent.applied": "\(counts.applied)",
                "agent.refused": "\(counts.refused)",
            ])
        schedule(.resync, after: settings.fullResyncInterval)
    }

    func startWatch() {
        guard var connection else { return }
        connection.watch?.cancel()
        connection.created = []
        let starts = Dictionary(uniqueKeysWithValues: directories.map { ($0, resume[$0] ?? coveredRevision + 1) })
        let watch = connection.client.watch(fromRevisions: starts)
        let inbox = self.inbox
        let generation = connection.generation
        connection.watch = Task {
            do throws(EtcdError) {
                for try await response in watch { inbox.yield(.watch(generation: generation, response)) }
            } catch {
                inbox.yield(.watchFailed(generation: generation, error))
            }
        }
        self.connection = connection
        logger.debug(
            "watching",
            metadata: ["etcd.resume": "\(starts.sorted { $0.key < $1.key }.map { "\($0.key)@\($0.value)" })"])
    }

    func handle(_ response: EtcdWatchResponse) async {
        resume[response.prefix] = max(resume[response.prefix] ?? 0, response.nextRevision)
        latestRevision = max(latestRevision ?? 0, response.revision)
        switch response.kind {
        case .created:
            connection?.created.insert(response.prefix)
            if connection?.created.count == directories.count {
                etcdBackoff.reset()
                await announceConnected(revision: response.revision)
            }
        case .progress:
            guard response.revision > reportedProgress, agentProblem == nil else { return }
            reportedProgress = response.revision
            logger.debug("progress", metadata: ["etcd.revision": "\(response.revision)"])
            await report(
                ConnectionReport(connected: true, endpoint: connection?.endpoint, revision: response.revision))
        case .events:
            let fresh = response.events.filter { $0.modRevision > coveredRevision }
            guard !fresh.isEmpty, !agentNeedsSnapshot else { return }
            var changes: [SyncChange] = []
            for event in fresh {
                let kind = event.kind == .put ? "put" : "delete"
                let metadata: Logger.Metadata = [
                    "etcd.key": "\(TextCheck.escaped(event.key))", "etcd.revision": "\(event.modRevision)",
                    "etcd.event": "\(kind)",
                ]
                if let problem = SyncChange.keyProblem(event.key) {
                    logger.warning("a key cannot be passed to the agent", metadata: metadata.merging(["problem": "\(problem)"]) { $1 })
                    if event.kind == .put {
                        outcomes.refuseLocally(key: event.key, reason: "not passed to the agent: \(problem)")
                    } else {
                        outcomes.forgetLocally(key: event.key)
                    }
                    markStatusDirty()
                    continue
                }
                logger.info("change", metadata: metadata)
                changes.append(SyncChange(event))
            }
            guard !changes.isEmpty else { return }
            await deliver(SyncRequest(revision: appliedWatermark, complete: false, changes: changes))
        }
    }

    /// The revision up to which the agent has every change of every directory: each directory's resume point is
    /// one past what it delivered, and etcd does not order events of different directories, so the lowest counts.
    var appliedWatermark: Int64 {
        max(coveredRevision, (directories.compactMap { resume[$0] }.min() ?? 1) - 1)
    }

    func watchFailed(_ error: EtcdError) async {
        guard error.code == .compacted else {
            await lostEtcd(error, endpoint: connection?.endpoint)
            return
        }
        logger.warning(
            "etcd compacted its history past the watch; reading everything again",
            metadata: [
                "etcd.prefix": "\(error.prefix ?? "")", "etcd.compact_revision": "\(error.compactRevision ?? 0)",
            ])
        connection?.watch?.cancel()
        do throws(EtcdError) {
            try await snapshot()
            startWatch()
        } catch {
            await lostEtcd(error, endpoint: connection?.endpoint)
        }
    }

    /// Closes the connection, tells the agent, and schedules the next attempt on the next endpoint.
    func lostEtcd(_ error: EtcdError, endpoint: String?) async {
        let wait = etcdBackoff.next()
        logger.warning(
            "etcd connection lost",
            metadata: [
                "etcd.endpoint": "\(endpoint ?? "")", "error": "\(error)",
                "retry_in": "\(Self.text(wait))",
            ])
        await closeConnection()
        endpointIndex += 1
        if reportedConnected != false, agentProblem == nil {
            reportedConnected = false
            await report(
                ConnectionReport(connected: false, endpoint: endpoint, revision: latestRevision, error: "\(error)"))
        }
        schedule(.connect, after: wait)
    }

    func closeConnection() async {
        guard let current = connection else { return }
        connection = nil
        current.watch?.cancel()
        current.keepAlive?.cancel()
        current.client.shutdown()
        current.run.cancel()
        await current.run.value
    }

    /// Logs the connection once per connection, and tells the agent when it answers.
    func announceConnected(revision: Int64) async {
        guard var current = connection, !current.announced else { return }
        current.announced = true
        connection = current
        logger.notice("connected", metadata: ["etcd.endpoint": "\(current.endpoint)", "etcd.revision": "\(revision)"])
        guard agentProblem == nil else { return }
        reportedConnected = true
        await report(ConnectionReport(connected: true, endpoint: current.endpoint, revision: revision))
    }

    // MARK: The agent

    /// Sends a snapshot or a change set; records the agent's verdicts. Returns whether the agent took it.
    @discardableResult
    func deliver(_ request: SyncRequest) async -> Bool {
        guard let answer = await exchange(request, complete: request.complete) else { return false }
        if request.complete {
            agentNeedsSnapshot = false
            if agentProblem != nil || agentBackoff.failures > 0 {
                logger.notice("the agent answers again", metadata: ["etcd.revision": "\(request.revision)"])
            }
            agentProblem = nil
            agentBackoff.reset()
        }
        if let report = answer.response.etcd {
            outcomes.record(report, complete: request.complete)
            if !request.complete { logResults(report) }
        }
        markStatusDirty()
        return true
    }

    func report(_ report: ConnectionReport) async {
        _ = await exchange(report, complete: false)
    }

    /// One request to the agent. A failure, or an answer from another process than the last one, means the agent
    /// may have lost what it held: it gets a complete snapshot once it answers again.
    func exchange(_ request: some Encodable & Sendable, complete: Bool) async -> AgentClient.Answer? {
        do {
            let answer = try await settings.agent.send(request)
            if let process = answer.agentProcess {
                if let previous = agentProcess, previous != process, !complete, !agentNeedsSnapshot {
                    logger.notice(
                        "the agent restarted; sending a complete snapshot",
                        metadata: ["agent.pid": "\(process)", "agent.previous_pid": "\(previous)"])
                    agentNeedsSnapshot = true
                    schedule(.agentRetry, after: .zero)
                }
                agentProcess = process
            }
            return answer
        } catch {
            agentFailed(error)
            return nil
        }
    }

    func agentFailed(_ problem: AgentProblem) {
        let wait = agentBackoff.next()
        let metadata: Logger.Metadata = [
            "agent.socket": "\(settings.agent.socketPath)", "error": "\(problem)",
            "retry_in": "\(Self.text(wait))",
        ]
        if agentProblem == nil {
            logger.error(
                "the agent did not take an update; it gets a complete snapshot when it answers again",
                metadata: metadata)
        } else {
            logger.debug("the agent still does not answer", metadata: metadata)
        }
        agentProblem = problem.message
        agentNeedsSnapshot = true
        if timers[.agentRetry] == nil { schedule(.agentRetry, after: wait) }
        markStatusDirty()
    }

    func retryAgent() async {
        // Without etcd there is nothing to read a snapshot from; the next connection sends one.
        guard agentNeedsSnapshot, connection != nil else { return }
        do throws(EtcdError) {
            try await snapshot()
        } catch {
            await lostEtcd(error, endpoint: connection?.endpoint)
        }
    }

    func resync() async {
        guard connection != nil, !agentNeedsSnapshot else {
            resyncDue = true
            return
        }
        logger.info("reading everything again (the periodic complete snapshot)")
        do throws(EtcdError) {
            try await snapshot()
        } catch {
            await lostEtcd(error, endpoint: connection?.endpoint)
        }
    }

    func logResults(_ report: LocalAPI.EtcdReport) {
        for result in report.results {
            var metadata: Logger.Metadata = [
                "etcd.key": "\(TextCheck.escaped(result.key))", "agent.state": "\(result.state.rawValue)",
                "etcd.revision": "\(report.revision)",
            ]
            if let id = result.id { metadata["grant.id"] = "\(id)" }
            if let detail = result.detail { metadata["detail"] = "\(TextCheck.escaped(detail))" }
            if result.state == .refused {
                logger.notice("the agent refused a grant", metadata: metadata)
            } else {
                logger.info("the agent took a change", metadata: metadata)
            }
        }
    }

    // MARK: The status key

    func markStatusDirty() {
        statusDirty = true
        guard timers[.writeStatus] == nil else { return }
        var wait = Duration.zero
        if let lastStatusWrite {
            wait = max(.zero, settings.statusInterval - (ContinuousClock.now - lastStatusWrite))
        }
        schedule(.writeStatus, after: wait)
    }

    func writeStatus() async {
        guard statusDirty, let client = connection?.client else { return }
        do throws(EtcdError) {
            if lease == nil {
                lease = try await client.grantLease(ttl: settings.statusTTL)
                startKeepAlive()
            }
            let status = outcomes.status(
                host: settings.layout.host, groups: settings.layout.groups, agent: agentProblem ?? "ok",
                now: SystemClock.wall())
            try await client.put(settings.layout.statusKey, value: status.encoded(), lease: lease)
            statusDirty = false
            lastStatusWrite = .now
            if statusDenied {
                logger.notice("the status key can be written again", metadata: ["etcd.key": "\(settings.layout.statusKey)"])
                statusDenied = false
            }
        } catch {
            switch error.code {
            case .permissionDenied:
                // Enforcement does not depend on the status: say it once, and try again only on the next change.
                if !statusDenied {
                    logger.warning(
                        "cannot write the status key; grants are enforced all the same",
                        metadata: ["etcd.key": "\(settings.layout.statusKey)", "error": "\(error)"])
                }
                statusDenied = true
                statusDirty = false
            case .leaseNotFound:
                lease = nil
                markStatusDirty()
            default:
                // The connection is failing; the next one writes the status.
                logger.debug("the status was not written", metadata: ["error": "\(error)"])
            }
        }
    }

    func startKeepAlive() {
        guard var current = connection, let lease, current.keepAlive == nil else { return }
        let client = current.client
        let inbox = self.inbox
        let generation = current.generation
        current.keepAlive = Task {
            while !Task.isCancelled {
                do throws(EtcdError) {
                    try await client.keepAlive(lease)
                    return
                } catch {
                    if error.code == .leaseNotFound {
                        inbox.yield(.leaseLost(generation: generation))
                        return
                    }
                    try? await Task.sleep(for: .seconds(1))
                }
            }
        }
        connection = current
    }

    // MARK: Timers and the end

    func schedule(_ timer: TimerKind, after wait: Duration) {
        timers[timer]?.cancel()
        let inbox = self.inbox
        let event = timer.event
        timers[timer] = Task {
            do {
                try await Task.sleep(for: wait)
            } catch {
                return
            }
            inbox.yield(event)
        }
    }

    /// `1.25s`.
    static func text(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return "\(Double(milliseconds) / 1000)s"
    }

    func shutdown() async {
        logger.notice("stopping")
        for timer in timers.values { timer.cancel() }
        timers = [:]
        if let current = connection {
            current.watch?.cancel()
            current.keepAlive?.cancel()
            if let lease {
                do throws(EtcdError) {
                    try await current.client.revokeLease(lease)
                    logger.info("revoked the status lease", metadata: ["etcd.key": "\(settings.layout.statusKey)"])
                } catch {
                    logger.warning("could not revoke the status lease", metadata: ["error": "\(error)"])
                }
            }
        }
        if agentProblem == nil {
            await report(
                ConnectionReport(
                    connected: false, endpoint: connection?.endpoint, revision: latestRevision,
                    error: "drawbridge-etcd stopped"))
        }
        await closeConnection()
        inbox.finish()
    }
}
