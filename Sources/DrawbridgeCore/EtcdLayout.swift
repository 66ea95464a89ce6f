import FoundationEssentials

/// The policy's `etcd:` section: where this host's grants from etcd come from, and who may hand them to the agent.
///
/// The agent never talks to etcd itself. `drawbridge-etcd sync` (its own process, its own unprivileged user, the
/// TLS and gRPC code with it) follows the keys and hands each change to the agent over the local socket; the agent
/// checks every value against this policy, as it does a grants file.
public struct EtcdSettings: Sendable, Equatable {
    /// Client TLS: the CA that signs etcd's certificate, and this host's certificate and key (CN = its etcd user).
    public struct TLS: Sendable, Equatable {
        public var ca: String?
        public var cert: String?
        public var key: String?

        public init(ca: String? = nil, cert: String? = nil, key: String? = nil) {
            self.ca = ca
            self.cert = cert
            self.key = key
        }
    }

    /// `http://` or `https://` URLs of etcd members, tried in turn.
    public var endpoints: [String]
    /// This host's name under `<prefix>/v1/grants/host/`; nil means the machine's host name.
    public var host: String?
    /// The groups whose grants this host enforces.
    public var groups: [String]
    /// The root of every key, without a trailing slash.
    public var prefix: String
    public var tls: TLS?
    /// etcd password authentication: the user and a file holding the password.
    public var user: String?
    public var passwordFile: String?
    /// The local account whose `drawbridge-etcd sync` may hand etcd grants to the agent (root always may).
    public var syncUser: String

    public static let defaultPrefix = "/drawbridge"
    public static let defaultSyncUser = "drawbridge-etcd"
    public static let maximumGroups = 64

    public init(
        endpoints: [String], host: String? = nil, groups: [String] = [], prefix: String = EtcdSettings.defaultPrefix,
        tls: TLS? = nil, user: String? = nil, passwordFile: String? = nil,
        syncUser: String = EtcdSettings.defaultSyncUser
    ) {
        self.endpoints = endpoints
        self.host = host
        self.groups = groups
        self.prefix = prefix
        self.tls = tls
        self.user = user
        self.passwordFile = passwordFile
        self.syncUser = syncUser
    }

    /// The key layout for this host, with `host` filled in (from the policy or the machine's name).
    public func layout(host machineName: String) -> EtcdLayout {
        EtcdLayout(prefix: prefix, host: host ?? machineName, groups: groups)
    }

    /// Why `name` cannot be a host or group name in keys, or nil: 1 to 63 characters of letters, digits, `.`, `-`
    /// and `_`, starting with a letter or digit (a DNS name fits; a slash never does).
    public static func nameProblem(_ name: String, kind: String) -> String? {
        guard let first = name.unicodeScalars.first else { return "the etcd \(kind) name is empty" }
        guard name.utf8.count <= 63 else { return "etcd \(kind) name '\(TextCheck.escaped(name))' is longer than 63 characters" }
        func isAlphanumeric(_ scalar: Unicode.Scalar) -> Bool {
            ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
        }
        guard isAlphanumeric(first),
            name.unicodeScalars.allSatisfy({ isAlphanumeric($0) || $0 == "." || $0 == "-" || $0 == "_" })
        else {
            return "'\(TextCheck.escaped(name))' is not a valid etcd \(kind) name: use letters, digits, '.', '-' and "
                + "'_', starting with a letter or digit"
        }
        return nil
    }

    /// Why `prefix` cannot be the key root, or nil: it starts with `/`, does not end with one, has no empty or
    /// dot segments, and is at most 128 printable ASCII characters.
    public static func prefixProblem(_ prefix: String) -> String? {
        guard prefix.hasPrefix("/"), prefix.count > 1 else { return "etcd prefix '\(TextCheck.escaped(prefix))' must start with '/' and name something" }
        guard !prefix.hasSuffix("/") else { return "etcd prefix '\(prefix)' must not end with '/'" }
        guard prefix.utf8.count <= 128, prefix.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            return "etcd prefix '\(TextCheck.escaped(prefix))' must be at most 128 printable ASCII characters without spaces"
        }
        let segments = prefix.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard segments.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
            return "etcd prefix '\(prefix)' has an empty, '.' or '..' segment"
        }
        return nil
    }

    /// Why `url` is not an etcd endpoint, or nil: `http://` or `https://`, a host (IPv4, `[IPv6]` or a name), a
    /// port, nothing after it.
    public static func endpointProblem(_ url: String) -> String? {
        let bad = "etcd endpoint '\(TextCheck.escaped(url))'"
        var rest: Substring
        if url.hasPrefix("https://") {
            rest = url.dropFirst(8)
        } else if url.hasPrefix("http://") {
            rest = url.dropFirst(7)
        } else {
            return "\(bad) must start with https:// (or http:// on a private network)"
        }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                return "\(bad) must name a port after the IPv6 address, like https://[2001:db8::1]:2379"
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(close, offsetBy: 2)...]
            guard IPAddress(host) != nil else { return "\(bad) has an invalid IPv6 address" }
        } else {
            guard let colon = rest.lastIndex(of: ":") else {
                return "\(bad) must name its port, like https://192.0.2.1:2379"
            }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
            guard !host.isEmpty,
                host.unicodeScalars.allSatisfy({
                    ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "."
                        || $0 == "-"
                })
            else {
                return "\(bad) has an invalid host name"
            }
        }
        guard let port = Int(portText), (1...65_535).contains(port), portText.allSatisfy(\.isASCIIDigit) else {
            return "\(bad) has no valid port (1 to 65535) and nothing after it"
        }
        return nil
    }
}

