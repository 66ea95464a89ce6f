import DrawbridgeCore
import Foundation
import Logging
import Netfilter

#if canImport(Glibc)
    import Glibc
#endif

/// Where the agent reads and writes.
public struct AgentConfiguration: Sendable {
    public var policyPath: String
    public var socketPath: String
    /// The group that may use the socket; nil leaves it to root.
    public var socketGroup: String?
    public var stateDirectory: String
    public var auditLogPath: String
    public var version: String

    public init(
        policyPath: String, socketPath: String, socketGroup: String?, stateDirectory: String, auditLogPath: String,
        version: String
    ) {
        self.policyPath = policyPath
        self.socketPath = socketPath
        self.socketGroup = socketGroup
        self.stateDirectory = stateDirectory
        self.auditLogPath = auditLogPath
        self.version = version
    }
}

/// The agent: the one owner of the grant book and of every kernel change.
///
/// Desired state is the union of all grants (local requests, grants files), each checked against the policy; the
/// kernel is made to follow it one atomic transaction per change. The kernel is read only when it must be: at start,
/// after another program changed the ruleset, or when a change built from the last known state fails.
public actor Agent {
    private let configuration: AgentConfiguration
    private let logger: Logger
    private let audit: AuditLog
    private let store: StateStore
    private let enforcer: GrantEnforcer
    private var policy: Policy
    private var book: GrantBook
    /// What the kernel's grant sets hold after our last commit (normalized desired state).
    private var kernelView: [AccessKey: Date] = [:]
    /// The ruleset generation after our last commit; any other value means another program changed the ruleset.
    private var knownGeneration: UInt32?
    private var grantFileStamps: [String: FileStamp] = [:]

    /// Loads the policy and the stored grants and opens the kernel connection; changes nothing yet.
    public init(configuration: AgentConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        policy = try Policy.load(path: configuration.policyPath)
        store = try StateStore(directory: configuration.stateDirectory)
        book = try store.load()
        audit = try AuditLog(path: configuration.auditLogPath, logger: logger)
        enforcer = GrantEnforcer(connection: try NetfilterConnection())
    }

    // MARK: Life cycle

    /// Installs the table (keeping any grant elements already in the kernel), restores the stored grants with their
    /// remaining time and reads the grants files. Enforcement is complete when this returns.
    public func start() throws {
        let expired = book.removeExpired(now: Date())
        for grant in expired {
            audit.record(AuditEvent(.expire, grant: grant, detail: "expired while the agent was down"))
        }
        // (Not `catch where`: Swift 6.3 crashes compiling it here, for a typed throw inside an untyped one.)
        var installFailure: NetfilterError?
        do {
            try enforcer.install(
                mode: policy.onExpiry, managedServices: policy.managedServices, alwaysAllowed: policy.alwaysAllow)
        } catch {
            installFailure = error
        }
        if let installFailure {
            guard installFailure.code == .alreadyExists else { throw installFailure }
            throw AgentError(
                "\(installFailure). The kernel holds a table inet \(DrawbridgeTable.name) whose sets are laid out "
                    + "differently (made by another drawbridge version or by hand): remove it with `drawbridged "
                    + "--remove-table` (managed ports open until the agent starts again) and start the agent again")
        }
        _ = dropGrantsOutsidePolicy(reason: "no longer allowed by the policy")
        for path in policy.grantFiles { _ = loadGrantFile(path) }
        try store.save(book)
        let outcome = try fullReconcile()
        audit.record(
            AuditEvent(
                .start,
                detail:
                    "policy \(configuration.policyPath); managed \(managedDescription); \(book.grants.count) grants "
                    + "restored; kernel: \(outcome.diff.additions.count) added, \(outcome.diff.refreshes.count) "
                    + "refreshed, \(outcome.diff.deletions.count + outcome.foreignRemoved) removed"))
    }

    /// Records the stop. Enforcement stays in the kernel: stopping the agent opens nothing and closes nothing.
    public func stop() {
        audit.record(AuditEvent(.stop, detail: "kernel enforcement left in place"))
    }

    private var managedDescription: String {
        policy.ports.isEmpty ? "nothing" : policy.ports.map { "\($0.name) \($0.service)" }.joined(separator: ", ")
    }

    // MARK: Requests

    public func handle(_ request: LocalAPI.Request, from caller: Caller) -> LocalAPI.Response {
        switch request.command {
        case .grant: return grant(request, caller)
        case .revoke: return revoke(request, caller)
        case .list: return list()
        case .status:
            return LocalAPI.Response(
                ok: true,
                status: LocalAPI.AgentStatus(
                    version: configuration.version, policyPath: configuration.policyPath,
                    managedPorts: policy.ports.map { GrantedPort(name: $0.name, service: $0.service) },
                    onExpiry: policy.onExpiry, activeGrants: book.grants.count,
                    kernelRelease: (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
                        .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"))
        }
    }

    private func badRequest(_ message: String, _ request: LocalAPI.Request, _ caller: Caller) -> LocalAPI.Response {
        audit.record(
            AuditEvent(
                .refuse, user: caller.user, uid: caller.uid, source: request.source,
                ports: request.ports, reason: request.reason, origin: "local", detail: message))
        return .failure(.init(code: .badRequest, message: message))
    }

    private func grant(_ request: LocalAPI.Request, _ caller: Caller) -> LocalAPI.Response {
        guard let ports = request.ports, !ports.isEmpty else {
            return badRequest("a grant needs at least one port", request, caller)
        }
        guard let sourceText = request.source else {
            return badRequest("a grant needs a source (--from)", request, caller)
        }
        let parsed = Result { () throws(PrefixError) in try IPPrefix(parsing: sourceText) }
        guard case .success(let source) = parsed else {
            if case .failure(let error) = parsed { return badRequest(error.description, request, caller) }
            return badRequest("bad source", request, caller)
        }
        guard let seconds = request.durationSeconds, seconds.isFinite, seconds >= 1 else {
            return badRequest("a grant needs a duration of at least 1 second (--for)", request, caller)
        }
        let reason = request.reason ?? ""
        guard reason.utf8.count <= 1024, !reason.contains(where: { $0.isNewline }) else {
            return badRequest("the reason must be one line of at most 1024 bytes", request, caller)
        }
        let asked = GrantRequest(ports: ports, source: source, duration: seconds, reason: reason)
        let authorized: AuthorizedGrant
        switch policy.authorize(asked, by: caller) {
        case .failure(let refusal):
            audit.record(
                AuditEvent(
                    .refuse, user: caller.user, uid: caller.uid, source: source.description,
                    ports: ports, reason: reason, origin: "local", detail: refusal.message))
            return .failure(.init(code: .refused, reason: refusal.reason.rawValue, message: refusal.message))
        case .success(let value):
            authorized = value
        }

        let now = Date()
        // Whole seconds: the state file, the audit trail and the kernel then agree on the instant.
        let expiresAt = Date(timeIntervalSince1970: (now.timeIntervalSince1970 + authorized.duration).rounded(.down))
        let grant = Grant(
            id: Grant.newIdentifier(), source: source,
            ports: authorized.ports.map { GrantedPort(name: $0.name, service: $0.service) }, createdAt: now,
            expiresAt: expiresAt, requestedBy: caller.user, uid: caller.uid, reason: reason, origin: .local)
        var updated = book
        let recorded = updated.record(grant, now: now)
        let result: Grant
        let event: AuditEvent.Kind
        switch recorded {
        case .unchanged(let existing):
            return LocalAPI.Response(ok: true, grants: [status(of: existing)], outcome: "unchanged")
        case .created(let created):
            result = created
            event = .grant
        case .extended(_, let current):
            result = current
            event = .extend
        }
        if let failure = commit(updated, operation: "grant") {
            audit.record(AuditEvent(.error, grant: result, detail: failure.message))
            return .failure(failure)
        }
        audit.record(AuditEvent(event, grant: result))
        return LocalAPI.Response(
            ok: true, grants: [status(of: result)], outcome: event == .grant ? "created" : "extended")
    }

    private func revoke(_ request: LocalAPI.Request, _ caller: Caller) -> LocalAPI.Response {
        var updated = book
        let revoked: [Grant]
        if let id = request.id, request.source == nil {
            guard let grant = book.grants[id] else {
                return .failure(.init(code: .notFound, message: "no active grant has id \(id); see `drawbridge list`"))
            }
            guard mayRevoke(grant, caller) else { return forbidden(grant, caller) }
            revoked = [updated.revoke(id: id)!]
        } else if let text = request.source, request.id == nil {
            let prefix: IPPrefix
            do {
                prefix = try IPPrefix(parsing: text)
            } catch {
                return .failure(.init(code: .badRequest, message: error.description))
            }
            let matching = book.grants.values.filter { prefix.contains($0.source) }
            guard !matching.isEmpty else {
                return .failure(.init(code: .notFound, message: "no active grant comes from within \(prefix)"))
            }
            if let denied = matching.first(where: { !mayRevoke($0, caller) }) { return forbidden(denied, caller) }
            revoked = updated.revoke(within: prefix)
        } else {
            return .failure(.init(code: .badRequest, message: "revoke needs either a grant id or a source prefix"))
        }
        if let failure = commit(updated, operation: "revoke") { return .failure(failure) }
        for grant in revoked {
            audit.record(
                AuditEvent(
                    .revoke, grant: grant, user: caller.user, uid: caller.uid,
                    detail: "revoked by \(caller.user) (uid \(caller.uid))"))
        }
        return LocalAPI.Response(
            ok: true, grants: revoked.map { LocalAPI.GrantStatus(grant: $0, kernelRemainingSeconds: [:]) })
    }

    /// Root, the user who asked for the grant, or anyone whose roles cover all of its ports.
    private func mayRevoke(_ grant: Grant, _ caller: Caller) -> Bool {
        if caller.isRoot || (grant.uid != nil && grant.uid == caller.uid) { return true }
        return grant.ports.allSatisfy { port in
            policy.roles.contains { caller.groups.contains($0.group) && $0.ports.contains(port.name) }
        }
    }

    private func forbidden(_ grant: Grant, _ caller: Caller) -> LocalAPI.Response {
        audit.record(
            AuditEvent(
                .refuse, grant: grant, user: caller.user, uid: caller.uid,
                detail: "revoke of a grant by \(grant.requestedBy) not permitted"))
        return .failure(
            .init(
                code: .forbidden,
                message:
                    "\(caller.user) may not revoke \(grant.id) (asked for by \(grant.requestedBy)); only root, its "
                    + "requester, or a member of a role covering \(grant.ports.map(\.name).joined(separator: ", ")) may"
            ))
    }

    /// Every grant with what the kernel holds for it right now.
    private func list() -> LocalAPI.Response {
        let kernel: KernelAccessState
        do {
            kernel = try enforcer.read()
        } catch {
            return .failure(.init(code: .kernel, message: "cannot read the kernel's grant sets: \(error)"))
        }
        let index = KernelIndex(kernel.elements)
        return LocalAPI.Response(ok: true, grants: book.sorted.map { status(of: $0, kernel: index, at: kernel.readAt) })
    }

    private func status(of grant: Grant) -> LocalAPI.GrantStatus {
        status(of: grant, kernel: KernelIndex(kernelView), at: Date())
    }

    /// For each port of a grant, the longest time any kernel element covering its source still has.
    private func status(of grant: Grant, kernel: KernelIndex, at instant: Date) -> LocalAPI.GrantStatus {
        var remaining: [String: Double?] = [:]
        for port in grant.ports {
            remaining[port.name] = kernel.latestExpiry(overlapping: grant.source, port.service)
                .map { max(0, $0.timeIntervalSince(instant)) }
        }
        return LocalAPI.GrantStatus(grant: grant, kernelRemainingSeconds: remaining)
    }

    // MARK: Kernel

    /// Persists `updated` and makes the kernel follow it; on failure puts everything back as it was.
    private func commit(_ updated: GrantBook, operation: String) -> LocalAPI.Failure? {
        let previous = book
        do {
            try store.save(updated)
        } catch {
            return .init(code: .internal, message: "cannot store the grants, nothing changed: \(error)")
        }
        book = updated
        do {
            try enforce()
            return nil
        } catch {
            book = previous
            try? store.save(previous)
            try? enforce()
            return .init(code: .kernel, message: "the kernel refused the change, nothing changed: \(error)")
        }
    }

    /// Applies the difference between the book and the kernel as one transaction, from the last known kernel state
    /// when the ruleset has not changed since; otherwise (or when that fails) reads the kernel and reconciles.
    private func enforce() throws {
        let now = Date()
        let desired = AccessPlan.normalize(book.desiredAccess(now: now))
        guard let generation = knownGeneration else {
            try fullReconcile()
            return
        }
        let diff = ElementDiff(desired: desired, actual: kernelView, now: now)
        guard !diff.isEmpty else { return }
        let failure: NetfilterError
        do {
            let report = try enforcer.apply(diff, generation: generation)
            knownGeneration = generation &+ UInt32(report.transactions)
            kernelView = desired
            return
        } catch {
            failure = error
        }
        switch failure.code {
        case .generationChanged, .elementAbsent, .outcomeUnknown:
            logger.info("kernel state moved; reading it again", metadata: ["kernel.error": "\(failure)"])
            try repair(trigger: "a change built from the last known state failed: \(failure)")
        case .tableMissing, .objectMissing:
            try repair(trigger: "\(failure)")
        default:
            throw failure
        }
    }

    @discardableResult
    private func fullReconcile() throws -> ReconcileOutcome {
        let desired = book.desiredAccess(now: Date())
        let outcome = try enforcer.reconcile(desired: desired)
        kernelView = AccessPlan.normalize(desired)
        knownGeneration = outcome.generation
        return outcome
    }

    /// Puts the table back as the policy wants it and the grant elements as the book wants them, and says so in
    /// the audit trail when anything had to be restored.
    private func repair(trigger: String) throws {
        let problems = try enforcer.verify(
            mode: policy.onExpiry, managedServices: policy.managedServices, alwaysAllowed: policy.alwaysAllow)
        if !problems.isEmpty {
            try enforcer.install(
                mode: policy.onExpiry, managedServices: policy.managedServices, alwaysAllowed: policy.alwaysAllow)
        }
        let outcome = try fullReconcile()
        let restored = outcome.diff.additions.count + outcome.diff.refreshes.count
        let removed = outcome.diff.deletions.count + outcome.foreignRemoved
        guard !problems.isEmpty || restored > 0 || removed > 0 else { return }
        var detail = problems
        if restored > 0 { detail.append("\(restored) grant elements restored") }
        if removed > 0 { detail.append("\(removed) elements no grant accounts for removed") }
        audit.record(AuditEvent(.repair, detail: detail.joined(separator: "; ") + " (after: \(trigger))"))
    }

    // MARK: Periodic duties

    /// Once a second: notice expiries, foreign changes to the ruleset, and edited grants files.
    public func tick() {
        let now = Date()
        let expired = book.removeExpired(now: now)
        if !expired.isEmpty {
            for grant in expired { audit.record(AuditEvent(.expire, grant: grant)) }
            kernelView = kernelView.filter { $0.value > now }
            persist()
        }
        verifyKernel()
        checkGrantFiles()
    }

    /// The grants files the policy names.
    public var grantFilePaths: [String] { policy.grantFiles }

    /// Reads the grants files that changed and makes the kernel follow. Called when inotify reports a change in
    /// their directories, and once a second in case it did not.
    public func checkGrantFiles() {
        var changed = false
        for path in policy.grantFiles where loadGrantFile(path) { changed = true }
        guard changed else { return }
        persist()
        do { try enforce() } catch {
            audit.record(AuditEvent(.error, detail: "applying grants file changes failed: \(error)"))
        }
    }

    /// Repairs the table when any other program committed a ruleset change since our last commit. Called at once
    /// on every nf_tables notification, and once a second in case notifications were lost.
    public func verifyKernel() {
        do {
            let generation = try enforcer.connection.generation()
            if generation != knownGeneration {
                try repair(
                    trigger: "the ruleset generation moved from \(knownGeneration.map(String.init) ?? "none") "
                        + "to \(generation) without drawbridge")
            }
        } catch {
            logger.error("kernel check failed", metadata: ["kernel.error": "\(error)"])
        }
    }

    private func persist() {
        do { try store.save(book) } catch {
            logger.error("cannot store the grants", metadata: ["state.error": "\(error)"])
        }
    }

    /// SIGHUP: reads the policy again. A policy that does not load leaves everything as it was. Nothing is
    /// flushed: the rules and fixed sets are replaced in one transaction, grants stay unless the new policy no
    /// longer allows them.
    public func reload() {
        let updated: Policy
        do {
            updated = try Policy.load(path: configuration.policyPath)
        } catch {
            audit.record(AuditEvent(.refuse, detail: "reload refused, the previous policy stays in force: \(error)"))
            return
        }
        let previous = policy
        policy = updated
        do {
            try enforcer.install(
                mode: policy.onExpiry, managedServices: policy.managedServices, alwaysAllowed: policy.alwaysAllow)
            let dropped = dropGrantsOutsidePolicy(reason: "no longer allowed by the reloaded policy")
            grantFileStamps = grantFileStamps.filter { policy.grantFiles.contains($0.key) }
            for origin in Set(book.grants.values.map(\.origin)) {
                if case .file(let path) = origin, !policy.grantFiles.contains(path) {
                    for grant in book.replaceGrants(from: origin, with: []).removed {
                        audit.record(AuditEvent(.revoke, grant: grant, detail: "grants file no longer in the policy"))
                    }
                }
            }
            for path in policy.grantFiles {
                grantFileStamps[path] = nil
                _ = loadGrantFile(path)
            }
            persist()
            try fullReconcile()
            audit.record(
                AuditEvent(
                    .reload,
                    detail: "managed \(managedDescription); on_expiry \(policy.onExpiry.rawValue); "
                        + "\(dropped) grants dropped"))
        } catch {
            policy = previous
            audit.record(AuditEvent(.error, detail: "reload failed, the previous policy stays in force: \(error)"))
            _ = try? enforcer.install(
                mode: policy.onExpiry, managedServices: policy.managedServices, alwaysAllowed: policy.alwaysAllow)
        }
    }

    /// Removes grants the current policy would refuse now (port no longer managed, source no longer allowed, time
    /// left beyond the port's longest duration).
    private func dropGrantsOutsidePolicy(reason: String) -> Int {
        let now = Date()
        let dropped = book.removeAll { grant in
            grant.ports.contains { port in
                guard let managed = policy.port(for: port.service) else { return true }
                let remaining = grant.expiresAt.timeIntervalSince(now)
                return !managed.allowedSources.contains { $0.contains(grant.source) }
                    || remaining > managed.maxDuration + 1
            }
        }
        for grant in dropped { audit.record(AuditEvent(.revoke, grant: grant, detail: reason)) }
        return dropped.count
    }

    // MARK: Grants files

    private func keepLastGood(_ origin: GrantOrigin, _ why: String) -> Bool {
        audit.record(
            AuditEvent(
                .error, origin: origin.description, detail: "\(why); keeping the last good grants from this file"))
        return false
    }

    struct FileStamp: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: Int
        var modifiedNanoseconds: Int
        var changed: Int
    }

    /// Reads a grants file if it changed since the last look. A file that cannot be read or parsed, or that anyone
    /// but root (or this agent's user) could have written, keeps the last good grants from it.
    ///
    /// - Returns: whether the book changed.
    private func loadGrantFile(_ path: String) -> Bool {
        let origin = GrantOrigin.file(path)
        var info = stat()
        guard stat(path, &info) == 0 else {
            guard
                grantFileStamps[path]
                    != FileStamp(device: 0, inode: 0, size: -1, modified: 0, modifiedNanoseconds: 0, changed: 0)
            else { return false }
            grantFileStamps[path] = FileStamp(
                device: 0, inode: 0, size: -1, modified: 0, modifiedNanoseconds: 0, changed: 0)
            let removed = book.replaceGrants(from: origin, with: []).removed
            for grant in removed {
                audit.record(AuditEvent(.revoke, grant: grant, detail: "grants file \(path) is gone"))
            }
            return !removed.isEmpty
        }
        let stamp = FileStamp(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modified: info.st_mtim.tv_sec, modifiedNanoseconds: info.st_mtim.tv_nsec, changed: info.st_ctim.tv_sec)
        guard grantFileStamps[path] != stamp else { return false }
        grantFileStamps[path] = stamp

        guard info.st_uid == 0 || info.st_uid == geteuid() else {
            return keepLastGood(origin, "\(path) is owned by uid \(info.st_uid), not root")
        }
        guard info.st_mode & 0o022 == 0 else {
            return keepLastGood(
                origin, "\(path) is writable by group or others (mode \(String(info.st_mode & 0o777, radix: 8)))")
        }
        let contents: GrantsFile.Contents
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            contents = try GrantsFile.parse(data, path: path, policy: policy, now: Date())
        } catch let error as GrantsFile.FormatError {
            return keepLastGood(origin, error.description)
        } catch {
            return keepLastGood(origin, "cannot read \(path): \(error.localizedDescription)")
        }
        for (entry, refusal) in contents.refusals {
            audit.record(
                AuditEvent(.refuse, user: path, origin: origin.description, detail: "\(entry): \(refusal.message)"))
        }
        let (added, removed) = book.replaceGrants(from: origin, with: contents.grants)
        for grant in added { audit.record(AuditEvent(.grant, grant: grant)) }
        for grant in removed { audit.record(AuditEvent(.revoke, grant: grant, detail: "no longer in \(path)")) }
        return !added.isEmpty || !removed.isEmpty
    }
}

/// Kernel elements arranged for `list`: an exact lookup per single address, a scan only over the elements that
/// could overlap, so listing many grants does not compare every grant with every element.
private struct KernelIndex {
    let exact: [AccessKey: Date]
    /// By service: every element (for prefix grants) and the prefix elements only (for single-address grants).
    let byService: [Service: [(IPPrefix, Date)]]
    let prefixesByService: [Service: [(IPPrefix, Date)]]

    init(_ elements: [AccessKey: Date]) {
        exact = elements
        var byService: [Service: [(IPPrefix, Date)]] = [:]
        var prefixes: [Service: [(IPPrefix, Date)]] = [:]
        for (key, expiry) in elements {
            byService[key.service, default: []].append((key.source, expiry))
            if !key.source.isSingleAddress { prefixes[key.service, default: []].append((key.source, expiry)) }
        }
        self.byService = byService
        prefixesByService = prefixes
    }

    /// The latest expiry of the elements for `service` whose source contains `source` or lies inside it.
    func latestExpiry(overlapping source: IPPrefix, _ service: Service) -> Date? {
        let candidates = source.isSingleAddress ? prefixesByService[service] ?? [] : byService[service] ?? []
        var latest = source.isSingleAddress ? exact[AccessKey(source: source, service: service)] : nil
        for (prefix, expiry) in candidates where prefix.contains(source) || source.contains(prefix) {
            latest = max(latest ?? expiry, expiry)
        }
        return latest
    }
}
