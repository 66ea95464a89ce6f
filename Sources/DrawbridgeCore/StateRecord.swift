import FoundationEssentials

/// One line of the agent's state: its snapshot files and its append-only journal are sequences of these.
///
/// A line is `CRC TYPE FIELD…`: the CRC-32 of the rest of the line in hexadecimal, a one-letter type, and
/// space-separated fields in which spaces, `%`, `~` and control bytes are percent-encoded (`~` alone is the empty
/// text). The CRC tells a torn last line (a crash in the middle of a write) and a damaged one from a good one. The
/// format is line-oriented text so an operator can read it, and is parsed by hand because a restart with a hundred
/// thousand grants must be enforced within two seconds.
public enum StateRecord: Equatable, Sendable {
    /// The records that follow were written in this boot (`/proc/sys/kernel/random/boot_id`), when the clocks showed
    /// these instants: their monotonic deadlines hold only within the same boot.
    case boot(id: String, wall: Date, monotonic: MonotonicInstant)
    /// A grant, new or a new version of the grant with its id.
    case put(Grant)
    /// A grant ended (revoked, dropped by a reload, replaced by its file or controller).
    case remove(id: String)
    /// A file grant revoked by hand, which its file must not bring back.
    case tombstone(id: String)
    /// A file grant's revocation forgotten (the file no longer lists it).
    case forgetTombstone(id: String)
    /// A named value the agent keeps (an etcd revision, say).
    case setting(key: String, value: String)

    // MARK: Encoding

    /// The line, without its newline.
    public func encoded() -> String {
        var fields: [String]
        switch self {
        case .boot(let id, let wall, let monotonic):
            fields = ["B", id, String(Self.nanoseconds(wall)), String(monotonic.nanoseconds)]
        case .put(let grant):
            fields = [
                "G", grant.id, grant.source.description,
                grant.ports.map { "\($0.name)=\($0.service)" }.joined(separator: ","),
                String(Self.nanoseconds(grant.createdAt)), String(Self.nanoseconds(grant.issuedAt)),
                String(Self.nanoseconds(grant.expiresAt)), String(grant.deadline.nanoseconds), grant.requestedBy,
                grant.uid.map(String.init) ?? "", grant.reason, grant.origin.description,
            ]
        case .remove(let id): fields = ["X", id]
        case .tombstone(let id): fields = ["T", id]
        case .forgetTombstone(let id): fields = ["U", id]
        case .setting(let key, let value): fields = ["S", key, value]
        }
        let body = fields.map(Self.escape).joined(separator: " ")
        return Self.hex(CRC32.checksum(Array(body.utf8))) + " " + body
    }

    static func nanoseconds(_ date: Date) -> Int64 {
        let value = (date.timeIntervalSince1970 * 1e9).rounded()
        return value.isFinite ? Int64(max(min(value, 9e18), -9e18)) : 0
    }

