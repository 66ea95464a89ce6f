import DrawbridgeCore
import FoundationEssentials
import HostSystem
import Logging
import Synchronization

/// Who may hand the agent grants from etcd: root, and the uid of the policy's `etcd.sync_user` (looked up at start
/// and on reload). Read by the socket server when a connection arrives, to let that caller send a large snapshot.
public final class EtcdSyncAuthority: Sendable {
    private let uid = Mutex<UInt32?>(nil)

    public init() {}

    public var syncUID: UInt32? { uid.withLock { $0 } }

    func set(_ value: UInt32?) { uid.withLock { $0 = value } }

    public func maySync(_ caller: UInt32) -> Bool { caller == 0 || caller == syncUID }
}

/// What the agent knows of etcd: the revision it enforces, what the sync process last said about its connection,
/// and the keys it refused (so a snapshot every ten minutes does not audit the same refusal again).
struct EtcdView {
    var appliedRevision: Int64?
    var connection: EtcdConnectionReport?
    var lastContact: MonotonicInstant?
    var refused: [String: String] = [:]
}

extension Agent {
    /// The layout of this host's keys, when the policy takes grants from etcd.
    var etcdLayout: EtcdLayout? { policy.etcd.map { $0.layout(host: hostName) } }

    func etcdSync(_ update: EtcdUpdate, _ caller: Caller) async -> LocalAPI.Response {
        guard let layout = etcdLayout else {
            return .failure(
                .init(code: .badRequest, message: "this host's policy has no etcd section; it takes no grants from etcd"))
        }
        guard etcdAuthority.maySync(caller.uid) else {
            audit.record(
                AuditEvent(
                    .refuse, user: caller.user, uid: caller.uid, origin: "etcd",
                    detail: "etcd-sync from a caller that is neither root nor \(policy.etcd?.syncUser ?? "")"))
            return .failure(
                .init(
                    code: .forbidden,
                    message: "only root and the etcd sync user (\(policy.etcd?.syncUser ?? "")) may hand the agent "
                        + "grants from etcd"))
        }
        let now = SystemClock.now()
        etcd.lastContact = now.monotonic
        var results: [LocalAPI.EtcdResult] = []
        results.reserveCapacity(update.changes.count)
        var changed: [AccessKey] = []
        var closing: [StateRecord] = []
        var opening: [Grant] = []
        var events: [AuditEvent] = []
        var seen = Set<String>()
        var refusedNow: [String: String] = [:]

        func refuse(_ key: String, _ detail: String, requester: String? = nil) {
            results.append(.init(key: key, state: .refused, detail: detail))
            refusedNow[key] = detail
            if etcd.refused[key] != detail {
                events.append(AuditEvent(.refuse, user: requester, origin: "etcd:\(key)", detail: detail))
            }
        }
        func end(_ id: String, because reason: String) -> Grant? {
            let (grant, keys) = book.remove(id: id)
            guard let grant else { return nil }
            changed += keys
            closing.append(.remove(id: id))
            events.append(AuditEvent(.revoke, grant: grant, detail: reason))
            return grant
        }

        let storageProblem = store.problem
        for change in update.changes {
            let key = change.key
            let place: (directory: String, id: String)
            switch layout.grantKey(key) {
            case .failure(let problem):
                refuse(key, problem.message)
                continue
            case .success(let value): place = value
            }
            let id = EtcdLayout.bookIdentifier(directory: place.directory, id: place.id)
            seen.insert(id)
            switch change {
            case .delete:
                refusedNow[key] = nil
                etcd.refused[key] = nil
                if book.revokedFileGrants.contains(id) {
                    book.forgetTombstone(id)
                    closing.append(.forgetTombstone(id: id))
                }
                let ended = end(id, because: "etcd key deleted")
                results.append(.init(key: key, state: .removed, id: ended?.id))
            case .unusable(_, let problem):
                _ = end(id, because: "etcd value unusable: \(problem)")
                refuse(key, "malformed value: \(problem)")
            case .put(_, let value):
                switch EtcdGrantValue.grant(
                    key: key, directory: place.directory, id: place.id, value: value, policy: policy, now: now)
                {
                case .failure(let refusal):
                    _ = end(id, because: "etcd value changed to one this host refuses: \(refusal.message)")
                    refuse(key, refusal.message)
                case .success(var grant):
                    if book.revokedFileGrants.contains(id) {
                        results.append(.init(key: key, state: .revoked, id: id, detail: "revoked on this host by root"))
                        continue
                    }
                    if let existing = book[id] {
                        grant.createdAt = existing.createdAt
                        if existing.source == grant.source, existing.ports == grant.ports,
                            existing.expiresAt == grant.expiresAt, existing.reason == grant.reason,
                            existing.requestedBy == grant.requestedBy, existing.origin == grant.origin
                        {
                            results.append(.init(key: key, state: .unchanged, id: id))
                            continue
                        }
                    }
                    if let storageProblem {
                        refuse(key, "cannot be recorded on this host: \(storageProblem)", requester: grant.requestedBy)
                        continue
                    }
                    opening.append(grant)
                    results.append(.init(key: key, state: .applied, id: id))
                }
            }
        }
        if update.complete {
            // A snapshot lists every key: grants from etcd it does not name end, and so do their tombstones.
            for id in book.idsFromEtcd where !seen.contains(id) {
                if let grant = end(id, because: "no longer in etcd") {
                    if case .etcd(let key) = grant.origin { results.append(.init(key: key, state: .removed, id: id)) }
                }
            }
            for id in book.revokedFileGrants where id.hasPrefix("e-") && !seen.contains(id) {
                book.forgetTombstone(id)
                closing.append(.forgetTombstone(id: id))
            }
            etcd.refused = refusedNow
        } else {
            etcd.refused.merge(refusedNow) { $1 }
        }

        // Close first: removals go to the kernel before anything is written; openings wait until recorded.
        if !changed.isEmpty {
            let targets = planner.update(Set(changed), book: book, now: now.monotonic)
            submitLater(targets)
            appendClosing(closing)
        } else if !closing.isEmpty {
            appendClosing(closing)
        }
        changed = []
        if !opening.isEmpty {
            do {
                try store.appendOpening(opening.map { .put($0) })
            } catch {
                for grant in opening {
                    if case .etcd(let key) = grant.origin {
                        if let index = results.lastIndex(where: { $0.key == key && $0.state == .applied }) {
                            results[index] = .init(
                                key: key, state: .refused, detail: "cannot be recorded on this host: \(error)")
                        }
                    }
                }
                opening = []
            }
        }
        if !opening.isEmpty {
            let position = store.position
            for grant in opening {
                events.append(AuditEvent(book[grant.id] == nil ? .grant : .extend, grant: grant))
                changed += book.put(grant).changed
            }
            let targets = planner.update(Set(changed), book: book, now: now.monotonic)
            armExpiry()
            let settled = await settle(position, targets)
            var problem: String?
            if case .failed(let error) = settled.kernel {
                problem = "the kernel refused the change: \(error)"
            } else if case .failure(let error) = settled.durability {
                problem = "could not be stored durably: \(error)"
            }
            if let problem {
                for grant in opening {
                    withdraw(grant, restoring: nil, because: problem)
                    if case .etcd(let key) = grant.origin,
                        let index = results.lastIndex(where: { $0.key == key && $0.state == .applied })
                    {
                        results[index] = .init(key: key, state: .refused, detail: problem)
                    }
                }
            }
        }
        if events.count > 1000 {
            let counts = Dictionary(grouping: results, by: \.state).mapValues(\.count)
            audit.record(batch: Array(events.prefix(1000)))
            audit.record(
                AuditEvent(
                    .warning, origin: "etcd",
                    detail: "etcd revision \(update.revision): \(events.count - 1000) more audit records summarised: "
                        + counts.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.value) \($0.key.rawValue)" }
                        .joined(separator: ", ")))
        } else {
            audit.record(batch: events)
        }
        etcd.appliedRevision = update.revision
        metrics.syncSucceeded("etcd", at: SystemClock.wall().timeIntervalSince1970, revision: update.revision)
        if let latest = etcd.connection?.revision, latest < update.revision { etcd.connection?.revision = update.revision }
        compactIfWanted()
        return LocalAPI.Response(ok: true, etcd: LocalAPI.EtcdReport(revision: update.revision, results: results))
    }

    func etcdConnection(_ report: EtcdConnectionReport, _ caller: Caller) -> LocalAPI.Response {
        guard policy.etcd != nil else {
            return .failure(
                .init(code: .badRequest, message: "this host's policy has no etcd section; it takes no grants from etcd"))
        }
        guard etcdAuthority.maySync(caller.uid) else {
            return .failure(
                .init(
                    code: .forbidden,
                    message: "only root and the etcd sync user (\(policy.etcd?.syncUser ?? "")) may report etcd's state"))
        }
        if etcd.connection?.connected == true && !report.connected { metrics.syncRestarted("etcd") }
        if etcd.connection?.connected != report.connected {
            logger.notice(
                report.connected ? "etcd connected" : "etcd disconnected",
                metadata: ["etcd.endpoint": "\(report.endpoint ?? "")", "etcd.error": "\(report.error ?? "")"])
        }
        etcd.connection = report
        etcd.lastContact = SystemClock.monotonic()
        return LocalAPI.Response(ok: true)
    }

    var etcdStatus: LocalAPI.EtcdStatus? {
        guard let layout = etcdLayout else { return nil }
        let connection: String
        switch etcd.connection?.connected {
        case true?: connection = "connected"
        case false?: connection = "disconnected"
        case nil: connection = "waiting for drawbridge-etcd"
        }
        return LocalAPI.EtcdStatus(
            host: layout.host, directories: layout.directories, connection: connection,
            endpoint: etcd.connection?.endpoint, error: etcd.connection?.error, appliedRevision: etcd.appliedRevision,
            latestRevision: etcd.connection?.revision,
            secondsSinceContact: etcd.lastContact.map { SystemClock.monotonic().seconds(since: $0) },
            grants: book.idsFromEtcd.count, refused: etcd.refused.count)
    }

    /// Ends grants from etcd whose keys the policy no longer follows (etcd section removed, host or groups changed).
    /// At start they are only dropped from the book (the table is built after); later the kernel follows.
    func dropEtcdGrantsOutsideLayout(reason: String, starting: Bool = false) {
        let layout = etcdLayout
        var changed: [AccessKey] = []
        var records: [StateRecord] = []
        var events: [AuditEvent] = []
        for id in book.idsFromEtcd {
            guard let grant = book[id], case .etcd(let key) = grant.origin else { continue }
            if let layout, case .success = layout.grantKey(key) { continue }
            changed += book.remove(id: id).changed
            records.append(.remove(id: id))
            events.append(AuditEvent(.revoke, grant: grant, detail: reason))
        }
        guard !records.isEmpty else { return }
        etcd = EtcdView()
        appendClosing(records)
        audit.record(batch: events)
        if !starting { submitLater(planner.update(Set(changed), book: book, now: SystemClock.monotonic())) }
    }

    /// The sync user's uid, from the policy, for the socket server; a missing account leaves only root.
    func updateEtcdAuthority() {
        guard let name = policy.etcd?.syncUser else {
            etcdAuthority.set(nil)
            return
        }
        let uid = Accounts.userID(named: name)
        if uid == nil {
            logger.warning(
                "the etcd sync user does not exist; only root may hand the agent grants from etcd",
                metadata: ["etcd.sync_user": "\(name)"])
        }
        etcdAuthority.set(uid)
    }
}
