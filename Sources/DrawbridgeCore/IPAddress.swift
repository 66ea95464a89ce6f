/// An IPv4 or IPv6 address, held as plain integers so that hashing and comparing a hundred thousand of them is cheap.
public enum IPAddress: Hashable, Sendable, Comparable {
    /// An IPv4 address in host order (`192.0.2.1` is `0xC000_0201`).
    case v4(UInt32)
    /// An IPv6 address as its high and low 64 bits in host order.
    case v6(high: UInt64, low: UInt64)

    /// The address family.
    public var family: AddressFamily {
        switch self {
        case .v4: return .ipv4
        case .v6: return .ipv6
        }
    }

    /// Parses dotted-quad IPv4 or any RFC 4291 text form of IPv6 (`2001:db8::1`, `::ffff:192.0.2.1`).
    ///
    /// Only the four-part decimal IPv4 form is read, without leading zeros, which is what a person writing a policy
    /// means; inet_aton's `10.1` or octal-looking `010.0.0.1` forms are refused rather than guessed at.
    public init?(_ text: some StringProtocol) {
        let parsed =
            text.utf8.withContiguousStorageIfAvailable { IPAddress.parse($0) }
            ?? Array(text.utf8).withUnsafeBufferPointer { IPAddress.parse($0) }
        guard let parsed else { return nil }
        self = parsed
    }

    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> IPAddress? {
        guard !bytes.isEmpty, bytes.count <= 45 else { return nil }
        if bytes.contains(UInt8(ascii: ":")) { return parseIPv6(bytes) }
        return parseIPv4(bytes[...]).map(IPAddress.v4)
    }

