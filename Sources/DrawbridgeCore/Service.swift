/// A transport protocol that a managed port can use.
public enum TransportProtocol: String, Hashable, Sendable, Codable, CaseIterable, Comparable {
    case tcp
    case udp

    /// The IANA protocol number, as the kernel's `meta l4proto` sees it.
    public var number: UInt8 {
        switch self {
        case .tcp: return 6
        case .udp: return 17
        }
    }

    public init?(number: UInt8) {
        switch number {
        case 6: self = .tcp
        case 17: self = .udp
        default: return nil
        }
    }

    public static func < (lhs: TransportProtocol, rhs: TransportProtocol) -> Bool { lhs.number < rhs.number }
}

/// A port with its protocol, such as 22/tcp: the unit that a grant opens and the policy manages.
public struct Service: Hashable, Sendable, Comparable, Codable {
    public var port: UInt16
    public var transport: TransportProtocol

    public init(port: UInt16, transport: TransportProtocol) {
        self.port = port
        self.transport = transport
    }

    /// Parses `22/tcp` or `5353/udp`; a bare number means TCP.
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let number = UInt16(parts[0]), number > 0 else { return nil }
        if parts.count == 2 {
            guard let transport = TransportProtocol(rawValue: parts[1].lowercased()) else { return nil }
            self.init(port: number, transport: transport)
        } else {
            self.init(port: number, transport: .tcp)
        }
    }

    public static func < (lhs: Service, rhs: Service) -> Bool { (lhs.port, lhs.transport) < (rhs.port, rhs.transport) }
}

extension Service: CustomStringConvertible {
    public var description: String { "\(port)/\(transport.rawValue)" }
}
