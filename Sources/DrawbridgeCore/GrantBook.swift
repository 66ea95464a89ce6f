import HeapModule

/// The grants the agent holds, from every origin: the desired state that the kernel is made to follow.
///
/// A value type with no I/O. Every change costs what it changes: grants are indexed by id, by the kernel elements
/// they stand for and by origin, and deadlines sit in a heap, so a grant, a revocation or an expiry never walks the
/// whole book. Each change returns the access keys whose desired element may have changed, for the planner.
public struct GrantBook: Sendable {
    /// Every grant, by id.
    public private(set) var grants: [String: Grant] = [:]
    /// The grants that call for each element (usually one).
    private var contributors: [AccessKey: Contributors] = [:]
    /// The ids of the grants of each origin.
    private var byOrigin: [GrantOrigin: Set<String>] = [:]
    /// Ids of file grants revoked by hand: the file still lists them, but they must not come back.
    public private(set) var revokedFileGrants: Set<String> = []
    /// Deadlines, soonest first; an entry whose grant is gone or has another deadline is stale and skipped.
    private var deadlines = Heap<DeadlineEntry>()

    public init() {}

    public var count: Int { grants.count }
    public var isEmpty: Bool { grants.isEmpty }

    public subscript(id: String) -> Grant? { grants[id] }

    private enum Contributors: Sendable {
        case one(String)
        case many([String])

        var ids: [String] {
            switch self {
            case .one(let id): return [id]
            case .many(let ids): return ids
            }
        }
    }

    private struct DeadlineEntry: Comparable, Sendable {
        var deadline: MonotonicInstant
        var id: String
        static func < (lhs: Self, rhs: Self) -> Bool { (lhs.deadline, lhs.id) < (rhs.deadline, rhs.id) }
    }

    // MARK: Reading

    /// The active grant that asking for `grant` again would extend: same origin, source, ports and requester.
    ///
    /// Another user asking for the same access gets a grant of their own (the kernel element takes the later
    /// deadline of the two), so nobody can take over, shorten or lengthen someone else's grant by asking.
    public func extendable(like grant: Grant, now: MonotonicInstant) -> Grant? {
        guard let key = grant.accessKeys.first, let ids = contributors[key]?.ids else { return nil }
        for id in ids {
            guard let existing = grants[id], existing.isActive(at: now), existing.origin == grant.origin,
                existing.source == grant.source, existing.ports == grant.ports, existing.uid == grant.uid,
                existing.requestedBy == grant.requestedBy
            else { continue }
            return existing
        }
        return nil
    }

    /// The latest deadline any active grant gives an element, or nil when none calls for it.
    public func deadline(for key: AccessKey, now: MonotonicInstant) -> MonotonicInstant? {
        guard let entry = contributors[key] else { return nil }
        var latest: MonotonicInstant?
        for id in entry.ids {
            guard let grant = grants[id], grant.deadline > now else { continue }
            latest = max(latest ?? grant.deadline, grant.deadline)
        }
        return latest
    }

    /// The grants that call for an element.
    public func grants(for key: AccessKey) -> [Grant] {
        (contributors[key]?.ids ?? []).compactMap { grants[$0] }
    }

    /// Every element some grant calls for.
    public var accessKeys: [AccessKey] { Array(contributors.keys) }

    /// The ids of the grants that came from `origin`.
    public func ids(from origin: GrantOrigin) -> Set<String> { byOrigin[origin] ?? [] }

    /// The origins grants came from.
    public var origins: [GrantOrigin] { Array(byOrigin.keys) }

    /// The soonest deadline among the grants, if any.
    public mutating func nextDeadline() -> MonotonicInstant? {
        while let top = deadlines.min {
            if grants[top.id]?.deadline == top.deadline { return top.deadline }
            _ = deadlines.popMin()
        }
        return nil
    }

    /// Every grant, soonest expiry first.
    public var sorted: [Grant] {
        grants.values.sorted { ($0.deadline, $0.id) < ($1.deadline, $1.id) }
    }

    // MARK: Changing