/// The keys one host follows and writes, under the `prefix`:
///
/// - `<prefix>/v1/grants/host/<host>/<id>`: a grant for this host only;
/// - `<prefix>/v1/grants/group/<group>/<id>`: a grant for every host of the group;
/// - `<prefix>/v1/status/<host>`: the host's report (kept alive with a lease by `drawbridge-etcd sync`).
public struct EtcdLayout: Sendable, Equatable {
    public var prefix: String
    public var host: String
    public var groups: [String]

    public init(prefix: String, host: String, groups: [String]) {
        self.prefix = prefix
        self.host = host
        self.groups = groups
    }

    public static func hostDirectory(prefix: String, host: String) -> String { "\(prefix)/v1/grants/host/\(host)/" }
    public static func groupDirectory(prefix: String, group: String) -> String { "\(prefix)/v1/grants/group/\(group)/" }
    public static func statusDirectory(prefix: String) -> String { "\(prefix)/v1/status/" }

    /// The directories this host follows: its own, then each group's.
    public var directories: [String] {
        [Self.hostDirectory(prefix: prefix, host: host)] + groups.map { Self.groupDirectory(prefix: prefix, group: $0) }
    }

    /// Where this host reports what it applied and refused.
    public var statusKey: String { Self.statusDirectory(prefix: prefix) + host }

    /// The directory and id of a grant key this host follows, or why the key is not one.
    public func grantKey(_ key: String) -> Result<(directory: String, id: String), EtcdKeyProblem> {
        for directory in directories where key.hasPrefix(directory) {
            let id = String(key.dropFirst(directory.utf8.count))
            if let problem = TextCheck.identifierProblem(id, field: "the grant id at the end of the key") {
                return .failure(EtcdKeyProblem(message: problem))
            }
            return .success((directory, id))
        }
        return .failure(
            EtcdKeyProblem(message: "the key is outside this host's directories (\(directories.joined(separator: ", ")))"))
    }

    /// The id a grant from etcd has in the agent: `e-`, a digest of its directory, `-`, the id in the key. Two
    /// groups may use the same id; their grants stay apart.
    public static func bookIdentifier(directory: String, id: String) -> String {
        identifierPrefix(directory: directory) + id
    }

    public static func identifierPrefix(directory: String) -> String {
        "e-" + String(fnv1a("etcd:" + directory) & 0xffff_ffff, radix: 16) + "-"
    }
}

/// Why a key is not a grant key this host follows.
public struct EtcdKeyProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// A grant as written to etcd, checked against this host's policy.
///
/// The value is one JSON object, a grants-file entry plus who asked:
/// `{"id":"g-1","source":"203.0.113.7","ports":["ssh"],"expires_at":"2026-12-01T12:00:00Z","reason":"…",`
/// `"requested_by":"alice"}`. `id`, when present, must be the id at the end of the key.
public enum EtcdGrantValue {
    /// Values larger than this are refused unread.
    public static let maximumBytes = 16 * 1024

    /// The grant `value` at `key` asks for, as this host's policy allows it, or why it is not enforced.
    public static func grant(
        key: String, directory: String, id: String, value: [UInt8], policy: Policy, now: Instants
    ) -> Result<Grant, Refusal> {
        func malformed(_ message: String) -> Result<Grant, Refusal> {
            .failure(Refusal(reason: .invalidRequest, message: "malformed value: \(message)"))
        }
        guard value.count <= maximumBytes else {
            return malformed("\(value.count) bytes; at most \(maximumBytes) are accepted")
        }
        var reader = JSONReader(value, maximumDepth: 3)
        let entry: GrantEntry
        do {
            entry = try GrantEntry.read(&reader, place: "value")
            do throws(JSONError) { try reader.finish() } catch { return malformed("\(error)") }
        } catch {
            return malformed(error.description)
        }
        if let written = entry.id, written != id {
            return malformed("id \"\(TextCheck.escaped(written))\" is not the id at the end of the key (\(id))")
        }
        guard entry.expiresAt > now.wall else {
            return .failure(
                Refusal(reason: .invalidRequest, message: "expired at \(Timestamp.format(entry.expiresAt))"))
        }
        let request = GrantRequest(
            ports: entry.ports, source: entry.source, duration: entry.expiresAt.timeIntervalSince(now.wall),
            reason: entry.reason)
        let root = Caller(uid: 0, user: "root", groups: [])
        return policy.resolvePorts(entry.ports).flatMap { policy.authorize($0, request: request, by: root) }.map {
            authorized in
            Grant(
                id: EtcdLayout.bookIdentifier(directory: directory, id: id), source: entry.source,
                ports: authorized.ports.map { GrantedPort(name: $0.name, service: $0.service) }, createdAt: now.wall,
                expiresAt: entry.expiresAt, deadline: now.deadline(forWall: entry.expiresAt),
                requestedBy: entry.requestedBy ?? "etcd", uid: nil, reason: entry.reason, origin: .etcd(key))
        }
    }
}
