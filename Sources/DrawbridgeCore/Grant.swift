import FoundationEssentials

/// Where a grant came from.
public enum GrantOrigin: Hashable, Sendable, CustomStringConvertible, Codable {
    /// `drawbridge grant` over the local socket.
    case local
    /// A watched grants file.
    case file(String)
    /// An etcd key (the whole key).
    case etcd(String)
    /// A knock signed with an SSH key (its fingerprint).
    case knock(String)

    /// `local`, `file:/etc/drawbridge/grants.json`, `etcd:/drawbridge/v1/grants/host/web-1/g-1`, `knock:SHA256:…`.
    public var description: String {
        switch self {
        case .local: return "local"
        case .file(let path): return "file:\(path)"
        case .etcd(let key): return "etcd:\(key)"
        case .knock(let fingerprint): return "knock:\(fingerprint)"
        }
    }

    public init?(parsing text: String) {
        if text == "local" {
            self = .local
        } else if text.hasPrefix("file:") {
            self = .file(String(text.dropFirst(5)))
        } else if text.hasPrefix("etcd:") {
            self = .etcd(String(text.dropFirst(5)))
        } else if text.hasPrefix("knock:") {
            self = .knock(String(text.dropFirst(6)))
        } else {
            return nil
        }
    }

    /// Whether the origin names its expiry as an absolute wall-clock time (files, etcd) rather than a duration
    /// counted from the request (local, knock): after a wall-clock step such grants follow the clock.
    /// `local`, `file`, `etcd` or `knock`: the kind of origin, for counting.
    /// The origin's kind, as the `origin` label of metrics names it (one per source, never the path, key or
    /// fingerprint: bounded).
    public var kind: String {
        switch self {
        case .local: return "local"
        case .file: return "file"
        case .etcd: return "etcd"
        case .knock: return "knock"
        }
    }

    /// Every value `kind` gives.
    public static let kinds = ["local", "file", "etcd", "knock"]

    public var hasAbsoluteExpiry: Bool {
        switch self {
        case .file, .etcd: return true
        case .local, .knock: return false
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let origin = GrantOrigin(parsing: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "unknown grant origin '\(text)'")
        }
        self = origin
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// A managed port as a grant names it: the policy's name and the port/protocol it stood for.
public struct GrantedPort: Hashable, Sendable, Codable, Comparable {
    public var name: String
    public var service: Service

    public init(name: String, service: Service) {
        self.name = name
        self.service = service
    }

    public static func < (lhs: GrantedPort, rhs: GrantedPort) -> Bool { lhs.service < rhs.service }

    /// "ssh 22/tcp, postgres 5432/tcp", as the CLI shows a grant's ports.
    public static func describe(_ ports: [GrantedPort]) -> String {
        ports.map { "\($0.name) \($0.service)" }.joined(separator: ", ")
    }
}

/// One source prefix allowed to reach one or more managed ports until a deadline.
///
/// The deadline is kept on the monotonic clock, as the kernel keeps the element's timeout: the wall-clock times are
/// what people see and what survives a reboot, and are recomputed from the deadline when the wall clock is stepped.
public struct Grant: Hashable, Sendable, Codable, Identifiable {
    public var id: String
    public var source: IPPrefix
    public var ports: [GrantedPort]
    /// When the grant was first made (wall clock).
    public var createdAt: Date
    /// When it was last made or extended (wall clock): after a reboot, when only the wall clock is left, a grant is
    /// never given more than `expiresAt - issuedAt`, however the clock was set meanwhile.
    public var issuedAt: Date
    /// When the grant ends, as the wall clock showed it when it was last computed.
    public var expiresAt: Date
    /// When the grant ends on the monotonic clock: the instant that decides. Not encoded for clients.
    public var deadline: MonotonicInstant
    /// The Unix user who asked (for files: the file's path; for etcd: the writer's `requested_by`).
    public var requestedBy: String
    /// The asking process's uid, from the socket's peer credentials.
    public var uid: UInt32?
    public var reason: String
    public var origin: GrantOrigin

    public init(
        id: String, source: IPPrefix, ports: [GrantedPort], createdAt: Date, issuedAt: Date? = nil, expiresAt: Date,
        deadline: MonotonicInstant, requestedBy: String, uid: UInt32?, reason: String, origin: GrantOrigin
    ) {
        self.id = id
        self.source = source
        // Most lists hold one port, or come sorted already: keep that array (it may be shared) rather than copy it.
        self.ports = zip(ports, ports.dropFirst()).allSatisfy({ $0 <= $1 }) ? ports : ports.sorted()
        self.createdAt = createdAt
        self.issuedAt = issuedAt ?? createdAt
        self.expiresAt = expiresAt
        self.deadline = deadline
        self.requestedBy = requestedBy
        self.uid = uid
        self.reason = reason
        self.origin = origin
    }

    enum CodingKeys: String, CodingKey {
        case id, source, ports
        case createdAt = "created_at"
        case issuedAt = "issued_at"
        case expiresAt = "expires_at"
        case requestedBy = "requested_by"
        case uid, reason, origin
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        source = try container.decode(IPPrefix.self, forKey: .source)
        ports = try container.decode([GrantedPort].self, forKey: .ports)
        createdAt = try container.decode(Date.self, forKey: .createdAt)
        issuedAt = try container.decodeIfPresent(Date.self, forKey: .issuedAt) ?? createdAt
        expiresAt = try container.decode(Date.self, forKey: .expiresAt)
        deadline = .distantFuture
        requestedBy = try container.decode(String.self, forKey: .requestedBy)
        uid = try container.decodeIfPresent(UInt32.self, forKey: .uid)
        reason = try container.decode(String.self, forKey: .reason)
        origin = try container.decode(GrantOrigin.self, forKey: .origin)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(source, forKey: .source)
        try container.encode(ports, forKey: .ports)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(issuedAt, forKey: .issuedAt)
        try container.encode(expiresAt, forKey: .expiresAt)
        try container.encode(requestedBy, forKey: .requestedBy)
        try container.encodeIfPresent(uid, forKey: .uid)
        try container.encode(reason, forKey: .reason)
        try container.encode(origin, forKey: .origin)
    }

    /// The kernel elements this grant stands for.
    public var accessKeys: [AccessKey] { ports.map { AccessKey(source: source, service: $0.service) } }

    public func isActive(at now: MonotonicInstant) -> Bool { deadline > now }

    /// `ssh 22/tcp, postgres 5432/tcp`.
    public var portsDescription: String { GrantedPort.describe(ports) }

    /// A new random grant id: `g-` and ten lowercase base-32 characters (50 random bits, one draw of the generator:
    /// each character is five of its bits, so every character is equally likely).
    public static func newIdentifier<Generator: RandomNumberGenerator>(using generator: inout Generator) -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyz23456789".utf8)
        var bits = generator.next()
        var bytes: [UInt8] = Array("g-".utf8)
        bytes.reserveCapacity(12)
        for _ in 0..<10 {
            bytes.append(alphabet[Int(bits & 31)])
            bits >>= 5
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A new random grant id from the system's generator.
    public static func newIdentifier() -> String {
        var generator = SystemRandomNumberGenerator()
        return newIdentifier(using: &generator)
    }
}

extension Service {
    /// `22/tcp` in JSON, as people write it.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let service = Service(parsing: text), text.contains("/") else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not PORT/PROTOCOL")
        }
        self = service
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
