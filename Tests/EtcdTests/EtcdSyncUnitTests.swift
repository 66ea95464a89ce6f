import DrawbridgeCore
import Etcd
import Foundation
import Testing

@testable import EtcdSync

/// A generator that repeats one value: the jitter's extremes on demand.
struct FixedGenerator: RandomNumberGenerator {
    var value: UInt64
    mutating func next() -> UInt64 { value }
}

@Suite struct BackoffTests {
    @Test("without jitter each failure doubles the wait, up to the maximum; a reset starts over")
    func doubling() {
        var backoff = Backoff(initial: .milliseconds(500), maximum: .seconds(30), multiplier: 2, jitter: 0)
        var generator = FixedGenerator(value: 0)
        let waits = (0..<9).map { _ in backoff.next(using: &generator) }
        #expect(
            waits == [
                .milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(30),
                .seconds(30), .seconds(30),
            ])
        #expect(backoff.failures == 9)
        backoff.reset()
        #expect(backoff.next(using: &generator) == .milliseconds(500))
    }

    @Test("jitter spreads each wait within its fraction either way and never past the maximum")
    func jitter() {
        var low = FixedGenerator(value: 0)
        var high = FixedGenerator(value: .max)
        var backoff = Backoff(initial: .seconds(1), maximum: .seconds(30), multiplier: 2, jitter: 0.2)
        #expect(backoff.next(using: &low) == .milliseconds(800))
        #expect(backoff.next(using: &high) == .milliseconds(2400))
        for _ in 0..<10 { _ = backoff.next(using: &high) }
        #expect(backoff.next(using: &high) == .seconds(30), "capped")
        var system = SystemRandomNumberGenerator()
        var random = Backoff(initial: .seconds(4), maximum: .seconds(30), multiplier: 2, jitter: 0.25)
        for _ in 0..<200 {
            random.reset()
            let wait = random.next(using: &system)
            #expect(wait >= .seconds(3) && wait <= .seconds(5))
        }
        var many = Backoff()
        for _ in 0..<1000 { _ = many.next() }
        #expect(many.next() <= .seconds(30), "a thousand failures neither overflow nor pass the cap")
    }
}

@Suite struct SyncRequestTests {
    @Test(
        "a value passes as text, or as a problem when it is not UTF-8 or too large",
        arguments: [
            ([UInt8]("{\"source\":\"203.0.113.7\"}".utf8), SyncChange.put(key: "k", value: "{\"source\":\"203.0.113.7\"}")),
            ([0x7b, 0xe9, 0x7d], .unusable(key: "k", problem: "the value is not UTF-8 text")),
            ([0xc3], .unusable(key: "k", problem: "the value is not UTF-8 text")),
            (
                [UInt8](repeating: 0x20, count: 16 * 1024 + 1),
                .unusable(key: "k", problem: "the value is 16385 bytes; at most 16384 are accepted")
            ),
            ([UInt8](repeating: 0x20, count: 16 * 1024), .put(key: "k", value: String(repeating: " ", count: 16 * 1024))),
            ([UInt8]("é, and a NUL: \u{0}".utf8), .put(key: "k", value: "é, and a NUL: \u{0}")),
        ])
    func values(bytes: [UInt8], change: SyncChange) {
        #expect(SyncChange.written(key: "k", value: bytes) == change)
    }

    @Test("events become puts and deletes")
    func events() {
        let put = EtcdEvent(
            kind: .put, keyValue: EtcdKeyValue(key: "/a", value: Array("v".utf8), createRevision: 3, modRevision: 4, version: 2))
        let delete = EtcdEvent(
            kind: .delete, keyValue: EtcdKeyValue(key: "/a", value: [], createRevision: 0, modRevision: 5, version: 0))
        #expect(SyncChange(put) == .put(key: "/a", value: "v"))
        #expect(SyncChange(delete) == .delete(key: "/a"))
    }

