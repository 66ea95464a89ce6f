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
        self.init(
            id: id, source: source, ports: ports, expiresAt: expiresAt, reason: reason, requestedBy: requestedBy,
            sourceText: "", expiryText: "")
    }

    public static let keys: Set<String> = ["id", "source", "ports", "expires_at", "reason", "requested_by"]
    public static let maximumPorts = 16

    /// Reads one entry object at the reader's position; `place` names it in errors (`grants[3]`).
    public static func read(
        _ reader: inout JSONReader, place name: @autoclosure () -> String, allowsRequester: Bool = true
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
                case "requested_by" where allowsRequester: requestedBy = try reader.readString()
                default:
                    let allowed = allowsRequester ? keys : keys.subtracting(["requested_by"])
                    throw JSONError(
                        message: "unknown key \"\(TextCheck.escaped(key))\"; allowed: "
                            + allowed.sorted().joined(separator: ", "), line: 0, column: 0)
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
        return GrantEntry(
            id: id, source: source, ports: ports, expiresAt: expiresAt, reason: reason, requestedBy: requestedBy,
            sourceText: sourceText, expiryText: expiryText)
    }

    private init(
        id: String?, source: IPPrefix, ports: [String], expiresAt: Date, reason: String, requestedBy: String?,
        sourceText: String, expiryText: String
    ) {
        self.id = id
        self.source = source
        self.ports = ports
        self.expiresAt = expiresAt
        self.reason = reason
        self.requestedBy = requestedBy
        self.sourceText = sourceText
        self.expiryText = expiryText
    }

    /// A name for an entry without an id, from what it says: the same entry gets the same name on every read.
    var contentDigest: String { lowercaseHex(contentHash) }

    /// The id of this entry in a file whose ids start with `prefix`, in one string.
    func identifier(prefix: String) -> String {
        if let id { return prefix + id }
        return lowercaseHex(contentHash, after: prefix)
    }

    private var contentHash: UInt64 {
        var hash = fnv1a(sourceText.utf8)
        for port in ports.count > 1 ? ports.sorted() : ports {
            hash = fnv1a(CollectionOfOne(0x7c), continuing: hash)
            hash = fnv1a(port.utf8, continuing: hash)
        }
        hash = fnv1a(CollectionOfOne(0x7c), continuing: hash)
        hash = fnv1a(expiryText.utf8, continuing: hash)
        return hash
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
        /// The grants in file order, as the pieces of the file were read (one part unless it was read in pieces):
        /// walking the parts spares copying a million grants into one array, which costs memory fresh from the
        /// kernel (page faults) as much as the copy itself.
        public private(set) var parts: [[Grant]]
        public var refusals: [Refused]
        /// Entries whose expiry had already passed (left out without complaint).
        public var expired: Int

        public init(grants: [Grant], refusals: [Refused], expired: Int) {
            self.init(parts: [grants], refusals: refusals, expired: expired)
        }

        init(parts: [[Grant]], refusals: [Refused], expired: Int) {
            self.parts = parts.filter { !$0.isEmpty }
            self.refusals = refusals
            self.expired = expired
        }

        /// Every grant in file order (a copy when the file was read in pieces).
        public var grants: [Grant] { parts.count == 1 ? parts[0] : Array(parts.joined()) }

        /// How many grants there are.
        public var grantCount: Int { parts.reduce(0) { $0 + $1.count } }

        /// The same grants, refusals and expired count, however the file was cut.
        public static func == (lhs: Contents, rhs: Contents) -> Bool {
            lhs.grantCount == rhs.grantCount && lhs.refusals == rhs.refusals && lhs.expired == rhs.expired
                && lhs.parts.joined().elementsEqual(rhs.parts.joined())
        }

        public struct Refused: Sendable, Equatable {
            public var entry: String
            public var refusal: Refusal
        }
    }

    /// Runs `body` for every index below `count`, on as many threads as it likes, and returns when all have run.
    public typealias ForEach = @Sendable (_ count: Int, _ body: @Sendable (Int) -> Void) -> Void

    /// One index after the other, on the calling thread.
    public static let oneByOne: ForEach = { count, body in
        for index in 0..<count { body(index) }
    }

    /// A list at least this long (in bytes) is read in pieces when more than one piece is asked for.
    public static let piecewiseBytes = 1 << 20

    /// Parses and checks a grants file.
    ///
    /// A list of at least `piecewiseFrom` bytes is cut into about `pieces` pieces that `forEach` reads and checks,
    /// on several cores if it likes; the result is the same as reading it in one go. When a piece finds a problem,
    /// the file is read again in one go for the error, which then names the first bad entry by its position.
    public static func parse(
        _ bytes: [UInt8], path: String, policy: Policy, now: Instants, pieces: Int = 1,
        piecewiseFrom: Int = piecewiseBytes, forEach: ForEach = oneByOne
    ) throws(FormatError) -> Contents {
        func fail(_ message: String) -> FormatError { FormatError(path: path, message: message) }
        guard bytes.count <= maximumBytes else {
            throw fail("the file is larger than \(maximumBytes >> 20) MiB")
        }
        var reader = JSONReader(bytes, maximumDepth: 4)
        var split: [JSONReader]?
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
                if pieces > 1, let readers = reader.splitList(pieces: pieces, minimumBytes: piecewiseFrom) {
                    split = readers
                    return
                }
                try reader.readArray { (index: Int, reader: inout JSONReader) throws(JSONError) in
                    guard index < maximumEntries else {
                        throw JSONError(message: "more than \(maximumEntries) entries", line: 0, column: 0)
                    }
                    entries.append(try readEntry(&reader, place: "grants[\(index)]"))
                }
            }
            try reader.finish()
        } catch {
            // After a cut list, a problem further on may not be the first one: the whole read finds that.
            if split != nil { return try parse(bytes, path: path, policy: policy, now: now) }
            throw fail(error.line == 0 ? error.message : "not valid JSON: \(error)")
        }
        guard sawGrants else { throw fail("the document must be an object with a \"grants\" list") }
        if let split {
            if let contents = parseInPieces(split, path: path, policy: policy, now: now, forEach: forEach) {
                return contents
            }
            return try parse(bytes, path: path, policy: policy, now: now)
        }

        var checker = EntryChecker(path: path, policy: policy, now: now, expectedEntries: entries.count)
        var seen: Set<String> = []
        seen.reserveCapacity(entries.count)
        for (index, entry) in entries.enumerated() {
            let id = entry.identifier(prefix: checker.idPrefix)
            guard seen.insert(id).inserted else {
                throw fail("grants[\(index)]: duplicate id \"\(entry.id ?? entry.contentDigest)\"")
            }
            checker.check(entry, id: id, index: index)
        }
        return checker.contents(firstIndex: 0)
    }

    /// Reads and checks the pieces of a split list at once; nil when any piece has a problem, or the pieces together
    /// list too many entries or one id twice (the caller then reads the file in one go for the error).
    private static func parseInPieces(
        _ pieces: [JSONReader], path: String, policy: Policy, now: Instants, forEach: ForEach
    ) -> Contents? {
        struct Piece {
            var checker: EntryChecker
            /// A 64-bit digest of each entry's id, in order: duplicates are looked for among these.
            var idDigests: [UInt64] = []
        }
        nonisolated(unsafe) let results = UnsafeMutableBufferPointer<Piece?>.allocate(capacity: pieces.count)
        results.initialize(repeating: nil)
        defer {
            results.deinitialize()
            results.deallocate()
        }
        // Each piece writes only its own slot.
        forEach(pieces.count) { number in
            var reader = pieces[number]
            // Room for as many entries as the shortest sensible ones (about 60 bytes) would fill the piece with,
            // so that the arrays are not copied over and over as they grow.
            let room = reader.remainingBytes / 60
            var piece = Piece(checker: EntryChecker(path: path, policy: policy, now: now, expectedEntries: room))
            piece.idDigests.reserveCapacity(room)
            do throws(JSONError) {
                try reader.readPiece { (position: Int, reader: inout JSONReader) throws(JSONError) in
                    // The place is not known here; an error sends the whole file to be read again anyway.
                    let entry = try readEntry(&reader, place: "an entry")
                    let id = entry.identifier(prefix: piece.checker.idPrefix)
                    piece.idDigests.append(fnv1a(id.utf8))
                    piece.checker.check(entry, id: id, index: position)
                }
            } catch {
                return
            }
            results[number] = piece
        }
        var total = 0
        for result in results {
            guard let result else { return nil }
            total += result.idDigests.count
        }
        guard total <= maximumEntries else { return nil }
        // Two equal digests are two equal ids, or (about once in 10^7 files of a million entries) two ids whose
        // digests collide: either way the file is read again whole, which compares the ids themselves. The digests
        // are looked at in parts by their lowest bits (equal digests fall in the same part), the parts at once.
        let digestParts = min(pieces.count, 8)
        let perPart = total / digestParts + total / (4 * digestParts)
        nonisolated(unsafe) let repeated = UnsafeMutableBufferPointer<Bool>.allocate(capacity: digestParts)
        repeated.initialize(repeating: false)
        defer { repeated.deallocate() }
        forEach(digestParts) { part in
            var seen = Set<UInt64>(minimumCapacity: perPart)
            for result in results {
                for id in result!.idDigests where Int(id % UInt64(digestParts)) == part && !seen.insert(id).inserted {
                    repeated[part] = true
                    return
                }
            }
        }
        guard !repeated.contains(true) else { return nil }
        var parts: [[Grant]] = []
        var refusals: [Contents.Refused] = []
        var expired = 0
        var firstIndex = 0
        for result in results {
            let part = result!.checker.contents(firstIndex: firstIndex)
            parts += part.parts
            refusals += part.refusals
            expired += part.expired
            firstIndex += result!.idDigests.count
        }
        return Contents(parts: parts, refusals: refusals, expired: expired)
    }

    private static func readEntry(_ reader: inout JSONReader, place: @autoclosure () -> String) throws(JSONError)
        -> GrantEntry
    {
        do throws(FieldError) {
            // A grants file names no requester: the file is the requester.
            return try GrantEntry.read(&reader, place: place(), allowsRequester: false)
        } catch {
            throw JSONError(message: error.description, line: 0, column: 0)
        }
    }

    /// Checks entries against the policy as if root asked for each, sharing one array per list of ports and one
    /// string per reason among the grants that have them.
    private struct EntryChecker {
        let path: String
        let origin: GrantOrigin
        let idPrefix: String
        let policy: Policy
        let now: Instants
        private var grants: [Grant] = []
        private var refused: [(index: Int, source: IPPrefix, ports: [String], refusal: Refusal)] = []
        private var expired = 0
        private var resolvedPorts: [[String]: Result<[Policy.ManagedPort], Refusal>] = [:]
        private var grantedPorts: [[String]: [GrantedPort]] = [:]
        private var reasons: [String: String] = [:]
        /// The ports and reason of the last granted entry, looked at before the tables above.
        private var lastPortNames: [String] = []
        private var lastResolved: Result<[Policy.ManagedPort], Refusal>?
        private var lastGranted: [GrantedPort]?
        private var lastReason = ""
        private static let root = Caller(uid: 0, user: "root", groups: [])

        init(path: String, policy: Policy, now: Instants, expectedEntries: Int) {
            // A string of this checker's own: every grant retains it twice, and checkers on other cores retaining
            // one shared string would contend for its reference count.
            let path = String(decoding: Array(path.utf8), as: UTF8.self)
            self.path = path
            origin = .file(path)
            idPrefix = GrantBook.fileIdentifierPrefix(for: path)
            self.policy = policy
            self.now = now
            grants.reserveCapacity(expectedEntries)
        }

        /// Checks the entry at `index` (within what this checker reads).
        mutating func check(_ entry: GrantEntry, id: String, index: Int) {
            guard entry.expiresAt > now.wall else {
                expired += 1
                return
            }
            let resolved: Result<[Policy.ManagedPort], Refusal>
            let sameAsLast = lastPortNames == entry.ports
            if sameAsLast, let lastResolved {
                // Neighbouring entries mostly name the same ports: no hashing of the list for them.
                resolved = lastResolved
            } else if let cached = resolvedPorts[entry.ports] {
                resolved = cached
            } else {
                // The ports' source lists copied for this checker alone: checkers on other cores would otherwise
                // contend for the reference counts of the policy's one copy, once per entry.
                resolved = policy.resolvePorts(entry.ports).map { ports in
                    ports.map { port in
                        var own = port
                        own.allowedSources = port.allowedSources.map { $0 }
                        return own
                    }
                }
                resolvedPorts[entry.ports] = resolved
            }
            let request = GrantRequest(
                ports: entry.ports, source: entry.source, duration: entry.expiresAt.timeIntervalSince(now.wall),
                reason: entry.reason)
            switch resolved.flatMap({ policy.authorize($0, request: request, by: Self.root) }) {
            case .failure(let refusal):
                refused.append((index, entry.source, entry.ports, refusal))
            case .success(let authorized):
                let ports: [GrantedPort]
                if sameAsLast, let lastGranted {
                    ports = lastGranted
                } else {
                    ports =
                        grantedPorts[entry.ports]
                        ?? authorized.ports.map { GrantedPort(name: $0.name, service: $0.service) }
                    grantedPorts[entry.ports] = ports
                    (lastPortNames, lastResolved, lastGranted) = (entry.ports, resolved, ports)
                }
                let reason: String
                if entry.reason == lastReason {
                    reason = lastReason
                } else {
                    reason = reasons[entry.reason] ?? entry.reason
                    reasons[entry.reason] = reason
                    lastReason = reason
                }
                grants.append(
                    Grant(
                        id: id, source: entry.source, ports: ports, createdAt: now.wall, expiresAt: entry.expiresAt,
                        deadline: now.deadline(forWall: entry.expiresAt), requestedBy: path, uid: nil, reason: reason,
                        origin: origin))
            }
        }

        /// What was checked, with refused entries named by their position in the whole list.
        func contents(firstIndex: Int) -> Contents {
            Contents(
                grants: grants,
                refusals: refused.map {
                    .init(
                        entry: "grants[\(firstIndex + $0.index)] (\($0.source) \($0.ports.joined(separator: ",")))",
                        refusal: $0.refusal)
                }, expired: expired)
        }
    }
}
