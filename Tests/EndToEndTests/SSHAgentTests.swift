import DrawbridgeCore
import Foundation
import Netfilter
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The product's promise with the real programs: OpenSSH's sshd in the host namespace behind drawbridged, the real
/// ssh client in the client namespace, grants made with the drawbridge CLI.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct SSHAgentTests {
    struct Path: Sendable, CustomTestStringConvertible {
        var name: String
        var source: IPAddress
        var destination: IPAddress
        /// Kill the agent with SIGKILL right after granting: expiry must not depend on it.
        var killAgent: Bool
        var testDescription: String { name }
    }

    static let paths = [
        Path(
            name: "IPv4, agent running", source: TestNetwork.clientIPv4, destination: TestNetwork.hostIPv4,
            killAgent: false),
        Path(
            name: "IPv6, agent killed with -9 after the grant", source: TestNetwork.clientIPv6,
            destination: TestNetwork.hostIPv6, killAgent: true),
    ]

    struct Setup {
        let network: TestNetwork
        let server: SSHServer
        let agent: AgentProcess

        init(onExpiry: SessionMode = .keepSessions) throws {
            try TestAccounts.ensure()
            let network = try TestNetwork()
            self.network = network
            server = try SSHServer(in: network.host)
            agent = try AgentProcess(namespace: network.host, policy: AgentTests.policy(onExpiry: onExpiry))
            try agent.start()
        }

        func logIn(_ path: Path) throws -> SSHResult {
            try SSHClient.logIn(
                from: network.client, source: path.source, to: path.destination, key: server.clientKeyPath)
        }

        func expiry(ofLastGrant agent: AgentProcess) throws -> Date {
            let text = try #require(
                try agent.auditEvents().last { $0["event"] as? String == "grant" }?["expires_at"] as? String)
            return try #require(Timestamp.parse(text))
        }
    }

    @Test("ssh: refused before a grant, logs in during it, refused within a second after expiry", arguments: paths)
    func sshFollowsGrant(_ path: Path) throws {
        let setup = try Setup()
        defer { setup.server.stop() }
        let before = try setup.logIn(path)
        #expect(!before.loggedIn && before.connectTimedOut, "refused before any grant: \(before)")

        let granted = try setup.agent.cli([
            "grant", "ssh", "--from", path.source.description, "--for", "5s", "--reason", "e2e ssh",
        ])
        let grantedAt = Date()
        #expect(granted.succeeded, "\(granted.error)")
        let packetOK = try canConnect(from: setup.network.client, to: path.destination, port: 22, source: path.source)
        let firstPacket = Date().timeIntervalSince(grantedAt)
        #expect(packetOK)
        let login = try setup.logIn(path)
        #expect(login.loggedIn, "logs in during the grant: \(login)")
        let expiresAt = try setup.expiry(ofLastGrant: setup.agent)
        if path.killAgent {
            setup.agent.kill9()
            #expect(setup.agent.pid == nil)
        }

        // TCP handshakes right up to and past the expiry show when the kernel switches.
        var firstDrop: Date?
        while firstDrop == nil, Date() < expiresAt.addingTimeInterval(3) {
            let attempt = Date()
            if try canConnect(from: setup.network.client, to: path.destination, port: 22, source: path.source) {
                usleep(20_000)
            } else {
                firstDrop = attempt
            }
        }
        let drop = try #require(firstDrop, "port 22 still open 3 s after the expiry")
        let after = try setup.logIn(path)
        #expect(!after.loggedIn && after.connectTimedOut, "refused after the expiry: \(after)")
        print(
            "e2e ssh figures (\(path.name)): grant -> first accepted SYN \(Int(firstPacket * 1000)) ms; ssh login "
                + "\(Int(login.elapsed.components.seconds * 1000 + login.elapsed.components.attoseconds / 1_000_000_000_000_000)) ms; "
                + "first dropped SYN \(Int(drop.timeIntervalSince(expiresAt) * 1000)) ms after expiry")
        // Within a second natively; under emulation the probes themselves are slower (the bound scales with them).
        #expect(drop.timeIntervalSince(expiresAt) < TestTiming.seconds(1.0), "refused within a second after expiry")
        #expect(drop.timeIntervalSince(expiresAt) > -0.1, "not before its time")
    }

    @Test(
        "an open SSH session at expiry: keep-sessions lets it run, cut-sessions stops it",
        arguments: SessionMode.allCases)
    func openSessionAtExpiry(mode: SessionMode) throws {
        let setup = try Setup(onExpiry: mode)
        defer { setup.server.stop() }
        let path = Self.paths[0]
        let grantSeconds = Int(TestTiming.seconds(4))
        #expect(
            try setup.agent.cli(["grant", "ssh", "--from", path.source.description, "--for", "\(grantSeconds)s"]).succeeded)
        let expiresAt = try setup.expiry(ofLastGrant: setup.agent)
        let session = try SSHSession(
            from: setup.network.client, source: path.source, to: path.destination, key: setup.server.clientKeyPath)
        defer { session.close() }
        #expect(session.waitUntilOpen(within: TestTiming.duration(.seconds(3))), "the session opened during the grant")

        let wait = expiresAt.addingTimeInterval(3).timeIntervalSinceNow
        if wait > 0 { usleep(UInt32(wait * 1_000_000)) }
        #expect(try !setup.logIn(path).loggedIn, "new logins are refused after expiry in both modes")
        switch mode {
        case .keepSessions:
            #expect(session.isAlive(within: .seconds(1)), "the open session continues")
        case .cutSessions:
            let last = session.lastOutputAt ?? .distantPast
            #expect(
                last < expiresAt.addingTimeInterval(TestTiming.seconds(2)),
                "the session stopped (last output \(last.timeIntervalSince(expiresAt)) s after expiry)")
            #expect(!session.isAlive(within: .milliseconds(800)))
        }
    }
}
