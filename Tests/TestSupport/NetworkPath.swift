import DrawbridgeCore
import Testing

/// One way from the client namespace of a ``TestNetwork`` to its host: the addresses a test connects from and to.
public struct NetworkPath: Sendable, CustomTestStringConvertible {
    public var name: String
    public var source: IPAddress
    public var destination: IPAddress
    public var testDescription: String { name }

    public init(name: String, source: IPAddress, destination: IPAddress) {
        self.name = name
        self.source = source
        self.destination = destination
    }

    /// The client's first IPv4 and IPv6 addresses to the host's.
    public static let clientToHost = [
        NetworkPath(name: "IPv4", source: TestNetwork.clientIPv4, destination: TestNetwork.hostIPv4),
        NetworkPath(name: "IPv6", source: TestNetwork.clientIPv6, destination: TestNetwork.hostIPv6),
    ]
}
