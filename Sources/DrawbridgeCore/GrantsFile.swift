import FoundationEssentials

/// A grant as a file or a controller writes it:
///
/// ```json
/// { "id": "deploy", "source": "203.0.113.7", "ports": ["ssh"], "expires_at": "2026-11-26T12:00:00Z",
///   "reason": "nightly deploy", "requested_by": "ci" }
/// ```
/// `id`, `reason` and `requested_by` are optional. Every field is checked the same way whatever the origin: the
/// source is a prefix, the ports are one to sixteen names or NUMBER/PROTO, the expiry an RFC 3339 timestamp, the
/// texts one line of printable characters within their limits, and no key is unknown or repeated.
public struct GrantEntry: Sendable, Equatable {
    public var id: String?
    public var source: IPPrefix
    public var ports: [String]
    public var expiresAt: Date
    public var reason: String
    public var requestedBy: String?
    /// The source and expiry as written, for naming an entry without an id.
    var sourceText = ""
    var expiryText = ""

    public init(
        id: String?, source: IPPrefix, ports: [String], expiresAt: Date, reason: String, requestedBy: String? = nil
    ) {
        self.id = id
        self.source = source
        self.ports = ports
        self.expiresAt = expiresAt
        self.reason = reason
        self.requestedBy = requestedBy
    }

    public static let keys: Set<String> = ["id", "source", "ports", "expires_at", "reason", "requested_by"]
    public static let maximumPorts = 16

    /// Reads one entry object at the reader's position; `place` names it in errors (`grants[3]`).
    public static func read(
        _ reader: inout JSONReader, place name: @autoclosure () -> String, allowed: Set<String> = keys
    ) throws(FieldError) -> GrantEntry {
        // The place is only spelled out for an error (a file of a million entries would otherwise build a million
        // names it never shows).
        var place: String { name() }
        var id: String?
        var sourceText: String?
        var ports: [String]?
        var expiryText: String?
        var reason = ""
        var requestedBy: String?
        do throws(JSONError) {
            try reader.readObject { (key: String, reader: inout JSONReader) throws(JSONError) in
                guard allowed.contains(key) else {
                    throw JSONError(
                        message: "unknown key \"\(TextCheck.escaped(key))\"; allowed: "
                            + allowed.sorted().joined(separator: ", "), line: 0, column: 0)
                }
                switch key {
                case "id": id = try reader.readString()
                case "source": sourceText = try reader.readString()
                case "ports":
                    var list: [String] = []
                    try reader.readArray { (_, reader: inout JSONReader) throws(JSONError) in
                        list.append(try reader.readString())
                    }
                    ports = list
                case "expires_at": expiryText = try reader.readString()
                case "reason": reason = try reader.readString()
                case "requested_by": requestedBy = try reader.readString()
                default: try reader.skipValue()
                }
            }
        } catch {
            throw FieldError(error.line == 0 ? "\(place): \(error.message)" : "\(place): \(error)")
        }
        guard let sourceText else { throw FieldError("\(place) has no \"source\" (the address or prefix to open to)") }
        let source: IPPrefix
        do {
            source = try IPPrefix(parsing: sourceText)
        } catch {
            throw FieldError("\(place).source: \(error.description)")
        }
        guard let ports, !ports.isEmpty else {
            throw FieldError("\(place).ports must be a non-empty list of port names (or NUMBER/PROTO)")
        }
        guard ports.count <= maximumPorts else {
            throw FieldError("\(place).ports lists \(ports.count) ports; at most \(maximumPorts) are allowed")
        }
        for port in ports {
            if let problem = TextCheck.problem(with: port, field: "\(place).ports", maximumBytes: 64) {
                throw FieldError(problem)
            }
        }
        guard let expiryText else { throw FieldError("\(place) has no \"expires_at\"") }
        guard let expiresAt = Timestamp.parse(expiryText) else {
            throw FieldError(
                "\(place).expires_at '\(TextCheck.escaped(String(expiryText.prefix(64))))' is not an RFC 3339 "
                    + "timestamp like 2026-11-26T12:00:00Z")
        }
        if let id, let problem = TextCheck.identifierProblem(id, field: "\(place).id") { throw FieldError(problem) }
        if let problem = TextCheck.problem(
            with: reason, field: "\(place).reason", maximumBytes: TextCheck.maximumReasonBytes)
        {
            throw FieldError(problem)
        }
        if let requestedBy {
            if requestedBy.isEmpty { throw FieldError("\(place).requested_by is empty") }
            if let problem = TextCheck.problem(with: requestedBy, field: "\(place).requested_by", maximumBytes: 256) {
                throw FieldError(problem)
            }
        }
        var entry = GrantEntry(
            id: id, source: source, ports: ports, expiresAt: expiresAt, reason: reason, requestedBy: requestedBy)
        entry.sourceText = sourceText
        entry.expiryText = expiryText
        return entry
    }

    /// A name for an entry without an id, from what it says: the same entry gets the same name on every read.
    var contentDigest: String {
        var hash = fnv1a(sourceText.utf8)
        for port in ports.count > 1 ? ports.sorted() : ports {
            hash = fnv1a(CollectionOfOne(0x7c), continuing: hash)
            hash = fnv1a(port.utf8, continuing: hash)
        }
        hash = fnv1a(CollectionOfOne(0x7c), continuing: hash)
        hash = fnv1a(expiryText.utf8, continuing: hash)
        return String(hash, radix: 16)
    }
}

