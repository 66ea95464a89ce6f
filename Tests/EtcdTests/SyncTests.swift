import DrawbridgeCore
import EtcdSync
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `drawbridge-etcd sync` against a real etcd 3.4 in a namespace, handing its updates to a fake agent socket in the
/// test process: what the agent is sent, in which order, and what the host's status key says.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct SyncTests {
    static let host = "/drawbridge/v1/grants/host/web-1/"
    static let group = "/drawbridge/v1/grants/group/web/"
    static let otherGroup = "/drawbridge/v1/grants/group/db/"
    static let otherHost = "/drawbridge/v1/grants/host/web-2/"
    static let statusKey = "/drawbridge/v1/status/web-1"

    /// A grant value as a requester writes it (the fake agent does not parse it; the real one would).
    static func value(_ id: String, ports: [String] = ["ssh"]) -> String {
        let list = ports.map { "\"\($0)\"" }.joined(separator: ",")
        return "{\"id\":\"\(id)\",\"source\":\"203.0.113.7\",\"ports\":[\(list)],\"expires_at\":\"2099-01-01T00:00:00Z\"}"
    }

    /// An etcd, a fake agent, a policy for host web-1 in group web, and (once `startSync` ran) the sync.
    final class Fixture: @unchecked Sendable {
        let etcd: EtcdServer
        let agent: FakeAgent
        let policyPath: String
        var sync: SyncProcess?

        init(etcd: EtcdServer? = nil, etcdSection extra: String = "") throws {
            let etcd = try etcd ?? EtcdServer()
            self.etcd = etcd
            agent = try FakeAgent(path: etcd.directory + "/agent.sock")
            policyPath = etcd.directory + "/policy.yaml"
            let policy = """
                ports:
                  ssh: { port: 22, protocol: tcp, max_duration: 3h, allowed_sources: ["0.0.0.0/0", "::/0"] }
                etcd:
                  endpoints: ["\(etcd.endpoint)"]
                  host: web-1
                  groups: [web]
                \(extra)
                """
            try policy.write(toFile: policyPath, atomically: true, encoding: .utf8)
        }

        @discardableResult
        func startSync(_ arguments: [String] = []) throws -> SyncProcess {
            let sync = try SyncProcess(etcd: etcd, policy: policyPath, socket: agent.path, arguments: arguments)
            self.sync = sync
            return sync
        }

        /// etcd's newest revision.
        func revision() throws -> Int64 {
            let output = try etcd.etcdctl(["endpoint", "status", "-w", "json"]).output
            let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as! [[String: Any]]
            let header = (object[0]["Status"] as! [String: Any])["header"] as! [String: Any]
            return (header["revision"] as! NSNumber).int64Value
        }

        /// Every key and value the host follows, as etcd has them now.
        func followed() throws -> [String: String] {
            var result: [String: String] = [:]
            for directory in [SyncTests.host, SyncTests.group] {
                let output = try etcd.etcdctl(["get", "--prefix", directory, "-w", "json"]).output
                let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as! [String: Any]
                for pair in object["kvs"] as? [[String: Any]] ?? [] {
                    let key = String(decoding: Data(base64Encoded: pair["key"] as! String)!, as: UTF8.self)
                    let value = String(decoding: Data(base64Encoded: pair["value"] as? String ?? "")!, as: UTF8.self)
                    result[key] = value
                }
            }
            return result
        }

        /// The status document web-1's sync wrote, if any.
        func status() throws -> HostStatus? {
            let output = try etcd.etcdctl(["get", SyncTests.statusKey, "--print-value-only"]).output
            let text = output.trimmingCharacters(in: .whitespacesAndNewlines)
            return text.isEmpty ? nil : HostStatus.decode(Array(text.utf8))
        }

        var diagnostics: String { "sync log:\n\(sync?.logTail ?? "not started")\nagent problems: \(agent.decodeProblems)" }
    }

    /// The keys of an update, in order, with what each change is.
    static func describe(_ update: EtcdUpdate) -> [String] {
        update.changes.map { change in
            switch change {
            case .put(let key, let value): "put \(key)=\(String(decoding: value, as: UTF8.self))"
            case .delete(let key): "delete \(key)"
            case .unusable(let key, let problem): "unusable \(key): \(problem)"
            }
        }
    }

    @Test("the first update is a complete snapshot of the host's and its groups' directories at one revision")
    func initialSnapshot() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try etcd.etcdctl(["put", Self.host + "g-1", Self.value("g-1")])
        try etcd.etcdctl(["put", Self.group + "g-2", Self.value("g-2")])
        try etcd.etcdctl(["put", Self.otherGroup + "g-3", Self.value("g-3")])
        try etcd.etcdctl(["put", Self.otherHost + "g-4", Self.value("g-4")])
        let revision = try fixture.revision()
        try fixture.startSync()

        #expect(fixture.agent.waitForUpdates { !$0.isEmpty }, "\(fixture.diagnostics)")
        let first = try #require(fixture.agent.updates.first)
        #expect(first.complete)
        #expect(first.revision == revision)
        #expect(
            Self.describe(first) == [
                "put \(Self.host)g-1=\(Self.value("g-1"))", "put \(Self.group)g-2=\(Self.value("g-2"))",
            ])
        #expect(fixture.agent.waitFor { fixture.agent.connectionReports.contains { $0.connected } })
        let connected = try #require(fixture.agent.connectionReports.first)
        #expect(connected.endpoint == etcd.endpoint)
        #expect(connected.revision == revision)
        #expect(fixture.agent.decodeProblems.isEmpty)
    }

    @Test("watch responses arrive whole and in order: one update per response, a transaction's keys together")
    func watchOrder() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try etcd.etcdctl(["put", Self.host + "old", Self.value("old")])
        try fixture.startSync()
        #expect(fixture.agent.waitForUpdates { $0.count == 1 }, "\(fixture.diagnostics)")

        try etcd.etcdctl(["put", Self.host + "a", Self.value("a")])
        try etcd.etcdctl(["put", Self.group + "b", Self.value("b")])
        let groupRevision = try fixture.revision()
        try etcd.etcdctl(["del", Self.host + "old"])
        // One transaction: two keys in one revision, so one watch response, so one update. (etcdctl txn reads the
        // comparisons, the requests on success and those on failure, each section ended by a blank line.)
        try etcd.etcdctl(["txn"], input: "\nput \(Self.host)c c-value\nput \(Self.host)d d-value\n\n\n")
        let transaction = try fixture.revision()
        try etcd.etcdctl(["put", Self.otherGroup + "not-followed", Self.value("x")])
        let expected = try fixture.followed()
        #expect(fixture.agent.waitFor { fixture.agent.currentState == expected }, "\(fixture.diagnostics)")

        let changes = Array(fixture.agent.updates.dropFirst())
        #expect(changes.allSatisfy { !$0.complete })
        #expect(
            changes.map(Self.describe) == [
                ["put \(Self.host)a=\(Self.value("a"))"], ["put \(Self.group)b=\(Self.value("b"))"],
                ["delete \(Self.host)old"], ["put \(Self.host)c=c-value", "put \(Self.host)d=d-value"],
            ])
        // The revision an update claims is one up to which the agent has everything: etcd does not order the events
        // of different directories, so a quiet group holds it back until etcd says more about that group.
        let revisions = changes.map(\.revision)
        #expect(revisions == revisions.sorted(), "the applied revision never goes back")
        #expect(revisions.last == groupRevision, "the host directory is at \(transaction), the group at \(groupRevision)")
    }

    @Test("a compaction past the sync's resume point: everything is read again and sent as a complete snapshot")
    func compaction() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try etcd.etcdctl(["put", Self.host + "revoked-while-away", Self.value("revoked-while-away")])
        try etcd.etcdctl(["put", Self.group + "kept", Self.value("kept")])
        let sync = try fixture.startSync()
        #expect(fixture.agent.waitForUpdates { $0.count == 1 }, "\(fixture.diagnostics)")

        // The sync cannot read while etcd restarts, takes a grant and a revocation, and compacts them away.
        sync.pause()
        etcd.stop()
        try etcd.start()
        try etcd.etcdctl(["put", Self.host + "granted-while-away", Self.value("granted-while-away")])
        try etcd.etcdctl(["del", Self.host + "revoked-while-away"])
        try etcd.etcdctl(["put", Self.group + "filler", Self.value("filler")])
        try etcd.etcdctl(["compact", "\(try fixture.revision())"])
        sync.resume()

        let expected = try fixture.followed()
        #expect(fixture.agent.waitFor { fixture.agent.currentState == expected }, "\(fixture.diagnostics)")
        let later = Array(fixture.agent.updates.dropFirst())
        let snapshot = try #require(later.first, "\(fixture.diagnostics)")
        #expect(snapshot.complete, "the first update after the compaction is a complete snapshot")
        #expect(Set(snapshot.changes.map(\.key)) == Set(expected.keys))
        #expect(expected.keys.contains(Self.host + "granted-while-away"))
        #expect(!expected.keys.contains(Self.host + "revoked-while-away"))
        #expect(fixture.sync!.log.contains("compacted"))
    }

    @Test("the agent fails and comes back: etcd is read again and the agent gets a complete snapshot")
    func agentComesBack() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try etcd.etcdctl(["put", Self.host + "before", Self.value("before")])
        try fixture.startSync()
        #expect(fixture.agent.waitForUpdates { $0.count == 1 }, "\(fixture.diagnostics)")

        // First the agent answers errors, then it is not running at all.
        fixture.agent.setMode(.failing)
        try etcd.etcdctl(["put", Self.host + "refused-by-a-failing-agent", Self.value("x")])
        #expect(fixture.agent.waitForUpdates { $0.count == 2 }, "\(fixture.diagnostics)")
        fixture.agent.stop()
        fixture.agent.setMode(.answering)
        try etcd.etcdctl(["put", Self.group + "while-down", Self.value("while-down")])
        try etcd.etcdctl(["del", Self.host + "before"])
        #expect(
            (try? eventuallyThrowing { try fixture.status()?.agent.contains("not running") == true }) == true,
            "the status says why the agent does not take updates: \(String(describing: try? fixture.status()))")
        let seen = fixture.agent.updates.count

        try fixture.agent.start()
        let expected = try fixture.followed()
        #expect(fixture.agent.waitFor { fixture.agent.currentState == expected }, "\(fixture.diagnostics)")
        let resent = try #require(fixture.agent.updates.dropFirst(seen).first)
        #expect(resent.complete)
        #expect(Set(resent.changes.map(\.key)) == Set(expected.keys))
        #expect(!expected.keys.contains(Self.host + "before"))
        #expect((try? eventuallyThrowing { try fixture.status()?.agent == "ok" }) == true)
    }

    @Test("etcd restarted mid-watch: the sync resumes where it stopped and the agent misses nothing")
    func etcdRestart() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try fixture.startSync()
        #expect(fixture.agent.waitForUpdates { $0.count == 1 }, "\(fixture.diagnostics)")
        try etcd.etcdctl(["put", Self.host + "1", Self.value("1")])
        #expect(fixture.agent.waitForUpdates { $0.count == 2 }, "\(fixture.diagnostics)")

        etcd.stop()
        #expect(fixture.agent.waitFor { fixture.agent.connectionReports.contains { !$0.connected } })
        try etcd.start()
        for index in 2...6 { try etcd.etcdctl(["put", Self.group + "\(index)", Self.value("\(index)")]) }
        try etcd.etcdctl(["del", Self.host + "1"])
        let expected = try fixture.followed()
        #expect(fixture.agent.waitFor(timeout: 40) { fixture.agent.currentState == expected }, "\(fixture.diagnostics)")
        #expect(fixture.agent.updates.filter(\.complete).count == 1, "resumed from its revision, not read again")
        let disconnected = try #require(fixture.agent.connectionReports.first { !$0.connected })
        #expect(disconnected.error?.contains("192.0.2.10:2379") == true)
    }

    @Test("values the agent could not read are passed as problems; a key the agent would refuse whole is left out")
    func unusableValues() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try etcd.put(Self.host + "latin-1", bytes: [0x7b, 0x22, 0xe9, 0x22, 0x7d])
        try etcd.put(Self.host + "huge", bytes: Array(repeating: 0x20, count: EtcdGrantValue.maximumBytes + 1))
        try etcd.put(Self.host + "largest", bytes: Array(repeating: 0x20, count: EtcdGrantValue.maximumBytes))
        try etcd.etcdctl(["put", Self.host + "bad\u{1b}[31mkey", Self.value("x")])
        try fixture.startSync()
        #expect(fixture.agent.waitForUpdates { $0.count == 1 }, "\(fixture.diagnostics)")
        let snapshot = try #require(fixture.agent.updates.first)
        #expect(
            Self.describe(snapshot) == [
                "unusable \(Self.host)huge: the value is 16385 bytes; at most 16384 are accepted",
                "put \(Self.host)largest=\(String(repeating: " ", count: EtcdGrantValue.maximumBytes))",
                "unusable \(Self.host)latin-1: the value is not UTF-8 text",
            ])
        #expect(fixture.agent.decodeProblems.isEmpty, "the agent's decoder took every request")

        // The same through the watch.
        try etcd.put(Self.group + "binary", bytes: [0xff, 0xfe])
        #expect(fixture.agent.waitForUpdates { $0.count == 2 }, "\(fixture.diagnostics)")
        #expect(Self.describe(fixture.agent.updates[1]) == ["unusable \(Self.group)binary: the value is not UTF-8 text"])
        #expect(
            (try? eventuallyThrowing {
                try fixture.status()?.refused.contains { $0.key == Self.host + "bad\\u{1b}[31mkey" } == true
            }) == true, "the left-out key is reported in the status, escaped")
    }

    @Test("the status key: on a lease, what the agent applied and refused, and gone after SIGTERM")
    func statusKey() throws {
        let fixture = try Fixture()
        let etcd = fixture.etcd
        try etcd.etcdctl(["put", Self.host + "ok", Self.value("ok")])
        try etcd.etcdctl(["put", Self.group + "no", Self.value("no", ports: [FakeAgent.refusedMarker])])
        let sync = try fixture.startSync()

        #expect((try? eventuallyThrowing { try fixture.status()?.refused.isEmpty == false }) == true, "\(fixture.diagnostics)")
        let status = try #require(try fixture.status())
        #expect(status.host == "web-1")
        #expect(status.groups == ["web"])
        #expect(status.agent == "ok")
        #expect(status.grants == [HostStatus.Grant(key: Self.host + "ok", id: "e-test-ok")])
        #expect(status.refused == [HostStatus.Refusal(key: Self.group + "no", reason: FakeAgent.refusal)])
        #expect(status.appliedRevision == fixture.agent.updates.first?.revision)

        let output = try etcd.etcdctl(["get", Self.statusKey, "-w", "json"]).output
        let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as! [String: Any]
        let lease = try #require(((object["kvs"] as? [[String: Any]])?.first?["lease"] as? NSNumber)?.int64Value)
        #expect(lease != 0, "the status key is attached to a lease")
        let ttl = try etcd.etcdctl(["lease", "timetolive", String(UInt64(bitPattern: lease), radix: 16)]).output
        #expect(ttl.contains("granted with TTL(30s)"), "\(ttl)")

        // Changes reach the status too.
        try etcd.etcdctl(["del", Self.group + "no"])
        #expect((try? eventuallyThrowing { try fixture.status()?.refused.isEmpty == true }) == true)

        #expect(sync.terminate() == 0, "\(fixture.diagnostics)")
        #expect(try fixture.status() == nil, "SIGTERM revoked the status lease")
        #expect(fixture.agent.connectionReports.last?.connected == false)
        #expect(fixture.agent.connectionReports.last?.error == "drawbridge-etcd stopped")
    }

    @Test("a periodic complete snapshot, and a policy without an etcd section is refused clearly")
    func periodicSnapshotAndNoSection() throws {
        let fixture = try Fixture()
        try fixture.etcd.etcdctl(["put", Self.host + "1", Self.value("1")])
        try fixture.startSync(["--full-resync-seconds", "1"])
        #expect(fixture.agent.waitForUpdates(timeout: 10) { $0.filter(\.complete).count >= 3 }, "\(fixture.diagnostics)")

        let plain = fixture.etcd.directory + "/plain.yaml"
        try "ports: {}\n".write(toFile: plain, atomically: true, encoding: .utf8)
        let result = try run([SyncProcess.executable, "sync", "--config", plain], check: false)
        #expect(result.status == 78)
        #expect(result.error.contains("has no etcd: section"))
    }
}

/// Polls `condition` (which may throw: an etcdctl that failed counts as not yet) every 100 ms for up to 20 s.
func eventuallyThrowing(timeout: TimeInterval = 20, _ condition: () throws -> Bool) throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if (try? condition()) == true { return true }
        usleep(100_000)
    }
    return try condition()
}
