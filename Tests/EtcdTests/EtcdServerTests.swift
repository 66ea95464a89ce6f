import EtcdProbeProtocol
import Foundation
import TestSupport
import Testing

/// The Etcd client against a real etcd 3.4, each test with its own etcd in its own network namespace.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct EtcdServerTests {
    @Test("a range reads every key under the prefix at one revision")
    func rangeAtRevision() throws {
        let etcd = try EtcdServer()
        let client = try etcd.probe()
        let first = try client.put("/drawbridge/v1/grants/host/a/1", "one")
        try client.put("/drawbridge/v1/grants/host/a/2", "two")
        try client.put("/drawbridge/v1/grants/host/a/1", "one, changed")
        try client.put("/drawbridge/v1/grants/host/ab", "outside the prefix")

        let old = try client.range("/drawbridge/v1/grants/host/a/", revision: first)
        #expect(old.revision > first, "the header revision is the newest, the keys are as they were at `first`")
        #expect(old.keyValues.map(\.key) == ["/drawbridge/v1/grants/host/a/1"])
        #expect(old.keyValues.map(\.value) == ["one"])

        let now = try client.range("/drawbridge/v1/grants/host/a/")
        #expect(now.keyValues.map(\.key) == ["/drawbridge/v1/grants/host/a/1", "/drawbridge/v1/grants/host/a/2"])
        #expect(now.keyValues.map(\.value) == ["one, changed", "two"])
        #expect(now.keyValues[0].createRevision == first)
        #expect(now.keyValues[0].modRevision > now.keyValues[1].modRevision)
        #expect(try client.range("/nothing/here/").keyValues.isEmpty)
    }

    @Test("a watch delivers puts and deletes in order, and resumes from a revision without losing or repeating")
    func watchOrderAndResume() throws {
        let etcd = try EtcdServer()
        let client = try etcd.probe()
        let prefix = "/drawbridge/v1/grants/host/a/"
        let listed = try client.range(prefix)
        let watch = try client.watch([prefix: listed.revision + 1])
        let created = try #require(try client.nextWatchResponse(watch))
        #expect(created.kind == "created")
        #expect(created.nextRevision == listed.revision + 1)

        let put1 = try client.put(prefix + "1", "one")
        let put2 = try client.put(prefix + "2", "two")
        try client.put("/drawbridge/v1/grants/host/b/1", "not watched")
        let delete1 = try client.delete(prefix + "1")
        let events = try client.watchEvents(watch, count: 3)
        #expect(events.map(\.kind) == ["put", "put", "delete"])
        #expect(events.map(\.key) == [prefix + "1", prefix + "2", prefix + "1"])
        #expect(events.map(\.value) == ["one", "two", ""])
        #expect(events.map(\.modRevision) == [put1, put2, delete1])
        try client.stop(watch)

        // Changes while nobody watches; the resumed watch starts right after the last event seen.
        let put3 = try client.put(prefix + "3", "three")
        let delete2 = try client.delete(prefix + "2")
        let resumed = try client.watch([prefix: delete1 + 1])
        let more = try client.watchEvents(resumed, count: 2)
        #expect(more.map(\.modRevision) == [put3, delete2])
        #expect(more.map(\.kind) == ["put", "delete"])
        let put4 = try client.put(prefix + "4", "four")
        #expect(try client.watchEvents(resumed, count: 1).map(\.modRevision) == [put4])
    }

    @Test("one watch of several prefixes tags each response with its prefix and resume point")
    func severalPrefixes() throws {
        let etcd = try EtcdServer(extraArguments: ["--experimental-watch-progress-notify-interval", "1s"])
        let client = try etcd.probe()
        let host = "/drawbridge/v1/grants/host/a/"
        let group = "/drawbridge/v1/grants/group/web/"
        let start = try client.range(host).revision + 1
        let watch = try client.watch([host: start, group: start])
        let hostPut = try client.put(host + "1", "one")
        let groupPut = try client.put(group + "1", "web")
        var next: [String: Int64] = [:]
        var seen: [String: [Int64]] = [:]
        var progress = false
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, !(seen[host] != nil && seen[group] != nil && progress) {
            guard let response = try client.nextWatchResponse(watch) else { break }
            next[response.prefix] = response.nextRevision
            if response.kind == "events" { seen[response.prefix, default: []] += response.events.map(\.modRevision) }
            if response.kind == "progress", seen[host] != nil, seen[group] != nil {
                progress = true
                #expect(response.nextRevision == response.revision + 1)
            }
        }
        #expect(seen == [host: [hostPut], group: [groupPut]])
        #expect(progress, "progress notifications were requested, and etcd sends them every second here")
        #expect(next[host]! > hostPut)
        #expect(next[group]! > groupPut)
    }

    @Test("etcd restarted mid-watch: the client reports the disconnect, and the resumed watch loses nothing")
    func restartMidWatch() throws {
        let etcd = try EtcdServer()
        let client = try etcd.probe()
        let prefix = "/drawbridge/v1/grants/host/a/"
        let start = try client.range(prefix).revision + 1
        let watch = try client.watch([prefix: start])
        let before = try client.put(prefix + "before", "1")
        #expect(try client.watchEvents(watch, count: 1).map(\.modRevision) == [before])

        etcd.stop()
        let failure = try #require(throws: ProbeFailure.self) {
            while try client.nextWatchResponse(watch) != nil {}
        }
        #expect(failure.code == "unavailable")
        #expect(failure.retryable)
        #expect(failure.endpoint == "192.0.2.10:2379")
        #expect(failure.message.hasPrefix("etcd 192.0.2.10:2379: unavailable watching \(prefix) from revision"))

        // While the client is away: etcd comes back and changes happen.
        try etcd.start()
        try etcd.etcdctl(["put", prefix + "during-1", "2"])
        try etcd.etcdctl(["put", prefix + "during-2", "3"])
        try etcd.etcdctl(["del", prefix + "before"])

        // The caller's policy: retry until the member answers, from the last event's revision + 1.
        var events: [ProbeEvent] = []
        let deadline = Date().addingTimeInterval(15)
        while events.count < 3, Date() < deadline {
            do {
                let resumed = try client.watch([prefix: before + 1])
                events = try client.watchEvents(resumed, count: 3)
            } catch let failure as ProbeFailure where failure.retryable {
                usleep(200_000)
            }
        }
        #expect(events.map(\.key) == [prefix + "during-1", prefix + "during-2", prefix + "before"])
        #expect(events.map(\.kind) == ["put", "put", "delete"])
    }

    @Test("a compaction past the watcher's revision ends the watch with the compact revision")
    func compaction() throws {
        let etcd = try EtcdServer()
        let client = try etcd.probe()
        let prefix = "/drawbridge/v1/grants/host/a/"
        let start = try client.range(prefix).revision + 1
        let watch = try client.watch([prefix: start])
        let first = try client.put(prefix + "1", "one")
        #expect(try client.watchEvents(watch, count: 1).map(\.modRevision) == [first])
        try client.stop(watch)

        try client.put(prefix + "2", "two")
        let last = try client.put(prefix + "3", "three")
        try etcd.etcdctl(["compact", String(last)])

        let resumed = try client.watch([prefix: first + 1])
        let failure = try #require(throws: ProbeFailure.self) {
            while try client.nextWatchResponse(resumed) != nil {}
        }
        #expect(failure.code == "compacted")
        #expect(failure.compactRevision == last)
        #expect(failure.prefix == prefix)
        #expect(!failure.retryable)
        #expect(
            failure.message
                == "etcd 192.0.2.10:2379: history compacted (the oldest revision kept is \(last)) watching \(prefix) "
                + "from revision \(first + 1); list again, then watch from the listed revision")
    }

    @Test("a key put with a lease goes with the lease; keep-alive holds it past its TTL")
    func leases() throws {
        let etcd = try EtcdServer()
        let client = try etcd.probe()
        let prefix = "/drawbridge/v1/status/"
        let lease = try client.grantLease(ttlSeconds: 60)
        #expect(lease.ttlSeconds == 60)
        try client.put(prefix + "web-1", "alive", lease: lease.lease)
        #expect(try client.range(prefix).keyValues.map(\.leaseID) == [lease.lease])
        try client.revokeLease(lease.lease)
        #expect(try client.range(prefix).keyValues.isEmpty)
        let again = try #require(throws: ProbeFailure.self) { try client.revokeLease(lease.lease) }
        #expect(again.code == "leaseNotFound")

        let short = try client.grantLease(ttlSeconds: 2)
        try client.put(prefix + "web-2", "alive", lease: short.lease)
        let keepAlive = try client.send(.keepAlive(lease: short.lease, ttlSeconds: short.ttlSeconds))
        guard case .done = try client.next(for: keepAlive) else { throw ProbeGone("keep-alive did not start") }
        Thread.sleep(forTimeInterval: 4)
        #expect(try client.range(prefix).keyValues.map(\.key) == [prefix + "web-2"], "kept alive past its 2 s TTL")
        var renewals: [Int64] = []
        while case .renewal(_, let ttl)? = try? client.next(for: keepAlive, timeout: 0.1) { renewals.append(ttl) }
        #expect(renewals.count >= 3, "renewed every third of the TTL")
        #expect(renewals.allSatisfy { $0 == 2 })
        try client.stop(keepAlive)
        #expect(eventually(within: .seconds(6)) { (try? client.range(prefix).keyValues.isEmpty) == true })
    }

    @Test("password authentication: token in metadata, renewed when etcd rejects it; a wrong password is named")
    func passwordAuthentication() throws {
        // Simple tokens expire after --auth-token-ttl seconds unused. (A restart does not invalidate them in 3.4:
        // etcd replays the Authenticate entry from its log and makes the same token again.)
        let etcd = try EtcdServer(extraArguments: ["--auth-token-ttl", "1"])
        try etcd.enableAuthentication(
            roles: [.init(name: "host-web-1", permissions: [("read", "/drawbridge/v1/grants/host/web-1/")])],
            users: [.init(name: "web-1", password: "correct horse", roles: ["host-web-1"])])
        try etcd.etcdctl(["put", "/drawbridge/v1/grants/host/web-1/g1", "grant"])

        let client = try etcd.probe(user: "web-1", password: "correct horse")
        let first = try client.range("/drawbridge/v1/grants/host/web-1/")
        #expect(first.keyValues.map(\.value) == ["grant"])
        let denied = try #require(throws: ProbeFailure.self) { try client.range("/drawbridge/v1/grants/host/db-1/") }
        #expect(
            denied.message
                == "etcd 192.0.2.10:2379: permission denied reading /drawbridge/v1/grants/host/db-1/ (user web-1)")

        // Idle past the TTL: etcd rejects the token, and the client authenticates again by itself, for a read and
        // for a watch (whose refusal comes as a cancelled create, not as a gRPC status).
        Thread.sleep(forTimeInterval: 2.5)
        #expect(try client.range("/drawbridge/v1/grants/host/web-1/").keyValues.map(\.value) == ["grant"])
        Thread.sleep(forTimeInterval: 2.5)
        let watch = try client.watch(["/drawbridge/v1/grants/host/web-1/": first.revision + 1])
        let created = try #require(try client.nextWatchResponse(watch))
        #expect(created.kind == "created")
        try etcd.etcdctl(["put", "/drawbridge/v1/grants/host/web-1/g2", "another"])
        #expect(try client.watchEvents(watch, count: 1).map(\.value) == ["another"])
        let rejections = etcd.log().components(separatedBy: "invalid auth token").count - 1
        #expect(rejections >= 2, "etcd rejected the expired token (once for the read, once for the watch)")

        let wrong = try etcd.probe(user: "web-1", password: "wrong")
        let failure = try #require(throws: ProbeFailure.self) { try wrong.range("/drawbridge/v1/grants/host/web-1/") }
        #expect(failure.code == "authenticationFailed")
        #expect(!failure.retryable)
        #expect(
            failure.message
                == "etcd 192.0.2.10:2379: authentication failed logging in (user web-1): wrong user or password")
    }

    @Test("mutual TLS: the certificate's CN is the etcd user, and RBAC limits it to its prefixes")
    func mutualTLSAndRBAC() throws {
        let etcd = try EtcdServer(tls: true)
        try etcd.enableAuthentication(
            roles: [
                .init(name: "host-a", permissions: [("read", "/drawbridge/v1/grants/host/a/")]),
                .init(name: "writer-web", permissions: [("readwrite", "/drawbridge/v1/grants/group/web/")]),
            ],
            users: [
                .init(name: "web-1", password: nil, roles: ["host-a"]),
                .init(name: "deployer", password: nil, roles: ["writer-web"]),
            ])
        try etcd.etcdctl(["put", "/drawbridge/v1/grants/host/a/g1", "for a"])
        try etcd.etcdctl(["put", "/drawbridge/v1/grants/host/b/g1", "for b"])

        let reader = try etcd.probe(certificateUser: "web-1")
        #expect(try reader.range("/drawbridge/v1/grants/host/a/").keyValues.map(\.value) == ["for a"])
        let denied = try #require(throws: ProbeFailure.self) { try reader.range("/drawbridge/v1/grants/host/b/") }
        #expect(denied.code == "permissionDenied")
        #expect(!denied.retryable)
        #expect(
            denied.message
                == "etcd 192.0.2.10:2379: permission denied reading /drawbridge/v1/grants/host/b/ (user web-1)")
        let watch = try reader.watch(["/drawbridge/v1/grants/host/b/": 1])
        let watchDenied = try #require(throws: ProbeFailure.self) { _ = try reader.nextWatchResponse(watch) }
        #expect(watchDenied.code == "permissionDenied")
        #expect(
            watchDenied.message
                == "etcd 192.0.2.10:2379: permission denied watching /drawbridge/v1/grants/host/b/ from revision 1 "
                + "(user web-1)")
        let readerWrite = try #require(throws: ProbeFailure.self) {
            try reader.put("/drawbridge/v1/grants/host/a/g2", "self-granted")
        }
        #expect(readerWrite.code == "permissionDenied")

        let writer = try etcd.probe(certificateUser: "deployer")
        try writer.put("/drawbridge/v1/grants/group/web/g1", "allowed")
        let outside = try #require(throws: ProbeFailure.self) {
            try writer.put("/drawbridge/v1/grants/group/db/g1", "not allowed")
        }
        #expect(
            outside.message
                == "etcd 192.0.2.10:2379: permission denied writing /drawbridge/v1/grants/group/db/g1 (user deployer)")

        // Without a client certificate, etcd (--client-cert-auth) ends the TLS handshake; without the test CA, the
        // client does not trust etcd's certificate. Neither is worth retrying as it is.
        let anonymous = try etcd.probe()
        let refused = try #require(throws: ProbeFailure.self) { try anonymous.range("/drawbridge/v1/grants/host/a/") }
        #expect(refused.code == "certificateRejected")
        #expect(!refused.retryable)
        #expect(
            refused.message
                == "etcd 192.0.2.10:2379: TLS certificate rejected reading /drawbridge/v1/grants/host/a/: the member "
                + "refused the client certificate, or its absence (SSLV3_ALERT_BAD_CERTIFICATE)")
        let distrustful = try etcd.probe(certificateUser: "web-1", trustTestAuthority: false)
        let untrusted = try #require(throws: ProbeFailure.self) {
            try distrustful.range("/drawbridge/v1/grants/host/a/")
        }
        #expect(untrusted.code == "certificateRejected")
        #expect(untrusted.message.contains("the member's certificate is not trusted (CERTIFICATE_VERIFY_FAILED)"))
    }

    @Test("a member that lost its leader refuses at once (hasleader) and ends open watches, retryably")
    func memberWithoutLeader() throws {
        // Two members: stopping one leaves the other without quorum, so without a leader.
        let etcd = try EtcdServer(
            members: 2, extraArguments: ["--heartbeat-interval", "50", "--election-timeout", "250"])
        let client = try etcd.probe()
        let prefix = "/drawbridge/v1/grants/host/a/"
        let start = try client.put(prefix + "1", "one") + 1
        let watch = try client.watch([prefix: start])
        #expect(try client.nextWatchResponse(watch)?.kind == "created")

        etcd.stop(member: 1)
        let ended = try #require(throws: ProbeFailure.self) {
            while try client.nextWatchResponse(watch, timeout: 20) != nil {}
        }
        #expect(ended.code == "unavailable")
        #expect(ended.retryable)
        #expect(ended.message.hasPrefix("etcd 192.0.2.10:2379: unavailable watching \(prefix) from revision \(start)"))

        let asked = Date()
        let refused = try #require(throws: ProbeFailure.self) { try client.range(prefix) }
        #expect(Date().timeIntervalSince(asked) < 2, "refused at once, not after the 5 s request timeout")
        #expect(refused.retryable)
        #expect(refused.message == "etcd 192.0.2.10:2379: unavailable reading \(prefix): no leader")
    }

    @Test("an endpoint nobody listens on fails fast, named and retryable")
    func unreachableEndpoint() throws {
        let etcd = try EtcdServer()
        let client = try etcd.probe(endpoint: "http://192.0.2.10:2399")
        let started = Date()
        let failure = try #require(throws: ProbeFailure.self) { try client.range("/drawbridge/") }
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(failure.code == "unavailable")
        #expect(failure.retryable)
        #expect(failure.endpoint == "192.0.2.10:2399")
        #expect(failure.message.hasPrefix("etcd 192.0.2.10:2399: unavailable reading /drawbridge/: "))
        #expect(failure.message.hasSuffix("Connection refused"))
    }
}