    private static func parseIPv4(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> UInt32? {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        for byte in bytes {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part
                parts += 1
                part = 0
                digits = 0
            } else if byte >= 0x30, byte <= 0x39 {
                // A leading zero is only the number zero itself: "010" is refused, as inet_pton does.
                if digits > 0 && part == 0 { return nil }
                part = part * 10 + UInt32(byte - 0x30)
                digits += 1
                guard part <= 255 else { return nil }
            } else {
                return nil
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        return value << 8 | part
    }

    private static func parseIPv6(_ bytes: UnsafeBufferPointer<UInt8>) -> IPAddress? {
        // The groups as they are read (no array: a big grants file parses a million of these).
        var groups = SIMD8<UInt16>()
        var used = 0
        var gap: Int?  // index in `groups` where "::" stands
        var index = 0
        let count = bytes.count
        if count >= 2, bytes[0] == UInt8(ascii: ":") {
            guard bytes[1] == UInt8(ascii: ":") else { return nil }
            gap = 0
            index = 2
            if index == count { return .v6(high: 0, low: 0) }
        }
        while index < count {
            // One group: hex digits, or (last) a dotted IPv4 address.
            var value: UInt32 = 0
            var digits = 0
            let start = index
            while index < count, let nibble = hexValue(bytes[index]) {
                value = value << 4 | UInt32(nibble)
                digits += 1
                index += 1
                guard digits <= 4 else { break }
            }
            if index < count, bytes[index] == UInt8(ascii: ".") {
                guard used <= 6, let v4 = parseIPv4(bytes[start..<count]) else { return nil }
                groups[used] = UInt16(v4 >> 16)
                groups[used + 1] = UInt16(v4 & 0xffff)
                used += 2
                index = count
                break
            }
            guard digits >= 1, digits <= 4, used < 8 else { return nil }
            groups[used] = UInt16(value)
            used += 1
            if index == count { break }
            guard bytes[index] == UInt8(ascii: ":") else { return nil }
            index += 1
            if index < count, bytes[index] == UInt8(ascii: ":") {
                guard gap == nil else { return nil }
                gap = used
                index += 1
                if index == count { break }
            } else if index == count {
                return nil  // a trailing single colon
            }
        }
        if let gap {
            guard used <= 7 else { return nil }
            // The groups after "::" move to the end; zeros fill between.
            var expanded = SIMD8<UInt16>()
            for position in 0..<gap { expanded[position] = groups[position] }
            let after = used - gap
            for position in 0..<after { expanded[8 - after + position] = groups[gap + position] }
            groups = expanded
            used = 8
        }
        guard used == 8 else { return nil }
        var high: UInt64 = 0
        var low: UInt64 = 0
        for position in 0..<4 { high = high << 16 | UInt64(groups[position]) }
        for position in 4..<8 { low = low << 16 | UInt64(groups[position]) }
        return .v6(high: high, low: low)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: return byte - 0x30
        case 0x41...0x46: return byte - 0x41 + 10
        case 0x61...0x66: return byte - 0x61 + 10
        default: return nil
        }
    }

    /// Builds an address from its 4 or 16 network-order bytes.
    public init?(bytes: some Collection<UInt8>) {
        let array = Array(bytes)
        switch array.count {
        case 4:
            self = .v4(array.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            let high = array[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let low = array[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            self = .v6(high: high, low: low)
        default:
            return nil
        }
    }

    /// The address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let value):
            return withUnsafeBytes(of: value.bigEndian) { Array($0) }
        case .v6(let high, let low):
            return withUnsafeBytes(of: high.bigEndian) { Array($0) } + withUnsafeBytes(of: low.bigEndian) { Array($0) }
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        switch (lhs, rhs) {
        case (.v4(let a), .v4(let b)): return a < b
        case (.v6(let ah, let al), .v6(let bh, let bl)): return (ah, al) < (bh, bl)
        case (.v4, .v6): return true
        case (.v6, .v4): return false
        }
    }
}

extension IPAddress: CustomStringConvertible {
    /// The canonical text form: dotted quad, or RFC 5952 compressed IPv6.
    public var description: String {
        switch self {
        case .v4(let value):
            return "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
        case .v6(let high, let low):
            return Self.ipv6Text(high: high, low: low)
        }
    }

    /// RFC 5952 text, as glibc's inet_ntop writes it: lowercase, no leading zeros, the longest run of two or more
    /// zero groups as `::` (the first of equal runs), and IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible
    /// (`::a.b.c.d`) addresses with their last 32 bits dotted.
    private static func ipv6Text(high: UInt64, low: UInt64) -> String {
        let groups = (0..<8).map { index -> UInt16 in
            let word = index < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> UInt64(48 - 16 * (index % 4)))
        }
        var bestStart = -1
        var bestLength = 0
        var runStart = -1
        for index in 0...8 {
            if index < 8, groups[index] == 0 {
                if runStart < 0 { runStart = index }
            } else if runStart >= 0 {
                if index - runStart > bestLength {
                    bestStart = runStart
                    bestLength = index - runStart
                }
                runStart = -1
            }
        }
        if bestLength < 2 { bestStart = -1 }
        var text = ""
        var index = 0
        while index < 8 {
            if index == bestStart {
                text += "::"
                index += bestLength
                continue
            }
            // glibc: the last 32 bits dotted after a leading run of six zero groups, or of five then ffff.
            if index == 6, bestStart == 0, bestLength == 6 || (bestLength == 5 && groups[5] == 0xffff) {
                let v4 = UInt32(groups[6]) << 16 | UInt32(groups[7])
                if !text.hasSuffix(":") { text += ":" }
                text += IPAddress.v4(v4).description
                break
            }
            if !text.isEmpty, !text.hasSuffix(":") { text += ":" }
            text += String(groups[index], radix: 16)
            index += 1
        }
        return text
    }
}

/// IPv4 or IPv6.
public enum AddressFamily: String, Hashable, Sendable, Codable, CaseIterable {
    case ipv4
    case ipv6

    /// The number of bits in an address of this family.
    public var bitWidth: Int { self == .ipv4 ? 32 : 128 }
}

/// A CIDR prefix: an address whose host bits are all zero, and a length. A single address is a /32 or /128.
public struct IPPrefix: Hashable, Sendable, Comparable {
    /// The first address of the prefix (host bits are zero).
    public let network: IPAddress
    /// The length in one byte: a prefix is 24 bytes instead of 32, which a million of them notice.
    private let storedLength: UInt8
    /// The number of leading bits that are fixed.
    public var length: Int { Int(storedLength) }

    public var family: AddressFamily { network.family }

    /// True when the prefix is exactly one address.
    public var isSingleAddress: Bool { length == family.bitWidth }

    /// A prefix from an address and a length. Fails if the length is out of range or host bits are set, so that
    /// `203.0.113.7/24` is never silently read as a different network than the one its author wrote.
    public init(network: IPAddress, length: Int) throws(PrefixError) {
        guard length >= 0, length <= network.family.bitWidth else {
            throw .lengthOutOfRange(length, family: network.family)
        }
        let masked = network.masked(to: length)
        guard masked == network else {
            throw .hostBitsSet(address: network, length: length, network: IPPrefix(unchecked: masked, length: length))
        }
        self.network = network
        storedLength = UInt8(length)
    }

    /// A single address as a /32 or /128.
    public init(address: IPAddress) {
        self.init(unchecked: address, length: address.family.bitWidth)
    }

    init(unchecked network: IPAddress, length: Int) {
        self.network = network
        storedLength = UInt8(length)
    }

    /// Parses `203.0.113.7`, `198.51.100.0/24`, `2001:db8::/32` (surrounding whitespace is ignored).
    public init(parsing text: some StringProtocol) throws(PrefixError) {
        // A string's bytes are read where they are; other text is copied first.
        let parsed =
            text.utf8.withContiguousStorageIfAvailable { Self.parse(trimming: $0) }
            ?? Array(text.utf8).withUnsafeBufferPointer { Self.parse(trimming: $0) }
        self = try parsed.get()
    }

    private static func parse(trimming text: UnsafeBufferPointer<UInt8>) -> Result<IPPrefix, PrefixError> {
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d }
        var upper = text.endIndex
        while upper > text.startIndex, isSpace(text[upper - 1]) { upper -= 1 }
        var lower = text.startIndex
        while lower < upper, isSpace(text[lower]) { lower += 1 }
        let bytes = UnsafeBufferPointer(rebasing: text[lower..<upper])
        let slash = bytes.firstIndex(of: UInt8(ascii: "/")) ?? bytes.endIndex
        guard let address = IPAddress.parse(UnsafeBufferPointer(rebasing: bytes[..<slash])) else {
            return .failure(.notAnAddress(String(decoding: bytes, as: UTF8.self)))
        }
        guard slash < bytes.endIndex else { return .success(IPPrefix(address: address)) }
        let digits = bytes[(slash + 1)...]
        guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            return .failure(.notAnAddress(String(decoding: bytes, as: UTF8.self)))
        }
        let length = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        return Result { () throws(PrefixError) in try IPPrefix(network: address, length: length) }
    }

