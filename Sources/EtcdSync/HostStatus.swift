import DrawbridgeCore
import FoundationEssentials

/// What a host reports at `<prefix>/v1/status/<host>`: which grant keys its agent enforces and which it refused.
///
/// `drawbridge-etcd sync` writes it (with a lease, so it vanishes when the host stops reporting) from the agent's
/// answers; requesters read it to tell whether their grant landed.
///
/// ```json
/// {"agent":"ok","applied_revision":42,"grants":[{"id":"e-1f2e3d4c-g-1","key":"/drawbridge/v1/grants/group/web/g-1"}],
///  "groups":["web"],"host":"web-1","refused":[{"key":"/drawbridge/v1/grants/host/web-1/g-2",
///  "reason":"port 5432/tcp is not managed"}],"updated_at":"2026-12-01T12:00:00.250Z"}
/// ```
public struct HostStatus: Codable, Sendable, Equatable {
    public struct Grant: Codable, Sendable, Equatable {
        public var key: String
        /// The grant's id in the host's `drawbridge list`.
        public var id: String?

        public init(key: String, id: String?) {
            self.key = key
            self.id = id
        }
    }

    public struct Refusal: Codable, Sendable, Equatable {
        public var key: String
        public var reason: String

        public init(key: String, reason: String) {
            self.key = key
            self.reason = reason
        }
    }

    public var host: String
    public var groups: [String]
    /// The revision up to which the agent holds every change.
    public var appliedRevision: Int64?
    public var updatedAt: Date
    /// `ok`, or why the agent cannot be reached or refused the last update.
    public var agent: String
    public var grants: [Grant]
    public var refused: [Refusal]
    /// Set when the lists were cut to ``HostStatus/maximumEntries`` each (a status must fit in one etcd request).
    public var truncated: Bool?

    /// The most entries each list carries: about 150 bytes each, both lists well under etcd's 1.5 MiB request limit.
    public static let maximumEntries = 4000

    public init(
        host: String, groups: [String], appliedRevision: Int64?, updatedAt: Date, agent: String, grants: [Grant],
        refused: [Refusal], truncated: Bool? = nil
    ) {
        self.host = host
        self.groups = groups
        self.appliedRevision = appliedRevision
        self.updatedAt = updatedAt
        self.agent = agent
        self.grants = grants
        self.refused = refused
        self.truncated = truncated
    }

    enum CodingKeys: String, CodingKey {
        case host, groups
        case appliedRevision = "applied_revision"
        case updatedAt = "updated_at"
        case agent, grants, refused, truncated
    }

    /// What this host says about `key`: applied, refused (with why), or nothing.
    public func outcome(of key: String) -> KeyOutcome? {
        if let grant = grants.first(where: { $0.key == key }) { return .applied(id: grant.id) }
        if let refusal = refused.first(where: { $0.key == key }) { return .refused(reason: refusal.reason) }
        return nil
    }

    /// The document as etcd stores it.
    public func encoded() -> [UInt8] {
        (try? Array(LocalAPI.encoder().encode(self))) ?? []
    }

    /// Reads a status value; nil when it is not one.
    public static func decode(_ value: [UInt8]) -> HostStatus? {
        try? LocalAPI.decoder().decode(HostStatus.self, from: Data(value))
    }
}

/// What one host did with one grant key.
public enum KeyOutcome: Sendable, Equatable {
    case applied(id: String?)
    case refused(reason: String)
}

/// The agent's verdict on every key, kept between `etcd-sync` answers: the source of the host's status document.
public struct AgentOutcomes: Sendable, Equatable {
    public private(set) var byKey: [String: KeyOutcome] = [:]
    /// The revision of the agent's last report.
    public private(set) var appliedRevision: Int64?

    public init() {}

    /// Takes in the agent's answer to an `etcd-sync`; a complete snapshot's answer replaces everything known before.
    public mutating func record(_ report: LocalAPI.EtcdReport, complete: Bool) {
        if complete { byKey = [:] }
        appliedRevision = report.revision
        for result in report.results {
            switch result.state {
            case .applied, .unchanged: byKey[result.key] = .applied(id: result.id)
            case .refused: byKey[result.key] = .refused(reason: result.detail ?? "refused by the host's policy")
            case .revoked:
                byKey[result.key] = .refused(
                    reason: "revoked on this host by root; stays revoked until the key is deleted"
                        + (result.detail.map { " (\($0))" } ?? ""))
            case .removed: byKey[result.key] = nil
            }
        }
    }

    /// A key the sync could not pass to the agent at all (see ``SyncChange/keyProblem(_:)``), under its escaped
    /// name.
    public mutating func refuseLocally(key: String, reason: String) {
        byKey[TextCheck.escaped(key)] = .refused(reason: reason)
    }

    /// Forgets a key the sync could not pass on, once it is deleted.
    public mutating func forgetLocally(key: String) {
        byKey[TextCheck.escaped(key)] = nil
    }

    /// The status document for these verdicts, lists sorted by key and cut to ``HostStatus/maximumEntries``.
    public func status(host: String, groups: [String], agent: String, now: Date) -> HostStatus {
        var grants: [HostStatus.Grant] = []
        var refused: [HostStatus.Refusal] = []
        for (key, outcome) in byKey.sorted(by: { $0.key < $1.key }) {
            switch outcome {
            case .applied(let id): grants.append(.init(key: key, id: id))
            case .refused(let reason): refused.append(.init(key: key, reason: reason))
            }
        }
        let truncated = grants.count > HostStatus.maximumEntries || refused.count > HostStatus.maximumEntries
        return HostStatus(
            host: host, groups: groups, appliedRevision: appliedRevision, updatedAt: now, agent: agent,
            grants: Array(grants.prefix(HostStatus.maximumEntries)),
            refused: Array(refused.prefix(HostStatus.maximumEntries)), truncated: truncated ? true : nil)
    }
}