    @Test("what the sync sends is exactly what the agent's decoder reads")
    func agentReadsTheRequests() throws {
        let request = SyncRequest(
            revision: 42, complete: false,
            changes: [
                .put(key: "/drawbridge/v1/grants/group/web/g-1", value: "{\"source\":\"203.0.113.7\",\"reason\":\"a/b é\"}"),
                .delete(key: "/drawbridge/v1/grants/host/web-1/g-2"),
                .unusable(key: "/drawbridge/v1/grants/host/web-1/g-3", problem: "the value is not UTF-8 text"),
            ])
        let decoded = LocalAPI.decode(Array(try LocalAPI.encoder().encode(request)))
        #expect(
            decoded
                == .success(
                    .etcdSync(
                        EtcdUpdate(
                            revision: 42, complete: false,
                            changes: [
                                .put(
                                    key: "/drawbridge/v1/grants/group/web/g-1",
                                    value: Array("{\"source\":\"203.0.113.7\",\"reason\":\"a/b é\"}".utf8)),
                                .delete(key: "/drawbridge/v1/grants/host/web-1/g-2"),
                                .unusable(
                                    key: "/drawbridge/v1/grants/host/web-1/g-3", problem: "the value is not UTF-8 text"),
                            ]))))
        let empty = SyncRequest(revision: 7, complete: true, changes: [])
        #expect(
            LocalAPI.decode(Array(try LocalAPI.encoder().encode(empty)))
                == .success(.etcdSync(EtcdUpdate(revision: 7, complete: true, changes: []))))
    }

    @Test("connection reports fit what the agent accepts: control characters escaped, long errors cut")
    func connectionReports() throws {
        let long = String(repeating: "é", count: 1000)
        let report = ConnectionReport(
            connected: false, endpoint: "https://192.0.2.10:2379", revision: 9, error: "line one\nline two " + long)
        #expect(report.error!.hasPrefix("line one\\u{a}line two"))
        #expect(report.error!.utf8.count <= 1024)
        let decoded = LocalAPI.decode(Array(try LocalAPI.encoder().encode(report)))
        #expect(
            decoded
                == .success(
                    .etcdConnection(
                        EtcdConnectionReport(
                            connected: false, endpoint: "https://192.0.2.10:2379", revision: 9, error: report.error))))
        let up = ConnectionReport(connected: true)
        #expect(
            LocalAPI.decode(Array(try LocalAPI.encoder().encode(up)))
                == .success(.etcdConnection(EtcdConnectionReport(connected: true))))
    }

    @Test("a key the agent would refuse whole is recognised before it is sent")
    func keyProblems() {
        #expect(SyncChange.keyProblem("/drawbridge/v1/grants/host/web-1/g-1") == nil)
        #expect(SyncChange.keyProblem("/drawbridge/v1/grants/host/web-1/g\n1") != nil)
        #expect(SyncChange.keyProblem("/drawbridge/v1/grants/host/web-1/\u{202e}1g") != nil)
        #expect(SyncChange.keyProblem("/" + String(repeating: "k", count: 1024)) != nil)
    }
}

@Suite struct HostStatusTests {
    static func report(_ revision: Int64, _ results: [(String, LocalAPI.EtcdResult.State, String?)])
        -> LocalAPI.EtcdReport
    {
        LocalAPI.EtcdReport(
            revision: revision,
            results: results.map { key, state, detail in
                LocalAPI.EtcdResult(key: key, state: state, id: state == .refused ? nil : "e-" + key, detail: detail)
            })
    }

