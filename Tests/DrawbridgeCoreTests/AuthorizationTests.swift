import DrawbridgeCore
import Foundation
import Testing

struct AuthorizationTests {
    static let policy = try! Policy.parse(PolicyFixtures.exampleText, file: "policy.yaml")

    static let root = Caller(uid: 0, user: "root", groups: [])
    static let alice = Caller(uid: 1000, user: "alice", groups: ["developers"])
    static let bob = Caller(uid: 1001, user: "bob", groups: ["drawbridge-admins"])
    static let carol = Caller(uid: 1002, user: "carol", groups: ["users", "developers", "drawbridge-admins"])
    static let dave = Caller(uid: 1003, user: "dave", groups: ["staff"])
    static let erin = Caller(uid: 1004, user: "erin", groups: [])
    /// A member of the admins group by name only: roles go by group, never by user name or uid.
    static let mallory = Caller(uid: 1005, user: "drawbridge-admins", groups: ["developers"])

    enum Expected: Sendable {
        case granted([String])
        case refused(Refusal.Reason, String)
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var label: String
        var caller: Caller
        var ports: [String]
        var source: String
        var duration: TimeInterval
        var expected: Expected

        init(
            _ label: String, _ caller: Caller, _ ports: [String], from source: String, for duration: TimeInterval,
            _ expected: Expected
        ) {
            self.label = label
            self.caller = caller
            self.ports = ports
            self.source = source
            self.duration = duration
            self.expected = expected
        }

        var testDescription: String { label }
    }

    static let hour: TimeInterval = 3_600

