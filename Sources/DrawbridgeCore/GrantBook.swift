import Foundation

/// The grants the agent holds, from every origin: the desired state that the kernel is made to follow.
///
/// A value type with no I/O; the agent persists it after every change.
public struct GrantBook: Equatable, Sendable, Codable {
    /// Active and not yet swept grants, by id.
    public private(set) var grants: [String: Grant] = [:]
    /// Ids of file grants revoked by hand: the file still lists them, but they must not come back.
    public private(set) var revokedFileGrants: Set<String> = []

    public init() {}

    enum CodingKeys: String, CodingKey {
        case grants
        case revokedFileGrants = "revoked_file_grants"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let list = try container.decode([Grant].self, forKey: .grants)
        grants = Dictionary(list.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        revokedFileGrants = try container.decodeIfPresent(Set<String>.self, forKey: .revokedFileGrants) ?? []
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(sorted, forKey: .grants)
        try container.encode(revokedFileGrants.sorted(), forKey: .revokedFileGrants)
    }

    /// Every grant, soonest expiry first.
    public var sorted: [Grant] {
        grants.values.sorted { ($0.expiresAt, $0.id) < ($1.expiresAt, $1.id) }
    }

    /// What recording a grant did.
    public enum Recorded: Equatable, Sendable {
        case created(Grant)
        /// An existing grant for the same source and ports got a later expiry (same id, no second element).
        case extended(previous: Grant, current: Grant)
        /// An existing grant already lasted at least as long; nothing changed.
        case unchanged(Grant)
    }

    /// Adds a grant, or extends the active grant of the same origin, source and ports.
    public mutating func record(_ grant: Grant, now: Date) -> Recorded {
        if let existing = grants.values.first(where: {
            $0.isActive(at: now) && $0.origin == grant.origin && $0.source == grant.source && $0.ports == grant.ports
        }) {
            guard grant.expiresAt > existing.expiresAt else { return .unchanged(existing) }
            var extended = existing
            extended.expiresAt = grant.expiresAt
            extended.reason = grant.reason
            extended.requestedBy = grant.requestedBy
            extended.uid = grant.uid
            grants[existing.id] = extended
            return .extended(previous: existing, current: extended)
        }
        grants[grant.id] = grant
        return .created(grant)
    }

    /// Removes one grant. A file grant is remembered as revoked so the file cannot bring it back.
    public mutating func revoke(id: String) -> Grant? {
        guard let grant = grants.removeValue(forKey: id) else { return nil }
        if case .file = grant.origin { revokedFileGrants.insert(id) }
        return grant
    }

    /// Removes every grant whose source lies inside `prefix`.
    public mutating func revoke(within prefix: IPPrefix) -> [Grant] {
        let matching = grants.values.filter { prefix.contains($0.source) }.map(\.id)
        return matching.compactMap { revoke(id: $0) }.sorted { $0.id < $1.id }
    }

    /// Removes and returns the grants that have expired.
    public mutating func removeExpired(now: Date) -> [Grant] {
        let expired = grants.values.filter { !$0.isActive(at: now) }
        for grant in expired { grants.removeValue(forKey: grant.id) }
        return expired.sorted { $0.expiresAt < $1.expiresAt }
    }

    /// Replaces the grants that came from one file with its current contents.
    ///
    /// - Returns: the grants that appeared and those that went away.
    public mutating func replaceGrants(
        from origin: GrantOrigin, with incoming: [Grant]
    ) -> (added: [Grant], removed: [Grant]) {
        let current = grants.values.filter { $0.origin == origin }
        let incomingIDs = Set(incoming.map(\.id))
        let removed = current.filter { !incomingIDs.contains($0.id) }
        for grant in removed { grants.removeValue(forKey: grant.id) }
        var added: [Grant] = []
        for var grant in incoming where !revokedFileGrants.contains(grant.id) {
            if let existing = grants[grant.id] {
                // Re-reading an unchanged file is not news: keep when the grant was first seen.
                grant.createdAt = existing.createdAt
                if existing == grant { continue }
            }
            added.append(grant)
            grants[grant.id] = grant
        }
        // Forget revocations of entries the file no longer lists: an edited entry is a new grant.
        revokedFileGrants = revokedFileGrants.filter { id in
            incomingIDs.contains(id) || !id.hasPrefix(GrantBook.fileIdentifierPrefix(for: origin))
        }
        return (added.sorted { $0.id < $1.id }, removed.sorted { $0.id < $1.id })
    }

    /// Removes grants for which `keep` is false (after a policy reload).
    public mutating func removeAll(where shouldRemove: (Grant) -> Bool) -> [Grant] {
        let removed = grants.values.filter(shouldRemove)
        for grant in removed { grants.removeValue(forKey: grant.id) }
        return removed.sorted { $0.id < $1.id }
    }

    /// The kernel elements the active grants call for: each (source, port) with the latest expiry any grant gives it.
    public func desiredAccess(now: Date) -> [AccessKey: Date] {
        var desired: [AccessKey: Date] = [:]
        for grant in grants.values where grant.isActive(at: now) {
            for key in grant.accessKeys {
                desired[key] = max(desired[key] ?? .distantPast, grant.expiresAt)
            }
        }
        return desired
    }

    /// The earliest expiry among active grants.
    public var nextExpiry: Date? { grants.values.map(\.expiresAt).min() }

    /// File grant ids start with `f-` and a short digest of the file path, so revocations can be matched to files.
    public static func fileIdentifierPrefix(for origin: GrantOrigin) -> String {
        "f-" + String(fnv1a(origin.description) & 0xffff, radix: 16) + "-"
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
