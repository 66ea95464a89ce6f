import Dispatch
import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import Logging
import NIOPosix
import Netfilter
import NetfilterModel
import SystemPackage

/// Where the agent reads and writes.
public struct AgentConfiguration: Sendable {
    public var policyPath: String
    public var socketPath: String
    /// The group that may use the socket; nil leaves it to root.
    public var socketGroup: String?
    public var stateDirectory: String
    public var auditLogPath: String
    public var version: String
    /// Force the pre-6.3 delete path (tests prove it on new kernels); nil asks the kernel.
    public var canDestroyElements: Bool?

    public init(
        policyPath: String, socketPath: String, socketGroup: String?, stateDirectory: String, auditLogPath: String,
        version: String, canDestroyElements: Bool? = nil
    ) {
        self.policyPath = policyPath
        self.socketPath = socketPath
        self.socketGroup = socketGroup
        self.stateDirectory = stateDirectory
        self.auditLogPath = auditLogPath
        self.version = version
        self.canDestroyElements = canDestroyElements
    }
}

/// An error of the agent's own, with a sentence for the operator.
public struct AgentError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The agent: the one owner of the grant book, deciding every change in memory and handing the slow parts — the
/// flush to disk, the kernel transaction — to their own threads, so no request waits on another's I/O.
///
/// A change costs what it changes: a grant is one journal line, the few elements it touches, one transaction. The
/// kernel is never dumped to decide anything; when the table cannot be trusted (at start, after another program
/// changed it) it is rebuilt whole from the book in one atomic transaction.
///
/// Opening access waits until it is recorded (journal on disk, audit line written); closing it never waits for
/// anything but the kernel: a revocation reaches the kernel first, and what cannot be stored is kept and retried.
public actor Agent {
    let configuration: AgentConfiguration
    let logger: Logger
    let store: GrantStore
    let audit: AuditTrail
    let kernel: KernelLink
    /// The netlink port the agent commits from (its notifications are the agent's own changes).
    public nonisolated var kernelPortID: UInt32 { kernel.portID }
    /// A second connection, on a thread of its own, for reads (`list`; a grant's answer when its read-back on the
    /// kernel's thread right after the commit was not made): a list of a hundred thousand point queries never holds
    /// up a change, and a change never holds up a list.
    let kernelReads: KernelLink
    let disk: NIOThreadPool
    /// The Prometheus metrics (the socket server and the HTTP endpoint read them).
    public nonisolated let metrics = AgentMetrics()
    /// The metrics endpoint as the policy gave it at start (a reload does not move it).
    let servedMetrics: MetricsSettings?

    private(set) var policy: Policy
    var book = GrantBook()
    var planner = AccessPlanner()
    /// This machine's name: its etcd keys' host unless the policy names another.
    let hostName: String
    /// Who may hand the agent grants from etcd (read by the socket server).
    public nonisolated let etcdAuthority = EtcdSyncAuthority()
    var etcd = EtcdView()
    var knocks = KnockView()
    var traffic = PortTraffic()
    private var settings: [String: String] = [:]

    public init(configuration: AgentConfiguration, policy: Policy, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        self.policy = policy
        servedMetrics = policy.metrics
        hostName = SystemClock.hostName()
        store = try GrantStore(directory: configuration.stateDirectory, bootID: SystemClock.bootID())
        audit = try AuditTrail(path: configuration.auditLogPath, logger: logger, metrics: metrics)
        kernel = try KernelLink(canDestroyElements: configuration.canDestroyElements, metrics: metrics)
        kernelReads = try KernelLink()
        disk = NIOThreadPool(numberOfThreads: 1)
        disk.start()
    }

    /// What the kernel link's probe found at start (NFT_MSG_DESTROYSETELEM, Linux 6.3+).
    private var kernelDestroysElements: Bool?

    var layout: TableLayout {
        TableLayout(policy: policy)
    }

    private var managedDescription: String {
        policy.ports.isEmpty ? "nothing" : policy.ports.map { "\($0.name) \($0.service)" }.joined(separator: ", ")
    }

    // MARK: Life cycle

    /// Loads the stored grants and the grants files, and builds the table with all of them in one transaction.
    /// Enforcement is complete when this returns.
    public func start() async throws {
        let now = SystemClock.now()
        clockOffset = now.wall.timeIntervalSince1970 - Double(now.monotonic.nanoseconds) / 1e9
        let loaded = try store.load(now: now)
        book = loaded.book
        settings = loaded.settings
        for note in loaded.notes {
            audit.record(AuditEvent(.warning, detail: note))
            addWarning(note)
        }
        audit.record(
            batch: loaded.expiredGrants.map { AuditEvent(.expire, grant: $0, detail: "expired while the agent was down") })
        if loaded.expired > loaded.expiredGrants.count {
            audit.record(
                AuditEvent(
                    .expire,
                    detail: "\(loaded.expired - loaded.expiredGrants.count) more stored grants expired while the agent "
                        + "was down"))
        }
        updateEtcdAuthority()
        dropEtcdGrantsOutsideLayout(reason: "no longer among this host's etcd keys", starting: true)
        let dropped = dropGrantsOutsidePolicy(now: now, reason: "no longer allowed by the policy", exceptFiles: true)
        let files = policy.grantFiles.map { path in
            // Stamped before reading: a change while it is read shows as a new stamp and is read again.
            let stamp = FileStamp(path)
            return (path: path, stamp: stamp, result: readGrantsFile(path, policy: policy, now: now, everyCore: true))
        }
        func applyFiles() {
            for file in files {
                applyFile(file.path, file.result, now: now, initial: true)
                fileStamps[file.path] = file.stamp ?? .missing
            }
        }
        let report: CommitReport
        var elements: [AccessKey: MonotonicInstant]
        if let direct = directElements(files.map(\.result), now: now) {
            // Only single addresses in the files: their elements need no planning, so the kernel takes them while the
            // book takes the grants in, on another core.
            elements = direct
            // Read here: the child task must not need the agent's executor (busy with the book) to start.
            let (kernel, layout) = (self.kernel, self.layout)
            async let building = kernel.rebuild(layout, elements: direct)
            let expected = book.count + files.reduce(0) { $0 + $1.result.grantCount(skipping: book.revokedFileGrants) }
            applyFiles()
            var built = try await building
            if book.count != expected {
                // Two files named a grant with the same id, so the book holds fewer grants than the kernel was given:
                // the book is right, and the kernel follows it.
                elements = planner.elements(book: book, now: now.monotonic)
                built = try await kernel.rebuild(layout, elements: elements)
            }
            report = built
        } else {
            applyFiles()
            planner.reset(book: book, now: now.monotonic)
            elements = planner.elements(book: book, now: now.monotonic)
            report = try await kernel.rebuild(layout, elements: elements)
        }
        lastSeenGeneration = try? await kernel.generation()
        kernelDestroysElements = await kernel.canDestroyElements
        await sampleTraffic()
        armExpiry()
        releaseFreeMemory()
        logger.info(
            "started",
            metadata: [
                "memory.heap_in_use_mib": "\(heapInUse() >> 20)", "kernel": "\(SystemClock.kernelRelease())",
                "kernel.destroys_elements": "\(kernelDestroysElements ?? false)",
            ])
        audit.record(
            AuditEvent(
                .start,
                detail:
                    "policy \(configuration.policyPath); managed \(managedDescription); \(book.count) grants "
                    + "(\(elements.count) kernel elements in \(report.messages) messages)"
                    + (dropped > 0 ? "; \(dropped) dropped by the policy" : "")))
    }

    /// The elements for the stored grants and the files' grants at start, without putting the files' grants in the
    /// book first: nil when a file grants a prefix (prefixes are planned together, from the book).
    private func directElements(
        _ files: [Result<GrantsFile.Contents, FileFailure>], now: Instants
    ) -> [AccessKey: MonotonicInstant]? {
        let contents = files.compactMap { try? $0.get() }
        // Closures, not key paths: a key path applied to a million grants costs a runtime projection each.
        guard contents.allSatisfy({ $0.parts.allSatisfy { $0.allSatisfy { $0.source.isSingleAddress } } }) else {
            return nil
        }
        planner.reset(book: book, now: now.monotonic)
        var elements = planner.elements(book: book, now: now.monotonic)
        elements.reserveCapacity(elements.count + contents.reduce(0) { $0 + $1.grantCount })
        let revoked = book.revokedFileGrants
        for part in contents.lazy.flatMap({ $0.parts }) {
            // By index, reading only the fields needed: a copy of each grant would retain and release its strings.
            for index in part.indices where revoked.isEmpty || !revoked.contains(part[index].id) {
                let source = part[index].source
                let deadline = part[index].deadline
                // By position too: iterating the list would retain and release it for every grant.
                for position in part[index].ports.indices {
                    // The latest deadline of the grants for an element, as the planner gives it.
                    let key = AccessKey(source: source, service: part[index].ports[position].service)
                    // One lookup for a new element (`elements[key, default:]` boxed its default twice per grant).
                    if let earlier = elements.updateValue(deadline, forKey: key), earlier > deadline {
                        elements[key] = earlier
                    }
                }
            }
        }
        return elements
    }

    /// Records the stop. Enforcement stays in the kernel: stopping the agent opens nothing and closes nothing.
    public func stop() async {
        expiryTask?.cancel()
        flushPendingRecords()
        try? store.sync()
        audit.record(AuditEvent(.stop, detail: "kernel enforcement left in place"))
        try? await disk.shutdownGracefully()
    }

    // MARK: Requests

    public func handle(_ command: LocalAPI.Command, from caller: Caller) async -> LocalAPI.Response {
        audit.retryPending()
        flushPendingRecords()
        switch command {
        case .grant(let request): return await grant(request, caller)
        case .revoke(let target): return await revoke(target, caller)
        case .list: return await list()
        case .status: return await status()
        case .metrics: return LocalAPI.Response(ok: true, metrics: String(decoding: await metricsText(), as: UTF8.self))
        case .etcdSync(let update): return await etcdSync(update, caller)
        case .etcdConnection(let report): return etcdConnection(report, caller)
        case .knock(let knock): return await self.knock(knock, caller)
        case .knockRefused(let report): return knockRefused(report, caller)
        }
    }

    private func refused(_ caller: Caller, _ request: GrantRequest, _ refusal: Refusal) -> LocalAPI.Response {
        audit.record(
            AuditEvent(
                .refuse, user: caller.user, uid: caller.uid, source: request.source.description, ports: request.ports,
                reason: request.reason, origin: "local", detail: refusal.message))
        return .failure(.init(code: .refused, reason: refusal.reason.rawValue, message: refusal.message))
    }

    private func grant(_ request: GrantRequest, _ caller: Caller) async -> LocalAPI.Response {
        let authorized: AuthorizedGrant
        switch policy.authorize(request, by: caller) {
        case .failure(let refusal): return refused(caller, request, refusal)
        case .success(let value): authorized = value
        }
        return await open(authorized, request: request, requestedBy: caller.user, uid: caller.uid, origin: .local)
    }

    /// Makes or extends the grant for an authorized request: stored and audited first, then the kernel.
    func open(
        _ authorized: AuthorizedGrant, request: GrantRequest, requestedBy: String, uid: UInt32?, origin: GrantOrigin,
        auditDetail: String? = nil
    ) async -> LocalAPI.Response {
        let now = SystemClock.now()
        // Sub-second precision end to end: the deadline is exactly the duration asked for from now.
        var grant = Grant(
            id: Grant.newIdentifier(), source: authorized.source,
            ports: authorized.ports.map { GrantedPort(name: $0.name, service: $0.service) }, createdAt: now.wall,
            expiresAt: now.wall.addingTimeInterval(authorized.duration),
            deadline: now.monotonic.advanced(by: authorized.duration), requestedBy: requestedBy, uid: uid,
            reason: request.reason, origin: origin)
        var previous: Grant?
        if let existing = book.extendable(like: grant, now: now.monotonic) {
            if existing.deadline >= grant.deadline {
                let remaining = try? await kernelReads.remaining(existing.accessKeys)
                return LocalAPI.Response(
                    ok: true, grants: [status(of: existing, remaining: remaining ?? [:])], outcome: "unchanged")
            }
            previous = existing
            grant.id = existing.id
            grant.createdAt = existing.createdAt
        }
        let kind: AuditEvent.Kind = previous == nil ? .grant : .extend
        // Recorded before anything changes: no grant is made that cannot be stored and audited.
        do {
            try store.appendOpening([.put(grant)])
        } catch {
            audit.record(AuditEvent(.error, grant: grant, detail: "not granted: \(error)"))
            return .failure(.init(code: .storage, message: "cannot store the grant, nothing changed: \(error)"))
        }
        let position = store.position
        var event = AuditEvent(kind, grant: grant)
        event.detail = auditDetail
        guard audit.record(event, required: true) else {
            try? store.appendClosing([previous.map { .put($0) } ?? .remove(id: grant.id)])
            return .failure(
                .init(
                    code: .storage,
                    message: "cannot write the audit trail (\(audit.problem ?? "unknown error")), nothing changed"))
        }
        let (_, changed) = book.put(grant)
        let targets = planner.update(changed, book: book, now: now.monotonic)
        armExpiry()
        let keys = grant.accessKeys
        let settled = await settle(position, targets, readingBack: keys)
        var failure: LocalAPI.Failure?
        if case .failed(let error) = settled.kernel {
            failure = .init(code: .kernel, message: "the kernel refused the change, nothing changed: \(error)")
        } else if case .failure(let error) = settled.durability {
            failure = .init(code: .storage, message: "the grant could not be stored durably, nothing changed: \(error)")
        }
        if let failure {
            withdraw(grant, restoring: previous, because: failure.message)
            return .failure(failure)
        }
        compactIfWanted()
        var remaining = settled.readBack
        if remaining == nil { remaining = try? await kernelReads.remaining(keys) }
        return LocalAPI.Response(
            ok: true, grants: [status(of: book[grant.id] ?? grant, remaining: remaining ?? [:])],
            outcome: previous == nil ? "created" : "extended")
    }

    /// Takes back a grant whose change failed (if nothing changed it since).
    func withdraw(_ grant: Grant, restoring previous: Grant?, because reason: String) {
        guard book[grant.id] == grant else { return }
        let changed: [AccessKey]
        if let previous {
            changed = book.put(previous).changed
        } else {
            changed = book.remove(id: grant.id).changed
        }
        submitLater(planner.update(changed, book: book, now: SystemClock.monotonic()))
        appendClosing([previous.map { .put($0) } ?? .remove(id: grant.id)])
        audit.record(AuditEvent(.error, grant: grant, detail: "withdrawn: \(reason)"))
    }

    private func revoke(_ target: LocalAPI.RevokeTarget, _ caller: Caller) async -> LocalAPI.Response {
        let now = SystemClock.now()
        var matching: [Grant]
        switch target {
        case .id(let id):
            guard let grant = book[id] else {
                return .failure(.init(code: .notFound, message: "no active grant has id \(id); see `drawbridge list`"))
            }
            matching = [grant]
        case .within(let prefix):
            matching = book.values.filter { prefix.contains($0.source) }.sorted { $0.id < $1.id }
            guard !matching.isEmpty else {
                return .failure(.init(code: .notFound, message: "no active grant comes from within \(prefix)"))
            }
        }
        if let denied = matching.first(where: { !mayRevoke($0, caller) }) {
            audit.record(
                AuditEvent(
                    .refuse, grant: denied, detail: "revoke by \(caller.user) (uid \(caller.uid)) not permitted",
                    by: caller.user))
            return .failure(
                .init(
                    code: .forbidden,
                    message:
                        "\(caller.user) may not revoke \(denied.id) (asked for by \(denied.requestedBy)); only root, "
                        + "its requester, or a member of a role covering "
                        + "\(denied.ports.map(\.name).joined(separator: ", ")) may"))
        }
        // Close first: the kernel change goes out before anything is written.
        var changed: [AccessKey] = []
        var records: [StateRecord] = []
        for grant in matching {
            changed += book.remove(id: grant.id).changed
            records.append(.remove(id: grant.id))
            switch grant.origin {
            case .file, .etcd:
                // Revoked here, it stays revoked while its file entry or etcd key says the same.
                book.tombstone(grant.id)
                records.append(.tombstone(id: grant.id))
            case .local, .knock: break
            }
        }
        let targets = planner.update(changed, book: book, now: now.monotonic)
        let ticket = enqueue(targets)
        var warnings: [String] = []
        if let problem = appendClosing(records) { warnings.append(problem) }
        let by = "\(caller.user) (uid \(caller.uid))"
        var audited = true
        for grant in matching {
            audited = audit.record(AuditEvent(.revoke, grant: grant, detail: "revoked by \(by)", by: caller.user)) && audited
        }
        if !audited {
            warnings.append("the audit trail could not be written (\(audit.problem ?? "")); the record is kept and retried")
        }
        if case .failed(let error) = await ticket.value {
            return LocalAPI.Response(
                ok: false,
                error: .init(
                    code: .kernel,
                    message: "revoked, but the kernel refused the change (\(error)); drawbridged keeps repairing "
                        + "the table until it takes it"),
                grants: matching.map { status(of: $0, remaining: [:]) }, warnings: warnings)
        }
        compactIfWanted()
        return LocalAPI.Response(
            ok: true, grants: matching.map { status(of: $0, remaining: [:]) },
            warnings: warnings.isEmpty ? nil : warnings)
    }

    /// Root, the user who asked for the grant, or anyone whose roles cover all of its ports: closing access is
    /// always safe, so an operator may end a colleague's grant (the audit trail says who did).
    private func mayRevoke(_ grant: Grant, _ caller: Caller) -> Bool {
        if caller.isRoot || (grant.uid != nil && grant.uid == caller.uid && grant.origin == .local) { return true }
        return grant.ports.allSatisfy { port in
            policy.roles.contains { caller.groups.contains($0.group) && $0.ports.contains(port.name) }
        }
    }

    /// Every grant with what the kernel holds for it right now (point queries, no dump).
    private func list() async -> LocalAPI.Response {
        let grants = book.sorted
        var keys: [AccessKey] = []
        for grant in grants { keys += grant.accessKeys }
        let remaining: [AccessKey: Double]
        do {
            remaining = try await kernelReads.remaining(keys)
        } catch {
            return .failure(.init(code: .kernel, message: "cannot read the kernel's grant sets: \(error)"))
        }
        return LocalAPI.Response(ok: true, grants: grants.map { status(of: $0, remaining: remaining) })
    }

    /// For each port of a grant, what the kernel gives the element that carries it: its own element for a single
    /// address; for a prefix, the planner's element covering it, which may have been split (the longest piece left).
    private func status(of grant: Grant, remaining: [AccessKey: Double]) -> LocalAPI.GrantStatus {
        var result: [String: Double?] = [:]
        for port in grant.ports {
            result[port.name] = remaining[AccessKey(source: grant.source, service: port.service)]
        }
        return LocalAPI.GrantStatus(grant: grant, kernelRemainingSeconds: result)
    }

    private func status() async -> LocalAPI.Response {
        let ports = await portActivity()
        var warnings = self.warnings.map(\.text)
        for (path, problem) in fileProblems.sorted(by: { $0.key < $1.key }) {
            warnings.append("grants file \(path): \(problem); its last good grants are kept")
        }
        if let problem = store.problem { warnings.append(problem) }
        if !pendingRecords.isEmpty {
            warnings.append("\(pendingRecords.count) revocation records wait to be written to the state journal")
        }
        return LocalAPI.Response(
            ok: true,
            status: LocalAPI.AgentStatus(
                version: configuration.version, policyPath: configuration.policyPath,
                managedPorts: policy.ports.map { GrantedPort(name: $0.name, service: $0.service) },
                onExpiry: policy.onExpiry, activeGrants: book.count, kernelRelease: SystemClock.kernelRelease(),
                table: tableHealth, lastRepair: lastRepair, repairs: repairs,
                storage: store.problem ?? (pendingRecords.isEmpty ? "ok" : "revocations waiting to be stored"),
                audit: audit.problem ?? "ok", warnings: warnings, etcd: etcdStatus, knock: knockStatus,
                metrics: servedMetrics.map { "http://\($0.listen)/metrics" }, ports: ports,
                kernelDestroysElements: kernelDestroysElements, safetyChecks: safetyChecks))
    }

    // MARK: Kernel queue

    enum KernelOutcome: Sendable {
        case applied
        case failed(NetfilterError)
    }

    private struct QueuedChange {
        var targets: [ElementTarget]
        /// Keys whose remaining time the waiter wants read right after the commit.
        var readBack: [AccessKey] = []
        var waiter: ((KernelOutcome, [AccessKey: Double]?) -> Void)?
    }

    private var queue: [QueuedChange] = []
    private var pumping = false

    /// Hands targets to the kernel owner and waits for them to be applied (with everything queued at the time, in
    /// one transaction).
    func submit(_ targets: [ElementTarget]) async -> KernelOutcome {
        guard !targets.isEmpty else { return .applied }
        return await withCheckedContinuation { continuation in
            whenApplied(targets, readingBack: []) { outcome, _ in continuation.resume(returning: outcome) }
        }
    }

    /// Queues targets for the kernel; `done` runs on the actor once they are applied (at once when there are none).
    private func whenApplied(
        _ targets: [ElementTarget], readingBack keys: [AccessKey],
        _ done: @escaping (KernelOutcome, [AccessKey: Double]?) -> Void
    ) {
        guard !targets.isEmpty else { return done(.applied, nil) }
        queue.append(QueuedChange(targets: targets, readBack: keys, waiter: done))
        startPump()
    }

    /// What an opening change waits for: its journal record on disk, and its targets in the kernel.
    struct Settled {
        var durability: Result<Void, SystemError>
        var kernel: KernelOutcome
        /// What the kernel gives the keys read back right after the commit (nil when not read).
        var readBack: [AccessKey: Double]?
    }

    /// Waits for the journal to be on disk up to `position` and for `targets` to be applied, both started at once
    /// (the fdatasync and the kernel transaction overlap), with one suspension of the caller: no child task per
    /// half, so no extra hop through the global executor for each.
    func settle(_ position: JournalPosition, _ targets: [ElementTarget], readingBack keys: [AccessKey] = []) async
        -> Settled
    {
        await withCheckedContinuation { continuation in
            let join = SettleJoin(continuation)
            whenDurable(position) { result in
                join.durability = result
                join.finishIfDone()
            }
            whenApplied(targets, readingBack: keys) { outcome, readBack in
                join.kernel = (outcome, readBack)
                join.finishIfDone()
            }
        }
    }

    /// The two halves of ``settle(_:_:readingBack:)`` as they arrive (only ever touched on the actor).
    private final class SettleJoin {
        var durability: Result<Void, SystemError>?
        var kernel: (KernelOutcome, [AccessKey: Double]?)?
        private var continuation: CheckedContinuation<Settled, Never>?

        init(_ continuation: CheckedContinuation<Settled, Never>) { self.continuation = continuation }

        func finishIfDone() {
            guard let durability, let kernel, let continuation else { return }
            self.continuation = nil
            continuation.resume(returning: Settled(durability: durability, kernel: kernel.0, readBack: kernel.1))
        }
    }

    /// Like `submit`, returning at once with a task that finishes when they are applied.
    func enqueue(_ targets: [ElementTarget]) -> Task<KernelOutcome, Never> {
        Task { await self.submit(targets) }
    }

    /// Queues targets nobody waits for (expiry sweeps, withdrawals).
    func submitLater(_ targets: [ElementTarget]) {
        guard !targets.isEmpty else { return }
        queue.append(QueuedChange(targets: targets, readBack: [], waiter: nil))
        startPump()
    }

    private func startPump() {
        guard !pumping else { return }
        pumping = true
        Task { await pump() }
    }

    private func pump() async {
        while !queue.isEmpty {
            let batch = queue
            queue = []
            let result = await applyToKernel(batch.flatMap(\.targets), readingBack: batch.flatMap(\.readBack))
            if case .failed = result.0, batch.count > 1 {
                // One change the kernel refuses must not fail the others queued with it: try them one by one.
                for change in batch {
                    let single = await applyToKernel(change.targets, readingBack: change.readBack)
                    change.waiter?(single.0, single.1)
                }
                continue
            }
            for change in batch { change.waiter?(result.0, result.1) }
        }
        pumping = false
    }

    private func applyToKernel(_ targets: [ElementTarget], readingBack keys: [AccessKey]) async
        -> (KernelOutcome, [AccessKey: Double]?)
    {
        do {
            return (.applied, try await kernel.apply(targets, readingBack: keys))
        } catch {
            switch error.code {
            case .tableMissing, .objectMissing, .outcomeUnknown, .elementAbsent, .generationChanged, .alreadyExists:
                // The table is not as we left it: rebuild it from the book, which already holds these changes.
                if await rebuild(trigger: "a change failed: \(error)") { return (.applied, nil) }
                return (.failed(error), nil)
            default:
                return (.failed(error), nil)
            }
        }
    }

    // MARK: Durability

    private var durable = JournalPosition(generation: 0, offset: 0)
    private var syncing = false
    private var durabilityWaiters: [(JournalPosition, (Result<Void, SystemError>) -> Void)] = []

    /// `done` runs on the actor once the journal is on disk up to `position` (at once when it already is); one
    /// fdatasync serves every change waiting at the time.
    private func whenDurable(_ position: JournalPosition, _ done: @escaping (Result<Void, SystemError>) -> Void) {
        if position <= durable { return done(.success(())) }
        durabilityWaiters.append((position, done))
        if !syncing {
            syncing = true
            Task { await syncLoop() }
        }
    }

    private func syncLoop() async {
        while !durabilityWaiters.isEmpty {
            let (file, reaches) = store.syncTarget()
            let result: Result<JournalPosition, SystemError>
            do {
                try await disk.runIfActive { try file?.sync() }
                result = .success(reaches)
            } catch let error as SystemError {
                result = .failure(error)
            } catch {
                result = .failure(SystemError("fdatasync", store.directory, errno: .ioError))
            }
            let waiters = durabilityWaiters
            durabilityWaiters = []
            switch result {
            case .success(let reached):
                durable = max(durable, reached)
                for (position, waiter) in waiters {
                    if position <= reached {
                        waiter(.success(()))
                    } else {
                        durabilityWaiters.append((position, waiter))
                    }
                }
            case .failure(let error):
                for (_, waiter) in waiters { waiter(.failure(error)) }
            }
        }
        syncing = false
    }

    /// Records that close access: written with the reserve, or kept and retried.
    ///
    /// - Returns: a warning when they could not be written now.
    @discardableResult
    func appendClosing(_ records: [StateRecord]) -> String? {
        guard !records.isEmpty else { return nil }
        flushPendingRecords()
        if pendingRecords.isEmpty {
            do {
                try store.appendClosing(records)
                return nil
            } catch {
                pendingRecords += records
                return "could not be stored yet (\(error)); it is kept and written as soon as the disk allows"
            }
        }
        pendingRecords += records
        return "could not be stored yet; it is kept and written as soon as the disk allows"
    }

    private var pendingRecords: [StateRecord] = []

    private func flushPendingRecords() {
        guard !pendingRecords.isEmpty else { return }
        if (try? store.appendClosing(pendingRecords)) != nil { pendingRecords = [] }
    }

    // MARK: Compaction

    private var compacting = false

    func compactIfWanted() {
        guard !compacting, store.wantsCompaction else { return }
        compacting = true
        do {
            let (work, synced) = try store.beginCompaction(book: book, settings: settings, now: SystemClock.now())
            durable = max(durable, synced)
            let disk = self.disk
            Task {
                do {
                    try await disk.runIfActive { try work() }
                } catch {
                    self.logger.error("writing a state snapshot failed", metadata: ["error": "\(error)"])
                }
                self.compactionEnded()
            }
        } catch {
            compacting = false
            logger.error("starting a state snapshot failed", metadata: ["error": "\(error)"])
        }
    }

    private func compactionEnded() { compacting = false }

    // MARK: Expiry

    private var expiryTask: Task<Void, Never>?
    private var armedDeadline: MonotonicInstant?

    /// Makes sure a timer wakes the agent at the next deadline (and only then: no periodic ticks).
    func armExpiry() {
        guard let next = book.nextDeadline() else {
            expiryTask?.cancel()
            expiryTask = nil
            armedDeadline = nil
            return
        }
        if let armedDeadline, armedDeadline <= next, expiryTask != nil { return }
        expiryTask?.cancel()
        armedDeadline = next
        expiryTask = Task {
            let wait = next.seconds(since: SystemClock.monotonic())
            if wait > 0 {
                do {
                    try await Task.sleep(for: .nanoseconds(Int64(min(wait, 86_400 * 30) * 1e9) + 1_000_000))
                } catch {
                    return
                }
            }
            self.sweepExpired()
        }
    }

    /// Forgets the grants whose deadline passed (the kernel dropped their elements itself) and audits them.
    private func sweepExpired() {
        expiryTask = nil
        armedDeadline = nil
        let now = SystemClock.monotonic()
        let expired = book.removeExpired(now: now)
        if !expired.isEmpty {
            audit.record(batch: expired.map { AuditEvent(.expire, grant: $0.grant) })
            submitLater(planner.update(expired.flatMap(\.changed), book: book, now: now))
        }
        armExpiry()
    }

    // MARK: Repair

    private var tableHealth = "enforcing"
    private var repairs = 0
    private var lastRepair: String?
    private var lastSeenGeneration: UInt32?
    private var repairWanted: String?
    private var repairing = false

    /// Rebuilds the table from the book in one transaction.
    ///
    /// - Returns: whether it worked.
    @discardableResult
    private func rebuild(trigger: String, problems: [String] = []) async -> Bool {
        let now = SystemClock.monotonic()
        do {
            await sampleTraffic()
            _ = try await kernel.rebuild(layout, elements: planner.elements(book: book, now: now))
            traffic.rulesReplaced()
            repairs += 1
            let detail = (problems + ["the table was rebuilt with \(book.count) grants"]).joined(separator: "; ")
            lastRepair = "\(Timestamp.format(SystemClock.wall())): \(detail) (after: \(trigger))"
            tableHealth = "enforcing"
            audit.record(AuditEvent(.repair, detail: "\(detail) (after: \(trigger))"))
            return true
        } catch {
            tableHealth = "cannot rebuild the table: \(error)"
            audit.record(AuditEvent(.error, detail: "rebuilding the table failed (after: \(trigger)): \(error)"))
            scheduleRepair("the previous rebuild failed: \(error)", after: .seconds(1))
            return false
        }
    }

    /// What the ruleset monitor saw.
    public func rulesetChanged(_ event: RulesetEvent) {
        switch event {
        case .lost:
            scheduleRepair("nf_tables notifications were lost")
        case .change(let change):
            if let generation = change.generation { lastSeenGeneration = generation }
            guard change.portID != kernel.portID else { return }
            if change.touches(inetTable: DrawbridgeTable.name) {
                let who = "\(change.processName ?? "a process") (pid \(change.processID.map(String.init) ?? "?"))"
                scheduleRepair("the table was changed by \(who)")
            }
        }
    }

    private func scheduleRepair(_ trigger: String, after delay: Duration = .zero) {
        repairWanted = repairWanted ?? trigger
        guard !repairing else { return }
        repairing = true
        Task {
            // A short pause lets a burst of changes (an `nft -f` of several transactions) end first.
            try? await Task.sleep(for: max(delay, .milliseconds(5)))
            await self.runRepairs()
        }
    }

    private func runRepairs() async {
        while let trigger = repairWanted {
            repairWanted = nil
            let problems = (try? await kernel.verify(layout)) ?? ["the table could not be read"]
            await rebuild(trigger: trigger, problems: problems)
        }
        repairing = false
    }

    /// The documented safety check (once a minute): the table's structure is verified, and a ruleset generation
    /// that moved without a notification is treated like a lost notification.
    public func safetyCheck() async {
        flushPendingRecords()
        audit.retryPending()
        await sampleTraffic()
        do {
            let problems = try await kernel.verify(layout)
            if !problems.isEmpty {
                scheduleRepair("the safety check found: \(problems.joined(separator: "; "))")
                return
            }
            // Seen: the latest notification of another program's commit, or the agent's own latest commit (whose
            // notifications the monitor does not receive).
            let (generation, committed) = try await kernel.generations()
            safetyChecks += 1
            if let lastSeenGeneration, generation != lastSeenGeneration, generation != committed {
                if generationMismatch == generation {
                    scheduleRepair("the ruleset changed (generation \(generation)) without a notification")
                }
                generationMismatch = generation
            } else {
                generationMismatch = nil
            }
        } catch {
            tableHealth = "cannot check the table: \(error)"
            scheduleRepair("the safety check could not read the table: \(error)")
        }
    }

    private var generationMismatch: UInt32?
    /// Safety checks that read the table and the ruleset generation (shown by `status`).
    private var safetyChecks = 0

    // MARK: Warnings

    private struct Warning {
        var time: Date
        var text: String
    }

    private var warnings: [Warning] = []

    func addWarning(_ text: String) {
        warnings.append(Warning(time: SystemClock.wall(), text: "\(Timestamp.format(SystemClock.wall())): \(text)"))
        if warnings.count > 20 { warnings.removeFirst(warnings.count - 20) }
    }

    // MARK: Clock steps

    private var clockOffset: Double = 0

    /// The wall clock was set. Deadlines are monotonic, so local grants keep exactly the time they were given (and
    /// their kernel elements, on the same clock, agree); their wall-clock expiry is recomputed for display. Grants
    /// from files and controllers name an absolute expiry, which now lies at another distance: they follow it.
    public func clockStepped() {
        let now = SystemClock.now()
        let offset = now.wall.timeIntervalSince1970 - Double(now.monotonic.nanoseconds) / 1e9
        let step = offset - clockOffset
        // NTP slews the clock by microseconds; only a step is news.
        guard abs(step) >= 0.5 else { return }
        clockOffset = offset
        var changed: [AccessKey] = []
        var dropped: [Grant] = []
        for var grant in book.values {
            if grant.origin.hasAbsoluteExpiry {
                let deadline = now.deadline(forWall: grant.expiresAt)
                let longest = grant.ports.compactMap { policy.port(for: $0.service)?.maxDuration }.min() ?? 0
                if deadline <= now.monotonic || deadline.seconds(since: now.monotonic) > longest + 1 {
                    dropped.append(grant)
                    changed += book.remove(id: grant.id).changed
                    continue
                }
                grant.deadline = deadline
            } else {
                grant.expiresAt = now.wall(forDeadline: grant.deadline)
            }
            changed += book.put(grant).changed
        }
        submitLater(planner.update(Set(changed), book: book, now: now.monotonic))
        armExpiry()
        let text =
            "the wall clock was stepped by \(step >= 0 ? "+" : "")\(Int(step.rounded())) s; local grants keep the "
            + "time they were given, grants from files follow their absolute expiry"
            + (dropped.isEmpty ? "" : "; \(dropped.count) of those are now expired or beyond the policy and were dropped")
        audit.record(AuditEvent(.warning, detail: text))
        addWarning(text)
        logger.warning("wall clock stepped", metadata: ["clock.step_seconds": "\(step)"])
        // The snapshot then holds the re-based wall-clock expiries, for after a reboot.
        if !compacting, let (work, synced) = try? store.beginCompaction(book: book, settings: settings, now: now) {
            durable = max(durable, synced)
            compacting = true
            let disk = self.disk
            Task {
                try? await disk.runIfActive { try work() }
                self.compactionEnded()
            }
        }
    }

    // MARK: Policy reload

    /// SIGHUP: reads the policy again (parsed off the agent's executor). A policy that does not load leaves
    /// everything as it was. Nothing is flushed: rules and fixed sets are replaced in one transaction, grants stay
    /// unless the new policy no longer allows them.
    public func reload() async {
        audit.reopen()
        let path = configuration.policyPath
        let loaded = await Task.detached { Result { () throws(PolicyError) in try PolicyFile.load(path) } }.value
        let updated: Policy
        switch loaded {
        case .failure(let error):
            audit.record(AuditEvent(.refuse, detail: "reload refused, the previous policy stays in force: \(error)"))
            return
        case .success(let value):
            updated = value
        }
        let previous = policy
        await sampleTraffic()
        policy = updated
        do {
            try await kernel.install(layout)
            traffic.rulesReplaced()
        } catch {
            policy = previous
            audit.record(AuditEvent(.error, detail: "reload failed, the previous policy stays in force: \(error)"))
            return
        }
        let now = SystemClock.now()
        for origin in book.origins {
            if case .file(let filePath) = origin, !policy.grantFiles.contains(filePath) {
                removeFileGrants(filePath, reason: "grants file no longer in the policy", now: now)
                fileStamps[filePath] = nil
                fileProblems[filePath] = nil
            }
        }
        updateEtcdAuthority()
        dropEtcdGrantsOutsideLayout(reason: "no longer among this host's etcd keys after the reload")
        let dropped = dropGrantsOutsidePolicy(now: now, reason: "no longer allowed by the reloaded policy")
        fileStamps = [:]
        await refreshGrantFiles()
        if updated.metrics != previous.metrics {
            let note = "the metrics section changed; the endpoint follows it at the next restart "
                + "(systemctl restart drawbridge); until then it stays as at start: \(servedMetrics?.listen ?? "off")"
            audit.record(AuditEvent(.warning, detail: note))
            addWarning(note)
        }
        audit.record(
            AuditEvent(
                .reload,
                detail: "managed \(managedDescription); on_expiry \(policy.onExpiry.rawValue); \(dropped) grants dropped"))
    }

    /// Removes grants the current policy would refuse now (port no longer managed, source no longer allowed, time
    /// left beyond the port's longest duration).
    /// - Parameter exceptFiles: leave grants from files alone (at start: they were just read with this policy).
    private func dropGrantsOutsidePolicy(now: Instants, reason: String, exceptFiles: Bool = false) -> Int {
        let policy = self.policy
        let dropped = book.grants { grant in
            if exceptFiles, case .file = grant.origin { return false }
            return grant.ports.contains { port in
                guard let managed = policy.port(for: port.service) else { return true }
                return !managed.allowedSources.contains { $0.contains(grant.source) }
                    || grant.deadline.seconds(since: now.monotonic) > managed.maxDuration + 1
            }
        }
        var changed: [AccessKey] = []
        for grant in dropped { changed += book.remove(id: grant.id).changed }
        guard !dropped.isEmpty else { return 0 }
        appendClosing(dropped.filter(GrantStore.isStored).map { .remove(id: $0.id) })
        audit.record(batch: dropped.map { AuditEvent(.revoke, grant: $0, detail: reason) })
        submitLater(planner.update(Set(changed), book: book, now: now.monotonic))
        return dropped.count
    }

    // MARK: Grants files

    private var fileStamps: [String: FileStamp] = [:]
    private var fileProblems: [String: String] = [:]
    private var refreshingFiles = false
    private var refreshAgain = false

    /// The grants files the policy names.
    public var grantFilePaths: [String] { policy.grantFiles }

    /// Reads the grants files that changed (parsing off the agent's executor) and makes the kernel follow.
    public func refreshGrantFiles() async {
        if refreshingFiles {
            refreshAgain = true
            return
        }
        refreshingFiles = true
        repeat {
            refreshAgain = false
            for path in policy.grantFiles {
                let stamp = FileStamp(path)
                if let stamp, fileStamps[path] == stamp { continue }
                if stamp == nil, fileStamps[path] == .missing { continue }
                let policy = self.policy
                let now = SystemClock.now()
                let result = await Task.detached { readGrantsFile(path, policy: policy, now: now) }.value
                let targets = applyFile(path, result, now: now, initial: false)
                fileStamps[path] = stamp ?? .missing
                _ = await submit(targets)
                if targets.count > 10_000 { releaseFreeMemory() }
            }
        } while refreshAgain
        refreshingFiles = false
    }

    /// Puts a file's grants in the book: new and changed entries in, entries it no longer lists out.
    @discardableResult
    private func applyFile(
        _ path: String, _ result: Result<GrantsFile.Contents, FileFailure>, now: Instants, initial: Bool
    ) -> [ElementTarget] {
        let origin = GrantOrigin.file(path)
        let contents: GrantsFile.Contents
        switch result {
        case .failure(.missing):
            fileProblems[path] = nil
            return removeFileGrants(path, reason: "grants file \(path) is gone", now: now)
        case .failure(.unusable(let message)):
            if fileProblems[path] != message {
                audit.record(
                    AuditEvent(.error, origin: origin.description, detail: "\(message); keeping the last good grants"))
            }
            fileProblems[path] = message
            return []
        case .success(let value):
            contents = value
            fileProblems[path] = nil
            metrics.syncSucceeded("file:\(path)", at: now.wall.timeIntervalSince1970)
        }
        var events: [AuditEvent] = []
        let refusals = contents.refusals.prefix(100).map {
            AuditEvent(.refuse, user: path, origin: origin.description, detail: "\($0.entry): \($0.refusal.message)")
        }
        events += refusals
        if contents.refusals.count > 100 {
            events.append(
                AuditEvent(
                    .refuse, user: path, origin: origin.description,
                    detail: "\(contents.refusals.count - 100) more entries refused"))
        }
        let current = book.ids(from: origin)
        let prefix = GrantBook.fileIdentifierPrefix(for: path)
        let revokedHere = book.revokedFileGrants.filter { $0.hasPrefix(prefix) }
        // Nothing of this file in the book and none of its entries revoked (its first read): every grant is new, so
        // there is nothing to compare or remove.
        let onlyAdding = current.isEmpty && revokedHere.isEmpty
        var incoming = Set<String>(minimumCapacity: onlyAdding ? 0 : contents.grantCount)
        var changed: [AccessKey] = []
        // Audited one by one up to 1,000 changes, as a count beyond.
        var added: [Grant] = []
        var addedCount = 0
        // A first read of a big file (a restart) must not grow every table of the book a hundred times over.
        book.reserveCapacity(max(0, contents.grantCount - current.count), origin: origin)
        for var grant in contents.parts.joined() {
            if !onlyAdding {
                incoming.insert(grant.id)
                if revokedHere.contains(grant.id) { continue }
                if let existing = book[grant.id] {
                    grant.createdAt = existing.createdAt
                    if existing.source == grant.source, existing.ports == grant.ports,
                        existing.expiresAt == grant.expiresAt, existing.reason == grant.reason
                    {
                        continue
                    }
                }
            }
            let keys = book.put(grant).changed
            if !initial { changed += keys }
            addedCount += 1
            if added.count <= 1000 { added.append(grant) }
        }
        var removed: [Grant] = []
        for id in current where !incoming.contains(id) {
            let (grant, keys) = book.remove(id: id)
            if let grant { removed.append(grant) }
            changed += keys
        }
        // Revocations of entries the file no longer lists are forgotten: a new entry with that id is a new grant.
        let forgotten = revokedHere.filter { !incoming.contains($0) }
        for id in forgotten { book.forgetTombstone(id) }
        appendClosing(forgotten.map { .forgetTombstone(id: $0) })
        if addedCount + removed.count <= 1000 {
            events += added.map { AuditEvent(.grant, grant: $0) }
            events += removed.map { AuditEvent(.revoke, grant: $0, detail: "no longer in \(path)") }
        } else {
            events.append(
                AuditEvent(
                    .grant, user: path, origin: origin.description,
                    detail: "grants file read: \(addedCount) grants added or changed, \(removed.count) removed, "
                        + "\(contents.refusals.count) refused"))
        }
        audit.record(batch: events)
        armExpiry()
        return initial ? [] : planner.update(Set(changed), book: book, now: now.monotonic)
    }

    @discardableResult
    private func removeFileGrants(_ path: String, reason: String, now: Instants) -> [ElementTarget] {
        var changed: [AccessKey] = []
        var removed: [Grant] = []
        for id in book.ids(from: .file(path)) {
            let (grant, keys) = book.remove(id: id)
            if let grant { removed.append(grant) }
            changed += keys
        }
        audit.record(batch: removed.prefix(1000).map { AuditEvent(.revoke, grant: $0, detail: reason) })
        let targets = planner.update(Set(changed), book: book, now: now.monotonic)
        submitLater(targets)
        return []
    }
}

