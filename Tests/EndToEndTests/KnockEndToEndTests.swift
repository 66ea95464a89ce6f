import DrawbridgeCore
import Foundation
import Netfilter
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `drawbridge knock` end to end with the real programs: OpenSSH's sshd behind drawbridged in the host namespace,
/// drawbridge-knock listen there too, a fresh ssh-keygen key in a running ssh-agent, the knock sent from the client
/// namespace by the drawbridge CLI, and ssh logging in.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)), .serialized)
struct KnockEndToEndTests {
    static let knockPort: UInt16 = 62201

typealias Path = NetworkPath

static let paths = NetworkPath.clientToHost

    /// A key made by ssh-keygen: its files and its public line.
    struct Key {
        let path: String
        let publicLine: String
        var fingerprint: String

        init(in directory: String, name: String) throws {
            path = directory + "/" + name
            try run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "\(name)@knock-test", "-f", path])
            publicLine = try String(contentsOfFile: path + ".pub", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let listed = try run(["ssh-keygen", "-l", "-E", "sha256", "-f", path + ".pub"]).output
            fingerprint = String(listed.split(separator: " ")[1])
        }
    }

    /// Everything one test needs: network, sshd, agent with a knock policy, listener, ssh-agent holding alice's key.
    final class Setup: @unchecked Sendable {
        let network: TestNetwork
        let server: SSHServer
        let agent: AgentProcess
        let alice: Key
        let bob: Key
        let stranger: Key
        var listener: BackgroundProcess
        let sshAgent: BackgroundProcess
        let agentSocket: String

        init(extraKnockSettings: String = "") throws {
            try TestAccounts.ensure()
            network = try TestNetwork()
            server = try SSHServer(in: network.host)
            agent = try AgentProcess(namespace: network.host, policy: "")
            let keys = agent.directory + "/keys"
            try FileManager.default.createDirectory(atPath: keys, withIntermediateDirectories: true)
            alice = try Key(in: keys, name: "alice")
            bob = try Key(in: keys, name: "bob")
            stranger = try Key(in: keys, name: "stranger")
            // bob comes from an authorized_keys file (with an option drawbridge ignores), alice from a key line.
            try "# admins\nno-pty,no-agent-forwarding \(bob.publicLine)\n".write(
                toFile: agent.directory + "/admins", atomically: true, encoding: .utf8)
            try agent.writePolicy(
                AgentTests.policy() + """
                    knock:
                      port: \(KnockEndToEndTests.knockPort)/udp
                      max_skew: 30s
                      host: [web-1, web-1.example.org]
                    \(extraKnockSettings)
                      keys:
                        - { key: "\(alice.publicLine)", ports: [ssh], max_duration: 10m }
                        - { authorized_keys: \(agent.directory)/admins, ports: [ssh, postgres], max_duration: 1h }

                    """)
            try agent.start()
            listener = BackgroundProcess(
                [
                    BuiltProducts.knock, "listen", "--policy", agent.policyPath, "--socket", agent.socketPath,
                    "--state", agent.directory + "/knock-state",
                ], in: network.host, logPath: agent.directory + "/knock.log")
            try listener.start()
            agentSocket = agent.directory + "/ssh-agent.sock"
            sshAgent = BackgroundProcess(
                ["ssh-agent", "-D", "-a", agentSocket], logPath: agent.directory + "/ssh-agent.log")
            try sshAgent.start()
            #expect(eventually(within: .seconds(5)) { FileManager.default.fileExists(atPath: agentSocket) })
            try run(["env", "SSH_AUTH_SOCK=\(agentSocket)", "ssh-add", "-q", alice.path])
            #expect(
                eventually(within: .seconds(5)) { listener.log.contains("listening on") },
                "listener started: \(listener.log)")
        }

        func stop() {
            listener.stop()
            sshAgent.stop()
            server.stop()
        }

        func restartListener() throws {
            listener.stop()
            listener = BackgroundProcess(
                listener.arguments, in: network.host, logPath: agent.directory + "/knock.log")
            try listener.start()
            #expect(eventually(within: .seconds(5)) { listener.log.components(separatedBy: "listening on").count > 2 })
        }

        /// `drawbridge knock` from the client namespace, through ssh-agent unless `key` names a file.
        func knock(
            _ host: String = "web-1", _ ports: [String] = ["ssh"], for duration: String = "5s",
            path: Path = KnockEndToEndTests.paths[0], key: String? = nil, extra: [String] = [], wait: Bool = true
        ) throws -> CommandResult {
            var command = [
                "env", "SSH_AUTH_SOCK=\(agentSocket)", BuiltProducts.cli, "knock", host,
            ] + ports + [
                "--for", duration, "--reason", "knock e2e", "--address", path.destination.description, "--source",
                path.source.description, "--port", String(KnockEndToEndTests.knockPort),
            ]
            if let key { command += ["--key", key] }
            if !wait { command.append("--no-wait") }
            return try run(command + extra, in: network.client, check: false)
        }

        /// Sends raw bytes to the knock port from the client namespace.
        func send(_ bytes: [UInt8], from source: IPAddress, to destination: IPAddress) throws {
            let file = agent.directory + "/datagram-\(UInt32.random(in: 0...UInt32.max))"
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            let family = source.family == .ipv4 ? "AF_INET" : "AF_INET6"
            try run(
                [
                    "python3", "-c",
                    "import socket,sys; s=socket.socket(socket.\(family), socket.SOCK_DGRAM); "
                        + "s.bind((sys.argv[1], 0)); s.sendto(open(sys.argv[3],'rb').read(), (sys.argv[2], \(KnockEndToEndTests.knockPort)))",
                    source.description, destination.description, file,
                ], in: network.client)
        }

        func refusals() throws -> [[String: Any]] {
            try agent.auditEvents().filter { $0["event"] as? String == "refuse" }
        }

        func grants() throws -> [[String: Any]] {
            try agent.auditEvents().filter { $0["event"] as? String == "grant" }
        }

        func port22Open(_ path: Path) throws -> Bool {
            try canConnect(from: network.client, to: path.destination, port: 22, source: path.source)
        }
    }

    @Test("ssh: refused before; drawbridge knock through ssh-agent opens it; refused again after expiry", arguments: paths)
    func knockThenSSH(_ path: Path) throws {
        let setup = try Setup()
        defer { setup.stop() }
        #expect(try !setup.port22Open(path), "closed before the knock")
        let before = try SSHClient.logIn(
            from: setup.network.client, source: path.source, to: path.destination, key: setup.server.clientKeyPath)
        #expect(!before.loggedIn, "no login before the knock: \(before)")

        // Long enough for the login and the checks below before it expires, also under emulation (6 s natively).
        let knocked = try setup.knock(for: "\(Int(TestTiming.seconds(6)))s", path: path)
        #expect(knocked.succeeded, "knock: \(knocked.output) \(knocked.error) \(setup.listener.log)")
        #expect(knocked.output.contains("port 22 answers: open"), "\(knocked.output)")
        #expect(knocked.output.contains(setup.alice.fingerprint), "\(knocked.output)")
        let login = try SSHClient.logIn(
            from: setup.network.client, source: path.source, to: path.destination, key: setup.server.clientKeyPath)
        #expect(login.loggedIn, "logs in during the knock's grant: \(login)")

        let grant = try #require(try setup.grants().last)
        #expect(grant["origin"] as? String == "knock:\(setup.alice.fingerprint)")
        #expect(grant["source"] as? String == path.source.description)
        #expect((grant["user"] as? String)?.contains("alice@knock-test") == true)
        let status = try setup.agent.cli(["status"]).output
        #expect(status.contains("knock: 62201/udp; 1 opened, 0 refused since start; last report from drawbridge-knock"), "\(status)")
        let metrics = try setup.agent.cli(["metrics"]).output
        #expect(metrics.contains(#"drawbridge_knocks_total{result="opened"} 1"#), "\(metrics)")
        let listing = try setup.agent.cli(["list", "--json"])
        #expect(listing.output.contains("knock:\(setup.alice.fingerprint)"), "drawbridge list shows it: \(listing.output)")

        let expiresText = try #require(grant["expires_at"] as? String)
        let expiresAt = try #require(Timestamp.parse(expiresText))
        let wait = expiresAt.timeIntervalSinceNow + 1.0
        if wait > 0 { usleep(UInt32(wait * 1_000_000)) }
        #expect(try !setup.port22Open(path), "closed within a second after expiry")
        let after = try SSHClient.logIn(
            from: setup.network.client, source: path.source, to: path.destination, key: setup.server.clientKeyPath)
        #expect(!after.loggedIn, "no login after expiry: \(after)")
    }

    @Test("a captured knock replayed, from the same or another address, also after a listener restart, opens nothing")
    func replay() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let path = Self.paths[0]
        let saved = setup.agent.directory + "/captured"
        // Signed from the key file this time (no ssh-agent), and saved as sent.
        let knocked = try setup.knock(for: "1m", key: setup.alice.path, extra: ["--save-datagram", saved])
        #expect(knocked.succeeded, "\(knocked.output) \(knocked.error)")
        let id = try #require(try setup.grants().last?["grant_id"] as? String)
        #expect(try setup.agent.cli(["revoke", id]).succeeded)
        #expect(try !setup.port22Open(path))
        let packet = try [UInt8](Data(contentsOf: URL(fileURLWithPath: saved)))
        let kernelBefore = try kernelSnapshot(setup.network.host)

        for (index, source) in [TestNetwork.clientIPv4, IPAddress("198.51.100.5")!].enumerated() {
            try setup.send(packet, from: source, to: path.destination)
            let refused = try eventually(within: .seconds(3)) {
                try setup.refusals().filter { ($0["detail"] as? String)?.contains("replayed") == true }.count
                    == index + 1
            }
            #expect(refused, "replay from \(source) refused as a replay: \(setup.listener.log)")
        }
        try setup.restartListener()
        try setup.send(packet, from: TestNetwork.clientIPv4, to: path.destination)
        #expect(
            try eventually(within: .seconds(3)) {
                try setup.refusals().filter { ($0["detail"] as? String)?.contains("replayed") == true }.count == 3
            }, "after a restart the nonce is still known: \(setup.listener.log)")
        #expect(try kernelSnapshot(setup.network.host) == kernelBefore, "the kernel is unchanged")
        #expect(try !setup.port22Open(path))
        #expect(try setup.grants().count == 1, "one grant in all: the original knock")
    }

    struct Refusal: Sendable, CustomTestStringConvertible {
        var name: String
        /// What the audit record's detail says.
        var expected: String
        var testDescription: String { name }
    }

    @Test("knocks the host must refuse: audited with the reason, kernel unchanged, port closed")
    func refusals() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let path = Self.paths[0]
        let kernelBefore = try kernelSnapshot(setup.network.host)
        let saved = setup.agent.directory + "/valid"
        // A valid knock's bytes, never sent, to damage below.
        _ = try setup.knock(
            "web-1", ["ssh"], for: "5s", key: setup.alice.path, extra: ["--save-datagram", saved, "--port", "9"],
            wait: false)
        let valid = try [UInt8](Data(contentsOf: URL(fileURLWithPath: saved)))

        var cases: [(Refusal, () throws -> Void)] = []
        cases.append((Refusal(name: "key not in the policy", expected: "is not allowed to knock"), {
            _ = try setup.knock(key: setup.stranger.path, wait: false)
        }))
        cases.append((Refusal(name: "timestamp two minutes old", expected: "ms old"), {
            _ = try setup.knock(extra: ["--clock-offset=-120"], wait: false)
        }))
        cases.append((Refusal(name: "timestamp two minutes ahead", expected: "ms ahead"), {
            _ = try setup.knock(extra: ["--clock-offset=120"], wait: false)
        }))
        cases.append((Refusal(name: "a port the key may not open", expected: "may not open postgres"), {
            _ = try setup.knock("web-1", ["postgres"], wait: false)
        }))
        cases.append((Refusal(name: "longer than the key's rule", expected: "at most 10m"), {
            _ = try setup.knock(for: "1h", wait: false)
        }))
        cases.append((Refusal(name: "for another host", expected: "the knock is for host web-2"), {
            _ = try setup.knock("web-2", wait: false)
        }))
        cases.append((Refusal(name: "truncated", expected: "malformed"), {
            try setup.send(Array(valid.dropLast()), from: path.source, to: path.destination)
        }))
        cases.append((Refusal(name: "trailing bytes", expected: "malformed"), {
            try setup.send(valid + [0], from: path.source, to: path.destination)
        }))
        cases.append((Refusal(name: "random bytes", expected: "malformed"), {
            try setup.send((0..<300).map { _ in UInt8.random(in: 0...255) }, from: path.source, to: path.destination)
        }))
        cases.append((Refusal(name: "a forged signature", expected: "does not verify"), {
            var forged = valid
            forged[forged.count - 10] ^= 0x55
            try setup.send(forged, from: path.source, to: path.destination)
        }))

        for (refusal, act) in cases {
            let count = try setup.refusals().count
            try act()
            let arrived = try eventually(within: .seconds(3)) { try setup.refusals().count > count }
            #expect(arrived, "\(refusal.name): refusal audited (\(setup.listener.log))")
            let detail = try setup.refusals().dropFirst(count).first?["detail"] as? String ?? ""
            #expect(detail.contains(refusal.expected), "\(refusal.name): \(detail)")
            #expect(try !setup.port22Open(path), "\(refusal.name): port 22 stays closed")
        }
        // Only root and knock.user may hand the agent knocks: another local user is refused (and audited).
        let forged = try run(
            ["setpriv", "--reuid=\(TestAccounts.developer)", "--regid=\(TestAccounts.developer)", "--init-groups",
             "nc", "-U", "-N", "-w", "8", setup.agent.socketPath],
            input: #"{"command":"knock","fingerprint":"\#(setup.alice.fingerprint)","key":"\#(setup.alice.publicLine)","source":"192.0.2.2","ports":["ssh"],"duration_seconds":60}"#
                + "\n", check: false)
        #expect(forged.output.contains("only root and the knock user (drawbridge-knock)"), "\(forged.output)")
        #expect(try !setup.port22Open(path))

        // No grant was made, and the table is exactly as before (no element, no rule changed).
        let madeGrants = try setup.grants()
        #expect(madeGrants.isEmpty, "\(madeGrants)")
        #expect(try kernelSnapshot(setup.network.host) == kernelBefore)

        // bob's key comes from the authorized_keys file, with its own rule: postgres for up to 1h (postgres itself
        // allows 30m, and only to 198.51.100.0/24, so 20m from there).
        try run(["env", "SSH_AUTH_SOCK=\(setup.agentSocket)", "ssh-add", "-q", setup.bob.path])
        let bob = try setup.knock(
            "web-1", ["postgres"], for: "20m",
            path: Path(name: "198.51.100", source: IPAddress("198.51.100.5")!, destination: IPAddress("198.51.100.1")!),
            key: setup.bob.path + ".pub", wait: false)
        #expect(bob.succeeded, "\(bob.output) \(bob.error)")
        #expect(
            try eventually(within: .seconds(3)) {
                try setup.grants().last?["origin"] as? String == "knock:\(setup.bob.fingerprint)"
            }, "bob's knock opened postgres: \(setup.listener.log)")
    }

    @Test("a key taken out of its authorized_keys file or out of the policy opens nothing; the listener keeps running")
    func keyRemoved() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let postgresPath = Path(
            name: "198.51.100", source: IPAddress("198.51.100.5")!, destination: IPAddress("198.51.100.1")!)
        try run(["env", "SSH_AUTH_SOCK=\(setup.agentSocket)", "ssh-add", "-q", setup.bob.path])
        func bobKnocks() throws {
            let sent = try setup.knock(
                "web-1", ["postgres"], for: "5s", path: postgresPath, key: setup.bob.path + ".pub", wait: false)
            #expect(sent.succeeded, "\(sent.output) \(sent.error)")
        }
        func refusedAsUnlisted(_ fingerprint: String) throws -> Bool {
            try eventually(within: .seconds(3)) {
                try setup.refusals().contains {
                    ($0["detail"] as? String)?.contains("\(fingerprint) is not in this host's knock policy") == true
                }
            }
        }
        let admins = setup.agent.directory + "/admins"

        // bob's line leaves the authorized_keys file; nobody restarts or reloads anything.
        try "# admins\n".write(toFile: admins, atomically: true, encoding: .utf8)
        try bobKnocks()
        #expect(try refusedAsUnlisted(setup.bob.fingerprint), "\(setup.listener.log)")
        #expect(try setup.grants().isEmpty)

        // Back in the file, the next knock opens postgres.
        try "# admins\nno-pty \(setup.bob.publicLine)\n".write(toFile: admins, atomically: true, encoding: .utf8)
        try bobKnocks()
        #expect(
            try eventually(within: .seconds(3)) { try setup.grants().count == 1 }, "bob's knock opened: \(setup.listener.log)")

        // alice's rule (rule 1, ssh) leaves the policy and the agent reloads; the listener still runs with the old
        // policy and accepts her signature. Rule 1 is now bob's file rule, which allows ssh: the agent must look the
        // key up itself rather than trust the listener's view of the rules.
        try setup.agent.writePolicy(
            AgentTests.policy() + """
                knock:
                  port: \(KnockEndToEndTests.knockPort)/udp
                  max_skew: 30s
                  host: [web-1, web-1.example.org]
                  keys:
                    - { authorized_keys: \(admins), ports: [ssh, postgres], max_duration: 1h }

                """)
        setup.agent.signal(SIGHUP)
        #expect(
            try eventually(within: .seconds(5)) {
                try setup.agent.auditEvents().contains { $0["event"] as? String == "reload" }
            })
        let alice = try setup.knock(wait: false)
        #expect(alice.succeeded, "\(alice.output) \(alice.error)")
        #expect(try refusedAsUnlisted(setup.alice.fingerprint), "\(setup.listener.log)")
        #expect(try !setup.port22Open(Self.paths[0]))
        #expect(try setup.grants().count == 1, "only bob's grant was ever made")
    }

    @Test("require_source_address: a knock signed for another address than it comes from opens nothing")
    func requireSourceAddress() throws {
        let setup = try Setup(extraKnockSettings: "  require_source_address: true")
        defer { setup.stop() }
        let path = Self.paths[0]
        // As an on-path attacker would send a captured knock from its own address: signed for another one.
        let elsewhere = try setup.knock(extra: ["--client-address", "203.0.113.9"], wait: false)
        #expect(elsewhere.succeeded, "\(elsewhere.error)")
        let refused = try eventually(within: .seconds(3)) {
            try setup.refusals().contains {
                ($0["detail"] as? String)?.contains("but was signed for 203.0.113.9") == true
            }
        }
        #expect(refused, "\(setup.listener.log)")
        #expect(try !setup.port22Open(path))
        let knocked = try setup.knock()
        #expect(knocked.succeeded, "signed for the address it comes from: \(knocked.output) \(knocked.error)")
    }

    @Test("nmap sees the knock port filtered; 100,000 junk packets leave the agent answering and memory flat")
    func scanAndFlood() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let path = Self.paths[0]
        let scan = try run(
            ["nmap", "-n", "-Pn", "-sU", "-p", String(Self.knockPort), "--max-retries", "1", path.destination.description],
            in: setup.network.client)
        #expect(scan.output.contains("\(Self.knockPort)/udp open|filtered"), "no answer at all: \(scan.output)")

        let agentBefore = try #require(setup.agent.pid.flatMap(Self.residentKilobytes))
        let listenerBefore = try #require(setup.listener.residentKilobytes)
        // 100,000 random datagrams of 64 to 600 bytes, as fast as python sends them (bounded count).
        let flood = BackgroundProcess(
            [
                "python3", "-c",
                "import os,socket,random; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('192.0.2.3',0))\n"
                    + "for i in range(100000): s.sendto(os.urandom(random.randint(64,600)), ('\(path.destination)', \(Self.knockPort)))",
            ], in: setup.network.client, logPath: setup.agent.directory + "/flood.log")
        try flood.start()
        defer { flood.stop() }
        // During the flood: the agent answers and a real grant opens the port at once.
        usleep(300_000)
        #expect(flood.pid != nil, "the flood is still going")
        #expect(try setup.agent.cli(["status"]).succeeded, "the agent answers during the flood")
        let granted = try setup.agent.cli(["grant", "ssh", "--from", "192.0.2.20", "--for", "1m"])
        #expect(granted.succeeded, "\(granted.error)")
        #expect(
            try canConnect(from: setup.network.client, to: path.destination, port: 22, source: IPAddress("192.0.2.20")!),
            "the grant made during the flood is in force")
        #expect(eventually(within: .seconds(120)) { flood.pid == nil }, "the flood ended")
        // After it: a knock opens the port as before (during it, the knock rule's shared rate limit may drop it).
        // Under emulation the listener may still be working through the junk the kernel handed on: it gets longer.
        let knocked = try setup.knock(for: "\(Int(TestTiming.seconds(30)))s", extra: ["--timeout", "\(Int(TestTiming.seconds(10)))"])
        #expect(
            knocked.succeeded,
            """
            a knock works after the flood: \(knocked.output) \(knocked.error)
            last refusals: \((try? setup.refusals().suffix(5).map { "\($0)" }) ?? [])
            listener: \(setup.listener.log.suffix(2000))
            agent: \(setup.agent.log(tail: 20))
            """)
        usleep(1_500_000)
        let agentAfter = try #require(setup.agent.pid.flatMap(Self.residentKilobytes))
        let listenerAfter = try #require(setup.listener.residentKilobytes)
        print(
            "knock flood figures: agent RSS \(agentBefore) -> \(agentAfter) kB; listener RSS \(listenerBefore) -> "
                + "\(listenerAfter) kB; refusals audited \(try setup.refusals().count)")
        #expect(agentAfter - agentBefore < 8_192, "agent memory flat")
        #expect(listenerAfter - listenerBefore < 8_192, "listener memory flat")
        #expect(try setup.port22Open(path), "the real knock's grant is in force")
        // The refusals are audited one by one up to 20 a second, the rest counted: the log stays bounded.
        #expect(try setup.refusals().count < 5_000)
        #expect(
            try setup.refusals().contains { ($0["detail"] as? String)?.contains("more knocks refused") == true },
            "the flood is summarised in the audit trail")
    }

    static func residentKilobytes(_ pid: pid_t) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }
}
