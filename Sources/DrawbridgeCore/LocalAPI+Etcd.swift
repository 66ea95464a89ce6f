import FoundationEssentials

/// What `drawbridge-etcd sync` hands the agent over the local socket. Only root and the policy's `etcd.sync_user`
/// may send these; the agent checks every value against its own policy, so a compromised sync process can open no
/// more than etcd's writers already could.
///
/// ```json
/// {"command":"etcd-sync","revision":42,"complete":true,"changes":[
///   {"key":"/drawbridge/v1/grants/group/web/g-1","value":"{\"source\":\"203.0.113.7\",…}"},
///   {"key":"/drawbridge/v1/grants/host/web-1/g-2","deleted":true},
///   {"key":"/drawbridge/v1/grants/host/web-1/g-3","problem":"the value is not UTF-8 text"}]}
/// {"command":"etcd-connection","connected":false,"endpoint":"https://192.0.2.1:2379","error":"…","revision":42}
/// ```
/// `complete: true` is a snapshot: every etcd grant the agent holds whose key it does not list ends. Otherwise the
/// changes are one whole watch response, applied in order.
public struct EtcdUpdate: Sendable, Equatable {
    public var revision: Int64
    public var complete: Bool
    public var changes: [EtcdChange]

    public init(revision: Int64, complete: Bool, changes: [EtcdChange]) {
        self.revision = revision
        self.complete = complete
        self.changes = changes
    }

    /// The most changes one request may carry.
    public static let maximumChanges = 200_000
}

/// One key's new state.
public enum EtcdChange: Sendable, Equatable {
    case put(key: String, value: [UInt8])
    case delete(key: String)
    /// The sync process could not pass the value on (not UTF-8, too large): the key's grant ends and the problem is
    /// audited as a refusal.
    case unusable(key: String, problem: String)

    public var key: String {
        switch self {
        case .put(let key, _), .delete(let key), .unusable(let key, _): return key
        }
    }
}

/// The sync process's view of its etcd connection, for `drawbridge status`.
public struct EtcdConnectionReport: Sendable, Equatable {
    public var connected: Bool
    public var endpoint: String?
    /// The latest revision etcd reported (a watch response or progress notification).
    public var revision: Int64?
    public var error: String?

    public init(connected: Bool, endpoint: String? = nil, revision: Int64? = nil, error: String? = nil) {
        self.connected = connected
        self.endpoint = endpoint
        self.revision = revision
        self.error = error
    }
}

extension LocalAPI {
    /// What became of each key of an `etcd-sync` request.
    public struct EtcdResult: Codable, Sendable, Equatable {
        public enum State: String, Codable, Sendable {
            /// Enforced now (new or changed).
            case applied
            /// Enforced as before (the same value again).
            case unchanged
            /// Not enforced: the policy or the format refused it (`detail` says why).
            case refused
            /// Its grant ended (the key was deleted, or a snapshot no longer lists it).
            case removed
            /// Revoked on this host by root; stays revoked until the key is deleted.
            case revoked
        }

        public var key: String
        public var state: State
        /// The grant's id in `drawbridge list`, when it has one.
        public var id: String?
        public var detail: String?

        public init(key: String, state: State, id: String? = nil, detail: String? = nil) {
            self.key = key
            self.state = state
            self.id = id
            self.detail = detail
        }
    }

    /// The answer to `etcd-sync`.
    public struct EtcdReport: Codable, Sendable, Equatable {
        public var revision: Int64
        public var results: [EtcdResult]

        public init(revision: Int64, results: [EtcdResult]) {
            self.revision = revision
            self.results = results
        }
    }

    /// The etcd part of `status`.
    public struct EtcdStatus: Codable, Sendable, Equatable {
        public var host: String
        public var directories: [String]
        /// `connected`, `disconnected` or `waiting for drawbridge-etcd` (no report since the agent started).
        public var connection: String
        public var endpoint: String?
        public var error: String?
        /// The revision whose state the agent enforces.
        public var appliedRevision: Int64?
        /// The latest revision etcd reported; `latest - applied` is how far behind the agent is.
        public var latestRevision: Int64?
        /// Seconds since the sync process last reported (a change, a progress notification or its connection).
        public var secondsSinceContact: Double?
        public var grants: Int
        public var refused: Int

