import DrawbridgeCore
import EtcdSync
import Foundation
import TestSupport
import Testing

/// `drawbridge-etcd grant`, `revoke`, `list` and `status` (and `drawbridge` handing them over) against a real etcd
/// with authentication: a writer for group web only, and host web-1's sync reporting through its status key.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct RequesterTests {
    /// A listing with its remaining times ("in 59m58s") and the padding after them blanked: two listings taken
    /// seconds apart say the same.
    static func withoutTimes(_ listing: String) -> String {
        listing.replacing(/in [0-9hms]+ +/, with: "in … ").replacing(/EXPIRES +/, with: "EXPIRES ")
    }

    @Test("grant, list, status and revoke as a writer limited to group web; group db is refused by etcd")
    func requesterWithRBAC() throws {
        let etcd = try EtcdServer()
        let web = EtcdLayout.groupDirectory(prefix: "/drawbridge", group: "web")
        let status = EtcdLayout.statusDirectory(prefix: "/drawbridge")
        try etcd.enableAuthentication(
            roles: [
                .init(name: "writer-web", permissions: [("readwrite", web), ("read", status)]),
                .init(
                    name: "host-web-1",
                    permissions: [
                        ("read", EtcdLayout.hostDirectory(prefix: "/drawbridge", host: "web-1")), ("read", web),
                        ("readwrite", status + "web-1"),
                    ]),
            ],
            users: [
                .init(name: "alice", password: "alice-password", roles: ["writer-web"]),
                .init(name: "web-1", password: "web-1-password", roles: ["host-web-1"]),
            ])
        let alicePassword = etcd.directory + "/alice.password"
        let hostPassword = etcd.directory + "/web-1.password"
        try "alice-password\n".write(toFile: alicePassword, atomically: true, encoding: .utf8)
        try "web-1-password\n".write(toFile: hostPassword, atomically: true, encoding: .utf8)
        // A password file every user can read is refused before anything is sent, with the fix in the message.
        #expect(chmod(alicePassword, 0o644) == 0)
        let open = try run(
            [SyncProcess.executable, "list", "--group", "web", "--etcd", etcd.endpoint, "--user", "alice", "--password-file", alicePassword],
            in: etcd.namespace, check: false)
        #expect(open.status == 65, "\(open.output) \(open.error)")
        #expect(open.error.contains("every user of this host can read it (mode 644)"), "\(open.error)")
        #expect(open.error.contains("chmod o-r \(alicePassword)"), "\(open.error)")
        for file in [alicePassword, hostPassword] { #expect(chmod(file, 0o640) == 0) }
        let fixture = try SyncTests.Fixture(
            etcd: etcd, etcdSection: "  user: web-1\n  password_file: \(hostPassword)\n")
        try fixture.startSync()
        #expect(fixture.agent.waitForUpdates { !$0.isEmpty }, "\(fixture.diagnostics)")
        #expect((try? eventuallyThrowing { try fixture.status() != nil }) == true, "\(fixture.diagnostics)")

        let alice = ["--etcd", etcd.endpoint, "--user", "alice", "--password-file", alicePassword]
        func cli(_ arguments: [String], program: String = SyncProcess.executable) throws -> CommandResult {
            try run([program] + arguments + alice, in: etcd.namespace, check: false)
        }

        // Applied by web-1.
        let granted = try cli(["grant", "ssh", "--from", "203.0.113.7", "--for", "1h", "--group", "web", "--reason", "deploy", "--wait", "15"])
        #expect(granted.status == 0, "\(granted.error)\n\(fixture.diagnostics)")
        let id = try #require(granted.output.firstMatch(of: /granted (g-[a-z0-9]{10}) for group web/)?.1)
        #expect(granted.output.contains("key /drawbridge/v1/grants/group/web/\(id)"))
        #expect(granted.output.contains("web-1: applied"), "\(granted.output)")
        let value = try #require(fixture.agent.currentState[web + id])
        #expect(value.contains("\"requested_by\":"))
        #expect(value.contains("\"reason\":\"deploy\""))

        // Refused by web-1's policy (the fake agent refuses telnet, as a policy would that does not manage it).
        let refused = try cli(["grant", "telnet", "--from", "198.51.100.0/24", "--for", "30m", "--group", "web", "--id", "refused-1", "--wait", "15"])
        #expect(refused.status == 77)
        #expect(refused.output.contains("web-1: refused: \(FakeAgent.refusal)"), "\(refused.output)")

        // etcd refuses a group alice may not write, and says who and what.
        let denied = try cli(["grant", "ssh", "--from", "203.0.113.7", "--for", "1h", "--group", "db"])
        #expect(denied.status == 77)
        #expect(denied.error.contains("permission denied writing /drawbridge/v1/grants/group/db/"), "\(denied.error)")
        #expect(denied.error.contains("(user alice)"))

        // Checked before anything is written.
        let badSource = try cli(["grant", "ssh", "--from", "203.0.113.7/24", "--for", "1h", "--group", "web"])
        #expect(badSource.status == 64)
        #expect(badSource.error.contains("--from"))
        let badDuration = try cli(["grant", "ssh", "--from", "203.0.113.7", "--for", "90", "--group", "web"])
        #expect(badDuration.status == 64)
        #expect(badDuration.error.contains("is not a duration"))

        let listed = try cli(["list", "--group", "web"])
        #expect(listed.status == 0, "\(listed.error)")
        #expect(listed.output.contains(id))
        #expect(listed.output.contains("web-1 applied"))
        #expect(listed.output.contains("refused: refused-1 at web-1: \(FakeAgent.refusal)"), "\(listed.output)")
        let json = try cli(["list", "--group", "web", "--json"])
        let entries = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as! [[String: Any]]
        #expect(Set(entries.map { $0["id"] as! String }) == [String(id), "refused-1"])
        #expect(entries.allSatisfy { ($0["hosts"] as! [[String: Any]]).first?["host"] as? String == "web-1" })

        let statusOutput = try cli(["status"])
        #expect(statusOutput.status == 0)
        #expect(statusOutput.output.contains("web-1"))
        #expect(statusOutput.output.contains("ok"))

        // The same through `drawbridge`, which hands fleet commands to drawbridge-etcd.
        let handedOver = try cli(["list", "--group", "web"], program: BuiltProducts.cli)
        #expect(handedOver.status == 0, "\(handedOver.error)")
        #expect(Self.withoutTimes(handedOver.output) == Self.withoutTimes(listed.output))

        // A client configuration instead of options, from the environment.
        let configuration = etcd.directory + "/client.yaml"
        try "etcd:\n  endpoints: [\"\(etcd.endpoint)\"]\n  user: alice\n  password_file: \(alicePassword)\n"
            .write(toFile: configuration, atomically: true, encoding: .utf8)
        let fromFile = try run(
            ["env", "DRAWBRIDGE_ETCD_CONFIG=\(configuration)", SyncProcess.executable, "list", "--group", "web"],
            in: etcd.namespace, check: false)
        #expect(fromFile.status == 0, "\(fromFile.error)")
        #expect(Self.withoutTimes(fromFile.output) == Self.withoutTimes(listed.output))

        let revoked = try cli(["revoke", String(id), "--group", "web"])
        #expect(revoked.status == 0, "\(revoked.error)")
        #expect(revoked.output.contains("revoked \(id) for group web"))
        #expect(fixture.agent.waitFor { fixture.agent.currentState[web + id] == nil }, "the sync passed the deletion on")
        let again = try cli(["revoke", String(id), "--group", "web"])
        #expect(again.status == 2)
        #expect(again.error.contains("does not exist"))
    }

}

/// `drawbridge` alone: no etcd, no root needed.
struct FleetHandOverTests {
    @Test("drawbridge without drawbridge-etcd beside it says which package fleet commands need")
    func missingHelper() throws {
        let directory = NSTemporaryDirectory() + "drawbridge-alone-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.copyItem(atPath: BuiltProducts.cli, toPath: directory + "/drawbridge")
        let result = try run([directory + "/drawbridge", "revoke", "g-1", "--host", "web-1"], check: false)
        if FileManager.default.fileExists(atPath: "/usr/bin/drawbridge-etcd") {
            // The installed one runs instead, and finds no etcd to talk to.
            #expect(result.error.contains("drawbridge-etcd: no etcd endpoint"))
        } else {
            #expect(result.status == 69)
            #expect(result.error.contains("fleet commands need drawbridge-etcd (package drawbridge-etcd)"))
        }
        let local = try run([directory + "/drawbridge", "list", "--socket", directory + "/none.sock"], check: false)
        #expect(local.status == 69, "without a fleet option the command stays local")
    }
}
