import DrawbridgeCore
import Etcd

/// An `etcd-sync` request, as `drawbridge-etcd sync` sends it to the agent (the agent reads it into
/// DrawbridgeCore's `EtcdUpdate`).
///
/// `complete: true` is a snapshot of every directory at one revision; otherwise the changes are one whole watch
/// response, in etcd's order.
public struct SyncRequest: Encodable, Sendable, Equatable {
    /// The revision up to which the agent has every change once it applied this one (see
    /// ``SyncDaemon``: the lowest resume point of all directories, minus one).
    public var revision: Int64
    public var complete: Bool
    public var changes: [SyncChange]

    public init(revision: Int64, complete: Bool, changes: [SyncChange]) {
        self.revision = revision
        self.complete = complete
        self.changes = changes
    }

    enum CodingKeys: String, CodingKey {
        case command, revision, complete, changes
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(LocalAPI.Verb.etcdSync.rawValue, forKey: .command)
        try container.encode(revision, forKey: .revision)
        try container.encode(complete, forKey: .complete)
        try container.encode(changes, forKey: .changes)
    }
}

/// One key's new state in an `etcd-sync` request.
public enum SyncChange: Encodable, Sendable, Equatable {
    /// The value, as the UTF-8 text it is; the agent parses and checks it.
    case put(key: String, value: String)
    case delete(key: String)
    /// A value that cannot be passed on as text; its grant ends and the agent audits the problem as a refusal.
    case unusable(key: String, problem: String)

    /// The longest key the agent accepts; a request with a longer one is refused whole.
    public static let maximumKeyBytes = 1024

    public var key: String {
        switch self {
        case .put(let key, _), .delete(let key), .unusable(let key, _): key
        }
    }

    /// The change for a written value: its text, or a problem when it is larger than the agent reads
    /// (`EtcdGrantValue.maximumBytes`) or not UTF-8.
    public static func written(key: String, value: [UInt8]) -> SyncChange {
        guard value.count <= EtcdGrantValue.maximumBytes else {
            return .unusable(
                key: key,
                problem: "the value is \(value.count) bytes; at most \(EtcdGrantValue.maximumBytes) are accepted")
        }
        guard let text = String(validating: value, as: UTF8.self) else {
            return .unusable(key: key, problem: "the value is not UTF-8 text")
        }
        return .put(key: key, value: text)
    }

    /// The change an etcd event makes.
    public init(_ event: EtcdEvent) {
        switch event.kind {
        case .put: self = .written(key: event.keyValue.key, value: event.keyValue.value)
        case .delete: self = .delete(key: event.keyValue.key)
        }
    }

    /// Why a key cannot be named to the agent at all, or nil. The agent refuses a whole request over one such key
    /// (its text goes into the audit trail and the journal), so the sync leaves it out and reports it in the host's
    /// status instead: a writer who can put one odd key must not stop every other grant of the host.
    public static func keyProblem(_ key: String) -> String? {
        TextCheck.problem(with: key, field: "the key", maximumBytes: maximumKeyBytes)
    }

    enum CodingKeys: String, CodingKey {
        case key, value, deleted, problem
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(key, forKey: .key)
        switch self {
        case .put(_, let value): try container.encode(value, forKey: .value)
        case .delete: try container.encode(true, forKey: .deleted)
        case .unusable(_, let problem): try container.encode(problem, forKey: .problem)
        }
    }
}

/// An `etcd-connection` request: how the sync's connection to etcd stands, for the agent's `status`.
public struct ConnectionReport: Encodable, Sendable, Equatable {
    public var connected: Bool
    /// The member's URL.
    public var endpoint: String?
    /// The newest revision etcd reported.
    public var revision: Int64?
    /// Why the connection is down.
    public var error: String?

    public init(connected: Bool, endpoint: String? = nil, revision: Int64? = nil, error: String? = nil) {
        self.connected = connected
        self.endpoint = endpoint.map { Self.fitted($0, maximumBytes: 256) }
        self.revision = revision
        self.error = error.map { Self.fitted($0, maximumBytes: 1024) }
    }

    /// Text the agent accepts: control characters escaped, cut to `maximumBytes` on a character boundary.
    static func fitted(_ text: String, maximumBytes: Int) -> String {
        var result = TextCheck.escaped(text)
        while result.utf8.count > maximumBytes { result.removeLast() }
        return result
    }

    enum CodingKeys: String, CodingKey {
        case command, connected, endpoint, revision, error
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(LocalAPI.Verb.etcdConnection.rawValue, forKey: .command)
        try container.encode(connected, forKey: .connected)
        try container.encodeIfPresent(endpoint, forKey: .endpoint)
        try container.encodeIfPresent(revision, forKey: .revision)
        try container.encodeIfPresent(error, forKey: .error)
    }
}
