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
        var bytes = Array(line.utf8)
        return bytes.withUnsafeMutableBufferPointer { decode(UnsafeBufferPointer($0)) }
    }

    /// Reads one line (without its newline) from its bytes: a hundred thousand lines at start must take
    /// milliseconds, so fields are sliced as bytes and only the texts a grant keeps become strings.
    public static func decode(_ line: UnsafeBufferPointer<UInt8>) -> Result<StateRecord, DecodingProblem> {
        guard line.count > 9, line[8] == 0x20, let crc = hexNumber(line[0..<8]) else { return .failure(.checksum) }
        let body = UnsafeBufferPointer(rebasing: line[9...])
        guard CRC32.checksum(body) == crc else { return .failure(.checksum) }
        var fields: [Slice<UnsafeBufferPointer<UInt8>>] = []
        fields.reserveCapacity(12)
        var start = body.startIndex
        for index in body.indices where body[index] == 0x20 {
            fields.append(body[start..<index])
            start = index + 1
        }
        fields.append(body[start..<body.endIndex])
        func malformed(_ why: String) -> Result<StateRecord, DecodingProblem> { .failure(.malformed(why)) }
        func text(_ index: Int) -> String? { unescape(fields[index]) }
        func number(_ index: Int) -> Int64? { decimalNumber(fields[index]) }
        guard fields[0].count == 1 else { return malformed("unknown record type") }
        switch fields[0].first! {
        case UInt8(ascii: "B"):
            guard fields.count == 4, let id = text(1), let wall = number(2), let monotonic = number(3) else {
                return malformed("boot record")
            }
            return .success(
                .boot(id: id, wall: date(nanoseconds: wall), monotonic: MonotonicInstant(nanoseconds: monotonic)))
        case UInt8(ascii: "G"):
            guard fields.count == 12 else { return malformed("grant record with \(fields.count) fields") }
            guard let source = prefix(fields[2]) else { return malformed("source") }
            var ports: [GrantedPort] = []
            var itemStart = fields[3].startIndex
            for index in fields[3].startIndex...fields[3].endIndex
            where index == fields[3].endIndex || fields[3][index] == UInt8(ascii: ",") {
                let item = fields[3][itemStart..<index]
                itemStart = index + 1
                guard let equals = item.firstIndex(of: UInt8(ascii: "=")), let service = service(item[(equals + 1)...])
                else { return malformed("port") }
                ports.append(GrantedPort(name: String(decoding: item[..<equals], as: UTF8.self), service: service))
            }
            guard let id = text(1), !ports.isEmpty, let created = number(4), let issued = number(5),
                let expires = number(6), let deadline = number(7), let requestedBy = text(8), let uidText = text(9),
                let reason = text(10), let originText = text(11)
            else { return malformed("grant fields") }
            let uid: UInt32?
            if uidText.isEmpty {
                uid = nil
            } else if let value = UInt32(uidText) {
                uid = value
            } else {
                return malformed("uid \(uidText)")
            }
            guard let origin = GrantOrigin(parsing: originText) else { return malformed("origin \(originText)") }
            return .success(
                .put(
                    Grant(
                        id: id, source: source, ports: ports, createdAt: date(nanoseconds: created),
                        issuedAt: date(nanoseconds: issued), expiresAt: date(nanoseconds: expires),
                        deadline: MonotonicInstant(nanoseconds: deadline), requestedBy: requestedBy, uid: uid,
                        reason: reason, origin: origin)))
        case UInt8(ascii: "X"):
            guard fields.count == 2, let id = text(1) else { return malformed("remove record") }
            return .success(.remove(id: id))
        case UInt8(ascii: "T"):
            guard fields.count == 2, let id = text(1) else { return malformed("tombstone record") }
            return .success(.tombstone(id: id))
        case UInt8(ascii: "U"):
            guard fields.count == 2, let id = text(1) else { return malformed("tombstone record") }
            return .success(.forgetTombstone(id: id))
        case UInt8(ascii: "S"):
            guard fields.count == 3, let key = text(1), let value = text(2) else { return malformed("setting record") }
            return .success(.setting(key: key, value: value))
        default:
            return malformed("unknown record type")
        }
    }

    /// `22/tcp` from bytes.
    private static func service(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> Service? {
        guard let slash = bytes.firstIndex(of: UInt8(ascii: "/")), let port = decimalNumber(bytes[..<slash]),
            port > 0, port <= 65535
        else { return nil }
        let name = bytes[(slash + 1)...]
        if name.elementsEqual("tcp".utf8) { return Service(port: UInt16(port), transport: .tcp) }
        if name.elementsEqual("udp".utf8) { return Service(port: UInt16(port), transport: .udp) }
        return nil
    }

    private static func hexNumber(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> UInt32? {
        var value: UInt32 = 0
        for byte in bytes {
            let digit: UInt32
            switch byte {
            case 0x30...0x39: digit = UInt32(byte - 0x30)
            case 0x61...0x66: digit = UInt32(byte - 0x61 + 10)
            default: return nil
            }
            value = value << 4 | digit
        }
        return value
    }

    private static func decimalNumber(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> Int64? {
        var rest = bytes[...]
        var negative = false
        if rest.first == UInt8(ascii: "-") {
            negative = true
            rest = rest.dropFirst()
        }
        guard !rest.isEmpty, rest.count <= 19 else { return nil }
        var value: Int64 = 0
        for byte in rest {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            value = value * 10 + Int64(byte - 0x30)
        }
        return negative ? -value : value
    }

    private static func prefix(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> IPPrefix? {
        let slash = bytes.firstIndex(of: UInt8(ascii: "/")) ?? bytes.endIndex
        guard let address = IPAddress.parse(UnsafeBufferPointer(rebasing: bytes[..<slash])) else { return nil }
        guard slash < bytes.endIndex else { return IPPrefix(address: address) }
        guard let length = decimalNumber(bytes[(slash + 1)...]) else { return nil }
        return try? IPPrefix(network: address, length: Int(length))
    }

    static func unescape(_ field: Slice<UnsafeBufferPointer<UInt8>>) -> String? {
        if field.count == 1, field.first == UInt8(ascii: "~") { return "" }
        guard field.contains(0x25) else { return String(validating: field, as: UTF8.self) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(field.count)
        var index = field.startIndex
        while index < field.endIndex {
            let byte = field[index]
            if byte == 0x25 {
                guard index + 2 < field.endIndex, let value = hexNumber(field[(index + 1)...(index + 2)]) else {
                    return nil
                }
                bytes.append(UInt8(value))
                index += 3
            } else {
                bytes.append(byte)
                index += 1
            }
        }
        return String(validating: bytes, as: UTF8.self)
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

    /// Makes room for this many more grants (the lines of the file about to be replayed).
    public mutating func reserveCapacity(_ additional: Int) {
        book.reserveCapacity(additional)
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
