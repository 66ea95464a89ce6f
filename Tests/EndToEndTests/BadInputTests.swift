import DrawbridgeCore
import Foundation
import Netfilter
import NetfilterModel
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Bad input gets a clear error and changes nothing: neither the kernel's table nor the stored grants.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct BadInputTests {
    /// An agent holding one grant, so "nothing changed" has something to lose.
    final class Fixture: @unchecked Sendable {
        let setup: AgentTests.Setup
        init() throws {
            setup = try AgentTests.Setup()
            let granted = try setup.agent.cli([
                "grant", "ssh", "--from", "198.51.100.5", "--for", "1h", "--reason", "baseline",
            ])
            guard granted.succeeded else { throw CommandFailed(command: ["grant"], result: granted) }
        }
    }

    struct CLICase: Sendable, CustomTestStringConvertible {
        var arguments: [String]
        var status: Int32
        var message: String
        var user: String? = nil
        var testDescription: String { "drawbridge " + arguments.joined(separator: " ") }
    }

    static let cliCases: [CLICase] = [
        CLICase(
            arguments: ["grant", "ssh", "--from", "203.0.113.300", "--for", "1h"], status: 64,
            message: "is not an IPv4 or IPv6 address"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "192.0.2.2/24", "--for", "1h"], status: 64,
            message: "did you mean 192.0.2.0/24?"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "192.0.2.2", "--for", "1x"], status: 64, message: "is not a duration"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "192.0.2.2", "--for", "0s"], status: 64, message: "is not a duration"),
        CLICase(arguments: ["grant", "ssh", "--for", "1h"], status: 64, message: "--from is required"),
        CLICase(arguments: ["grant", "--from", "192.0.2.2", "--for", "1h"], status: 64, message: "port"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "192.0.2.2", "--for", "1h", "--reason", "two\nlines"], status: 64,
            message: "one line"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "192.0.2.2", "--for", "4h"], status: 77,
            message: "ssh allows at most 3h"),
        CLICase(
            arguments: ["grant", "postgres", "--from", "192.0.2.2", "--for", "10m"], status: 77,
            message: "198.51.100.0/24"),
        CLICase(
            arguments: ["grant", "8080/tcp", "--from", "192.0.2.2", "--for", "10m"], status: 77,
            message: "8080/tcp is not a managed port; managed: ssh 22/tcp, postgres 5432/tcp"),
        CLICase(
            arguments: ["grant", "shh", "--from", "192.0.2.2", "--for", "10m"], status: 77, message: "did you mean ssh?"
        ),
        CLICase(
            arguments: ["grant", "ssh", "--from", "0.0.0.0/0", "--for", "10m"], status: 77,
            message: "may not be opened to 0.0.0.0/0"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "203.0.113.7", "--for", "10m"], status: 77,
            message: "may not be opened to 203.0.113.7"),
        CLICase(
            arguments: ["grant", "ssh", "--from", "192.0.2.2", "--for", "2h"], status: 77, message: "1h",
            user: TestAccounts.developer),
        CLICase(arguments: ["revoke", "g-doesnotexist"], status: 2, message: "no active grant has id g-doesnotexist"),
        CLICase(arguments: ["revoke"], status: 64, message: "either a grant id or --from"),
        CLICase(
            arguments: ["revoke", "--from", "203.0.113.0/24"], status: 2,
            message: "no active grant comes from within 203.0.113.0/24"),
        CLICase(
            arguments: ["list", "--socket", "/nonexistent/drawbridge.sock"], status: 69,
            message: "the agent is not running: no socket at /nonexistent/drawbridge.sock"),
    ]

    @Test("bad command lines are refused with a reason and change nothing", arguments: cliCases)
    func badCommandLine(_ example: CLICase) throws {
        let fixture = try Fixture()
        let agent = fixture.setup.agent
        let kernelBefore = try kernelSnapshot(agent.namespace)
        let stateBefore = agent.storedState()
        let result = try agent.cli(example.arguments, as: example.user)
        #expect(result.status == example.status, "\(result.error)")
        #expect(result.error.contains(example.message), "\(result.error)")
        #expect(try kernelSnapshot(agent.namespace) == kernelBefore)
        #expect(agent.storedState() == stateBefore)
    }

    struct SocketCase: Sendable, CustomTestStringConvertible {
        var name: String
        var payload: String
        var answer: String
        /// Who sends it (root when nil).
        var user: String? = nil
        var testDescription: String { name }
    }

    static let socketCases: [SocketCase] = [
        SocketCase(name: "not JSON", payload: "hello agent\n", answer: "request is not valid JSON"),
        SocketCase(name: "empty line", payload: "\n", answer: "empty request"),
        SocketCase(
            name: "unknown command", payload: #"{"command":"explode"}"# + "\n", answer: #"unknown command \"explode\""#),
        SocketCase(
            name: "a key twice",
            payload: #"{"command":"revoke","id":"g-aaaaaaaaaa","id":"g-bbbbbbbbbb"}"# + "\n",
            answer: #"the key \"id\" appears twice"#),
        SocketCase(
            name: "an unknown field",
            payload: #"{"command":"grant","ports":["ssh"],"source":"192.0.2.2","duration_seconds":60,"color":"red"}"#
                + "\n", answer: #"unknown key \"color\""#),
        SocketCase(
            name: "a field of another command",
            payload: #"{"command":"list","id":"g-aaaaaaaaaa"}"# + "\n", answer: #"list: unknown key \"id\""#),
        SocketCase(
            name: "a forged requester",
            payload: #"{"command":"grant","ports":["ssh"],"source":"192.0.2.2","duration_seconds":60,"uid":0}"#
                + "\n", answer: #"unknown key \"uid\""#),
        SocketCase(
            name: "a newline and ESC in the reason",
            payload:
                #"{"command":"grant","ports":["ssh"],"source":"192.0.2.2","duration_seconds":60,"reason":"ok\n2026 grant \u001b[31m"}"#
                + "\n", answer: "control or formatting character U+000A"),
        SocketCase(
            name: "a reason over 1024 bytes",
            payload: #"{"command":"grant","ports":["ssh"],"source":"192.0.2.2","duration_seconds":60,"reason":""#
                + String(repeating: "r", count: 2000) + "\"}\n", answer: "at most 1024 are allowed"),
        SocketCase(
            name: "a lone surrogate",
            payload: #"{"command":"revoke","id":"\ud800"}"# + "\n", answer: "lone surrogate"),
        SocketCase(name: "grant without fields", payload: #"{"command":"grant"}"# + "\n", answer: "at least one port"),
        SocketCase(
            name: "negative duration",
            payload: #"{"command":"grant","ports":["ssh"],"source":"192.0.2.2","duration_seconds":-5}"# + "\n",
            answer: "at least 1 second"),
        SocketCase(
            name: "absurd duration",
            payload: #"{"command":"grant","ports":["ssh"],"source":"192.0.2.2","duration_seconds":1e300}"# + "\n",
            answer: "at most 1000000000 seconds"),
        SocketCase(
            name: "wrong types", payload: #"{"command":"grant","ports":"ssh","source":7}"# + "\n",
            answer: "grant.ports must be a list of strings"),
        // Root (and the etcd sync user) may send up to 64 MiB, for etcd snapshots; every other user 64 KiB.
        SocketCase(
            name: "oversized request", payload: String(repeating: "x", count: 100_000) + "\n",
            answer: "larger than 65536 bytes", user: TestAccounts.developer),
        SocketCase(
            name: "a knock to a host whose policy takes none",
            payload:
                #"{"command":"knock","fingerprint":"SHA256:l6cFg0s9iPmRWksLekeNd1Y/ipa3Jtb2eB42NqQNl1c","key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f","source":"192.0.2.2","ports":["ssh"],"duration_seconds":60}"#
                + "\n", answer: "has no knock section", user: TestAccounts.developer),
        SocketCase(
            name: "a knock with a made-up fingerprint",
            payload:
                #"{"command":"knock","fingerprint":"MD5:00:11","key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f","source":"192.0.2.2","ports":["ssh"],"duration_seconds":60}"#
                + "\n", answer: "a fingerprint is SHA256: and 43 base64 characters"),
        SocketCase(
            name: "a knock for a prefix",
            payload:
                #"{"command":"knock","fingerprint":"SHA256:l6cFg0s9iPmRWksLekeNd1Y/ipa3Jtb2eB42NqQNl1c","key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f","source":"192.0.2.0/24","ports":["ssh"],"duration_seconds":60}"#
                + "\n", answer: "knock.source must be one IP address"),
        SocketCase(
            name: "no newline, then hang up", payload: #"{"command":"list""#, answer: "the text ends inside an object"),
    ]

    @Test("hostile socket clients get an error and change nothing", arguments: socketCases)
    func hostileSocketClient(_ example: SocketCase) throws {
        let fixture = try Fixture()
        let agent = fixture.setup.agent
        let kernelBefore = try kernelSnapshot(agent.namespace)
        let stateBefore = agent.storedState()
        let command =
            (example.user.map { ["setpriv", "--reuid=\($0)", "--regid=\($0)", "--init-groups"] } ?? [])
            + ["nc", "-U", "-N", "-w", "8", agent.socketPath]
        let answer = try run(command, input: example.payload, check: false)
        #expect(answer.output.contains("\"ok\":false"), "\(answer.output)")
        #expect(answer.output.contains(example.answer), "\(answer.output)")
        #expect(try kernelSnapshot(agent.namespace) == kernelBefore)
        #expect(agent.storedState() == stateBefore)
        #expect(try agent.cli(["status"]).succeeded, "the agent still serves")
    }

    @Test("a client that connects and says nothing does not hold the agent")
    func silentClient() throws {
        let fixture = try Fixture()
        let agent = fixture.setup.agent
        // Twenty silent connections, held open while a real request is made.
        let silent = try (0..<20).map { _ -> Int32 in
            let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in agent.socketPath.utf8.enumerated() { raw[index] = byte }
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard connected == 0 else { throw POSIXError(errno: errno, "connect") }
            return descriptor
        }
        defer { silent.forEach { close($0) } }
        let started = Date()
        let status = try agent.cli(["status"])
        #expect(Date().timeIntervalSince(started) < TestTiming.seconds(7), "answered while silent clients hold connections")
        #expect(status.succeeded, "\(status.error)")
        usleep(5_500_000)
        #expect(try agent.cli(["list"]).succeeded, "the silent clients timed out and freed their slots")
    }

    struct PolicyCase: Sendable, CustomTestStringConvertible {
        var name: String
        var text: String
        var message: String
        var testDescription: String { name }
    }

    static let policyCases: [PolicyCase] = [
        PolicyCase(name: "unknown key", text: "ports: {}\nalways_alow: []\n", message: "did you mean always_allow?"),
        PolicyCase(
            name: "bad prefix",
            text: "ports:\n  ssh: { port: 22, max_duration: 1h, allowed_sources: [\"203.0.113.7/24\"] }\n",
            message: "did you mean 203.0.113.0/24?"),
        PolicyCase(
            name: "bad duration",
            text: "ports:\n  ssh: { port: 22, max_duration: 3x, allowed_sources: [\"0.0.0.0/0\"] }\n",
            message: "is not a duration"),
        PolicyCase(
            name: "port out of range",
            text: "ports:\n  ssh: { port: 70000, max_duration: 1h, allowed_sources: [\"0.0.0.0/0\"] }\n",
            message: "from 1 to 65535"),
        PolicyCase(name: "not YAML", text: "ports: [unclosed\n", message: "policy.yaml:"),
        PolicyCase(
            name: "role with unknown port",
            text:
                "ports:\n  ssh: { port: 22, max_duration: 1h, allowed_sources: [\"0.0.0.0/0\"] }\nroles:\n  - { group: admins, ports: [rdp], max_duration: 1h }\n",
            message: "rdp"),
    ]

    @Test("invalid policies: check exits 65 naming file and line; the agent refuses to start", arguments: policyCases)
    func invalidPolicy(_ example: PolicyCase) throws {
        let namespace = try NetworkNamespace.createAnonymous()
        let agent = try AgentProcess(namespace: namespace, policy: example.text)
        let check = try agent.cli(["check", agent.policyPath])
        #expect(check.status == 65)
        #expect(check.error.contains(agent.policyPath + ":"), "\(check.error)")
        #expect(check.error.contains(example.message), "\(check.error)")
        #expect(throws: AgentProcess.AgentFailed.self) { try agent.start() }
        #expect(agent.log(tail: 5).contains(example.message), "\(agent.log(tail: 5))")
        let tables = try run(["nft", "list", "tables"], in: namespace).output
        #expect(tables.isEmpty, "a refused start programs nothing: \(tables)")
    }

    @Test("a drawbridge table of another layout in the kernel: the table is ours, the agent replaces it at start")
    func foreignTableLayout() throws {
        let namespace = try NetworkNamespace.createAnonymous()
        try run(
            ["nft", "add table inet drawbridge; add set inet drawbridge grants4 { type ipv4_addr; }; "
                + "add chain inet drawbridge input { type filter hook input priority 0; policy accept; }"],
            in: namespace)
        let agent = try AgentProcess(namespace: namespace, policy: AgentTests.policy())
        try agent.start()
        let layout = TableLayout(
            mode: .keepSessions,
            managedServices: [Service(port: 22, transport: .tcp), Service(port: 5432, transport: .tcp)],
            alwaysAllowed: [])
        let driver = TableDriver(connection: try NetfilterConnection(namespace: namespace))
        #expect(try driver.verify(layout) == [], "the foreign table was replaced by drawbridge's own")
    }
}
