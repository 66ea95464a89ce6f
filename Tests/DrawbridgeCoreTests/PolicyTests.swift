import DrawbridgeCore
import Foundation
import Testing

/// Policies and values shared by the policy and authorization tests.
enum PolicyFixtures {
    /// The policy from the documentation, which must parse as written.
    static let exampleText = """
        ports:                      # the ports under just-in-time control, by name
          ssh:      { port: 22,   protocol: tcp, max_duration: 3h,  allowed_sources: ["0.0.0.0/0", "::/0"] }
          postgres: { port: 5432, protocol: tcp, max_duration: 30m, allowed_sources: ["198.51.100.0/24"] }
        always_allow: ["192.0.2.10/32"]   # break-glass: never locked out
        on_expiry: keep-sessions          # or cut-sessions
        roles:                            # who may grant what, by Unix group
          - { group: drawbridge-admins, ports: [ssh, postgres], max_duration: 3h }
          - { group: developers,        ports: [ssh],           max_duration: 1h }
        grant_files: ["/etc/drawbridge/grants.json"]   # optional: watched JSON files of grants

        """

    static func prefix(_ text: String) -> IPPrefix { try! IPPrefix(parsing: text) }
}

struct PolicyTests {
    @Test("the documented example parses to the expected model")
    func example() throws {
        let policy = try Policy.parse(PolicyFixtures.exampleText, file: "policy.yaml")
        let ssh = Policy.ManagedPort(
            name: "ssh", service: Service(port: 22, transport: .tcp), maxDuration: 3 * 3_600,
            allowedSources: [PolicyFixtures.prefix("0.0.0.0/0"), PolicyFixtures.prefix("::/0")])
        let postgres = Policy.ManagedPort(
            name: "postgres", service: Service(port: 5432, transport: .tcp), maxDuration: 30 * 60,
            allowedSources: [PolicyFixtures.prefix("198.51.100.0/24")])
        let expected = Policy(
            ports: [ssh, postgres],
            alwaysAllow: [PolicyFixtures.prefix("192.0.2.10/32")],
            onExpiry: .keepSessions,
            roles: [
                Policy.Role(group: "drawbridge-admins", ports: ["ssh", "postgres"], maxDuration: 3 * 3_600),
                Policy.Role(group: "developers", ports: ["ssh"], maxDuration: 3_600),
            ],
            grantFiles: ["/etc/drawbridge/grants.json"])
        #expect(policy == expected)
        #expect(policy.port(named: "postgres") == postgres)
        #expect(policy.port(named: "rdp") == nil)
        #expect(policy.port(for: Service(port: 22, transport: .tcp)) == ssh)
        #expect(policy.port(for: Service(port: 22, transport: .udp)) == nil)
        #expect(policy.managedServices == [Service(port: 22, transport: .tcp), Service(port: 5432, transport: .tcp)])
        #expect(policy.longestMaxDuration == TimeInterval(3 * 3_600))
    }

