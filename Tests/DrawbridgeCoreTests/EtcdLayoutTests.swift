import DrawbridgeCore
import Foundation
import Testing

/// The policy's etcd section, the key layout, and how a value from etcd is judged by the host's policy.
struct EtcdPolicyTests {
    static let base = """
        ports:
          ssh: { port: 22, max_duration: 3h, allowed_sources: ["192.0.2.0/24"] }

        """

    @Test("the documented etcd section parses; defaults fill the rest")
    func parses() throws {
        let policy = try Policy.parse(
            Self.base + """
                etcd:
                  endpoints: ["https://192.0.2.1:2379", "https://[2001:db8::1]:2379"]
                  host: web-1
                  groups: [web, eu-west]
                  tls: { ca: /etc/drawbridge/etcd-ca.pem, cert: /etc/drawbridge/etcd.pem, key: /etc/drawbridge/etcd.key }

                """, file: "policy.yaml")
        let etcd = try #require(policy.etcd)
        #expect(etcd.endpoints == ["https://192.0.2.1:2379", "https://[2001:db8::1]:2379"])
        #expect(etcd.host == "web-1")
        #expect(etcd.groups == ["web", "eu-west"])
        #expect(etcd.prefix == "/drawbridge")
        #expect(etcd.syncUser == "drawbridge-etcd")
        #expect(etcd.tls == EtcdSettings.TLS(ca: "/etc/drawbridge/etcd-ca.pem", cert: "/etc/drawbridge/etcd.pem", key: "/etc/drawbridge/etcd.key"))
        let layout = etcd.layout(host: "ignored")
        #expect(
            layout.directories == [
                "/drawbridge/v1/grants/host/web-1/", "/drawbridge/v1/grants/group/web/",
                "/drawbridge/v1/grants/group/eu-west/",
            ])
        #expect(layout.statusKey == "/drawbridge/v1/status/web-1")
        #expect(EtcdSettings(endpoints: ["http://192.0.2.1:2379"]).layout(host: "db-2").host == "db-2")
    }

    @Test(
        "a bad etcd section is an error with its line, column and a reason",
        arguments: [
            ("etcd: { host: web-1 }", "3:7", "etcd has no endpoints"),
            ("etcd: { endpoints: [] }", "3:20", "non-empty list"),
            ("etcd: { endpoints: [\"192.0.2.1:2379\"] }", "3:21", "must start with https://"),
            ("etcd: { endpoints: [\"https://192.0.2.1\"] }", "3:21", "must name its port"),
            ("etcd: { endpoints: [\"https://192.0.2.1:99999\"] }", "3:21", "no valid port"),
            ("etcd: { endpoints: [\"https://192.0.2.1:2379/v3\"] }", "3:21", "no valid port"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], host: \"web/1\" }", "3:53", "not a valid etcd host name"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], groups: [web, web] }", "3:61", "lists 'web' twice"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], prefix: drawbridge }", "3:55", "must start with '/'"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], prefix: /a//b }", "3:55", "empty, '.' or '..'"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], tls: { cert: /c.pem } }", "3:52", "without a key"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], tls: { ca: ca.pem } }", "3:58", "not an absolute path"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], tls: { ca: /ca.pem } }", "3:20", "plain http://"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], user: web-1 }", "3:7", "without a password_file"),
            ("etcd: { endpoints: [\"http://192.0.2.1:2379\"], groupz: [web] }", "3:47", "did you mean groups?"),
        ])
    func refuses(section: String, position: String, message: String) {
        do {
            _ = try Policy.parse(Self.base + section + "\n", file: "p.yaml")
            Issue.record("accepted: \(section)")
        } catch {
            #expect(error.description.hasPrefix("p.yaml:\(position):"), "\(error)")
            #expect(error.description.contains(message), "\(error)")
        }
    }

    @Test("a requester's client configuration has no host, groups or sync user")
    func clientConfiguration() throws {
        let settings = try Policy.parseEtcdClient(
            "etcd: { endpoints: [\"https://192.0.2.1:2379\"], user: alice, password_file: /home/alice/.etcd }",
            file: "etcd.yaml")
        #expect(settings.user == "alice")
        #expect(throws: PolicyError.self) {
            try Policy.parseEtcdClient("etcd: { endpoints: [\"https://192.0.2.1:2379\"], host: web-1 }", file: "e.yaml")
        }
    }
}

struct EtcdLayoutTests {
    let layout = EtcdLayout(prefix: "/drawbridge", host: "web-1", groups: ["web"])

    @Test("grant keys: the directory and the id at its end; anything else is named as outside")
    func keys() throws {
        let host = try layout.grantKey("/drawbridge/v1/grants/host/web-1/g-1").get()
        #expect(host.directory == "/drawbridge/v1/grants/host/web-1/" && host.id == "g-1")
        let group = try layout.grantKey("/drawbridge/v1/grants/group/web/deploy.1").get()
        #expect(group.directory == "/drawbridge/v1/grants/group/web/" && group.id == "deploy.1")
        for key in [
            "/drawbridge/v1/grants/host/web-10/g-1", "/drawbridge/v1/grants/group/db/g-1",
            "/drawbridge/v1/grants/host/web-1/", "/drawbridge/v1/grants/host/web-1/a/b",
            "/drawbridge/v1/grants/host/web-1/-x", "/other/v1/grants/host/web-1/g-1",
        ] {
            guard case .failure = layout.grantKey(key) else {
                Issue.record("accepted \(key)")
                continue
            }
        }
    }