    @Test("the agent's verdicts add up; a complete snapshot's answer replaces them")
    func outcomes() {
        var outcomes = AgentOutcomes()
        outcomes.record(Self.report(10, [("a", .applied, nil), ("b", .refused, "port telnet is not managed")]), complete: true)
        outcomes.record(
            Self.report(11, [("c", .unchanged, nil), ("a", .removed, nil), ("d", .revoked, "by alice")]), complete: false)
        #expect(
            outcomes.byKey == [
                "b": .refused(reason: "port telnet is not managed"), "c": .applied(id: "e-c"),
                "d": .refused(reason: "revoked on this host by root; stays revoked until the key is deleted (by alice)"),
            ])
        #expect(outcomes.appliedRevision == 11)
        outcomes.refuseLocally(key: "bad\u{1b}key", reason: "not passed to the agent")
        #expect(outcomes.byKey["bad\\u{1b}key"] == .refused(reason: "not passed to the agent"))
        outcomes.forgetLocally(key: "bad\u{1b}key")
        #expect(outcomes.byKey["bad\\u{1b}key"] == nil)
        outcomes.record(Self.report(12, [("e", .applied, nil)]), complete: true)
        #expect(outcomes.byKey == ["e": .applied(id: "e-e")])
    }

    @Test("the status document: sorted lists, the agent's state, and a round trip through its JSON")
    func document() throws {
        var outcomes = AgentOutcomes()
        outcomes.record(
            Self.report(5, [("/k/z", .applied, nil), ("/k/a", .applied, nil), ("/k/m", .refused, "no")]), complete: true)
        let now = Date(timeIntervalSince1970: 1_800_000_000.25)
        let status = outcomes.status(host: "web-1", groups: ["web", "eu"], agent: "ok", now: now)
        #expect(status.grants.map(\.key) == ["/k/a", "/k/z"])
        #expect(status.refused == [HostStatus.Refusal(key: "/k/m", reason: "no")])
        #expect(status.truncated == nil)
        let text = String(decoding: status.encoded(), as: UTF8.self)
        #expect(
            text
                == "{\"agent\":\"ok\",\"applied_revision\":5,\"grants\":[{\"id\":\"e-/k/a\",\"key\":\"/k/a\"},"
                + "{\"id\":\"e-/k/z\",\"key\":\"/k/z\"}],\"groups\":[\"web\",\"eu\"],\"host\":\"web-1\","
                + "\"refused\":[{\"key\":\"/k/m\",\"reason\":\"no\"}],\"updated_at\":\"2027-01-15T08:00:00.250Z\"}")
        #expect(HostStatus.decode(status.encoded()) == status)
        #expect(HostStatus.decode(Array("not json".utf8)) == nil)
        #expect(status.outcome(of: "/k/a") == .applied(id: "e-/k/a"))
        #expect(status.outcome(of: "/k/m") == .refused(reason: "no"))
        #expect(status.outcome(of: "/k/q") == nil)
    }

    @Test("a status never grows past what one etcd request carries")
    func truncation() {
        var outcomes = AgentOutcomes()
        let keys = (0..<(HostStatus.maximumEntries + 10)).map { "/drawbridge/v1/grants/group/web/g-\($0)" }
        outcomes.record(Self.report(1, keys.map { ($0, .applied, nil) }), complete: true)
        let status = outcomes.status(host: "h", groups: [], agent: "ok", now: Date())
        #expect(status.grants.count == HostStatus.maximumEntries)
        #expect(status.truncated == true)
        #expect(status.encoded().count < 1_500_000)
    }

    static func status(_ host: String, groups: [String], revision: Int64?, grants: [String] = [], refused: [String] = [])
        -> HostStatus
    {
        HostStatus(
            host: host, groups: groups, appliedRevision: revision, updatedAt: Date(), agent: "ok",
            grants: grants.map { .init(key: $0, id: nil) }, refused: refused.map { .init(key: $0, reason: "no") })
    }

    @Test("which hosts a grant concerns and what each says about it")
    func hostOutcomes() {
        let statuses = [
            Self.status("web-1", groups: ["web"], revision: 9, grants: ["/k"]),
            Self.status("web-2", groups: ["web"], revision: 9, refused: ["/k"]),
            Self.status("web-3", groups: ["web"], revision: 4),
            Self.status("web-4", groups: ["web"], revision: 12),
            Self.status("db-1", groups: ["db"], revision: 12, grants: ["/k"]),
        ]
        let group = HostOutcome.outcomes(of: "/k", target: .group("web"), revision: 10, statuses: statuses)
        #expect(group.map(\.host) == ["web-1", "web-2", "web-3", "web-4"])
        #expect(group.map(\.state) == [.applied, .refused(reason: "no"), .pending, .absent(revision: 12)])
        #expect(group.map(\.isSettled) == [true, true, false, true])
        #expect(group.map(\.text)[1] == "refused: no")
        let missing = HostOutcome.outcomes(of: "/k", target: .host("web-9"), revision: 10, statuses: statuses)
        #expect(missing == [HostOutcome(host: "web-9", state: .pending)])
        #expect(missing[0].text == "no report yet")
        #expect(HostOutcome.outcomes(of: "/k", target: .group("none"), revision: 1, statuses: statuses).isEmpty)
    }
}

