import FoundationEssentials

/// The local API between `drawbridge` and `drawbridged`: one JSON object per line over a Unix socket, one request
/// and one response per connection. Who is asking is never part of the request: the agent reads it from the
/// socket's peer credentials.
public enum LocalAPI {
    /// The default socket path.
    public static let defaultSocketPath = "/run/drawbridge/drawbridge.sock"
    /// Requests larger than this are refused unread.
    public static let maximumRequestBytes = 64 * 1024
    /// The longest grant a request may name at all (the policy's limits are far shorter).
    public static let maximumDurationSeconds: Double = 1e9

    public enum Verb: String, Codable, Sendable, CaseIterable {
        case grant, revoke, list, status
        /// The Prometheus text the metrics endpoint serves.
        case metrics
        /// From `drawbridge-etcd sync` only (root or the policy's etcd.sync_user): see ``EtcdUpdate``.
        case etcdSync = "etcd-sync"
        case etcdConnection = "etcd-connection"
        /// From `drawbridge-knock listen` only (root or the policy's knock.user): see ``KnockGrant``.
        case knock
        case knockRefused = "knock-refused"
    }

    /// A request as the client sends it.
    public struct Request: Codable, Sendable, Equatable {
        public var command: Verb
        /// grant: policy names or NUMBER/PROTO.
        public var ports: [String]?
        /// grant: the source prefix; revoke: revoke every grant inside it.
        public var source: String?
        /// grant: seconds.
        public var durationSeconds: Double?
        public var reason: String?
        /// revoke: one grant.
        public var id: String?

        public init(
            command: Verb, ports: [String]? = nil, source: String? = nil, durationSeconds: Double? = nil,
            reason: String? = nil, id: String? = nil
        ) {
            self.command = command
            self.ports = ports
            self.source = source
            self.durationSeconds = durationSeconds
            self.reason = reason
            self.id = id
        }

        enum CodingKeys: String, CodingKey {
            case command, ports, source
            case durationSeconds = "duration_seconds"
            case reason, id
        }
    }

    /// A request after it was read and checked: the only form the agent acts on.
    public enum Command: Sendable, Equatable {
        case grant(GrantRequest)
        case revoke(RevokeTarget)
        case list
        case status
        case metrics
        case etcdSync(EtcdUpdate)
        case etcdConnection(EtcdConnectionReport)
        case knock(KnockGrant)
        case knockRefused(KnockRefusalReport)

        /// The command's verb, as requests name it.
        public var verb: Verb {
            switch self {
            case .grant: return .grant
            case .revoke: return .revoke
            case .list: return .list
            case .status: return .status
            case .metrics: return .metrics
            case .etcdSync: return .etcdSync
            case .etcdConnection: return .etcdConnection
            case .knock: return .knock
            case .knockRefused: return .knockRefused
            }
        }

        /// Whether the command only closes access (served ahead of and apart from what opens it).
        public var isClosing: Bool {
            if case .revoke = self { return true }
            return false
        }
    }

    /// Which grants a revocation ends.
    public enum RevokeTarget: Sendable, Equatable {
        case id(String)
        case within(IPPrefix)
    }

