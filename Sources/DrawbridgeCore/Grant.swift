import Foundation

/// Where a grant came from.
public enum GrantOrigin: Hashable, Sendable, CustomStringConvertible, Codable {
    /// `drawbridge grant` over the local socket.
    case local
    /// A watched grants file.
    case file(String)
    /// A controller (HTTP, etcd), by name.
    case controller(String)

    /// `local`, `file:/etc/drawbridge/grants.json`, `controller:NAME`.
    public var description: String {
        switch self {
        case .local: return "local"
        case .file(let path): return "file:\(path)"
        case .controller(let name): return "controller:\(name)"
        }
    }

    public init?(parsing text: String) {
        if text == "local" {
            self = .local
        } else if text.hasPrefix("file:") {
            self = .file(String(text.dropFirst(5)))
        } else if text.hasPrefix("controller:") {
            self = .controller(String(text.dropFirst(11)))
        } else {
            return nil
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
}

/// One source prefix allowed to reach one or more managed ports until an absolute expiry.
public struct Grant: Hashable, Sendable, Codable, Identifiable {
    public var id: String
    public var source: IPPrefix
    public var ports: [GrantedPort]
    public var createdAt: Date
    public var expiresAt: Date
    /// The Unix user who asked (for files: the file's path; for controllers: the controller's name).
    public var requestedBy: String
    /// The asking process's uid, from the socket's peer credentials.
    public var uid: UInt32?
    public var reason: String
    public var origin: GrantOrigin

    public init(
        id: String, source: IPPrefix, ports: [GrantedPort], createdAt: Date, expiresAt: Date, requestedBy: String,
        uid: UInt32?, reason: String, origin: GrantOrigin
    ) {
        self.id = id
        self.source = source
        self.ports = ports.sorted()
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.requestedBy = requestedBy
        self.uid = uid
        self.reason = reason
        self.origin = origin
    }

    enum CodingKeys: String, CodingKey {
        case id, source, ports
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case requestedBy = "requested_by"
        case uid, reason, origin
    }

    /// The kernel elements this grant stands for.
    public var accessKeys: [AccessKey] { ports.map { AccessKey(source: source, service: $0.service) } }

    public func isActive(at now: Date) -> Bool { expiresAt > now }

    /// `ssh 22/tcp, postgres 5432/tcp`.
    public var portsDescription: String { ports.map { "\($0.name) \($0.service)" }.joined(separator: ", ") }

    /// A new random grant id: `g-` and ten lowercase base-32 characters.
    public static func newIdentifier() -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyz23456789")
        var generator = SystemRandomNumberGenerator()
        return "g-" + String((0..<10).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
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