        public init(
            host: String, directories: [String], connection: String, endpoint: String? = nil, error: String? = nil,
            appliedRevision: Int64? = nil, latestRevision: Int64? = nil, secondsSinceContact: Double? = nil,
            grants: Int = 0, refused: Int = 0
        ) {
            self.host = host
            self.directories = directories
            self.connection = connection
            self.endpoint = endpoint
            self.error = error
            self.appliedRevision = appliedRevision
            self.latestRevision = latestRevision
            self.secondsSinceContact = secondsSinceContact
            self.grants = grants
            self.refused = refused
        }

        enum CodingKeys: String, CodingKey {
            case host, directories, connection, endpoint, error
            case appliedRevision = "applied_revision"
            case latestRevision = "latest_revision"
            case secondsSinceContact = "seconds_since_contact"
            case grants, refused
        }
    }

    /// Requests from a sync process may be this large (a snapshot of many grants); others stay at
    /// ``maximumRequestBytes``.
    public static let maximumSyncRequestBytes = 64 << 20

    static func decodeEtcdSync(_ fields: JSONFields) throws(FieldError) -> Command {
        guard let revisionValue = try fields.number("revision") else {
            throw FieldError("etcd-sync needs the revision it reflects")
        }
        guard let revision = Int64(exactly: revisionValue), revision >= 0 else {
            throw FieldError("etcd-sync.revision must be a whole number of at least 0")
        }
        let complete = try fields.bool("complete") ?? false
        guard case .array(let items)? = fields.value("changes") else {
            throw FieldError("etcd-sync needs a list of changes (it may be empty)")
        }
        guard items.count <= EtcdUpdate.maximumChanges else {
            throw FieldError("etcd-sync carries \(items.count) changes; at most \(EtcdUpdate.maximumChanges) at once")
        }
        var changes: [EtcdChange] = []
        changes.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            let change = try JSONFields(item, path: "changes[\(index)]", allowed: ["key", "value", "deleted", "problem"])
            guard let key = try change.string("key") else { throw FieldError("changes[\(index)] has no key") }
            if let problem = TextCheck.problem(with: key, field: "changes[\(index)].key", maximumBytes: 1024) {
                throw FieldError(problem)
            }
            let value = try change.string("value")
            let deleted = try change.bool("deleted") ?? false
            let problem = try change.string("problem")
            switch (value, deleted, problem) {
            case (let value?, false, nil): changes.append(.put(key: key, value: Array(value.utf8)))
            case (nil, true, nil): changes.append(.delete(key: key))
            case (nil, false, let problem?):
                if let bad = TextCheck.problem(with: problem, field: "changes[\(index)].problem", maximumBytes: 1024) {
                    throw FieldError(bad)
                }
                changes.append(.unusable(key: key, problem: problem))
            default:
                throw FieldError("changes[\(index)] needs exactly one of value, deleted: true, or problem")
            }
        }
        return .etcdSync(EtcdUpdate(revision: revision, complete: complete, changes: changes))
    }

    static func decodeEtcdConnection(_ fields: JSONFields) throws(FieldError) -> Command {
        guard let connected = try fields.bool("connected") else {
            throw FieldError("etcd-connection needs connected: true or false")
        }
        var report = EtcdConnectionReport(connected: connected)
        if let endpoint = try fields.string("endpoint") {
            if let problem = TextCheck.problem(with: endpoint, field: "etcd-connection.endpoint", maximumBytes: 256) {
                throw FieldError(problem)
            }
            report.endpoint = endpoint
        }
        if let error = try fields.string("error") {
            if let problem = TextCheck.problem(with: error, field: "etcd-connection.error", maximumBytes: 1024) {
                throw FieldError(problem)
            }
            report.error = error
        }
        if let revision = try fields.number("revision") {
            guard let whole = Int64(exactly: revision), whole >= 0 else {
                throw FieldError("etcd-connection.revision must be a whole number of at least 0")
            }
            report.revision = whole
        }
        return .etcdConnection(report)
    }
}