/// A watched grants file: a JSON document that lists grants with absolute expiries.
///
/// ```json
/// { "grants": [ { "id": "deploy", "source": "203.0.113.7", "ports": ["ssh"],
///                 "expires_at": "2026-11-26T12:00:00Z", "reason": "nightly deploy" } ] }
/// ```
/// Each entry is checked against the policy as if root asked for it, for the time left until `expires_at`.
public enum GrantsFile {
    /// The largest grants file read.
    public static let maximumBytes = 512 << 20
    /// The most entries one file may list.
    public static let maximumEntries = 2_000_000

    /// A grants file that could not be read as a whole; the agent then keeps the file's last good grants.
    public struct FormatError: Error, Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var message: String
        public var description: String { "\(TextCheck.escaped(path)): \(message)" }

        public init(path: String, message: String) {
            self.path = path
            self.message = message
        }
    }

    /// What a readable file yields: the grants that pass the policy, and the entries refused with why.
    public struct Contents: Sendable, Equatable {
        public var grants: [Grant]
        public var refusals: [Refused]
        /// Entries whose expiry had already passed (left out without complaint).
        public var expired: Int

        public struct Refused: Sendable, Equatable {
            public var entry: String
            public var refusal: Refusal
        }
    }

    /// Parses and checks a grants file.
    public static func parse(_ bytes: [UInt8], path: String, policy: Policy, now: Instants) throws(FormatError)
        -> Contents
    {
        func fail(_ message: String) -> FormatError { FormatError(path: path, message: message) }
        guard bytes.count <= maximumBytes else {
            throw fail("the file is larger than \(maximumBytes >> 20) MiB")
        }
        let origin = GrantOrigin.file(path)
        let idPrefix = GrantBook.fileIdentifierPrefix(for: path)
        var reader = JSONReader(bytes, maximumDepth: 4)
        var entries: [GrantEntry] = []
        var sawGrants = false
        do throws(JSONError) {
            try reader.readObject { (key: String, reader: inout JSONReader) throws(JSONError) in
                guard key == "grants" else {
                    throw JSONError(
                        message: "unknown key \"\(TextCheck.escaped(key))\" at the top level; the only key is \"grants\"",
                        line: 0, column: 0)
                }
                sawGrants = true
                try reader.readArray { (index: Int, reader: inout JSONReader) throws(JSONError) in
                    guard index < maximumEntries else {
                        throw JSONError(message: "more than \(maximumEntries) entries", line: 0, column: 0)
                    }
                    do throws(FieldError) {
                        entries.append(try GrantEntry.read(&reader, place: "grants[\(index)]", allowed: entryKeys))
                    } catch {
                        throw JSONError(message: error.description, line: 0, column: 0)
                    }
                }
            }
            try reader.finish()
        } catch {
            throw fail(error.line == 0 ? error.message : "not valid JSON: \(error)")
        }
        guard sawGrants else { throw fail("the document must be an object with a \"grants\" list") }

        var grants: [Grant] = []
        grants.reserveCapacity(entries.count)
        var refusals: [Contents.Refused] = []
        var expired = 0
        var seen: Set<String> = []
        seen.reserveCapacity(entries.count)
        var resolvedPorts: [[String]: Result<[Policy.ManagedPort], Refusal>] = [:]
        var grantedPorts: [[String]: [GrantedPort]] = [:]
        var reasons: [String: String] = [:]
        let root = Caller(uid: 0, user: "root", groups: [])
        for (index, entry) in entries.enumerated() {
            var place: String { "grants[\(index)]" }
            let suffix = entry.id ?? entry.contentDigest
            let id = idPrefix + suffix
            guard seen.insert(id).inserted else { throw fail("\(place): duplicate id \"\(suffix)\"") }
            guard entry.expiresAt > now.wall else {
                expired += 1
                continue
            }
            let resolved: Result<[Policy.ManagedPort], Refusal>
            if let cached = resolvedPorts[entry.ports] {
                resolved = cached
            } else {
                resolved = policy.resolvePorts(entry.ports)
                resolvedPorts[entry.ports] = resolved
            }
            let request = GrantRequest(
                ports: entry.ports, source: entry.source, duration: entry.expiresAt.timeIntervalSince(now.wall),
                reason: entry.reason)
            let outcome = resolved.flatMap { policy.authorize($0, request: request, by: root) }
            switch outcome {
            case .failure(let refusal):
                refusals.append(
                    .init(
                        entry: "\(place) (\(entry.source) \(entry.ports.joined(separator: ",")))", refusal: refusal))
            case .success(let authorized):
                // One array per list of ports and one string per reason, shared by every entry that has them.
                let ports =
                    grantedPorts[entry.ports]
                    ?? authorized.ports.map { GrantedPort(name: $0.name, service: $0.service) }
                grantedPorts[entry.ports] = ports
                let reason = reasons[entry.reason] ?? entry.reason
                reasons[entry.reason] = reason
                grants.append(
                    Grant(
                        id: id, source: entry.source, ports: ports, createdAt: now.wall, expiresAt: entry.expiresAt,
                        deadline: now.deadline(forWall: entry.expiresAt), requestedBy: path, uid: nil, reason: reason,
                        origin: origin))
            }
        }
        return Contents(grants: grants, refusals: refusals, expired: expired)
    }

    /// A grants file names no requester: the file is the requester.
    static let entryKeys: Set<String> = ["id", "source", "ports", "expires_at", "reason"]
}