    static func date(nanoseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(nanoseconds / 1_000_000_000) + Double(nanoseconds % 1_000_000_000) / 1e9)
    }

    private static func hex(_ value: UInt32) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 8 - text.count) + text
    }

    static func escape(_ field: String) -> String {
        if field.isEmpty { return "~" }
        guard field.utf8.contains(where: { $0 <= 0x20 || $0 == 0x25 || $0 == 0x7e || $0 == 0x7f }) else { return field }
        var bytes: [UInt8] = []
        for byte in field.utf8 {
            if byte <= 0x20 || byte == 0x25 || byte == 0x7e || byte == 0x7f {
                bytes.append(0x25)
                bytes.append(contentsOf: Array(hex(UInt32(byte)).suffix(2).utf8))
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func unescape(_ field: Substring) -> String? {
        if field == "~" { return "" }
        guard field.contains("%") else { return String(field) }
        var bytes: [UInt8] = []
        var utf8 = field.utf8[...]
        while let byte = utf8.popFirst() {
            if byte == 0x25 {
                guard let high = utf8.popFirst(), let low = utf8.popFirst(),
                    let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    // MARK: Decoding

    /// Why a line could not be read.
    public enum DecodingProblem: Error, Equatable, Sendable {
        /// The CRC does not match: a torn or damaged line.
        case checksum
        /// The CRC matches but the content is not a record this version knows.
        case malformed(String)
    }

    /// Reads one line (without its newline).
    public static func decode(_ line: Substring) -> Result<StateRecord, DecodingProblem> {
        guard line.utf8.count > 9, let space = line.firstIndex(of: " "),
            line.distance(from: line.startIndex, to: space) == 8,
            let crc = UInt32(line[line.startIndex..<space], radix: 16)
        else { return .failure(.checksum) }
        let body = line[line.index(after: space)...]
        guard CRC32.checksum(Array(body.utf8)) == crc else { return .failure(.checksum) }
        let parts = body.split(separator: " ", omittingEmptySubsequences: false)
        var fields: [String] = []
        for part in parts {
            guard let field = unescape(part) else { return .failure(.malformed("bad escape in \(part)")) }
            fields.append(field)
        }
        func malformed(_ why: String) -> Result<StateRecord, DecodingProblem> { .failure(.malformed(why)) }
        switch fields.first {
        case "B":
            guard fields.count == 4, let wall = Int64(fields[2]), let monotonic = Int64(fields[3]) else {
                return malformed("boot record")
            }
            return .success(
                .boot(
                    id: fields[1], wall: date(nanoseconds: wall), monotonic: MonotonicInstant(nanoseconds: monotonic)))
        case "G":
            guard fields.count == 12 else { return malformed("grant record with \(fields.count) fields") }
            guard let source = try? IPPrefix(parsing: fields[2]) else { return malformed("source \(fields[2])") }
            var ports: [GrantedPort] = []
            for item in fields[3].split(separator: ",") {
                let pair = item.split(separator: "=", maxSplits: 1)
                guard pair.count == 2, let service = Service(parsing: pair[1]) else {
                    return malformed("port \(item)")
                }
                ports.append(GrantedPort(name: String(pair[0]), service: service))
            }
            guard !ports.isEmpty, let created = Int64(fields[4]), let issued = Int64(fields[5]),
                let expires = Int64(fields[6]), let deadline = Int64(fields[7])
            else { return malformed("grant times") }
            let uid: UInt32?
            if fields[9].isEmpty {
                uid = nil
            } else if let value = UInt32(fields[9]) {
                uid = value
            } else {
                return malformed("uid \(fields[9])")
            }
            guard let origin = GrantOrigin(parsing: fields[11]) else { return malformed("origin \(fields[11])") }
            return .success(
                .put(
                    Grant(
                        id: fields[1], source: source, ports: ports, createdAt: date(nanoseconds: created),
                        issuedAt: date(nanoseconds: issued), expiresAt: date(nanoseconds: expires),
                        deadline: MonotonicInstant(nanoseconds: deadline), requestedBy: fields[8], uid: uid,
                        reason: fields[10], origin: origin)))
        case "X":
            guard fields.count == 2 else { return malformed("remove record") }
            return .success(.remove(id: fields[1]))
        case "T":
            guard fields.count == 2 else { return malformed("tombstone record") }
            return .success(.tombstone(id: fields[1]))
        case "U":
            guard fields.count == 2 else { return malformed("tombstone record") }
            return .success(.forgetTombstone(id: fields[1]))
        case "S":
            guard fields.count == 3 else { return malformed("setting record") }
            return .success(.setting(key: fields[1], value: fields[2]))
        default:
            return malformed("unknown record type \(fields.first ?? "")")
        }
    }
}

/// Applies state records to a book, carrying each grant's deadline into the current boot.
///
/// Within the boot that wrote a record its monotonic deadline is exact. After a reboot only the wall clock is left,
/// and it may have been set in between: the time left is `expires_at - now`, but never more than the grant was given
/// (`expires_at - issued_at`), so a clock set back cannot lengthen a grant.
public struct StateReplay: Sendable {
    public private(set) var book = GrantBook()
    public private(set) var settings: [String: String] = [:]
    /// Grants dropped because they had already expired.
    public private(set) var expired = 0
    /// The first thousand of them, for the audit trail.
    public private(set) var expiredGrants: [Grant] = []
    private let now: Instants
    private let bootID: String
    private var recordBoot: String?

    public init(now: Instants, bootID: String) {
        self.now = now
        self.bootID = bootID
    }

    public mutating func apply(_ record: StateRecord) {
        switch record {
        case .boot(let id, _, _):
            recordBoot = id
        case .put(var grant):
            if recordBoot != bootID {
                let given = max(0, grant.expiresAt.timeIntervalSince(grant.issuedAt))
                let left = min(grant.expiresAt.timeIntervalSince(now.wall), given)
                grant.deadline = now.monotonic.advanced(by: left)
            }
            grant.expiresAt = now.wall(forDeadline: grant.deadline)
            if grant.deadline <= now.monotonic {
                if let stored = book.remove(id: grant.id).removed ?? Optional(grant), expiredGrants.count < 1000 {
                    expiredGrants.append(stored)
                }
                expired += 1
            } else {
                book.put(grant)
            }
        case .remove(let id):
            book.remove(id: id)
        case .tombstone(let id):
            book.tombstone(id)
        case .forgetTombstone(let id):
            book.forgetTombstone(id)
        case .setting(let key, let value):
            settings[key] = value
        }
    }
}

/// CRC-32 (IEEE 802.3, as zlib computes it).
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xedb8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xffff_ffff
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc >> 8) }
        return crc ^ 0xffff_ffff
    }
}