    /// The last address inside the prefix.
    public var lastAddress: IPAddress {
        switch network {
        case .v4(let value):
            let hostMask: UInt32 = length == 0 ? .max : (length == 32 ? 0 : (UInt32.max >> UInt32(length)))
            return .v4(value | hostMask)
        case .v6(let high, let low):
            let highMask: UInt64 = length >= 64 ? 0 : (length == 0 ? .max : UInt64.max >> UInt64(length))
            let lowMask: UInt64 = length <= 64 ? .max : (length == 128 ? 0 : UInt64.max >> UInt64(length - 64))
            return .v6(high: high | highMask, low: low | lowMask)
        }
    }

    /// True when `address` lies inside this prefix.
    public func contains(_ address: IPAddress) -> Bool {
        address.family == family && address.masked(to: length) == network
    }

    /// True when every address of `other` lies inside this prefix.
    public func contains(_ other: IPPrefix) -> Bool {
        other.family == family && other.length >= length && contains(other.network)
    }

    public static func < (lhs: IPPrefix, rhs: IPPrefix) -> Bool {
        (lhs.network, lhs.length) < (rhs.network, rhs.length)
    }
}

extension IPPrefix: CustomStringConvertible {
    /// `203.0.113.7` for a single address, `198.51.100.0/24` otherwise.
    public var description: String { isSingleAddress ? network.description : "\(network)/\(length)" }
}

extension IPPrefix: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            try self.init(parsing: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a text is not a usable prefix.
public enum PrefixError: Error, Equatable, Sendable, CustomStringConvertible {
    case notAnAddress(String)
    case lengthOutOfRange(Int, family: AddressFamily)
    case hostBitsSet(address: IPAddress, length: Int, network: IPPrefix)

    public var description: String {
        switch self {
        case .notAnAddress(let text):
            return "'\(text)' is not an IPv4 or IPv6 address or CIDR prefix (examples: 203.0.113.7, 198.51.100.0/24, "
                + "2001:db8::/64)"
        case .lengthOutOfRange(let length, let family):
            return "prefix length /\(length) is out of range for \(family == .ipv4 ? "IPv4 (0-32)" : "IPv6 (0-128)")"
        case .hostBitsSet(let address, let length, let network):
            return "\(address)/\(length) has host bits set; did you mean \(network)?"
        }
    }
}

extension IPAddress {
    /// The address with every bit after the first `length` cleared.
    func masked(to length: Int) -> IPAddress {
        switch self {
        case .v4(let value):
            let mask: UInt32 = length == 0 ? 0 : UInt32.max << UInt32(32 - length)
            return .v4(value & mask)
        case .v6(let high, let low):
            let highMask: UInt64 = length >= 64 ? .max : (length == 0 ? 0 : UInt64.max << UInt64(64 - length))
            let lowMask: UInt64 = length <= 64 ? 0 : (length == 128 ? .max : UInt64.max << UInt64(128 - length))
            return .v6(high: high & highMask, low: low & lowMask)
        }
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}
