import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import TestSupport
import Testing

/// Proof by packets: real TCP connections between two namespaces, through the real kernel.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct EnforcementTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        /// What the grant names.
        var grant: String
        /// The client address that the grant covers, and the host address it connects to.
        var source: String
        var destination: String
        /// A client address of the same family that the grant does not cover.
        var outsider: String
        var outsiderDestination: String

        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(
            name: "IPv4 single address", grant: "192.0.2.2", source: "192.0.2.2", destination: "192.0.2.1",
            outsider: "198.51.100.20", outsiderDestination: "198.51.100.1"),
        Case(
            name: "IPv4 prefix", grant: "198.51.100.0/28", source: "198.51.100.5", destination: "198.51.100.1",
            outsider: "198.51.100.20", outsiderDestination: "198.51.100.1"),
        Case(
            name: "IPv6 single address", grant: "2001:db8::2", source: "2001:db8::2", destination: "2001:db8::1",
            outsider: "2001:db8:1::5", outsiderDestination: "2001:db8:1::1"),
        Case(
            name: "IPv6 prefix", grant: "2001:db8:1::/65", source: "2001:db8:1::5", destination: "2001:db8:1::1",
            outsider: "2001:db8:1:0:8000::5", outsiderDestination: "2001:db8:1::1"),
        // Prefixes wider than a /24 and a /64 (the prefixes above are narrower).
        Case(
            name: "IPv4 prefix wider than /24", grant: "198.51.100.0/23", source: "198.51.100.7",
            destination: "198.51.100.1", outsider: "192.0.2.3", outsiderDestination: "192.0.2.1"),
        Case(
            name: "IPv6 prefix wider than /64", grant: "2001:db8:1::/63", source: "2001:db8:1:0:8000::5",
            destination: "2001:db8:1::1", outsider: "2001:db8::3", outsiderDestination: "2001:db8::1"),
    ]

    static let ssh = Service(port: 22, transport: .tcp)

    @Test("refused before a grant, accepted during it, refused after its kernel timeout", arguments: cases)
    func grantOpensAndExpires(_ example: Case) throws {
        let network = try TestNetwork()
        let sshListener = try TCPListener(in: network.host, port: 22)
        let webListener = try TCPListener(in: network.host, port: 8080)
        defer { _ = (sshListener, webListener) }
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: network.host))
        try enforcer.install(mode: .keepSessions, managedServices: [Self.ssh], alwaysAllowed: [])

        let source = IPAddress(example.source)!
        let destination = IPAddress(example.destination)!
        let outsider = IPAddress(example.outsider)!
        let outsiderDestination = IPAddress(example.outsiderDestination)!
        func connects(_ from: IPAddress, _ to: IPAddress, _ port: UInt16 = 22) throws -> Bool {
            try canConnect(from: network.client, to: to, port: port, source: from)
        }

        #expect(try !connects(source, destination), "a managed port is closed before any grant")
        #expect(try connects(source, destination, 8080), "ports outside the policy are not ours to close")

        let expiresAt = Date().addingTimeInterval(2.5)
        let key = AccessKey(source: try IPPrefix(parsing: example.grant), service: Self.ssh)
        try enforcer.reconcile(desired: [key: expiresAt])

        #expect(try connects(source, destination), "the granted source reaches the port")
        #expect(try !connects(outsider, outsiderDestination), "an address outside the grant stays shut out")

        // Connect continuously through the expiry: the kernel, with no help from userspace, must switch from accept
        // to drop within a few jiffies of the expiry.
        var lastSuccess = Date.distantPast
        var firstFailure: Date?
        while firstFailure == nil, Date() < expiresAt.addingTimeInterval(3) {
            let attempt = Date()
            if try connects(source, destination) {
                lastSuccess = attempt
                usleep(10_000)
            } else {
                firstFailure = attempt
            }
        }
        let failure = try #require(firstFailure, "the grant never expired")
        func milliseconds(_ instant: Date) -> String {
            String(format: "%+.0f ms", instant.timeIntervalSince(expiresAt) * 1000)
        }
        print(
            "EXPIRY-PRECISION kernel \(RunningKernel.release), \(example.name): last accepted \(milliseconds(lastSuccess)),"
                + " first refused \(milliseconds(failure)) from the requested expiry")
        #expect(lastSuccess < expiresAt.addingTimeInterval(0.05))
        #expect(failure.timeIntervalSince(expiresAt) > -0.05)
        #expect(
            failure.timeIntervalSince(expiresAt) < 1.0,
            "a loaded machine may start the attempt late; the kernel itself drops at expiry")
        #expect(try !connects(source, destination), "still refused after expiry")
        #expect(try connects(source, destination, 8080))
    }

    @Test("break-glass prefixes are always let in; loopback is never judged")
    func breakGlass() throws {
        let network = try TestNetwork()
        let listener = try TCPListener(in: network.host, port: 22)
        defer { _ = listener }
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: network.host))
        try enforcer.install(
            mode: .cutSessions, managedServices: [Self.ssh],
            alwaysAllowed: [try IPPrefix(parsing: "198.51.100.0/29"), try IPPrefix(parsing: "2001:db8::2")])
        // What must connect gets 3 s (the first attempt in a fresh namespace resolves the neighbour too, which a
        // loaded machine can stretch past the 700 ms a refused attempt is given).
        #expect(
            try canConnect(
                from: network.client, to: IPAddress("198.51.100.1")!, port: 22, source: IPAddress("198.51.100.5")!,
                timeout: .seconds(3)))
        #expect(
            try !canConnect(
                from: network.client, to: IPAddress("198.51.100.1")!, port: 22, source: IPAddress("198.51.100.20")!))
        #expect(
            try canConnect(
                from: network.client, to: TestNetwork.hostIPv6, port: 22, source: TestNetwork.clientIPv6,
                timeout: .seconds(3)))
        #expect(
            try !canConnect(from: network.client, to: TestNetwork.hostIPv4, port: 22, source: TestNetwork.clientIPv4))
        #expect(try canConnect(from: network.host, to: IPAddress("127.0.0.1")!, port: 22))
    }
}