    @Test("the same id in two directories gives two grants")
    func identifiers() {
        let a = EtcdLayout.bookIdentifier(directory: "/drawbridge/v1/grants/host/web-1/", id: "g-1")
        let b = EtcdLayout.bookIdentifier(directory: "/drawbridge/v1/grants/group/web/", id: "g-1")
        #expect(a != b)
        #expect(a.hasPrefix("e-") && a.hasSuffix("-g-1"))
        #expect(a == EtcdLayout.bookIdentifier(directory: "/drawbridge/v1/grants/host/web-1/", id: "g-1"))
    }
}

struct EtcdGrantValueTests {
    static let policy = try! Policy.parse(
        """
        ports:
          ssh: { port: 22, max_duration: 3h, allowed_sources: ["192.0.2.0/24"] }
        """, file: "p.yaml")
    static let now = Instants(wall: Date(timeIntervalSince1970: 1_796_126_400), monotonic: MonotonicInstant(nanoseconds: 5_000_000_000))
    static let directory = "/drawbridge/v1/grants/host/web-1/"

    func judge(_ value: String, id: String = "g-1") -> Result<Grant, Refusal> {
        EtcdGrantValue.grant(
            key: Self.directory + id, directory: Self.directory, id: id, value: Array(value.utf8), policy: Self.policy,
            now: Self.now)
    }

    @Test("a value within the policy becomes a grant with an absolute expiry and its requester")
    func accepted() throws {
        let grant = try judge(
            #"{"id":"g-1","source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z","reason":"deploy","requested_by":"alice"}"#
        ).get()
        #expect(grant.origin == .etcd(Self.directory + "g-1"))
        #expect(grant.requestedBy == "alice")
        #expect(grant.reason == "deploy")
        #expect(grant.deadline == Self.now.monotonic.advanced(by: 3600))
        #expect(grant.ports.map(\.name) == ["ssh"])
        #expect(grant.uid == nil)
    }

    @Test(
        "anything else is refused with a reason",
        arguments: [
            (#"{"source":"203.0.113.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"}"#, "may not be opened to"),
            (#"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T16:00:00Z"}"#, "at most 3h"),
            (#"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T11:00:00Z"}"#, "expired at"),
            (#"{"source":"192.0.2.7","ports":["80/tcp"],"expires_at":"2026-12-01T13:00:00Z"}"#, "not a managed port"),
            (#"{"id":"g-2","source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"}"#, "not the id at the end"),
            (#"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z","extra":1}"#, "unknown key"),
            (#"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"tomorrow"}"#, "RFC 3339"),
            (#"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"} {}"#, "malformed"),
            (#"["not an object"]"#, "malformed"),
            (#"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z","reason":"a\nb"}"#, "one line"),
        ])
    func refused(value: String, message: String) {
        switch judge(value) {
        case .success: Issue.record("accepted \(value)")
        case .failure(let refusal): #expect(refusal.message.contains(message), "\(refusal.message)")
        }
    }

    @Test("a value larger than the limit is refused unread")
    func huge() {
        let value = #"{"source":"192.0.2.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z","reason":""#
            + String(repeating: "x", count: EtcdGrantValue.maximumBytes) + "\"}"
        guard case .failure(let refusal) = judge(value) else {
            Issue.record("accepted")
            return
        }
        #expect(refusal.message.contains("at most 16384 are accepted"))
    }
}

struct EtcdRequestTests {
    @Test("etcd-sync requests decode strictly")
    func decodes() throws {
        let request =
            #"{"command":"etcd-sync","revision":42,"complete":true,"changes":[{"key":"/k/1","value":"{}"},{"key":"/k/2","deleted":true},{"key":"/k/3","problem":"not UTF-8"}]}"#
        guard case .success(.etcdSync(let update)) = LocalAPI.decode(Array(request.utf8)) else {
            Issue.record("not decoded")
            return
        }
        #expect(update.revision == 42 && update.complete)
        #expect(
            update.changes == [
                .put(key: "/k/1", value: Array("{}".utf8)), .delete(key: "/k/2"),
                .unusable(key: "/k/3", problem: "not UTF-8"),
            ])
        for bad in [
            #"{"command":"etcd-sync","changes":[]}"#,
            #"{"command":"etcd-sync","revision":-1,"changes":[]}"#,
            #"{"command":"etcd-sync","revision":1.5,"changes":[]}"#,
            #"{"command":"etcd-sync","revision":1}"#,
            #"{"command":"etcd-sync","revision":1,"changes":[{"key":"/k","value":"{}","deleted":true}]}"#,
            #"{"command":"etcd-sync","revision":1,"changes":[{"value":"{}"}]}"#,
            #"{"command":"etcd-sync","revision":1,"changes":[{"key":"/k\n","value":"{}"}]}"#,
            #"{"command":"etcd-sync","revision":1,"changes":[],"source":"192.0.2.1"}"#,
            #"{"command":"etcd-connection"}"#,
        ] {
            guard case .failure(let failure) = LocalAPI.decode(Array(bad.utf8)) else {
                Issue.record("accepted \(bad)")
                continue
            }
            #expect(failure.code == .badRequest)
        }
    }
}