    /// Puts a grant in: a new one, or a new version of the grant with the same id.
    ///
    /// - Returns: the version it replaced, and the elements whose desired state may have changed.
    @discardableResult
    public mutating func put(_ grant: Grant) -> (previous: Grant?, changed: [AccessKey]) {
        let previous = grants.updateValue(grant, forKey: grant.id)
        var changed = grant.accessKeys
        if let previous {
            let oldKeys = previous.accessKeys
            if oldKeys != changed {
                for key in oldKeys { removeContributor(grant.id, from: key) }
                for key in changed { addContributor(grant.id, to: key) }
                changed = Array(Set(oldKeys + changed))
            }
            if previous.origin != grant.origin {
                byOrigin[previous.origin]?.remove(grant.id)
                if byOrigin[previous.origin]?.isEmpty == true { byOrigin[previous.origin] = nil }
                byOrigin[grant.origin, default: []].insert(grant.id)
            }
        } else {
            for key in changed { addContributor(grant.id, to: key) }
            byOrigin[grant.origin, default: []].insert(grant.id)
        }
        if previous?.deadline != grant.deadline {
            deadlines.insert(DeadlineEntry(deadline: grant.deadline, id: grant.id))
            compactDeadlinesIfNeeded()
        }
        return (previous, changed)
    }

    /// Removes one grant.
    ///
    /// - Returns: the grant, and the elements whose desired state may have changed.
    @discardableResult
    public mutating func remove(id: String) -> (removed: Grant?, changed: [AccessKey]) {
        guard let grant = grants.removeValue(forKey: id) else { return (nil, []) }
        let keys = grant.accessKeys
        for key in keys { removeContributor(id, from: key) }
        byOrigin[grant.origin]?.remove(id)
        if byOrigin[grant.origin]?.isEmpty == true { byOrigin[grant.origin] = nil }
        return (grant, keys)
    }

    /// Removes and returns the grants whose deadline has passed, soonest first.
    public mutating func removeExpired(now: MonotonicInstant) -> [(grant: Grant, changed: [AccessKey])] {
        var expired: [(Grant, [AccessKey])] = []
        while let top = deadlines.min, top.deadline <= now {
            _ = deadlines.popMin()
            guard let grant = grants[top.id], grant.deadline == top.deadline else { continue }
            let (removed, changed) = remove(id: top.id)
            if let removed { expired.append((removed, changed)) }
        }
        return expired
    }

    /// Remembers that a file grant was revoked by hand, so the file cannot bring it back.
    public mutating func tombstone(_ id: String) {
        revokedFileGrants.insert(id)
    }

    /// Forgets a revocation (the file no longer lists the entry, so a new entry with that id is a new grant).
    public mutating func forgetTombstone(_ id: String) {
        revokedFileGrants.remove(id)
    }

    private mutating func addContributor(_ id: String, to key: AccessKey) {
        switch contributors[key] {
        case nil: contributors[key] = .one(id)
        case .one(let existing)?: contributors[key] = existing == id ? .one(id) : .many([existing, id])
        case .many(var ids)?:
            if !ids.contains(id) { ids.append(id) }
            contributors[key] = .many(ids)
        }
    }

    private mutating func removeContributor(_ id: String, from key: AccessKey) {
        switch contributors[key] {
        case nil: return
        case .one(let existing)?: if existing == id { contributors[key] = nil }
        case .many(var ids)?:
            ids.removeAll { $0 == id }
            contributors[key] = ids.count == 1 ? .one(ids[0]) : (ids.isEmpty ? nil : .many(ids))
        }
    }

    /// Rebuilds the heap when stale entries (from extensions and revocations) outnumber the live ones.
    private mutating func compactDeadlinesIfNeeded() {
        guard deadlines.count > 2 * grants.count + 1024 else { return }
        deadlines = Heap(grants.values.map { DeadlineEntry(deadline: $0.deadline, id: $0.id) })
    }

    /// File grant ids start with `f-` and a short digest of the file path, so revocations can be matched to files.
    public static func fileIdentifierPrefix(for path: String) -> String {
        "f-" + String(fnv1a("file:" + path) & 0xffff, radix: 16) + "-"
    }
}

/// FNV-1a, 64-bit: a stable digest for identifiers (not for security).
func fnv1a(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    return hash
}