    @Test("block style, defaults and the other options")
    func blockStyle() throws {
        let text = """
            # comments and blank lines are fine

            ports:
              dns:
                port: 53
                protocol: udp
                max_duration: 1h30m
                allowed_sources:
                  - 2001:db8::/32
                  - 203.0.113.7
              dns-tcp:
                port: 53
                max_duration: "7d"
                allowed_sources: ['203.0.113.0/24']
            on_expiry: cut-sessions
            """
        let policy = try Policy.parse(text, file: "policy.yaml")
        #expect(policy.ports.map(\.name) == ["dns", "dns-tcp"])
        #expect(policy.ports[0].service == Service(port: 53, transport: .udp))
        #expect(policy.ports[0].maxDuration == 5_400)
        #expect(
            policy.ports[0].allowedSources == [
                PolicyFixtures.prefix("2001:db8::/32"), PolicyFixtures.prefix("203.0.113.7/32"),
            ])
        #expect(policy.ports[1].service == Service(port: 53, transport: .tcp))
        #expect(policy.ports[1].maxDuration == Policy.maxDurationLimit)
        #expect(policy.onExpiry == .cutSessions)
        #expect(policy.alwaysAllow.isEmpty && policy.roles.isEmpty && policy.grantFiles.isEmpty)
    }

    @Test(
        "minimal and empty-but-valid policies",
        arguments: [
            "ports: {}",
            "ports:",
            "ports: {}\nalways_allow: []\nroles: []\ngrant_files: []",
            "ports: {}\nalways_allow:\nroles:\ngrant_files:\n",
            "---\nports: {}\n...\n",
        ])
    func minimal(text: String) throws {
        let policy = try Policy.parse(text, file: "policy.yaml")
        #expect(policy == Policy(ports: []))
        #expect(policy.onExpiry == .keepSessions)
        #expect(policy.longestMaxDuration == nil)
    }

    @Test("ports are kept in file order, and one number may be managed for both protocols")
    func order() throws {
        let text = """
            ports:
              zeta: { port: 9000, max_duration: 1m, allowed_sources: ["0.0.0.0/0"] }
              alpha: { port: 22, protocol: udp, max_duration: 1m, allowed_sources: ["0.0.0.0/0"] }
              mid: { port: 22, protocol: tcp, max_duration: 2m, allowed_sources: ["0.0.0.0/0"] }
            """
        let policy = try Policy.parse(text, file: "policy.yaml")
        #expect(policy.ports.map(\.name) == ["zeta", "alpha", "mid"])
        #expect(policy.longestMaxDuration == 120)
    }

    struct InvalidCase: Sendable, CustomTestStringConvertible {
        var label: String
        var text: String
        var line: Int?
        var column: Int?
        var fragments: [String]

        init(_ label: String, _ text: String, line: Int?, column: Int? = nil, _ fragments: String...) {
            self.label = label
            self.text = text
            self.line = line
            self.column = column
            self.fragments = fragments
        }

        var testDescription: String { label }
    }

    /// A port line with the given settings, for cases that break one setting.
    static func ports(_ settings: String) -> String { "ports:\n  ssh: { \(settings) }\n" }

    static let valid = #"port: 22, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#

    static let invalidCases: [InvalidCase] = [
        // The document as a whole.
        InvalidCase("empty", "", line: 1, column: 1, "the policy is empty"),
        InvalidCase("only comments", "# nothing here\n\n", line: 1, "the policy is empty"),
        InvalidCase("a list", "- ssh\n- rdp\n", line: 1, column: 1, "must be a mapping", "found a list"),
        InvalidCase("a scalar", "hello\n", line: 1, "must be a mapping", "found 'hello'"),
        InvalidCase("no ports", "always_allow: []\n", line: 1, "has no ports key"),
        InvalidCase(
            "unknown top-level key", "ports: {}\nport: 22\n", line: 2, column: 1, "unknown key 'port'",
            "allowed keys: ports, always_allow, on_expiry, roles, grant_files", "did you mean ports?"),
        InvalidCase(
            "top-level key with dashes", "ports: {}\non-expiry: cut-sessions\n", line: 2, "unknown key 'on-expiry'",
            "did you mean on_expiry?"),
        InvalidCase("unknown key without suggestion", "ports: {}\nzzz: 1\n", line: 2, "unknown key 'zzz'"),
        InvalidCase("merge key", "ports: {}\n<<: {}\n", line: 2, "unknown key '<<'", "merge keys are not supported"),
        InvalidCase("a key that is a list", "ports: {}\n? [a]\n: b\n", line: 2, "must be a plain word"),

        // YAML itself.
        InvalidCase("unclosed flow mapping", "ports: { ssh: {\n", line: 2, "not valid YAML"),
        InvalidCase("tab indentation", "ports:\n\tssh: {}\n", line: 2, "not valid YAML", "tabs"),
        InvalidCase("bad indentation", "ports:\n  ssh: {}\n bad: 1\n", line: 3, "not valid YAML"),
        InvalidCase(
            "duplicate top-level key", "ports: {}\nroles: []\nports: {}\n", line: 3, column: 1,
            "key 'ports' appears more than once", "first at line 1"),
        InvalidCase(
            "duplicate key in flow mapping", ports("port: 22, port: 23, max_duration: 3h, allowed_sources: []"),
            line: 2, column: 20, "key 'port' appears more than once"),
        InvalidCase(
            "duplicate port name",
            "ports:\n  ssh: { \(valid) }\n  ssh: { \(valid) }\n", line: 3, column: 3, "key 'ssh' appears more than once"
        ),
        InvalidCase("two documents", "ports: {}\n---\nports: {}\n", line: 2, "not valid YAML", "another document"),
        InvalidCase("undefined alias", "ports: *nothing\n", line: 1, "not valid YAML"),

        // The ports mapping.
        InvalidCase(
            "ports as a list", "ports: [ssh]\n", line: 1, column: 8, "ports must be a mapping of port names",
            "found a list"),
        InvalidCase("port settings as a number", "ports:\n  ssh: 22\n", line: 2, column: 8, "must be a mapping"),
        InvalidCase(
            "capitalised name", "ports:\n  SSH: { \(valid) }\n", line: 2, column: 3, "'SSH' is not a valid port name"),
        InvalidCase("numeric name", "ports:\n  \"22\": { \(valid) }\n", line: 2, "'22' is not a valid port name"),
        InvalidCase("name starting with a digit", "ports:\n  1ssh: { \(valid) }\n", line: 2, "not a valid port name"),
        InvalidCase(
            "name too long", "ports:\n  \(String(repeating: "a", count: 33)): { \(valid) }\n", line: 2,
            "not a valid port name"),
        InvalidCase(
            "unknown key in a port", ports(#"port: 22, max_durration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            column: 20, "unknown key 'max_durration' in port 'ssh'",
            "allowed keys: port, protocol, max_duration, allowed_sources", "did you mean max_duration?"),
        InvalidCase(
            "camel-case key", ports(#"port: 22, maxDuration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "unknown key 'maxDuration'", "did you mean max_duration?"),
        InvalidCase(
            "abbreviated key", ports(#"port: 22, max_duration: 3h, sources: ["0.0.0.0/0"]"#), line: 2,
            "unknown key 'sources'", "did you mean allowed_sources?"),
        InvalidCase(
            "misspelled protocol key", ports(#"port: 22, protocl: tcp, max_duration: 3h, allowed_sources: []"#),
            line: 2, "unknown key 'protocl'", "did you mean protocol?"),
        InvalidCase(
            "missing port", ports(#"max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2, column: 8,
            "port 'ssh' has no port"),
        InvalidCase(
            "missing max_duration", ports(#"port: 22, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port 'ssh' has no max_duration"),
        InvalidCase(
            "missing allowed_sources", ports("port: 22, max_duration: 3h"), line: 2,
            "port 'ssh' has no allowed_sources"),
        InvalidCase(
            "port zero", ports(#"port: 0, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2, column: 16,
            "port 0 is out of range"),
        InvalidCase(
            "port too large", ports(#"port: 65536, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port 65536 is out of range"),
        InvalidCase(
            "port much too large",
            ports(#"port: 99999999999999999999999, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "out of range"),
        InvalidCase(
            "port as a string", ports(#"port: "22", max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            column: 16, "not the quoted text '22'"),
        InvalidCase(
            "fractional port", ports(#"port: 22.5, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port '22.5' is not a whole number"),
        InvalidCase(
            "negative port", ports(#"port: -22, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port '-22'"),
        InvalidCase(
            "octal-looking port", ports(#"port: 022, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port '022' is not a plain decimal number"),
        InvalidCase(
            "hexadecimal port", ports(#"port: 0x16, max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port '0x16'"),
        InvalidCase(
            "port as a list", ports(#"port: [22], max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "port must be a number", "found a list"),
        InvalidCase(
            "empty port", ports(#"port: , max_duration: 3h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "found an empty value"),
        InvalidCase(
            "unknown protocol", ports(#"port: 22, protocol: icmp, max_duration: 3h, allowed_sources: ["::/0"]"#),
            line: 2, column: 30, "protocol 'icmp' is not supported; use tcp or udp"),
        InvalidCase(
            "uppercase protocol", ports(#"port: 22, protocol: TCP, max_duration: 3h, allowed_sources: ["::/0"]"#),
            line: 2, "protocol 'TCP'", "lowercase"),
        InvalidCase(
            "two names for one port",
            "ports:\n  ssh: { \(valid) }\n  admin:\n    port: 22\n    max_duration: 1h\n"
                + "    allowed_sources: [\"::/0\"]\n",
            line: 4, column: 11, "port 'admin' manages 22/tcp, which port 'ssh' already manages"),

        // Durations.
        InvalidCase(
            "not a duration", ports(#"port: 22, max_duration: 3x, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            column: 34, "max_duration '3x' of port 'ssh' is not a duration", "write it like 90s, 30m, 2h or 1h30m"),
        InvalidCase(
            "bare number", ports(#"port: 22, max_duration: 90, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "max_duration '90' of port 'ssh' is not a duration", "add a unit: 90s, 90m or 90h"),
        InvalidCase(
            "zero duration", ports(#"port: 22, max_duration: 0s, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "max_duration of port 'ssh' is zero"),
        InvalidCase(
            "negative duration", ports(#"port: 22, max_duration: -1h, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "'-1h' of port 'ssh' is not a duration"),
        InvalidCase(
            "duration with a space", ports(#"port: 22, max_duration: 1h 30m, allowed_sources: ["0.0.0.0/0"]"#),
            line: 2, "'1h 30m' of port 'ssh' is not a duration"),
        InvalidCase(
            "longer than a week", ports(#"port: 22, max_duration: 8d, allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "max_duration 8d of port 'ssh' is longer than the limit of 7d", "a grant is meant to be short"),
        InvalidCase(
            "one second more than a week",
            ports(#"port: 22, max_duration: 7d1s, allowed_sources: ["0.0.0.0/0"]"#), line: 2, "longer than the limit"),
        InvalidCase(
            "missing duration value", ports(#"port: 22, max_duration: , allowed_sources: ["0.0.0.0/0"]"#), line: 2,
            "max_duration of port 'ssh' must be a duration", "found an empty value"),

        // Sources.
        InvalidCase(
            "empty allowed_sources", ports("port: 22, max_duration: 3h, allowed_sources: []"), line: 2, column: 55,
            "allowed_sources of port 'ssh' is empty"),
        InvalidCase(
            "allowed_sources as a string", ports(#"port: 22, max_duration: 3h, allowed_sources: "0.0.0.0/0""#),
            line: 2, "allowed_sources of port 'ssh' must be a list", "found '0.0.0.0/0'"),
        InvalidCase(
            "host bits set",
            "ports:\n  ssh:\n    port: 22\n    max_duration: 3h\n    allowed_sources:\n      - 0.0.0.0/0\n"
                + "      - 203.0.113.7/24\n",
            line: 7, column: 9, "has host bits set; did you mean 203.0.113.0/24?"),
        InvalidCase(
            "host name as a source", ports(#"port: 22, max_duration: 3h, allowed_sources: ["example.org"]"#),
            line: 2, "'example.org' is not an IPv4 or IPv6 address"),
        InvalidCase(
            "prefix length out of range", ports(#"port: 22, max_duration: 3h, allowed_sources: ["2001:db8::/129"]"#),
            line: 2, "out of range for IPv6"),
        InvalidCase(
            "nested list as a source", ports(#"port: 22, max_duration: 3h, allowed_sources: [["0.0.0.0/0"]]"#),
            line: 2, "must be a single value", "found a list"),
        InvalidCase(
            "bad always_allow", "ports: {}\nalways_allow: [\"192.0.2.10/24\"]\n", line: 2, column: 16,
            "always_allow: 192.0.2.10/24 has host bits set; did you mean 192.0.2.0/24?"),
        InvalidCase(
            "always_allow as a mapping", "ports: {}\nalways_allow: { a: 1 }\n", line: 2, "always_allow must be a list"),

        // on_expiry.
        InvalidCase(
            "unknown on_expiry", "ports: {}\non_expiry: keep\n", line: 2, column: 12,
            "on_expiry 'keep' is not one of keep-sessions, cut-sessions", "did you mean keep-sessions?"),
        InvalidCase(
            "on_expiry with underscore", "ports: {}\non_expiry: cut_sessions\n", line: 2, "did you mean cut-sessions?"),
        InvalidCase(
            "on_expiry as a list", "ports: {}\non_expiry: [keep-sessions]\n", line: 2, "must be a single value"),

        // Roles.
        InvalidCase(
            "roles as a mapping", "ports: {}\nroles: { group: admins }\n", line: 2, "roles must be a list of roles"),
        InvalidCase("role as a string", "ports: {}\nroles: [admins]\n", line: 2, "role 1 must be a mapping"),
        InvalidCase(
            "unknown key in a role",
            Self.ports(valid) + "roles:\n  - { group: admins, ports: [ssh], max_duration: 1h }\n"
                + "  - { groups: devs, ports: [ssh], max_duration: 1h }\n",
            line: 5, column: 7, "unknown key 'groups' in role 2", "allowed keys: group, ports, max_duration",
            "did you mean group?"),
        InvalidCase(
            "role without group", Self.ports(valid) + "roles:\n  - { ports: [ssh], max_duration: 1h }\n", line: 4,
            "role 1 has no group"),
        InvalidCase(
            "role without ports", Self.ports(valid) + "roles:\n  - { group: admins, max_duration: 1h }\n", line: 4,
            "role 1 (group admins) has no ports"),
        InvalidCase(
            "role without max_duration", Self.ports(valid) + "roles:\n  - { group: admins, ports: [ssh] }\n",
            line: 4, "role 1 (group admins) has no max_duration"),
        InvalidCase(
            "group with a space",
            Self.ports(valid) + "roles:\n  - { group: \"my admins\", ports: [ssh], max_duration: 1h }\n",
            line: 4, "'my admins' is not a valid Unix group name"),
        InvalidCase(
            "numeric group", Self.ports(valid) + "roles:\n  - { group: 1000, ports: [ssh], max_duration: 1h }\n",
            line: 4, "'1000' is not a valid Unix group name"),
        InvalidCase(
            "empty group", Self.ports(valid) + "roles:\n  - { group: , ports: [ssh], max_duration: 1h }\n", line: 4,
            "must be a single value"),
        InvalidCase(
            "unknown port in a role",
            PolicyFixtures.exampleText.replacingOccurrences(
                of: "  - { group: developers",
                with: "  - { group: ops, ports: [ssh, sshh], max_duration: 1h }\n  - { group: developers"),
            line: 8, column: 32, "role 2 (group ops) names port 'sshh', which is not under ports",
            "known ports: ssh, postgres", "did you mean ssh?"),
        InvalidCase(
            "port number in a role",
            Self.ports(valid) + "roles:\n  - { group: ops, ports: [22/tcp], max_duration: 1h }\n",
            line: 4, "names port '22/tcp'", "22/tcp is ssh"),
        InvalidCase(
            "role when nothing is managed", "ports: {}\nroles:\n  - { group: ops, ports: [ssh], max_duration: 1h }\n",
            line: 3, "known ports: none"),
        InvalidCase(
            "empty role ports", Self.ports(valid) + "roles:\n  - { group: ops, ports: [], max_duration: 1h }\n",
            line: 4, "ports of role 1 (group ops) is empty"),
        InvalidCase(
            "role ports as a string", Self.ports(valid) + "roles:\n  - { group: ops, ports: ssh, max_duration: 1h }\n",
            line: 4, "must be a list of port names", "found 'ssh'"),
        InvalidCase(
            "port twice in a role",
            Self.ports(valid) + "roles:\n  - { group: ops, ports: [ssh, ssh], max_duration: 1h }\n",
            line: 4, "lists port 'ssh' twice"),
        InvalidCase(
            "role duration too long",
            Self.ports(valid) + "roles:\n  - { group: ops, ports: [ssh], max_duration: 30d }\n",
            line: 4, "max_duration 30d of role 1 (group ops) is longer than the limit of 7d"),
        InvalidCase(
            "role duration not a duration",
            Self.ports(valid) + "roles:\n  - { group: ops, ports: [ssh], max_duration: soon }\n",
            line: 4, "max_duration 'soon' of role 1 (group ops) is not a duration"),

        // grant_files.
        InvalidCase(
            "relative grant file", "ports: {}\ngrant_files: [\"/etc/a.json\", \"grants.json\"]\n", line: 2, column: 30,
            "grant file 'grants.json' is not an absolute path"),
        InvalidCase(
            "grant_files as a string", "ports: {}\ngrant_files: /etc/drawbridge/grants.json\n", line: 2,
            "grant_files must be a list of paths"),
        InvalidCase("empty grant file", "ports: {}\ngrant_files: [\"\"]\n", line: 2, "a path in grant_files is empty"),

        // hooks.
        InvalidCase(
            "unknown hook", ports(valid + ", hooks: [output]"), line: 2, "'output' is not a hook; use input or forward"),
        InvalidCase("empty hooks", ports(valid + ", hooks: []"), line: 2, "hooks of port 'ssh' must be a non-empty list"),
        InvalidCase("hook twice", ports(valid + ", hooks: [forward, forward]"), line: 2, "name forward twice"),
        InvalidCase("hooks as a string", ports(valid + ", hooks: forward"), line: 2, "must be a non-empty list"),

        // metrics.
        InvalidCase(
            "metrics on every IPv4 address", KnockPolicyTests.ssh + "metrics: { listen: \"0.0.0.0:9447\" }\n", line: 3,
            "would serve metrics on every address of the host"),
        InvalidCase(
            "metrics on every IPv6 address", KnockPolicyTests.ssh + "metrics: { listen: \"[::]:9447\" }\n", line: 3,
            "would serve metrics on every address of the host"),
        InvalidCase(
            "metrics on every IPv4 address, written IPv4-mapped",
            KnockPolicyTests.ssh + "metrics: { listen: \"[::ffff:0.0.0.0]:9447\" }\n", line: 3,
            "would serve metrics on every address of the host"),
        InvalidCase(
            "metrics on a host name", KnockPolicyTests.ssh + "metrics: { listen: \"localhost:9447\" }\n", line: 3,
            "'localhost' is not an IP address"),
        InvalidCase(
            "metrics without a port", KnockPolicyTests.ssh + "metrics: { listen: \"127.0.0.1\" }\n", line: 3,
            "is not address:port"),
        InvalidCase(
            "metrics on port 0", KnockPolicyTests.ssh + "metrics: { listen: \"127.0.0.1:0\" }\n", line: 3,
            "'0' is not a port number"),
        InvalidCase(
            "metrics IPv6 without brackets", KnockPolicyTests.ssh + "metrics: { listen: \"::1:9447\" }\n", line: 3,
            "an IPv6 address goes in brackets"),
        InvalidCase(
            "metrics without listen", KnockPolicyTests.ssh + "metrics: { port: 9447 }\n", line: 3, "unknown key"),

        // knock.
        InvalidCase(
            "knock without keys", KnockPolicyTests.ssh + "knock: { port: 62201/udp }\n", line: 3,
            "knock has no keys, so nobody could knock"),
        InvalidCase(
            "knock port over TCP", KnockPolicyTests.ssh + "knock: { port: 62201/tcp, keys: [] }\n", line: 3,
            "knock port 62201/tcp is not UDP"),
        InvalidCase(
            "knock port that is managed",
            "ports:\n  dns: { port: 53, protocol: udp, max_duration: 1h, allowed_sources: [\"0.0.0.0/0\"] }\n"
                + "knock: { port: 53/udp, keys: [] }\n", line: 3, "the knock port 53/udp is also the managed port dns"),
        InvalidCase(
            "knock key rule naming an unknown port",
            KnockPolicyTests.ssh + "knock:\n  keys:\n    - { key: \"\(KnockPolicyTests.keyLine)\", ports: [rdp], max_duration: 1h }\n",
            line: 5, "knock key 1 names port 'rdp', which is not under ports"),
        InvalidCase(
            "knock key rule with both key sources",
            KnockPolicyTests.ssh
                + "knock:\n  keys:\n    - { key: \"\(KnockPolicyTests.keyLine)\", authorized_keys: /etc/k, ports: [ssh], max_duration: 1h }\n",
            line: 5, "names both authorized_keys and key"),
        InvalidCase(
            "knock key of an unknown type",
            KnockPolicyTests.ssh + "knock:\n  keys:\n    - { key: \"ssh-dss AAAA\", ports: [ssh], max_duration: 1h }\n",
            line: 5, "key type 'ssh-dss' is not one of"),
        InvalidCase(
            "knock authorized_keys not absolute",
            KnockPolicyTests.ssh + "knock:\n  keys:\n    - { authorized_keys: keys/admins, ports: [ssh], max_duration: 1h }\n",
            line: 5, "is not an absolute path"),
        InvalidCase(
            "knock max_skew too long",
            KnockPolicyTests.ssh + "knock:\n  max_skew: 1h\n  keys: [{ authorized_keys: /etc/k, ports: [ssh], max_duration: 1h }]\n",
            line: 4, "knock max_skew 1h is longer than the limit of 10m"),
        InvalidCase(
            "knock unknown key", KnockPolicyTests.ssh + "knock: { prt: 62201/udp }\n", line: 3,
            "unknown key 'prt' in knock", "did you mean port?"),
    ]

    @Test("invalid policies are refused with the position and a clear message", arguments: invalidCases)
    func refuses(invalid: InvalidCase) {
        do {
            let policy = try Policy.parse(invalid.text, file: "policy.yaml")
            Issue.record("parsed, but should have failed: \(policy)")
        } catch {
            #expect(error.file == "policy.yaml")
            #expect(error.line == invalid.line, "\(error)")
            if let column = invalid.column {
                #expect(error.column == column, "\(error)")
            }
            for fragment in invalid.fragments {
                #expect(error.description.contains(fragment), "\(error) does not contain \(fragment)")
            }
        }
    }

    @Test("errors read like compiler diagnostics")
    func descriptions() {
        let full = PolicyError(
            file: "policy.yaml", line: 4, column: 13, message: "max_duration '3x' is not a duration",
            hint: "write it like 90s, 30m, 2h or 1h30m")
        #expect(
            full.description
                == "policy.yaml:4:13: max_duration '3x' is not a duration (hint: write it like 90s, 30m, 2h or 1h30m)")
        #expect(PolicyError(file: "p.yaml", line: 2, message: "bad").description == "p.yaml:2: bad")
        #expect(PolicyError(file: "/etc/p.yaml", message: "gone").description == "/etc/p.yaml: gone")
    }
}

struct HooksPolicyTests {
    @Test("hooks: input by default, forward, or both; the table's two port sets follow")
    func hooks() throws {
        let policy = try Policy.parse(
            """
            ports:
              ssh: { port: 22, max_duration: 1h, allowed_sources: ["0.0.0.0/0"] }
              app: { port: 2222, max_duration: 1h, allowed_sources: ["0.0.0.0/0"], hooks: [forward] }
              dns: { port: 53, protocol: udp, max_duration: 1h, allowed_sources: ["0.0.0.0/0"], hooks: [input, forward] }

            """, file: "p.yaml")
        #expect(policy.ports.map(\.hooks) == [[.input], [.forward], [.input, .forward]])
        #expect(policy.managedServices == [Service(port: 22, transport: .tcp), Service(port: 53, transport: .udp)])
        #expect(policy.forwardedServices == [Service(port: 2222, transport: .tcp), Service(port: 53, transport: .udp)])
    }
}

struct MetricsPolicyTests {
    @Test("metrics: one IPv4 or bracketed IPv6 address and a port; none means no endpoint")
    func metricsSection() throws {
        let v4 = try Policy.parse(KnockPolicyTests.ssh + "metrics: { listen: \"127.0.0.1:9447\" }\n", file: "p.yaml")
        #expect(v4.metrics == MetricsSettings(address: IPAddress("127.0.0.1")!, port: 9447))
        #expect(v4.metrics?.isLoopback == true && v4.metrics?.listen == "127.0.0.1:9447")
        let v6 = try Policy.parse(KnockPolicyTests.ssh + "metrics: { listen: \"[::1]:9100\" }\n", file: "p.yaml")
        #expect(v6.metrics?.listen == "[::1]:9100" && v6.metrics?.isLoopback == true)
        let explicit = try Policy.parse(
            KnockPolicyTests.ssh + "metrics: { listen: \"198.51.100.1:9447\" }\n", file: "p.yaml")
        #expect(explicit.metrics?.isLoopback == false)
        let mapped = try Policy.parse(
            KnockPolicyTests.ssh + "metrics: { listen: \"[::ffff:127.0.0.1]:9447\" }\n", file: "p.yaml")
        #expect(mapped.metrics?.isLoopback == true, "an IPv4-mapped loopback address is loopback")
        let mappedOther = try Policy.parse(
            KnockPolicyTests.ssh + "metrics: { listen: \"[::ffff:198.51.100.1]:9447\" }\n", file: "p.yaml")
        #expect(mappedOther.metrics?.isLoopback == false)
        #expect(try Policy.parse(KnockPolicyTests.ssh, file: "p.yaml").metrics == nil)
    }
}

struct KnockPolicyTests {
    static let ssh = "ports:\n  ssh: { port: 22, protocol: tcp, max_duration: 3h, allowed_sources: [\"0.0.0.0/0\"] }\n"
    static let keyLine = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ alice@laptop"

    @Test("the knock section: defaults, both key sources, host names; no section means no knocks")
    func knockSection() throws {
        let policy = try Policy.parse(
            Self.ssh + """
                knock:
                  max_skew: 45s
                  host: web-1.example.org
                  keys:
                    - { authorized_keys: /etc/drawbridge/knock.d/admins, ports: [ssh], max_duration: 3h }
                    - { key: "\(Self.keyLine)", ports: [ssh], max_duration: 1h }

                """, file: "policy.yaml")
        let knock = try #require(policy.knock)
        #expect(knock.port == 62201 && knock.logGroup == 62201 && knock.rate == 200)
        #expect(knock.maxSkew == 45 && knock.user == "drawbridge-knock")
        #expect(knock.hostNames == ["web-1.example.org"])
        #expect(
            knock.keys == [
                .init(keys: .authorizedKeys(path: "/etc/drawbridge/knock.d/admins"), ports: ["ssh"], maxDuration: 3 * 3_600),
                .init(keys: .key(line: Self.keyLine), ports: ["ssh"], maxDuration: 3_600),
            ])
        #expect(try Policy.parse(Self.ssh, file: "policy.yaml").knock == nil)

        let custom = try #require(
            try Policy.parse(
                Self.ssh
                    + "knock: { port: 4000, rate: 50, log_group: 7, user: knocker, keys: [{ authorized_keys: /k, ports: [ssh], max_duration: 1m }] }\n",
                file: "p"
            ).knock)
        #expect(custom.port == 4000 && custom.rate == 50 && custom.logGroup == 7 && custom.user == "knocker")
    }

    @Test("a knock names this host by a listed name (any case, trailing dot) or by the address it was sent to")
    func hostNames() {
        let destination = IPAddress("198.51.100.20")!
        var knock = KnockSettings(keys: [], hostNames: ["web-1.example.org"])
        #expect(knock.isThisHost("WEB-1.example.org.", machineName: "web-1", destination: destination))
        #expect(knock.isThisHost("198.51.100.20", machineName: "web-1", destination: destination))
        #expect(!knock.isThisHost("198.51.100.21", machineName: "web-1", destination: destination))
        #expect(!knock.isThisHost("web-1", machineName: "web-1", destination: destination), "listed names only")
        #expect(!knock.isThisHost("web-1.example.com", machineName: "web-1", destination: destination))
        knock.hostNames = []
        #expect(knock.isThisHost("web-1", machineName: "web-1", destination: destination), "default: the host name")
    }
}
