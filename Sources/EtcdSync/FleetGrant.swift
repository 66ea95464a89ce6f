import DrawbridgeCore
import FoundationEssentials

/// Where a fleet grant goes: one host's directory, or a group's (every host that follows the group).
public enum FleetTarget: Sendable, Equatable, CustomStringConvertible {
    case host(String)
    case group(String)

    /// Checks the name as the hosts' policies check theirs.
    public static func make(host: String?, group: String?) throws(FleetProblem) -> FleetTarget {
        switch (host, group) {
        case (let host?, nil):
            if let problem = EtcdSettings.nameProblem(host, kind: "host") { throw FleetProblem("--host: \(problem)") }
            return .host(host)
        case (nil, let group?):
            if let problem = EtcdSettings.nameProblem(group, kind: "group") { throw FleetProblem("--group: \(problem)") }
            return .group(group)
        default:
            throw FleetProblem("name the hosts with exactly one of --host NAME or --group NAME")
        }
    }

    /// The directory of this target's grant keys.
    public func directory(prefix: String) -> String {
        switch self {
        case .host(let name): EtcdLayout.hostDirectory(prefix: prefix, host: name)
        case .group(let name): EtcdLayout.groupDirectory(prefix: prefix, group: name)
        }
    }

    /// Whether a host's status shows it follows this target.
    public func covers(_ status: HostStatus) -> Bool {
        switch self {
        case .host(let name): status.host == name
        case .group(let name): status.groups.contains(name)
        }
    }

    public var description: String {
        switch self {
        case .host(let name): "host \(name)"
        case .group(let name): "group \(name)"
        }
    }

    /// The target of a grant key under `prefix`, and the id at its end; nil for any other key.
    public static func parse(key: String, prefix: String) -> (target: FleetTarget, id: String)? {
        let root = "\(prefix)/v1/grants/"
        guard key.hasPrefix(root) else { return nil }
        let parts = key.dropFirst(root.utf8.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[1].isEmpty, !parts[2].isEmpty else { return nil }
        switch parts[0] {
        case "host": return (.host(String(parts[1])), String(parts[2]))
        case "group": return (.group(String(parts[1])), String(parts[2]))
        default: return nil
        }
    }
}

/// A command-line mistake a requester can fix, in one sentence.
public struct FleetProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A grant as a requester writes it to etcd, checked as far as it can be without a host's policy: the syntax of the
/// ports, the source prefix, the duration, the texts and the id. Whether the ports are managed, the source allowed and
/// the duration short enough is for each host to decide against its own policy, when its agent reads the value.
public struct FleetGrant: Sendable, Equatable {
    public var id: String
    public var source: IPPrefix
    public var ports: [String]
    public var expiresAt: Date
    public var reason: String
    public var requestedBy: String
    public var target: FleetTarget

    /// How long a grant's key outlives its expiry: etcd deletes it then (a lease is no clock; the expiry in the
    /// value is what the hosts enforce).
    public static let leaseMargin: Duration = .seconds(300)

    /// Checks what a requester typed and makes the grant; `now` is the wall clock.
    public static func make(
        ports: [String], source: String, duration: String, reason: String, id: String?, requestedBy: String,
        target: FleetTarget, now: Date
    ) throws(FleetProblem) -> FleetGrant {
        guard !ports.isEmpty else { throw FleetProblem("name at least one port, like ssh or 22/tcp") }
        guard ports.count <= GrantEntry.maximumPorts else {
            throw FleetProblem("a grant names at most \(GrantEntry.maximumPorts) ports; \(ports.count) were given")
        }
        for port in ports where !isPortSyntax(port) {
            throw FleetProblem(
                "'\(TextCheck.escaped(port))' is not a port: write a policy name (ssh) or NUMBER/PROTO (22/tcp)")
        }
        let prefix: IPPrefix
        do {
            prefix = try IPPrefix(parsing: source)
        } catch {
            throw FleetProblem("--from: \(error.description)")
        }
        guard let seconds = GrantDuration.parse(duration) else {
            throw FleetProblem(
                "--for '\(TextCheck.escaped(duration))' is not a duration; write it like 90s, 30m, 2h or 1h30m")
        }
        if let problem = TextCheck.problem(with: reason, field: "--reason", maximumBytes: TextCheck.maximumReasonBytes) {
            throw FleetProblem(problem)
        }
        let id = id ?? Grant.newIdentifier()
        if let problem = TextCheck.identifierProblem(id, field: "--id") { throw FleetProblem(problem) }
        guard !requestedBy.isEmpty else { throw FleetProblem("--requested-by is empty") }
        if let problem = TextCheck.problem(with: requestedBy, field: "--requested-by", maximumBytes: 256) {
            throw FleetProblem(problem)
        }
        // Whole seconds: the value reads better, and no host sees a fraction it might round differently.
        let expiresAt = Date(timeIntervalSince1970: (now.timeIntervalSince1970 + seconds).rounded(.up))
        return FleetGrant(
            id: id, source: prefix, ports: ports, expiresAt: expiresAt, reason: reason, requestedBy: requestedBy,
            target: target)
    }

    /// A policy port name (`[a-z][a-z0-9_-]{0,31}`, as the policy reader requires) or NUMBER[/PROTO].
    static func isPortSyntax(_ text: String) -> Bool {
        let scalars = Array(text.unicodeScalars)
        guard let first = scalars.first else { return false }
        if ("0"..."9").contains(first) { return Service(parsing: text) != nil }
        guard scalars.count <= 32, ("a"..."z").contains(first) else { return false }
        return scalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" }
    }

    /// The key under `prefix`.
    public func key(prefix: String) -> String { target.directory(prefix: prefix) + id }

    /// The value: one JSON object in the format every host reads (`GrantEntry`), keys sorted.
    public func value() -> [UInt8] {
        let value = Value(
            id: id, source: source.description, ports: ports, expiresAt: Timestamp.format(expiresAt), reason: reason,
            requestedBy: requestedBy)
        return (try? Array(LocalAPI.encoder().encode(value))) ?? []
    }

    /// The lease the key is written with: the time left until expiry, plus ``leaseMargin``.
    public func leaseTTL(now: Date) -> Duration {
        .seconds(max(1, Int64(expiresAt.timeIntervalSince(now).rounded(.up)))) + Self.leaseMargin
    }

    struct Value: Encodable {
        var id: String
        var source: String
        var ports: [String]
        var expiresAt: String
        var reason: String
        var requestedBy: String

        enum CodingKeys: String, CodingKey {
            case id, source, ports
            case expiresAt = "expires_at"
            case reason
            case requestedBy = "requested_by"
        }
    }
}
