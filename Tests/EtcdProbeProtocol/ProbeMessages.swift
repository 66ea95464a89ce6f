/// The messages between the etcd tests and `etcd-probe`, one JSON object per line: requests on the probe's standard
/// input, replies on its standard output.
///
/// The probe exists because the Etcd client must run inside the test's network namespace, where etcd listens, and
/// the test process cannot put NIO's event loop threads there (see EtcdTests/Support/EtcdProbe.swift).

/// A request, numbered by the test; every reply about it carries the same number.
public struct ProbeRequest: Codable, Sendable {
    public var id: Int
    public var command: ProbeCommand

    public init(id: Int, command: ProbeCommand) {
        self.id = id
        self.command = command
    }
}

/// One call of the Etcd client. Values travel as UTF-8 text.
public enum ProbeCommand: Codable, Sendable, Equatable {
    case range(prefix: String, revision: Int64?)
    case put(key: String, value: String, lease: Int64?)
    case delete(key: String)
    case grantLease(ttlSeconds: Int64)
    case revokeLease(lease: Int64)
    /// Starts keeping a lease alive; renewals arrive as ``ProbeReply/renewal(id:ttlSeconds:)``.
    case keepAlive(lease: Int64, ttlSeconds: Int64)
    /// Starts a watch; responses arrive as ``ProbeReply/watchResponse(id:response:)`` until a failure or a stop.
    case watch(fromRevisions: [String: Int64])
    /// Cancels the watch or keep-alive started by request `request`.
    case stop(request: Int)
}

/// A reply line.
public enum ProbeReply: Codable, Sendable, Equatable {
    /// The probe is up and its client created (id 0).
    case ready(id: Int)
    case range(id: Int, revision: Int64, keyValues: [ProbeKeyValue])
    case revision(id: Int, revision: Int64)
    case deleted(id: Int, revision: Int64, existed: Bool)
    case lease(id: Int, lease: Int64, ttlSeconds: Int64)
    /// A command without a result finished, or a watch or keep-alive started.
    case done(id: Int)
    case failure(id: Int, failure: ProbeFailure)
    case watchResponse(id: Int, response: ProbeWatchResponse)
    case renewal(id: Int, ttlSeconds: Int64)
    /// A watch or keep-alive ended because it was stopped.
    case stopped(id: Int)

    public var id: Int {
        switch self {
        case .ready(let id), .range(let id, _, _), .revision(let id, _), .deleted(let id, _, _),
            .lease(let id, _, _), .done(let id), .failure(let id, _), .watchResponse(let id, _),
            .renewal(let id, _), .stopped(let id):
            id
        }
    }
}

public struct ProbeKeyValue: Codable, Sendable, Equatable {
    public var key: String
    public var value: String
    public var createRevision: Int64
    public var modRevision: Int64
    public var leaseID: Int64?

    public init(key: String, value: String, createRevision: Int64, modRevision: Int64, leaseID: Int64?) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.leaseID = leaseID
    }
}

public struct ProbeEvent: Codable, Sendable, Equatable {
    /// "put" or "delete".
    public var kind: String
    public var key: String
    public var value: String
    public var modRevision: Int64

    public init(kind: String, key: String, value: String, modRevision: Int64) {
        self.kind = kind
        self.key = key
        self.value = value
        self.modRevision = modRevision
    }
}

public struct ProbeWatchResponse: Codable, Sendable, Equatable {
    /// "created", "events" or "progress".
    public var kind: String
    public var prefix: String
    public var events: [ProbeEvent]
    public var revision: Int64
    public var nextRevision: Int64

    public init(kind: String, prefix: String, events: [ProbeEvent], revision: Int64, nextRevision: Int64) {
        self.kind = kind
        self.prefix = prefix
        self.events = events
        self.revision = revision
        self.nextRevision = nextRevision
    }
}

/// An EtcdError as the probe saw it.
public struct ProbeFailure: Codable, Sendable, Equatable, Error, CustomStringConvertible {
    /// The EtcdError.Code case name: "permissionDenied", "unavailable", "compacted", ...
    public var code: String
    /// The error's description, as a person would read it.
    public var message: String
    public var endpoint: String?
    public var retryable: Bool
    public var compactRevision: Int64?
    public var prefix: String?

    public init(
        code: String, message: String, endpoint: String?, retryable: Bool, compactRevision: Int64?, prefix: String?
    ) {
        self.code = code
        self.message = message
        self.endpoint = endpoint
        self.retryable = retryable
        self.compactRevision = compactRevision
        self.prefix = prefix
    }

    public var description: String { "\(code): \(message)" }
}
