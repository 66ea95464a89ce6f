import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// kill -9 at random instants across a long run of grants, extensions and revocations: nothing acknowledged is
/// lost, nothing revoked comes back, and no kernel element outlives what its grants gave it.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct CrashTests {
    struct Expected {
        var source: String
        var expiresAt: Date
    }

    static func request(_ socket: String, _ body: String) -> String? {
        guard let descriptor = try? UnixSocket.connect(socket) else { return nil }
        defer { close(descriptor) }
        guard (try? Files.writeAll(descriptor, Array((body + "\n").utf8), path: socket)) != nil,
            let answer = try? Files.readAll(descriptor, path: socket, maximumBytes: 1 << 26)
        else { return nil }
        return String(decoding: answer, as: UTF8.self)
    }

    @Test("1,200 operations, kill -9 at random points: every acknowledgement holds after every restart")
    func randomKills() throws {
        ignoreBrokenPipes()
        let setup = try AgentTests.Setup()
        let agent = setup.agent
        var random = SystemRandomNumberGenerator()
        var ledger: [String: Expected] = [:]  // acknowledged and not revoked
        var revoked: Set<String> = []  // acknowledged revocations
        var sourceOfID: [String: String] = [:]
        // Grants an unacknowledged operation (cut short by a kill) may or may not have changed.
        var uncertain: Set<String> = []
        var kills = 0
        var operations = 0
        var checks = 0
        let sources = (0..<300).map { index -> String in
            switch index % 3 {
            case 0: return "192.0.2.\(index / 3 + 2)"
            case 1: return "2001:db8::\(String(index + 16, radix: 16))"
            default: return "198.51.100.\(index / 3 % 250 + 2)"
            }
        }

        func restartAndCheck() throws {
            agent.kill9()
            try agent.start()
            checks += 1
            let listed = try LocalAPI.decoder().decode(
                LocalAPI.Response.self, from: Data((try agent.cli(["list", "--json"])).output.utf8))
            let grants = Dictionary(uniqueKeysWithValues: (listed.grants ?? []).map { ($0.grant.id, $0) })
            for id in uncertain {
                if let status = grants[id] {
                    ledger[id] = Expected(source: status.grant.source.description, expiresAt: status.grant.expiresAt)
                } else {
                    ledger[id] = nil
                    revoked.insert(id)
                }
            }
            uncertain = []
            for (id, expected) in ledger {
                guard let status = grants[id] else {
                    Issue.record("acknowledged grant \(id) (\(expected.source)) was lost after restart \(checks)")
                    continue
                }
                #expect(
                    abs(status.grant.expiresAt.timeIntervalSince(expected.expiresAt)) < 1,
                    "\(id) came back with another expiry")
            }
            for id in revoked where grants[id] != nil {
                Issue.record("revoked grant \(id) came back after restart \(checks)")
            }
            // Unacknowledged changes may have happened or not; adopt what the agent says.
            for (id, status) in grants where ledger[id] == nil && !revoked.contains(id) {
                ledger[id] = Expected(source: status.grant.source.description, expiresAt: status.grant.expiresAt)
                sourceOfID[id] = status.grant.source.description
            }
            // The kernel holds exactly what the grants give: no element without a grant, none longer than its grants.
            let driver = TableDriver(connection: try NetfilterConnection(namespace: agent.namespace))
            let now = SystemClock.now()
            for (key, deadline) in try driver.readGrantSets().elements {
                let latest = ledger.values.filter { $0.source == key.source.description }.map(\.expiresAt).max()
                guard let latest else {
                    Issue.record("kernel element \(key) has no grant after restart \(checks)")
                    continue
                }
                #expect(
                    now.wall(forDeadline: deadline) <= latest.addingTimeInterval(1),
                    "\(key) outlives its grants by \(now.wall(forDeadline: deadline).timeIntervalSince(latest)) s")
            }
        }

        while operations < 1200 {
            operations += 1
            let choice = Int(random.next() % 10)
            let body: String
            var revoking: String?
            var extending: String?
            if choice < 5 || ledger.isEmpty {
                let source = sources[Int(random.next() % UInt64(sources.count))]
                // A source already granted gets its grant extended, not a second one.
                extending = ledger.first { $0.value.source == source }?.key
                let seconds = 600 + Int(random.next() % 3000)
                body = #"{"command":"grant","ports":["ssh"],"source":"\#(source)","duration_seconds":\#(seconds)}"#
            } else if choice < 8 {
                // Asking again for a granted source extends it (or leaves it when it already lasts longer).
                let id = Array(ledger.keys)[Int(random.next() % UInt64(ledger.count))]
                extending = id
                let seconds = 600 + Int(random.next() % 6000)
                body = #"{"command":"grant","ports":["ssh"],"source":"\#(ledger[id]!.source)","duration_seconds":\#(seconds)}"#
            } else {
                let id = Array(ledger.keys)[Int(random.next() % UInt64(ledger.count))]
                revoking = id
                body = #"{"command":"revoke","id":"\#(id)"}"#
            }
            // One operation in twenty has a kill -9 racing it, 0 to 4 ms after the request goes out.
            let killing = random.next() % 20 == 0
            if killing, let pid = agent.pid {
                let delay = UInt32(random.next() % 4000)
                Thread.detachNewThread {
                    usleep(delay)
                    kill(pid, SIGKILL)
                }
            }
            let answer = Self.request(agent.socketPath, body)
            if let answer, answer.contains("\"ok\":true"),
                let response = try? LocalAPI.decoder().decode(LocalAPI.Response.self, from: Data(answer.utf8))
            {
                if let revoking {
                    ledger[revoking] = nil
                    revoked.insert(revoking)
                } else if let status = response.grants?.first {
                    ledger[status.grant.id] = Expected(
                        source: status.grant.source.description, expiresAt: status.grant.expiresAt)
                    sourceOfID[status.grant.id] = status.grant.source.description
                }
            } else if killing, let id = revoking ?? extending {
                uncertain.insert(id)
            }
            if killing {
                kills += 1
                usleep(5_000)
                try restartAndCheck()
            }
        }
        try restartAndCheck()
        print("crash test: \(operations) operations, \(kills) kill -9s, \(ledger.count) grants live, \(revoked.count) revoked, \(checks) checks")
        #expect(kills >= 30)
    }
}