@Suite struct FleetGrantTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000.4)

    static func make(
        ports: [String] = ["ssh"], source: String = "203.0.113.7", duration: String = "2h", reason: String = "hotfix",
        id: String? = "g-test", requestedBy: String = "alice", target: FleetTarget = .group("web")
    ) throws(FleetProblem) -> FleetGrant {
        try FleetGrant.make(
            ports: ports, source: source, duration: duration, reason: reason, id: id, requestedBy: requestedBy,
            target: target, now: now)
    }

    @Test("the value is what every host reads, and passes a host policy that allows it")
    func value() throws {
        let grant = try Self.make(ports: ["ssh", "5432/tcp"])
        #expect(grant.key(prefix: "/drawbridge") == "/drawbridge/v1/grants/group/web/g-test")
        #expect(grant.expiresAt == Date(timeIntervalSince1970: 1_800_007_201), "whole seconds, rounded up")
        #expect(
            String(decoding: grant.value(), as: UTF8.self)
                == "{\"expires_at\":\"2027-01-15T10:00:01Z\",\"id\":\"g-test\",\"ports\":[\"ssh\",\"5432/tcp\"],"
                + "\"reason\":\"hotfix\",\"requested_by\":\"alice\",\"source\":\"203.0.113.7\"}")
        #expect(grant.leaseTTL(now: Self.now) == .seconds(7201 + 300))

        let policy = try Policy.parse(
            """
            ports:
              ssh: { port: 22, protocol: tcp, max_duration: 3h, allowed_sources: ["0.0.0.0/0"] }
              postgres: { port: 5432, protocol: tcp, max_duration: 3h, allowed_sources: ["203.0.113.0/24"] }
            """, file: "policy.yaml")
        let instants = Instants(wall: Self.now, monotonic: MonotonicInstant(nanoseconds: 1_000_000_000))
        let directory = EtcdLayout.groupDirectory(prefix: "/drawbridge", group: "web")
        let checked = EtcdGrantValue.grant(
            key: directory + "g-test", directory: directory, id: "g-test", value: grant.value(), policy: policy,
            now: instants)
        let accepted = try checked.get()
        #expect(accepted.ports.map(\.name) == ["ssh", "postgres"])
        #expect(accepted.requestedBy == "alice")
        #expect(accepted.expiresAt == grant.expiresAt)
    }

    @Test("a random id when none is given")
    func randomIdentifier() throws {
        let first = try Self.make(id: nil)
        let second = try Self.make(id: nil)
        #expect(first.id.hasPrefix("g-") && first.id.count == 12)
        #expect(first.id != second.id)
    }

    @Test(
        "what the command line checks before anything is written",
        arguments: [
            (["ssh"], "203.0.113.7/24", "2h", "", "g-1", "--from"),
            (["ssh"], "not an address", "2h", "", "g-1", "--from"),
            (["ssh"], "203.0.113.7", "90", "", "g-1", "is not a duration"),
            (["ssh"], "203.0.113.7", "0s", "", "g-1", "is not a duration"),
            (["SSH"], "203.0.113.7", "2h", "", "g-1", "is not a port"),
            (["22/sctp"], "203.0.113.7", "2h", "", "g-1", "is not a port"),
            (["0"], "203.0.113.7", "2h", "", "g-1", "is not a port"),
            ([], "203.0.113.7", "2h", "", "g-1", "at least one port"),
            (Array(repeating: "ssh", count: 17), "203.0.113.7", "2h", "", "g-1", "at most 16 ports"),
            (["ssh"], "203.0.113.7", "2h", "two\nlines", "g-1", "--reason contains the control"),
            (["ssh"], "203.0.113.7", "2h", "", "../etc", "--id"),
            (["ssh"], "203.0.113.7", "2h", "", "g/1", "--id"),
        ] as [([String], String, String, String, String, String)])
    func refusals(ports: [String], source: String, duration: String, reason: String, id: String, words: String) {
        let problem = #expect(throws: FleetProblem.self) {
            try Self.make(ports: ports, source: source, duration: duration, reason: reason, id: id)
        }
        #expect(problem?.message.contains(words) == true, "\(problem?.message ?? "")")
    }

    @Test("targets: one of --host or --group, a safe name, and the keys they own")
    func targets() throws {
        #expect(try FleetTarget.make(host: "web-1", group: nil) == .host("web-1"))
        #expect(try FleetTarget.make(host: nil, group: "web") == .group("web"))
        #expect(throws: FleetProblem.self) { try FleetTarget.make(host: nil, group: nil) }
        #expect(throws: FleetProblem.self) { try FleetTarget.make(host: "a", group: "b") }
        #expect(throws: FleetProblem.self) { try FleetTarget.make(host: "../web", group: nil) }
        #expect(FleetTarget.parse(key: "/drawbridge/v1/grants/group/web/g-1", prefix: "/drawbridge")! == (.group("web"), "g-1"))
        #expect(FleetTarget.parse(key: "/drawbridge/v1/grants/host/web-1/x", prefix: "/drawbridge")! == (.host("web-1"), "x"))
        #expect(FleetTarget.parse(key: "/drawbridge/v1/grants/other/web/x", prefix: "/drawbridge") == nil)
        #expect(FleetTarget.parse(key: "/drawbridge/v1/grants/group/web/x/y", prefix: "/drawbridge") == nil)
        #expect(FleetTarget.parse(key: "/other/v1/grants/group/web/x", prefix: "/drawbridge") == nil)
    }
}