    static let cases: [Case] = [
        // Root: anything the ports allow.
        Case("root opens ssh", root, ["ssh"], from: "203.0.113.7", for: 2 * hour, .granted(["ssh"])),
        Case("root at the port limit", root, ["ssh"], from: "203.0.113.7", for: 3 * hour, .granted(["ssh"])),
        Case(
            "root over the port limit", root, ["ssh"], from: "203.0.113.7", for: 4 * hour,
            .refused(.durationTooLong, "ssh allows at most 3h; asked for 4h")),
        Case(
            "root over the limit by a second", root, ["ssh"], from: "203.0.113.7", for: 3 * hour + 1,
            .refused(.durationTooLong, "ssh allows at most 3h; asked for 3h1s")),
        Case(
            "root, postgres inside its sources", root, ["postgres"], from: "198.51.100.7", for: 600,
            .granted(["postgres"])),
        Case(
            "root, a narrower prefix", root, ["postgres"], from: "198.51.100.128/25", for: 600, .granted(["postgres"])),
        Case(
            "root, the exact allowed prefix", root, ["postgres"], from: "198.51.100.0/24", for: 600,
            .granted(["postgres"])),
        Case(
            "root, postgres outside its sources", root, ["postgres"], from: "203.0.113.7", for: 600,
            .refused(
                .sourceNotAllowed, "postgres may not be opened to 203.0.113.7; its allowed sources are 198.51.100.0/24")
        ),
        Case(
            "root, a prefix wider than allowed", root, ["postgres"], from: "198.51.100.0/23", for: 600,
            .refused(.sourceNotAllowed, "postgres may not be opened to 198.51.100.0/23")),
        Case(
            "root, anywhere where only a prefix is allowed", root, ["postgres"], from: "0.0.0.0/0", for: 600,
            .refused(.sourceNotAllowed, "postgres may not be opened to 0.0.0.0/0")),
        Case(
            "root, IPv6 where only IPv4 is allowed", root, ["postgres"], from: "2001:db8::1", for: 600,
            .refused(.sourceNotAllowed, "postgres may not be opened to 2001:db8::1")),
        Case("root, anywhere when the policy says so", root, ["ssh"], from: "0.0.0.0/0", for: 600, .granted(["ssh"])),
        Case("root, all of IPv6", root, ["ssh"], from: "::/0", for: 600, .granted(["ssh"])),
        Case("root, an IPv6 prefix", root, ["ssh"], from: "2001:db8:1::/64", for: 600, .granted(["ssh"])),
        Case(
            "root, several ports come back in policy order", root, ["postgres", "ssh"], from: "198.51.100.7", for: 600,
            .granted(["ssh", "postgres"])),
        Case(
            "one port's sources refuse the whole request", root, ["ssh", "postgres"], from: "203.0.113.7", for: 600,
            .refused(.sourceNotAllowed, "postgres may not be opened")),
        Case(
            "the shortest port limit applies to a multi-port request", root, ["ssh", "postgres"],
            from: "198.51.100.7", for: hour, .refused(.durationTooLong, "postgres allows at most 30m; asked for 1h")),

        // Resolving ports by name and number.
        Case("by NUMBER/PROTO", root, ["22/tcp"], from: "203.0.113.7", for: 600, .granted(["ssh"])),
        Case("by NUMBER alone, meaning TCP", root, ["5432"], from: "198.51.100.7", for: 600, .granted(["postgres"])),
        Case(
            "duplicates collapse", root, ["ssh", "22/tcp", "22", "ssh"], from: "203.0.113.7", for: 600,
            .granted(["ssh"])),
        Case(
            "unknown name", root, ["sshh"], from: "203.0.113.7", for: 600,
            .refused(
                .unknownPort,
                "'sshh' is not a managed port; managed: ssh 22/tcp, postgres 5432/tcp; did you mean ssh?")),
        Case(
            "unknown number", root, ["3389/tcp"], from: "203.0.113.7", for: 600,
            .refused(.unknownPort, "3389/tcp is not a managed port; managed: ssh 22/tcp, postgres 5432/tcp")),
        Case(
            "managed number, other protocol", root, ["22/udp"], from: "203.0.113.7", for: 600,
            .refused(.unknownPort, "22/udp is not a managed port")),
        Case(
            "not a port number", root, ["70000"], from: "203.0.113.7", for: 600,
            .refused(.unknownPort, "'70000' is not a port")),
        Case(
            "an unknown port refuses the whole request", root, ["ssh", "rdp"], from: "203.0.113.7", for: 600,
            .refused(.unknownPort, "'rdp' is not a managed port")),
        Case(
            "unknown port is reported before permission", alice, ["postgres", "rdp"], from: "203.0.113.7", for: 600,
            .refused(.unknownPort, "'rdp' is not a managed port")),

        // Malformed requests.
        Case(
            "no ports", root, [], from: "203.0.113.7", for: 600,
            .refused(.invalidRequest, "the request names no port")),
        Case(
            "zero duration", root, ["ssh"], from: "203.0.113.7", for: 0, .refused(.invalidRequest, "longer than zero")),
        Case(
            "negative duration", root, ["ssh"], from: "203.0.113.7", for: -60,
            .refused(.invalidRequest, "longer than zero")),
        Case(
            "not-a-number duration", root, ["ssh"], from: "203.0.113.7", for: .nan,
            .refused(.invalidRequest, "longer than zero")),
        Case(
            "infinite duration", root, ["ssh"], from: "203.0.113.7", for: .infinity,
            .refused(.invalidRequest, "longer than zero")),

        // Roles.
        Case("developer opens ssh", alice, ["ssh"], from: "203.0.113.7", for: hour, .granted(["ssh"])),
        Case("developer from anywhere", alice, ["ssh"], from: "0.0.0.0/0", for: 60, .granted(["ssh"])),
        Case(
            "developer over the role limit", alice, ["ssh"], from: "203.0.113.7", for: 2 * hour,
            .refused(
                .durationTooLong,
                "user alice may grant ssh for at most 1h (role for group developers); asked for 2h")),
        Case(
            "developer asks for postgres", alice, ["postgres"], from: "198.51.100.7", for: 600,
            .refused(.notPermitted, "user alice (groups: developers) may not grant postgres; roles allow: ssh")),
        Case(
            "developer asks for both", alice, ["ssh", "postgres"], from: "198.51.100.7", for: 600,
            .refused(.notPermitted, "may not grant postgres")),
        Case(
            "permission is checked before sources", alice, ["postgres"], from: "203.0.113.7", for: 600,
            .refused(.notPermitted, "may not grant postgres")),
        Case("admin opens postgres", bob, ["postgres"], from: "198.51.100.7", for: 1_800, .granted(["postgres"])),
        Case("admin opens ssh for 3h", bob, ["ssh"], from: "203.0.113.7", for: 3 * hour, .granted(["ssh"])),
        Case(
            "admin over the port limit", bob, ["postgres"], from: "198.51.100.7", for: 2_700,
            .refused(.durationTooLong, "postgres allows at most 30m; asked for 45m")),
        Case(
            "admin, source outside the port's", bob, ["postgres"], from: "203.0.113.0/24", for: 600,
            .refused(.sourceNotAllowed, "postgres may not be opened to 203.0.113.0/24")),
        Case(
            "several groups: the longest role limit wins", carol, ["ssh"], from: "203.0.113.7", for: 2 * hour,
            .granted(["ssh"])),
        Case(
            "several groups: both ports", carol, ["ssh", "postgres"], from: "198.51.100.7", for: 1_800,
            .granted(["ssh", "postgres"])),
        Case(
            "no matching group", dave, ["ssh"], from: "203.0.113.7", for: 600,
            .refused(.notPermitted, "user dave (groups: staff) may not grant ssh; roles allow: nothing")),
        Case(
            "no groups at all", erin, ["ssh"], from: "203.0.113.7", for: 600,
            .refused(.notPermitted, "user erin (groups: none) may not grant ssh")),
        Case(
            "a user named like a group gains nothing", mallory, ["postgres"], from: "198.51.100.7", for: 600,
            .refused(.notPermitted, "may not grant postgres")),
    ]

