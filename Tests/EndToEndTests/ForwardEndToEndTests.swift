import DrawbridgeCore
import Foundation
import Netfilter
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A port forwarded to a "container", the way Docker publishes one: the host namespace DNATs its port 2222 to sshd on
/// port 22 of a third namespace, and drawbridged in the host guards 2222 on the forward hook (`hooks: [forward]`),
/// judging each forwarded packet by the port the client asked for. Port 2223 is forwarded the same way but not
/// managed: it must stay untouched.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)), .serialized)
struct ForwardEndToEndTests {
    typealias Path = NetworkPath

    static let paths = NetworkPath.clientToHost

    final class Setup: @unchecked Sendable {
        let network: TestNetwork
        let container: NetworkNamespace
        let server: SSHServer
        let agent: AgentProcess

        init() throws {
            try TestAccounts.ensure()
            network = try TestNetwork()
            container = try NetworkNamespace.createAnonymous()
            let host = network.host
            try run(["ip", "link", "set", "lo", "up"], in: container)
            try run(["ip", "link", "add", "dbf0", "type", "veth", "peer", "name", "dbk0", "netns", container.path], in: host)
            try run(["ip", "addr", "add", "203.0.113.1/24", "dev", "dbf0"], in: host)
            try run(["ip", "addr", "add", "203.0.113.2/24", "dev", "dbk0"], in: container)
            try run(["ip", "addr", "add", "2001:db8:2::1/64", "dev", "dbf0", "nodad"], in: host)
            try run(["ip", "addr", "add", "2001:db8:2::2/64", "dev", "dbk0", "nodad"], in: container)
            try run(["ip", "link", "set", "dbf0", "up"], in: host)
            try run(["ip", "link", "set", "dbk0", "up"], in: container)
            try run(["ip", "route", "add", "default", "via", "203.0.113.1"], in: container)
            try run(["ip", "-6", "route", "add", "default", "via", "2001:db8:2::1"], in: container)
            // Forwarding and DNAT inside the host namespace only (both are per namespace).
            try run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], in: host)
            try run(["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], in: host)
            try run(
                ["nft", "-f", "-"], in: host,
                input: """
                    table ip publish {
                        chain prerouting {
                            type nat hook prerouting priority dstnat; policy accept;
                            tcp dport 2222 dnat to 203.0.113.2:22
                            tcp dport 2223 dnat to 203.0.113.2:22
                        }
                    }
                    table ip6 publish6 {
                        chain prerouting {
                            type nat hook prerouting priority dstnat; policy accept;
                            tcp dport 2222 dnat to [2001:db8:2::2]:22
                            tcp dport 2223 dnat to [2001:db8:2::2]:22
                        }
                    }

                    """)
            server = try SSHServer(in: container)
            agent = try AgentProcess(namespace: host, policy: "")
            try agent.writePolicy(
                AgentTests.policy(
                    extraPort: #"  docker-ssh: { port: 2222, max_duration: 1h, allowed_sources: ["192.0.2.0/24", "2001:db8::/32"], hooks: [forward] }"#
                ))
            try agent.start()
        }

        func stop() { server.stop() }

        func connects(
            _ port: UInt16, _ path: Path = ForwardEndToEndTests.paths[0], timeout: Duration = .milliseconds(700)
        ) throws -> Bool {
            try canConnect(
                from: network.client, to: path.destination, port: port, source: path.source, timeout: timeout)
        }

        func logsIn(_ path: Path) throws -> Bool {
            try SSHClient.canLogIn(
                from: network.client, source: path.source, to: path.destination, port: 2222, key: server.clientKeyPath)
        }

        /// Waits (bounded) until port 2222 refuses again; the instant it first did.
        func closedAgain(_ path: Path = ForwardEndToEndTests.paths[0], within seconds: Double) throws -> Date? {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if try !connects(2222, path, timeout: .milliseconds(300)) { return Date() }
                usleep(100_000)
            }
            return nil
        }
    }

    @Test(
        "a DNATed port: closed before a grant, sshd reachable during it, closed after expiry; an unmanaged one untouched",
        arguments: paths)
    func forwardedPort(_ path: Path) throws {
        let setup = try Setup()
        defer { setup.stop() }
        #expect(try setup.connects(2223, path, timeout: .seconds(3)), "the unmanaged forwarded port is open")
        #expect(try !setup.connects(2222, path), "closed before a grant")
        #expect(try !setup.logsIn(path))

        let granted = try setup.agent.cli(
            ["grant", "docker-ssh", "--from", path.source.description, "--for", "5s", "--reason", "fwd"])
        #expect(granted.succeeded, "\(granted.error)")
        let expiresAt = Date().addingTimeInterval(5)
        #expect(try setup.connects(2222, path, timeout: .seconds(3)), "open during the grant")
        #expect(try setup.logsIn(path), "ssh through the DNAT during the grant: \(setup.server.log)")

        let closed = try #require(try setup.closedAgain(path, within: 8), "closed again after expiry")
        #expect(closed.timeIntervalSince(expiresAt) > -0.3, "not before the expiry")
        #expect(try !setup.logsIn(path))
        #expect(try setup.connects(2223, path, timeout: .seconds(3)), "the unmanaged forwarded port stays open")

        // The table counted the forwarded port's drops and accepts.
        let status = try setup.agent.cli(["status"]).output
        let line = status.split(separator: "\n").first { $0.hasPrefix("  docker-ssh 2222/tcp") } ?? ""
        #expect(line.contains("(forward)"), "\(status)")
        #expect(line.contains(" accepted in the last"), "\(status)")
        #expect(!line.contains("; 0 dropped"), "\(line)")
        #expect(!line.contains(" 0 accepted"), "\(line)")
    }

    @Test("the kernel closes the forwarded port at expiry with the agent killed")
    func expiryWithoutAgent() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let granted = try setup.agent.cli(
            ["grant", "docker-ssh", "--from", TestNetwork.clientIPv4.description, "--for", "4s", "--reason", "fwd"])
        #expect(granted.succeeded, "\(granted.error)")
        let expiresAt = Date().addingTimeInterval(4)
        setup.agent.kill9()
        #expect(try setup.connects(2222, timeout: .seconds(3)), "open during the grant, agent dead")
        let closed = try #require(try setup.closedAgain(within: 8), "the kernel closed it at expiry")
        #expect(closed.timeIntervalSince(expiresAt) > -0.3)
        #expect(try setup.connects(2223, timeout: .seconds(3)))
    }
}