/// Why a grants file gave nothing this time.
enum FileFailure: Error, Sendable {
    /// It does not exist: its grants end.
    case missing
    /// It exists but cannot be used: its last good grants stay.
    case unusable(String)
}

/// Reads and parses a grants file (off the agent's executor).
///
/// - Parameter everyCore: read a large file in pieces on every core: at start, when nothing else waits for the agent
///   (it serves nothing until enforcement is complete). A later re-read leaves the other cores to the requests.
func readGrantsFile(
    _ path: String, policy: Policy, now: Instants, everyCore: Bool = false
) -> Result<GrantsFile.Contents, FileFailure> {
    do {
        let bytes = try Files.readTrusted(path, maximumBytes: GrantsFile.maximumBytes)
        let cores = everyCore ? max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) : 1
        return .success(
            try GrantsFile.parse(
                bytes, path: path, policy: policy, now: now, pieces: cores > 1 ? min(64, 16 * cores) : 1,
                forEach: { count, body in DispatchQueue.concurrentPerform(iterations: count, execute: body) }))
    } catch let problem as FileProblem {
        return .failure(problem.isMissing ? .missing : .unusable(problem.description))
    } catch let error as GrantsFile.FormatError {
        return .failure(.unusable(error.description))
    } catch {
        return .failure(.unusable("\(error)"))
    }
}

extension Result<GrantsFile.Contents, FileFailure> {
    /// How many grants applying this file at start puts in the book.
    func grantCount(skipping revoked: Set<String>) -> Int {
        guard case .success(let contents) = self else { return 0 }
        guard !revoked.isEmpty else { return contents.grantCount }
        return contents.parts.reduce(0) { total, part in total + part.count { !revoked.contains($0.id) } }
    }
}

/// What identifies a version of a file without reading it.
struct FileStamp: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int64
    var changed: Int64

    static let missing = FileStamp(device: 0, inode: 0, size: -1, modified: 0, changed: 0)

    init(device: UInt64, inode: UInt64, size: Int64, modified: Int64, changed: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modified = modified
        self.changed = changed
    }

    /// The stamp of what is at `path` now, or nil when nothing is.
    init?(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.init(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modified: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
            changed: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec))
    }
}