    @Test("requests are granted or refused by policy and roles", arguments: cases)
    func authorizes(testCase: Case) throws {
        let request = GrantRequest(
            ports: testCase.ports, source: try IPPrefix(parsing: testCase.source), duration: testCase.duration,
            reason: "test")
        let result = Self.policy.authorize(request, by: testCase.caller)
        switch (testCase.expected, result) {
        case (.granted(let names), .success(let grant)):
            #expect(grant.ports.map(\.name) == names)
            #expect(grant.ports == names.map { Self.policy.port(named: $0)! })
            #expect(grant.source == request.source)
            #expect(grant.duration == request.duration)
        case (.refused(let reason, let fragment), .failure(let refusal)):
            #expect(refusal.reason == reason, "\(refusal)")
            #expect(refusal.message.contains(fragment), "\(refusal.message) does not contain \(fragment)")
            #expect(refusal.description == refusal.message)
        case (.granted, .failure(let refusal)):
            Issue.record("refused: \(refusal.reason.rawValue): \(refusal)")
        case (.refused, .success(let grant)):
            Issue.record("granted: \(grant)")
        }
    }

    @Test(
        "ports resolve by name or NUMBER[/PROTO]",
        arguments: [
            ("ssh", "ssh"),
            ("postgres", "postgres"),
            ("SSH", "ssh"),
            (" ssh ", "ssh"),
            ("22", "ssh"),
            ("22/tcp", "ssh"),
            ("22/TCP", "ssh"),
            ("5432/tcp", "postgres"),
        ])
    func resolves(text: String, name: String) throws {
        #expect(try Self.policy.resolvePort(text).get().name == name)
    }

    @Test(
        "unmanaged ports are refused with the list of managed ones",
        arguments: ["22/udp", "3389", "0", "65536", "22/icmp", "rdp", "", "ssh/tcp", "-22"])
    func unresolved(text: String) {
        guard case .failure(let refusal) = Self.policy.resolvePort(text) else {
            Issue.record("\(text) resolved")
            return
        }
        #expect(refusal.reason == .unknownPort)
        #expect(refusal.message.contains("managed: ssh 22/tcp, postgres 5432/tcp"), "\(refusal.message)")
    }

    @Test("the refusal for an unmanaged number reads as documented")
    func documentedMessage() throws {
        let policy = try Policy.parse(
            #"ports: { ssh: { port: 22, max_duration: 1h, allowed_sources: ["::/0"] } }"#, file: "policy.yaml")
        guard case .failure(let refusal) = policy.resolvePort("5432/tcp") else {
            Issue.record("5432/tcp resolved")
            return
        }
        #expect(refusal.message == "5432/tcp is not a managed port; managed: ssh 22/tcp")
        let empty = Policy(ports: [])
        guard case .failure(let nothing) = empty.resolvePort("ssh") else {
            Issue.record("ssh resolved in an empty policy")
            return
        }
        #expect(nothing.message == "'ssh' is not a managed port; managed: none")
    }

    @Test("role and grantable-port queries follow groups")
    func grantable() {
        #expect(Self.policy.roles(of: Self.alice).map(\.group) == ["developers"])
        #expect(Self.policy.roles(of: Self.carol).map(\.group) == ["drawbridge-admins", "developers"])
        #expect(Self.policy.roles(of: Self.root).isEmpty)
        #expect(Self.policy.grantablePorts(for: Self.root).map(\.name) == ["ssh", "postgres"])
        #expect(Self.policy.grantablePorts(for: Self.alice).map(\.name) == ["ssh"])
        #expect(Self.policy.grantablePorts(for: Self.dave).isEmpty)
        #expect(Self.root.isRoot && !Self.alice.isRoot)
    }

    @Test("callers and requests travel as JSON")
    func coding() throws {
        let request = GrantRequest(
            ports: ["ssh", "5432/tcp"], source: try IPPrefix(parsing: "2001:db8::/64"), duration: 5_400,
            reason: "hotfix")
        let decodedRequest = try JSONDecoder().decode(GrantRequest.self, from: JSONEncoder().encode(request))
        #expect(decodedRequest == request)
        let decodedCaller = try JSONDecoder().decode(Caller.self, from: JSONEncoder().encode(Self.carol))
        #expect(decodedCaller == Self.carol)
        #expect(Refusal.Reason(rawValue: "duration-too-long") == .durationTooLong)
    }
}
