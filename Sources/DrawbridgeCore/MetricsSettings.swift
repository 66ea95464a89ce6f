/// The policy's `metrics:` section: where drawbridged serves Prometheus metrics over HTTP (off without it).
///
/// ```yaml
/// metrics:
///   listen: "127.0.0.1:9447"      # or "[::1]:9447"; a loopback address, or one address of this host
/// ```
///
/// The wildcard addresses (`0.0.0.0`, `::`, `::ffff:0.0.0.0`) are refused: the endpoint is reachable exactly where
/// the policy says. `drawbridge metrics` prints the same text over the local socket, with no port at all.
public struct MetricsSettings: Sendable, Equatable {
    public var address: IPAddress
    public var port: UInt16

    public static let defaultPort: UInt16 = 9447

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `127.0.0.1:9447` or `[::1]:9447`.
    public var listen: String {
        address.family == .ipv6 ? "[\(address)]:\(port)" : "\(address):\(port)"
    }

    /// Whether the address is a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104).
    public var isLoopback: Bool {
        if let ipv4 = Self.ipv4(address) { return ipv4 >> 24 == 127 }
        return address == .v6(high: 0, low: 1)
    }

    /// The IPv4 address `address` stands for: itself, or the one in an IPv4-mapped `::ffff:a.b.c.d` (a dual-stack
    /// socket bound to that takes the IPv4 address); nil for other IPv6 addresses.
    private static func ipv4(_ address: IPAddress) -> UInt32? {
        switch address {
        case .v4(let value): return value
        case .v6(let high, let low):
            return high == 0 && low >> 32 == 0xffff ? UInt32(truncatingIfNeeded: low) : nil
        }
    }

    /// Reads `address:port` (`[address]:port` for IPv6); the problem in a sentence when it is not one.
    public static func parse(listen text: String) -> Result<MetricsSettings, Problem> {
        let example = "write it like listen: \"127.0.0.1:9447\" or \"[::1]:9447\""
        let addressText: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return .failure(Problem("metrics listen '\(TextCheck.escaped(text))' is not [address]:port; \(example)"))
            }
            addressText = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                return .failure(
                    Problem(
                        "metrics listen '\(TextCheck.escaped(text))' is not address:port (an IPv6 address goes in "
                            + "brackets); \(example)"))
            }
            addressText = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let address = IPAddress(addressText) else {
            return .failure(Problem("metrics listen: '\(TextCheck.escaped(String(addressText)))' is not an IP address"))
        }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), !portText.hasPrefix("0"),
            let port = UInt16(portText)
        else {
            return .failure(
                Problem("metrics listen: '\(TextCheck.escaped(String(portText)))' is not a port number from 1 to 65535"))
        }
        // `::ffff:0.0.0.0` is the IPv4 wildcard by another name.
        if Self.ipv4(address) == 0 || address == .v6(high: 0, low: 0) {
            return .failure(
                Problem(
                    "metrics listen: \(address) would serve metrics on every address of the host; name the one "
                        + "address to serve on, e.g. 127.0.0.1"))
        }
        return .success(MetricsSettings(address: address, port: port))
    }

    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }
}
