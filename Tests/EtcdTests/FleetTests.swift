import DrawbridgeCore
import Foundation
import Netfilter
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The whole fleet path, nothing played by the test: a real etcd in a namespace of its own, and hosts each made of a
/// network namespace with the real agent (drawbridged, enforcing in that namespace's kernel), the real
/// `drawbridge-etcd sync` beside it (reaching etcd over a veth link of its own), an SSH-port listener, and a client
/// namespace that sends the packets. Grants are written by `drawbridge-etcd grant` or etcdctl, as a requester would.
///
/// The etcd namespace is the hub: each host namespace gets a veth pair to it (host side 203.0.113.(10+N)/32, a route
/// to etcd's 192.0.2.10 through it). Every namespace is created and removed by the test; nothing listens on, or is
/// routed through, the machine's own network.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct FleetTests {
    /// One host of the fleet.
    final class Host: @unchecked Sendable {
        let name: String
        let groups: [String]
        let network: TestNetwork
        let listener: TCPListener
        let agent: AgentProcess
        var sync: SyncProcess?
        let etcd: EtcdServer

        /// `etcdSettings`: more lines for the host's `etcd:` section (its TLS client certificate, say).
        init(name: String, groups: [String], index: Int, etcd: EtcdServer, etcdSettings: String = "") throws {
            self.name = name
            self.groups = groups
            self.etcd = etcd
            try TestAccounts.ensure()
            network = try TestNetwork()
            listener = try TCPListener(in: network.host, port: 22)
            let link = "fleet\(index)"
            let address = "203.0.113.\(10 + index)"
            try run(["ip", "link", "add", link, "type", "veth", "peer", "name", "etcd0", "netns", network.host.path],
                in: etcd.namespace)
            try run(["ip", "link", "set", link, "up"], in: etcd.namespace)
            try run(["ip", "route", "add", "\(address)/32", "dev", link], in: etcd.namespace)
            try run(["ip", "addr", "add", "\(address)/32", "dev", "etcd0"], in: network.host)
            try run(["ip", "link", "set", "etcd0", "up"], in: network.host)
            try run(
                ["ip", "route", "add", "\(EtcdServer.address)/32", "dev", "etcd0", "src", address], in: network.host)
            agent = try AgentProcess(
                namespace: network.host,
                policy: FleetTests.policy(host: name, groups: groups, etcd: etcd, settings: etcdSettings))
            try agent.start()
        }

        /// Starts (or starts again) this host's `drawbridge-etcd sync`, in the host's namespace.
        func startSync() throws {
            sync = try SyncProcess(
                etcd: etcd, policy: agent.policyPath, socket: agent.socketPath, namespace: network.host)
        }

        /// Whether 192.0.2.x (an address of the client namespace) gets a TCP connection to this host's port 22.
        func connects(from source: String) throws -> Bool {
            try canConnect(
                from: network.client, to: TestNetwork.hostIPv4, port: 22, source: IPAddress(source)!,
                timeout: .milliseconds(500))
        }

        func diagnostics() -> String {
            "\(name) agent log:\n\(agent.log(tail: 15))\n\(name) sync log:\n\(sync?.logTail ?? "not started")"
        }
    }

    static func policy(host: String, groups: [String], etcd: EtcdServer, settings: String = "") -> String {
        """
        ports:
          ssh:      { port: 22,   protocol: tcp, max_duration: 3h,  allowed_sources: ["192.0.2.0/24", "198.51.100.0/24"] }
          postgres: { port: 5432, protocol: tcp, max_duration: 30m, allowed_sources: ["198.51.100.0/24"] }
        always_allow: []
        etcd:
          endpoints: ["\(etcd.endpoint)"]
          host: \(host)
          groups: [\(groups.joined(separator: ", "))]
        \(settings)
        """
    }

    /// etcd and three hosts: web-1 and web-2 in group web, db-1 in group db; each with its sync running.
    final class Fleet: @unchecked Sendable {
        let etcd: EtcdServer
        let hosts: [Host]

        /// `etcd`: a server set up beforehand (with TLS and authentication, say); `etcdSettings`: more lines for a
        /// host's `etcd:` section, by host name; `reporting`: the hosts whose status key to wait for (all by default).
        init(
            startSync: Bool = true, etcd: EtcdServer? = nil, etcdSettings: [String: String] = [:],
            reporting: Set<String>? = nil
        ) throws {
            let etcd = try etcd ?? EtcdServer()
            self.etcd = etcd
            hosts = try [("web-1", ["web"]), ("web-2", ["web"]), ("db-1", ["db"])].enumerated().map { index, host in
                try Host(
                    name: host.0, groups: host.1, index: index, etcd: etcd, etcdSettings: etcdSettings[host.0] ?? "")
            }
            if startSync {
                for host in hosts { try host.startSync() }
                // Each sync reports its host once it handed the agent its first snapshot.
                for host in hosts where reporting?.contains(host.name) ?? true {
                    let reported = try eventuallyThrowing(timeout: 30) { try self.statusValue(host.name) != nil }
                    if !reported { throw EtcdServerFailed("no status from \(host.name): \(host.diagnostics())") }
                }
            }
        }

        subscript(name: String) -> Host { hosts.first { $0.name == name }! }

        /// A requester command (`drawbridge-etcd grant …`), run in etcd's namespace against its endpoint.
        /// With TLS, `user` names the client certificate it presents.
        func request(_ arguments: [String], as user: String? = nil) throws -> CommandResult {
            var credentials: [String] = []
            if let tls = etcd.tls {
                credentials += ["--cacert", tls.authority]
                if let user {
                    let client = try tls.client(user)
                    credentials += ["--cert", client.certificate, "--key", client.key]
                }
            }
            return try run(
                [SyncProcess.executable] + arguments + ["--etcd", etcd.endpoint] + credentials, in: etcd.namespace,
                check: false)
        }

        func statusValue(_ host: String) throws -> String? {
            let output = try etcd.etcdctl(["get", "/drawbridge/v1/status/\(host)", "--print-value-only"]).output
            let text = output.trimmingCharacters(in: .whitespacesAndNewlines)
            return text.isEmpty ? nil : text
        }

        /// Which hosts let `source` through to port 22, checked by packets.
        func open(to source: String) throws -> Set<String> {
            Set(try hosts.filter { try $0.connects(from: source) }.map(\.name))
        }

        /// Waits until exactly `expected` hosts let `source` through (or the timeout passes); the last answer.
        func waitOpen(to source: String, _ expected: Set<String>, timeout: TimeInterval = 10) throws -> Set<String> {
            let deadline = Date().addingTimeInterval(timeout)
            var seen = try open(to: source)
            while seen != expected, Date() < deadline {
                usleep(100_000)
                seen = try open(to: source)
            }
            return seen
        }

        func diagnostics() -> String {
            hosts.map { $0.diagnostics() }.joined(separator: "\n") + "\netcd log:\n\(etcd.logTail())"
        }
    }

    static func value(_ source: String, ports: [String] = ["ssh"], expiresIn seconds: Double = 3600, id: String)
        -> String
    {
        let object: [String: Any] = [
            "id": id, "source": source, "ports": ports, "reason": "fleet test", "requested_by": "fleet-test",
            "expires_at": Timestamp.format(Date().addingTimeInterval(seconds)),
        ]
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    @Test("a group grant opens exactly the group's hosts, a host grant only its host; deleting the key closes at once")
    func groupAndHostGrants() throws {
        let fleet = try Fleet()
        #expect(try fleet.open(to: "192.0.2.2").isEmpty, "closed everywhere before any grant")

        let granted = try fleet.request(
            ["grant", "ssh", "--from", "192.0.2.2", "--for", "1h", "--group", "web", "--reason", "deploy", "--wait", "15"])
        #expect(granted.status == 0, "\(granted.output)\(granted.error)\n\(fleet.diagnostics())")
        #expect(granted.output.contains("web-1: applied") && granted.output.contains("web-2: applied"), "\(granted.output)")
        let id = try #require(granted.output.firstMatch(of: /granted (g-[a-z0-9]+) for group web/)?.1)
        #expect(try fleet.waitOpen(to: "192.0.2.2", ["web-1", "web-2"]) == ["web-1", "web-2"], "\(fleet.diagnostics())")
        #expect(try fleet.open(to: "192.0.2.3").isEmpty, "another source stays closed everywhere")

        let hostGrant = try fleet.request(
            ["grant", "ssh", "--from", "192.0.2.3", "--for", "30m", "--host", "db-1", "--wait", "15"])
        #expect(hostGrant.status == 0, "\(hostGrant.output)\(hostGrant.error)")
        #expect(try fleet.waitOpen(to: "192.0.2.3", ["db-1"]) == ["db-1"], "\(fleet.diagnostics())")
        #expect(try fleet.open(to: "192.0.2.2") == ["web-1", "web-2"], "the host grant changed nothing else")

        // Each host lists the grant with its origin, the etcd key.
        let listed = try fleet["web-1"].agent.cli(["list"])
        #expect(listed.output.contains("etcd:/drawbridge/v1/grants/group/web/\(id)"), "\(listed.output)")
        let status = try fleet["web-1"].agent.cli(["status"])
        #expect(
            status.output.contains("etcd: connected to ") && status.output.contains("192.0.2.10:2379, applied revision"),
            "\(status.output)")
        #expect(status.output.contains("etcd host web-1: 1 grants from etcd, 0 keys refused"), "\(status.output)")

        // Deleting the key closes on every host of the group at once.
        let started = Date()
        let revoked = try fleet.request(["revoke", String(id), "--group", "web"])
        #expect(revoked.status == 0, "\(revoked.output)\(revoked.error)")
        #expect(try fleet.waitOpen(to: "192.0.2.2", []) == [], "\(fleet.diagnostics())")
        #expect(Date().timeIntervalSince(started) < 5, "closed within seconds of the delete")
        #expect(try fleet.open(to: "192.0.2.3") == ["db-1"], "the host grant stays")
    }

    @Test("expiry closes in the kernel with etcd stopped; an agent killed with -9 while a grant is written catches up")
    func expiryWithoutEtcdAndAgentCatchUp() throws {
        let fleet = try Fleet()
        let web1 = fleet["web-1"]
        try fleet.etcd.etcdctl(
            ["put", "/drawbridge/v1/grants/group/web/short", Self.value("192.0.2.2", expiresIn: 6, id: "short")])
        #expect(try fleet.waitOpen(to: "192.0.2.2", ["web-1", "web-2"]) == ["web-1", "web-2"], "\(fleet.diagnostics())")

        // etcd goes away; the kernel still closes at the expiry written in the value.
        fleet.etcd.stop()
        #expect(try fleet.open(to: "192.0.2.2") == ["web-1", "web-2"], "enforcement unchanged while etcd is down")
        #expect(try fleet.waitOpen(to: "192.0.2.2", [], timeout: 12) == [], "expired in the kernel without etcd")

        // etcd back; web-1's agent is killed, a grant is written meanwhile; the restarted agent gets it.
        try fleet.etcd.start()
        web1.agent.kill9()
        try fleet.etcd.etcdctl(
            ["put", "/drawbridge/v1/grants/host/web-1/while-down", Self.value("192.0.2.3", id: "while-down")])
        #expect(try fleet.waitOpen(to: "192.0.2.3", []) == [], "nothing opened while the agent was dead")
        try web1.agent.start()
        #expect(try fleet.waitOpen(to: "192.0.2.3", ["web-1"], timeout: 30) == ["web-1"], "\(fleet.diagnostics())")

        // kill -9 of the agent leaves the kernel enforcing: the grant stays open, nothing else opens.
        web1.agent.kill9()
        #expect(try fleet.open(to: "192.0.2.3") == ["web-1"])
        #expect(try fleet.open(to: "192.0.2.2").isEmpty)
    }

    @Test("a compaction past a host's revision: the grant and the revocation written across it both land")
    func compactionRelist() throws {
        let fleet = try Fleet()
        let web1 = fleet["web-1"]
        let group = "/drawbridge/v1/grants/group/web/"
        try fleet.etcd.etcdctl(["put", group + "to-revoke", Self.value("192.0.2.2", id: "to-revoke")])
        #expect(try fleet.waitOpen(to: "192.0.2.2", ["web-1", "web-2"]) == ["web-1", "web-2"], "\(fleet.diagnostics())")

        // web-1's sync is frozen and etcd restarted under it, so its watch must resume from a revision etcd then
        // compacts away.
        let sync = try #require(web1.sync)
        sync.pause()
        fleet.etcd.stop()
        try fleet.etcd.start()
        try fleet.etcd.etcdctl(["del", group + "to-revoke"])
        try fleet.etcd.etcdctl(["put", group + "granted", Self.value("192.0.2.3", id: "granted")])
        let status = try fleet.etcd.etcdctl(["endpoint", "status", "-w", "json"]).output
        let revision = try #require(status.firstMatch(of: /"revision":([0-9]+)/)?.1)
        try fleet.etcd.etcdctl(["compact", String(revision)])
        sync.resume()

        #expect(try fleet.waitOpen(to: "192.0.2.2", [], timeout: 30) == [], "the revocation landed\n\(fleet.diagnostics())")
        #expect(try fleet.waitOpen(to: "192.0.2.3", ["web-1", "web-2"], timeout: 30) == ["web-1", "web-2"],
            "the grant landed\n\(fleet.diagnostics())")
        #expect(sync.log.contains("compacted"), "web-1 re-listed after the compaction:\n\(sync.logTail)")
    }

    @Test("values a host's policy refuses are audited with their key and open nothing; a status names them")
    func refusals() throws {
        let fleet = try Fleet()
        let web1 = fleet["web-1"]
        let host = "/drawbridge/v1/grants/host/web-1/"
        let before = try kernelSnapshot(web1.network.host)
        let huge = Self.value("192.0.2.2", id: "huge").replacingOccurrences(
            of: "fleet test", with: String(repeating: "x", count: 20_000))
        let refused: [(String, String)] = [
            ("outside", Self.value("203.0.113.9", id: "outside")),  // not in ssh's allowed sources
            ("too-long", Self.value("192.0.2.2", expiresIn: 4 * 3600, id: "too-long")),  // over ssh's 3h
            ("unmanaged", Self.value("192.0.2.2", ports: ["8080/tcp"], id: "unmanaged")),
            ("expired", Self.value("192.0.2.2", expiresIn: -60, id: "expired")),
            ("garbled", "{\"id\":\"garbled\",\"source\":"),
            ("huge", huge),
        ]
        for (id, value) in refused { try fleet.etcd.etcdctl(["put", host + id, value]) }
        try fleet.etcd.etcdctl(["put", host + "a/b/c", Self.value("192.0.2.2", id: "c")])  // not a grant key
        // A valid grant written last proves the sync got this far.
        try fleet.etcd.etcdctl(["put", host + "valid", Self.value("198.51.100.5", id: "valid")])
        let reached = try eventuallyThrowing(timeout: 15) {
            try web1.agent.cli(["list"]).output.contains("etcd:\(host)valid")
        }
        #expect(reached, "\(web1.diagnostics())")

        #expect(try fleet.open(to: "192.0.2.2").isEmpty, "no refused value opened anything")
        let refusals = try web1.agent.auditEvents().filter { $0["event"] as? String == "refuse" }
        for (id, _) in refused {
            #expect(
                refusals.contains { $0["origin"] as? String == "etcd:" + host + id },
                "the refusal of \(id) is audited with its key: \(refusals)")
        }
        let statusText = try #require(try fleet.statusValue("web-1"))
        #expect(statusText.contains(host + "outside"), "the status key names refused keys: \(statusText)")
        // Only the valid grant's element was added.
        let after = try kernelSnapshot(web1.network.host)
        #expect(after != before)
        #expect(after.contains("198.51.100.5") && !after.contains("203.0.113.9"))
    }

    @Test("RBAC over mutual TLS: a host's certificate reads only its own keys; a writer for group web cannot write db")
    func rbacWithCertificates() throws {
        let etcd = try EtcdServer(tls: true)
        let tls = try #require(etcd.tls)
        let grants = "/drawbridge/v1/grants/"
        let status = "/drawbridge/v1/status/"
        // Each host may read its own directory and its group's and write its status key; the deployer may write
        // group web's directory and read the statuses.
        let hosts = [("web-1", "web"), ("web-2", "web"), ("db-1", "db")]
        try etcd.enableAuthentication(
            roles: hosts.map { host, group in
                .init(
                    name: "host-\(host)",
                    permissions: [
                        ("read", grants + "host/\(host)/"), ("read", grants + "group/\(group)/"),
                        ("readwrite", status + host),
                    ])
            } + [.init(name: "writer-web", permissions: [("readwrite", grants + "group/web/"), ("read", status)])],
            users: hosts.map { .init(name: $0.0, password: nil, roles: ["host-\($0.0)"]) }
                + [.init(name: "deployer", password: nil, roles: ["writer-web"])])
        func settings(certificateOf user: String) throws -> String {
            let client = try tls.client(user)
            return "  tls: { ca: \(tls.authority), cert: \(client.certificate), key: \(client.key) }\n"
        }
        // db-1 is set up with web-1's certificate (copied, or a host that was stolen from): etcd knows it as web-1.
        let fleet = try Fleet(
            etcd: etcd,
            etcdSettings: [
                "web-1": try settings(certificateOf: "web-1"), "web-2": try settings(certificateOf: "web-2"),
                "db-1": try settings(certificateOf: "web-1"),
            ],
            reporting: ["web-1", "web-2"])

        // The deployer's group grant reaches the group's hosts, which read it with their own certificates.
        let granted = try fleet.request(
            ["grant", "ssh", "--from", "192.0.2.2", "--for", "1h", "--group", "web", "--wait", "15"], as: "deployer")
        #expect(granted.status == 0, "\(granted.output)\(granted.error)\n\(fleet.diagnostics())")
        #expect(
            granted.output.contains("web-1: applied") && granted.output.contains("web-2: applied"), "\(granted.output)")
        #expect(try fleet.waitOpen(to: "192.0.2.2", ["web-1", "web-2"]) == ["web-1", "web-2"], "\(fleet.diagnostics())")

        // The deployer may not write group db: etcd refuses, names the user, and nothing opens anywhere.
        let denied = try fleet.request(
            ["grant", "ssh", "--from", "192.0.2.3", "--for", "1h", "--group", "db"], as: "deployer")
        #expect(denied.status == 77, "\(denied.output)\(denied.error)")
        #expect(
            denied.error.contains("permission denied writing /drawbridge/v1/grants/group/db/")
                && denied.error.contains("(user deployer)"), "\(denied.error)")
        #expect(try etcd.etcdctl(["get", grants + "group/db/", "--prefix", "--keys-only"]).output.isEmpty)

        // Host grants for web-2 and db-1, written together by root: web-2 reads its own and opens; db-1, holding
        // web-1's certificate, may not read db-1's directory, so it opens nothing and says why.
        try etcd.etcdctl(["put", grants + "host/web-2/mine", Self.value("192.0.2.3", id: "mine")])
        try etcd.etcdctl(["put", grants + "host/db-1/theirs", Self.value("192.0.2.3", id: "theirs")])
        #expect(try fleet.waitOpen(to: "192.0.2.3", ["web-2"]) == ["web-2"], "\(fleet.diagnostics())")
        let db1 = fleet["db-1"]
        let sync = try #require(db1.sync)
        let said = eventually(within: .seconds(15)) { sync.log.contains("permission denied reading /drawbridge/v1/grants/host/db-1/") }
        #expect(said, "db-1's sync names the refusal:\n\(sync.logTail)")
        #expect(sync.log.contains("(user web-1)"), "\(sync.logTail)")
        usleep(2_000_000)  // time enough for a sync that could read the key to have applied it (web-2 did)
        #expect(try fleet.open(to: "192.0.2.3") == ["web-2"], "db-1 stays closed\n\(fleet.diagnostics())")
        #expect(try db1.agent.cli(["list"]).output.contains("etcd:") == false, "db-1 enforces nothing from etcd")
        #expect(try fleet.statusValue("db-1") == nil, "web-1's certificate cannot write db-1's status either")
        let dbStatus = try db1.agent.cli(["status"]).output
        #expect(!dbStatus.contains("etcd: connected"), "db-1's status does not claim a connection:\n\(dbStatus)")
    }
}