    /// Reads and checks one request line, refusing anything a lenient decoder would silently accept: a repeated or
    /// unknown key, a field that does not belong to the command, a value of the wrong type, text with control
    /// characters, an over-long reason, a duration that is not a positive number of seconds.
    public static func decode(_ bytes: [UInt8]) -> Result<Command, Failure> {
        func bad(_ message: String) -> Result<Command, Failure> {
            .failure(Failure(code: .badRequest, message: message))
        }
        guard bytes.contains(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0d }) else { return bad("empty request") }
        let value: JSONValue
        do {
            value = try JSONReader.parse(bytes, maximumDepth: 4)
        } catch {
            return bad("request is not valid JSON: \(error)")
        }
        let allowed: [Verb: Set<String>] = [
            .grant: ["command", "ports", "source", "duration_seconds", "reason"],
            .revoke: ["command", "id", "source"], .list: ["command"], .status: ["command"], .metrics: ["command"],
            .etcdSync: ["command", "revision", "complete", "changes"],
            .etcdConnection: ["command", "connected", "endpoint", "revision", "error"],
            .knock: [
                "command", "fingerprint", "key", "source", "ports", "duration_seconds", "reason", "client_address",
                "key_comment",
            ],
            .knockRefused: ["command", "source", "fingerprint", "problem", "count"],
        ]
        do throws(FieldError) {
            let probe = try JSONFields(value, path: "request", allowed: Set(allowed.values.flatMap { $0 }))
            guard let verbText = try probe.string("command") else { return bad("request has no \"command\"") }
            guard let verb = Verb(rawValue: verbText) else {
                return bad(
                    "unknown command \"\(TextCheck.escaped(verbText))\"; commands: "
                        + Verb.allCases.map(\.rawValue).joined(separator: ", "))
            }
            let fields = try JSONFields(value, path: verb.rawValue, allowed: allowed[verb]!)
            switch verb {
            case .list: return .success(.list)
            case .status: return .success(.status)
            case .metrics: return .success(.metrics)
            case .etcdSync: return .success(try decodeEtcdSync(fields))
            case .etcdConnection: return .success(try decodeEtcdConnection(fields))
            case .knock: return .success(try decodeKnock(fields))
            case .knockRefused: return .success(try decodeKnockRefused(fields))
            case .revoke:
                let id = try fields.string("id")
                let source = try fields.string("source")
                switch (id, source) {
                case (let id?, nil):
                    if let problem = TextCheck.identifierProblem(id, field: "id") { return bad(problem) }
                    return .success(.revoke(.id(id)))
                case (nil, let source?):
                    do {
                        return .success(.revoke(.within(try IPPrefix(parsing: source))))
                    } catch {
                        return bad("source: \(error.description)")
                    }
                default:
                    return bad("revoke needs either a grant id or a source prefix, not both")
                }
            case .grant:
                guard let ports = try fields.strings("ports"), !ports.isEmpty else {
                    return bad("a grant needs at least one port")
                }
                guard ports.count <= GrantEntry.maximumPorts else {
                    return bad("a grant names at most \(GrantEntry.maximumPorts) ports")
                }
                for port in ports {
                    if let problem = TextCheck.problem(with: port, field: "ports", maximumBytes: 64) {
                        return bad(problem)
                    }
                }
                guard let sourceText = try fields.string("source") else {
                    return bad("a grant needs a source (--from)")
                }
                let source: IPPrefix
                do {
                    source = try IPPrefix(parsing: sourceText)
                } catch {
                    return bad(error.description)
                }
                guard let seconds = try fields.number("duration_seconds") else {
                    return bad("a grant needs a duration (--for)")
                }
                guard seconds.isFinite, seconds >= 1, seconds <= maximumDurationSeconds else {
                    return bad(
                        "a grant lasts at least 1 second and at most \(Int(maximumDurationSeconds)) seconds; asked for "
                            + "\(seconds)")
                }
                let reason = try fields.string("reason") ?? ""
                if let problem = TextCheck.problem(
                    with: reason, field: "the reason", maximumBytes: TextCheck.maximumReasonBytes)
                {
                    return bad(problem)
                }
                return .success(.grant(GrantRequest(ports: ports, source: source, duration: seconds, reason: reason)))
            }
        } catch {
            return bad(error.description)
        }
    }

    /// Why a request failed, for scripts (`code`) and people (`message`).
    public struct Failure: Codable, Sendable, Equatable, Error, CustomStringConvertible {
        public enum Code: String, Codable, Sendable {
            /// The policy does not allow it (unknown port, source, duration, role).
            case refused
            /// The caller may not do this (revoking someone else's grant).
            case forbidden
            /// The request is malformed.
            case badRequest = "bad-request"
            /// No such grant.
            case notFound = "not-found"
            /// The kernel refused the change; nothing was changed.
            case kernel
            /// The agent is at its limit of connections for this caller; try again.
            case busy
            /// The grant could not be recorded (state or audit storage failed); nothing was changed.
            case storage
            /// Something failed inside the agent.
            case `internal`
        }

        public var code: Code
        /// For `refused`: which rule (unknown-port, source-not-allowed, duration-too-long, not-permitted).
        public var reason: String?
        public var message: String

        public init(code: Code, reason: String? = nil, message: String) {
            self.code = code
            self.reason = reason
            self.message = message
        }

        public var description: String { message }
    }

    /// A grant as `list` shows it, with what the kernel says about each of its ports.
    public struct GrantStatus: Codable, Sendable, Equatable {
        public var grant: Grant
        /// Seconds the kernel still gives each port's element, read from the kernel; nil when it holds none.
        public var kernelRemainingSeconds: [String: Double?]

        public init(grant: Grant, kernelRemainingSeconds: [String: Double?]) {
            self.grant = grant
            self.kernelRemainingSeconds = kernelRemainingSeconds
        }

        enum CodingKeys: String, CodingKey {
            case grant
            case kernelRemainingSeconds = "kernel_remaining_seconds"
        }
    }

    /// What `status` reports.
    public struct AgentStatus: Codable, Sendable, Equatable {
        public var version: String
        public var policyPath: String
        public var managedPorts: [GrantedPort]
        public var onExpiry: SessionMode
        public var activeGrants: Int
        public var kernelRelease: String
        /// Whether the kernel deletes set elements idempotently (NFT_MSG_DESTROYSETELEM, Linux 6.3+), as the agent's
        /// probe at start found; without it, deletes of elements near their expiry go in a transaction of their own.
        public var kernelDestroysElements: Bool?
        /// `enforcing`, or what is wrong with the table right now.
        public var table: String
        /// The last repair of the table, with why; nil when none happened since the start.
        public var lastRepair: String?
        /// Repairs since the start.
        public var repairs: Int
        /// Safety checks completed since the start (once a minute; nil from agents before 2026-12-04).
        public var safetyChecks: Int?
        /// `ok`, or why changes cannot be stored (grants are refused until it is fixed; revocations still apply).
        public var storage: String
        /// `ok`, or why audit records cannot be written.
        public var audit: String
        /// Warnings an operator should act on (a clock step, a grants file kept at its last good state, …).
        public var warnings: [String]
        /// Grants from etcd, when the policy has an etcd section.
        public var etcd: EtcdStatus?
        /// Knocks, when the policy has a knock section.
        public var knock: KnockStatus?
        /// Where the metrics endpoint listens (`127.0.0.1:9447`); nil when the agent serves none.
        public var metrics: String?
        /// Each managed port's grants, drops and accepts.
        public var ports: [PortActivity]?

        public init(
            version: String, policyPath: String, managedPorts: [GrantedPort], onExpiry: SessionMode, activeGrants: Int,
            kernelRelease: String, table: String = "enforcing", lastRepair: String? = nil, repairs: Int = 0,
            storage: String = "ok", audit: String = "ok", warnings: [String] = [], etcd: EtcdStatus? = nil,
            knock: KnockStatus? = nil, metrics: String? = nil, ports: [PortActivity]? = nil,
            kernelDestroysElements: Bool? = nil, safetyChecks: Int? = nil
        ) {
            self.kernelDestroysElements = kernelDestroysElements
            self.safetyChecks = safetyChecks
            self.ports = ports
            self.knock = knock
            self.metrics = metrics
            self.version = version
            self.policyPath = policyPath
            self.managedPorts = managedPorts
            self.onExpiry = onExpiry
            self.activeGrants = activeGrants
            self.kernelRelease = kernelRelease
            self.table = table
            self.lastRepair = lastRepair
            self.repairs = repairs
            self.storage = storage
            self.audit = audit
            self.warnings = warnings
            self.etcd = etcd
        }

        enum CodingKeys: String, CodingKey {
            case version
            case policyPath = "policy_path"
            case managedPorts = "managed_ports"
            case onExpiry = "on_expiry"
            case activeGrants = "active_grants"
            case kernelRelease = "kernel_release"
            case kernelDestroysElements = "kernel_destroys_elements"
            case table
            case lastRepair = "last_repair"
            case safetyChecks = "safety_checks"
            case repairs, storage, audit, warnings, etcd, knock, metrics, ports
        }
    }

    /// One managed port in `status`: its grants now, and what the table dropped and accepted on it lately.
    public struct PortActivity: Codable, Sendable, Equatable {
        public var name: String
        /// `22/tcp`.
        public var port: String
        public var grants: Int
        /// Packets dropped without a grant over the last `seconds`; nil when the counters could not be read.
        public var dropped: Int?
        /// Packets accepted by a grant or break-glass prefix (connections already open not counted).
        public var accepted: Int?
        /// How long the counts cover: about a minute, less just after the agent started.
        public var seconds: Double?
        /// Where the port is guarded: `input`, `forward`.
        public var hooks: [String]?

        public init(
            name: String, port: String, grants: Int, dropped: Int?, accepted: Int?, seconds: Double?,
            hooks: [String]? = nil
        ) {
            self.hooks = hooks
            self.name = name
            self.port = port
            self.grants = grants
            self.dropped = dropped
            self.accepted = accepted
            self.seconds = seconds
        }
    }

    /// What the agent has seen of knocks since it started.
    public struct KnockStatus: Codable, Sendable, Equatable {
        /// `62201/udp`.
        public var port: String
        /// Knocks that opened (or extended) a grant.
        public var opened: Int
        /// Knocks refused, by drawbridge-knock or by the agent.
        public var refused: Int
        /// Seconds since drawbridge-knock last handed the agent a knock or a refusal; nil when it never did.
        public var secondsSinceContact: Double?

        public init(port: String, opened: Int, refused: Int, secondsSinceContact: Double?) {
            self.port = port
            self.opened = opened
            self.refused = refused
            self.secondsSinceContact = secondsSinceContact
        }

        enum CodingKeys: String, CodingKey {
            case port, opened, refused
            case secondsSinceContact = "seconds_since_contact"
        }
    }

    public struct Response: Codable, Sendable, Equatable {
        public var ok: Bool
        public var error: Failure?
        /// grant: the one grant (new or extended); revoke: the revoked ones; list: all.
        public var grants: [GrantStatus]?
        /// grant: "created", "extended" or "unchanged".
        public var outcome: String?
        public var status: AgentStatus?
        /// What went through but should be known: a revocation applied in the kernel that could not be stored yet.
        public var warnings: [String]?
        /// etcd-sync: what became of each key.
        public var etcd: EtcdReport?
        /// metrics: the Prometheus text exposition, as the HTTP endpoint serves it.
        public var metrics: String?

        public init(
            ok: Bool, error: Failure? = nil, grants: [GrantStatus]? = nil, outcome: String? = nil,
            status: AgentStatus? = nil, warnings: [String]? = nil, etcd: EtcdReport? = nil, metrics: String? = nil
        ) {
            self.metrics = metrics
            self.ok = ok
            self.error = error
            self.grants = grants
            self.outcome = outcome
            self.status = status
            self.warnings = warnings
            self.etcd = etcd
        }

        public static func failure(_ failure: Failure) -> Response { Response(ok: false, error: failure) }
    }

    /// JSON with RFC 3339 dates (milliseconds kept) and sorted keys, as both ends use it.
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.format(date))
        }
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = Timestamp.parse(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a timestamp: \(text)")
            }
            return date
        }
        return decoder
    }
}