@Suite struct ClientSettingsTests {
    static let file = EtcdSettings(
        endpoints: ["https://192.0.2.10:2379"], prefix: "/fleet",
        tls: .init(ca: "/etc/ca.pem", cert: "/etc/me.pem", key: "/etc/me.key"))

    @Test("the file alone, and options over it")
    func merging() throws {
        let plain = try ClientSettings.merge(file: Self.file, options: ClientOptions())
        #expect(plain.endpoints == ["https://192.0.2.10:2379"])
        #expect(plain.prefix == "/fleet")
        #expect(plain.certificate == "/etc/me.pem")

        let options = ClientOptions(
            endpoints: ["https://192.0.2.11:2379", "https://192.0.2.12:2379"], certificateAuthority: "/tmp/ca.pem",
            prefix: "/other")
        let merged = try ClientSettings.merge(file: Self.file, options: options)
        #expect(merged.endpoints == ["https://192.0.2.11:2379", "https://192.0.2.12:2379"])
        #expect(merged.certificateAuthority == "/tmp/ca.pem")
        #expect(merged.prefix == "/other")
        #expect(merged.key == "/etc/me.key", "what the options do not name stays from the file")

        // A password identity on the command line replaces the file's certificate, not its CA.
        let password = try ClientSettings.merge(
            file: Self.file, options: ClientOptions(user: "alice", passwordFile: "/home/alice/.etcd-password"))
        #expect(password.user == "alice")
        #expect(password.certificate == nil && password.key == nil)
        #expect(password.certificateAuthority == "/etc/ca.pem")

        // And a certificate replaces a password user from the file.
        let passwordFile = EtcdSettings(endpoints: ["http://192.0.2.10:2379"], user: "bob", passwordFile: "/p")
        let certificate = try ClientSettings.merge(
            file: passwordFile,
            options: ClientOptions(endpoints: ["https://192.0.2.10:2379"], certificate: "/c.pem", key: "/c.key"))
        #expect(certificate.user == nil && certificate.passwordFile == nil)
        #expect(certificate.certificate == "/c.pem")

        let noFile = try ClientSettings.merge(file: nil, options: ClientOptions(endpoints: ["http://192.0.2.10:2379"]))
        #expect(noFile.prefix == "/drawbridge")
    }

