/// What a knock asks for: the signed fields of a knock packet (see ``KnockPacket`` for the bytes).
public struct KnockRequest: Hashable, Sendable {
    /// The host the knock is meant for, as the client named it; the agent compares it with its own names so that a
    /// knock for one host cannot be replayed at another.
    public var host: String
    /// The ports to open, by policy name or as `NUMBER/PROTO`; at least one, no duplicates.
    public var ports: [KnockPort]
    /// How long to open them, in seconds (the agent caps it by policy).
    public var durationSeconds: UInt32
    /// The address the client believes it has, if it knows one; the agent opens the packet's source address,
    /// which NAT may have changed, so this is for logging and for policies that want the two to agree.
    public var clientAddress: KnockAddress?
    /// When the client made the knock, in milliseconds since the Unix epoch, by its own clock.
    public var timestampMilliseconds: Int64
    /// 16 random bytes that make every knock unique, so a replayed packet can be recognised (see ``NonceCache``).
    public var nonce: KnockNonce
    /// Why, in the user's words, for the audit log; nil for none (an empty reason is encoded as none).
    public var reason: String?

    /// A request; the nonce is fresh from the system's random source unless given.
    public init(
        host: String, ports: [KnockPort], durationSeconds: UInt32, clientAddress: KnockAddress? = nil,
        timestampMilliseconds: Int64, nonce: KnockNonce = .random(), reason: String? = nil
    ) {
        self.host = host
        self.ports = ports
        self.durationSeconds = durationSeconds
        self.clientAddress = clientAddress
        self.timestampMilliseconds = timestampMilliseconds
        self.nonce = nonce
        self.reason = reason
    }
}

/// A port a knock asks for: a name from the policy (`ssh`) or a number and protocol (`22/tcp`).
///
/// On the wire both are ASCII text with exactly one spelling: a name is `[a-z][a-z0-9_-]{0,31}` (the policy's rule
/// for port names), a number is `1…65535` without leading zeros, then `/tcp` or `/udp` in lower case.
public enum KnockPort: Hashable, Sendable {
    case named(String)
    case number(UInt16, KnockTransport)

    /// Parses the wire spelling; nil for anything else (`22`, `022/tcp`, `22/TCP`, `SSH`).
    public init?(_ text: some StringProtocol) {
        self.init(bytes: Array(text.utf8)[...])
    }

    /// Parses the wire spelling from bytes, without building strings first: the decoder's path.
    init?(bytes: ArraySlice<UInt8>) {
        if let slash = bytes.firstIndex(of: UInt8(ascii: "/")) {
            let protocolName = bytes[(slash + 1)...]
            let transport: KnockTransport
            if protocolName.elementsEqual("tcp".utf8) {
                transport = .tcp
            } else if protocolName.elementsEqual("udp".utf8) {
                transport = .udp
            } else {
                return nil
            }
            let digits = bytes[..<slash]
            guard (1...5).contains(digits.count), digits.first != UInt8(ascii: "0") else { return nil }
            var number = 0
            for digit in digits {
                guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
                number = number * 10 + Int(digit - UInt8(ascii: "0"))
            }
            guard number <= Int(UInt16.max) else { return nil }
            self = .number(UInt16(number), transport)
        } else {
            guard Self.isName(bytes) else { return nil }
            self = .named(String(decoding: bytes, as: UTF8.self))
        }
    }

    /// The wire spelling.
    public var text: String {
        switch self {
        case .named(let name): return name
        case .number(let number, let transport): return "\(number)/\(transport.rawValue)"
        }
    }

    static let grammar = "a port name ([a-z][a-z0-9_-]{0,31}) or NUMBER/tcp or NUMBER/udp (1 to 65535)"

    private static func isName(_ bytes: ArraySlice<UInt8>) -> Bool {
        guard let first = bytes.first, first >= UInt8(ascii: "a"), first <= UInt8(ascii: "z"), bytes.count <= 32
        else { return false }
        for byte in bytes {
            let lower = byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")
            let digit = byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
            guard lower || digit || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") else { return false }
        }
        return true
    }
}

extension KnockPort: CustomStringConvertible {
    public var description: String { text }
}

/// The transport protocol of a numbered port.
public enum KnockTransport: String, Hashable, Sendable, CaseIterable {
    case tcp
    case udp
}

/// An IPv4 or IPv6 address as 4 or 16 bytes in network order.
public struct KnockAddress: Hashable, Sendable {
    /// The address in network order.
    public let bytes: [UInt8]

    /// nil unless `bytes` holds 4 (IPv4) or 16 (IPv6) bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = Array(bytes)
    }

    /// Whether the address is IPv6 (16 bytes) rather than IPv4.
    public var isIPv6: Bool { bytes.count == 16 }
}

extension KnockAddress: CustomStringConvertible {
    /// Dotted quad for IPv4; RFC 5952 text for IPv6 (lower case, the longest run of two or more zero groups as `::`).
    public var description: String {
        guard isIPv6 else { return bytes.map(String.init).joined(separator: ".") }
        let groups = (0..<8).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) }
        var best = (start: -1, length: 0)
        var run = (start: -1, length: 0)
        for (index, group) in groups.enumerated() {
            if group == 0 {
                run = run.start < 0 ? (index, 1) : (run.start, run.length + 1)
                if run.length > best.length { best = run }
            } else {
                run = (-1, 0)
            }
        }
        let text = groups.map { String($0, radix: 16) }
        guard best.length >= 2 else { return text.joined(separator: ":") }
        let head = text[..<best.start].joined(separator: ":")
        let tail = text[(best.start + best.length)...].joined(separator: ":")
        return head + "::" + tail
    }
}

/// The 16 random bytes of a knock.
public struct KnockNonce: Hashable, Sendable {
    /// A nonce is 16 bytes.
    public static let byteCount = 16
    /// The first 8 bytes, big-endian (two words hash and compare faster than an array of 16 bytes).
    public let high: UInt64
    /// The last 8 bytes, big-endian.
    public let low: UInt64

    /// A nonce from its two halves.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// nil unless `bytes` holds exactly 16 bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        var words: (high: UInt64, low: UInt64) = (0, 0)
        for (index, byte) in bytes.enumerated() {
            if index < 8 {
                words.high = words.high << 8 | UInt64(byte)
            } else {
                words.low = words.low << 8 | UInt64(byte)
            }
        }
        self.high = words.high
        self.low = words.low
    }

    /// The 16 bytes as they go on the wire.
    public var bytes: [UInt8] {
        var writer = WireWriter()
        writer.uint64(high)
        writer.uint64(low)
        return writer.bytes
    }

    /// A nonce from the system's secure random source (getrandom on Linux).
    public static func random() -> KnockNonce {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    /// A nonce from `generator` (tests use a seeded one).
    public static func random(using generator: inout some RandomNumberGenerator) -> KnockNonce {
        KnockNonce(high: generator.next(), low: generator.next())
    }
}

extension KnockNonce: CustomStringConvertible {
    public var description: String { hexDigits(bytes) }
}