    @Test(
        "settings that cannot work are refused with what to change",
        arguments: [
            (ClientOptions(), "no etcd endpoint"),
            (ClientOptions(endpoints: ["192.0.2.10:2379"]), "--etcd"),
            (ClientOptions(endpoints: ["http://192.0.2.10:2379"], prefix: "drawbridge"), "--prefix"),
            (ClientOptions(endpoints: ["https://192.0.2.10:2379"], certificate: "/c.pem"), "both --cert and --key"),
            (ClientOptions(endpoints: ["https://192.0.2.10:2379"], user: "alice"), "both --user and --password-file"),
            (
                ClientOptions(endpoints: ["https://192.0.2.10:2379"], certificate: "/c", key: "/k", user: "a", passwordFile: "/p"),
                "either --cert and --key or --user"
            ),
            (ClientOptions(endpoints: ["http://192.0.2.10:2379"], certificateAuthority: "/ca.pem"), "plain http://"),
            (ClientOptions(endpoints: ["http://192.0.2.10:2379"], user: "a b", passwordFile: "/p"), "--user"),
        ])
    func refusals(options: ClientOptions, words: String) {
        let problem = #expect(throws: FleetProblem.self) { try ClientSettings.merge(file: nil, options: options) }
        #expect(problem?.message.contains(words) == true, "\(problem?.message ?? "")")
    }

    @Test("where the client configuration is looked for")
    func candidates() {
        #expect(
            ClientConfigFile.candidates(explicit: "/x.yaml", environment: ["DRAWBRIDGE_ETCD_CONFIG": "/y"], home: "/h")
                .map(\.path) == ["/x.yaml"])
        #expect(
            ClientConfigFile.candidates(explicit: nil, environment: ["DRAWBRIDGE_ETCD_CONFIG": "/y"], home: "/h")
                .map { "\($0.path) \($0.required)" } == ["/y true"])
        #expect(
            ClientConfigFile.candidates(explicit: nil, environment: [:], home: "/home/alice").map { "\($0.path) \($0.required)" }
                == ["/home/alice/.config/drawbridge/etcd.yaml false", "/etc/drawbridge/etcd-client.yaml false"])
        #expect(ClientConfigFile.candidates(explicit: nil, environment: [:], home: nil).count == 1)
    }

    @Test("a password file's first line is the password")
    func passwords() throws {
        #expect(try ClientSettings.password(fromFile: Array("s3cret\n".utf8), path: "/p") == "s3cret")
        #expect(try ClientSettings.password(fromFile: Array("s3cret\r\nignored\n".utf8), path: "/p") == "s3cret")
        #expect(try ClientSettings.password(fromFile: Array("with spaces ".utf8), path: "/p") == "with spaces ")
        #expect(throws: FleetProblem.self) { try ClientSettings.password(fromFile: Array("\n".utf8), path: "/p") }
        #expect(throws: FleetProblem.self) { try ClientSettings.password(fromFile: [0xff], path: "/p") }
    }

    @Test("a policy's settings become a client configuration")
    func configuration() throws {
        let settings = ClientSettings(
            policy: EtcdSettings(endpoints: ["http://192.0.2.10:2379"], user: "web-1", passwordFile: "/p"))
        let configuration = try settings.configuration(password: "pw")
        #expect(configuration.endpoints.map(\.url) == ["http://192.0.2.10:2379"])
        #expect(configuration.credentials == .init(user: "web-1", password: "pw"))
        #expect(configuration.tls == nil)
    }
}
