import ArgumentParser
import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import NetfilterModel
import SystemPackage

/// Exit statuses scripts can rely on (sysexits.h values where one fits).
enum ExitStatus {
    static let refused = ExitCode(77)  // EX_NOPERM: the policy or your role does not allow it
    static let unavailable = ExitCode(69)  // EX_UNAVAILABLE: the agent is not running or not reachable
    static let invalidData = ExitCode(65)  // EX_DATAERR: the policy file is invalid
    static let notFound = ExitCode(2)  // no such grant
    static let busy = ExitCode(75)  // EX_TEMPFAIL: the agent is at its connection limit; try again
}

@main
struct Drawbridge: ParsableCommand {
    /// A reader that goes away (`drawbridge list | head`) or an agent that hangs up must give an error, not kill
    /// the command with SIGPIPE.
    static func main() {
        signal(SIGPIPE, SIG_IGN)
        let arguments = CommandLine.arguments
        if Fleet.isFleetCommand(arguments) {
            Helper.run("drawbridge-etcd", arguments: Array(arguments.dropFirst()), need: "fleet commands need")
        }
        if arguments.count > 1, arguments[1] == "knock" {
            Helper.run(
                "drawbridge-knock", arguments: ["send"] + arguments.dropFirst(2), need: "drawbridge knock needs")
        }
        // The usual `drawbridge grant` is read without ArgumentParser (see QuickGrant); anything else goes to it.
        if let grant = QuickGrant(arguments: arguments) {
            do {
                try grant.run()
                Glibc.exit(0)
            } catch {
                Glibc.exit((error as? ExitCode ?? .failure).rawValue)
            }
        }
        main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "drawbridge",
        abstract: "Open a managed port to one source for a bounded time; the kernel closes it again at expiry.",
        discussion: """
            Talks to drawbridged over its local socket. Who you are is taken from your Unix credentials; the \
            policy's roles (by Unix group) decide which ports you may open and for how long.

            Examples:
              drawbridge grant ssh --from 203.0.113.7 --for 2h --reason "hotfix"
              drawbridge grant 5432/tcp --from 2001:db8:1::/64 --for 30m
              drawbridge list
              drawbridge revoke g-k3v9q2x7mz
              drawbridge check /etc/drawbridge/policy.yaml

            Fleet commands: grant, revoke and list with --host NAME or --group NAME write and read grants in etcd \
            for other hosts; they run drawbridge-etcd (its own package) with the same arguments. See \
            drawbridge-etcd --help.

            Knocking: drawbridge knock HOST PORT --for D signs a knock with your SSH key and sends it to HOST, \
            whose policy decides what your key may open; it runs drawbridge-knock send (see \
            drawbridge knock --help).

            Exit status: 0 done; 1 failed (kernel, storage or agent error); 2 no such grant; 64 bad arguments; \
            65 invalid policy file; 69 the agent is not running or the socket is not reachable; 75 the agent is \
            busy (try again); 77 refused by the policy or your role.
            """,
        version: drawbridgeVersion,
        subcommands: [
            Grant.self, Revoke.self, List.self, Check.self, Rules.self, Status.self, Metrics.self, KnockCommand.self,
        ])
}

struct ConnectionOptions: ParsableArguments {
    @Option(help: "The agent's socket.")
    var socket = LocalAPI.defaultSocketPath

    @Flag(help: "Print the agent's JSON answer instead of text, for scripts.")
    var json = false
}

// MARK: grant

extension Drawbridge {
    struct Grant: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "grant",
            abstract: "Open managed ports to a source for a while.",
            discussion: """
                PORT is a name from the policy (ssh) or NUMBER/PROTO (22/tcp). The source must lie inside the \
                port's allowed sources and the duration within both the port's and your role's longest duration: \
                a request that asks for more is refused, never trimmed. Granting what is already granted extends \
                it (same grant id, one kernel element).

                With --host NAME or --group NAME the grant is written to etcd for those hosts instead, by \
                drawbridge-etcd grant (see drawbridge-etcd grant --help).
                """)

        @Argument(help: ArgumentHelp("Managed ports: policy names or NUMBER/PROTO.", valueName: "port"))
        var ports: [String]

        @Option(
            name: .customLong("from"),
            help: ArgumentHelp(
                "The source address or CIDR prefix (203.0.113.7, 198.51.100.0/24, 2001:db8::/64).", valueName: "prefix")
        )
        var source: String?

        @Option(name: .customLong("for"), help: ArgumentHelp("How long: 90s, 30m, 2h, 1h30m.", valueName: "duration"))
        var duration: String

        @Option(help: "Why: kept in the audit trail (one line, at most 1024 bytes, no control characters).")
        var reason: String = ""

        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            if let problem = Self.problem(ports: ports, source: source, duration: duration, reason: reason) {
                throw ValidationError(problem)
            }
        }

        /// What is wrong with the arguments, in the words ArgumentParser shows; nil when nothing is.
        static func problem(ports: [String], source: String?, duration: String, reason: String) -> String? {
            guard !ports.isEmpty else { return "name at least one port, like ssh or 22/tcp" }
            guard let source else {
                var hint = ""
                if let client = getenv("SSH_CONNECTION").map({ String(cString: $0) })?.split(separator: " ").first {
                    hint = "; your SSH session comes from \(client): --from \(client)"
                }
                return "--from is required: the address or prefix to open the ports to\(hint)"
            }
            do {
                _ = try IPPrefix(parsing: source)
            } catch {
                return "--from: \(error.description)"
            }
            guard GrantDuration.parse(duration) != nil else {
                return "--for '\(TextCheck.escaped(duration))' is not a duration; write it like 90s, 30m, 2h or 1h30m"
            }
            return TextCheck.problem(with: reason, field: "--reason", maximumBytes: TextCheck.maximumReasonBytes)
        }

        func run() throws {
            // validate() has made sure of the source.
            try QuickGrant(
                ports: ports, source: source ?? "", duration: duration, reason: reason, socket: connection.socket,
                json: connection.json
            ).run()
        }
    }
}

// MARK: revoke

extension Drawbridge {
    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke",
            abstract: "End grants now.",
            discussion: """
                Give a grant id (from `drawbridge list`), or --from to end every grant from inside a prefix. With \
                --host NAME or --group NAME the grant is deleted from etcd instead (drawbridge-etcd revoke).
                """)

        @Argument(help: "The grant to end.")
        var id: String?

        @Option(
            name: .customLong("from"),
            help: ArgumentHelp("End every grant whose source lies inside this prefix.", valueName: "prefix"))
        var source: String?

        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            guard (id == nil) != (source == nil) else {
                throw ValidationError("give either a grant id or --from PREFIX")
            }
            if let source {
                do { _ = try IPPrefix(parsing: source) } catch { throw ValidationError("--from: \(error.description)") }
            }
        }

        func run() throws {
            let response = try Client(options: connection).send(
                LocalAPI.Request(command: .revoke, source: source, id: id))
            guard !connection.json else { return }
            for status in response.grants ?? [] {
                print("revoked \(status.grant.id): \(status.grant.source) \(status.grant.portsDescription)")
            }
            Output.warnings(response)
        }
    }
}

// MARK: list

extension Drawbridge {
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "Show active grants, with the time the kernel still gives each.",
            discussion: "With --host NAME, --group NAME or --all: the grants in etcd instead (drawbridge-etcd list).")

        @OptionGroup var connection: ConnectionOptions

        func run() throws {
            let response = try Client(options: connection).send(LocalAPI.Request(command: .list))
            guard !connection.json else { return }
            let grants = response.grants ?? []
            guard !grants.isEmpty else {
                print("no active grants")
                return
            }
            var rows = [["ID", "SOURCE", "PORTS", "EXPIRES (UTC)", "KERNEL", "BY", "ORIGIN", "REASON"]]
            for status in grants {
                let grant = status.grant
                let kernel = grant.ports.map { port -> String in
                    guard let remaining = status.kernelRemainingSeconds[port.name] ?? nil else { return "absent" }
                    return GrantDuration.format(remaining)
                }
                // Text from outside is shown escaped: no control character reaches the terminal.
                rows.append([
                    TextCheck.escaped(grant.id), grant.source.description,
                    grant.ports.map { "\($0.name)" }.joined(separator: ","), Timestamp.format(grant.expiresAt),
                    Array(Set(kernel)).sorted().joined(separator: ","), TextCheck.escaped(grant.requestedBy),
                    TextCheck.escaped(grant.origin.description), TextCheck.escaped(grant.reason),
                ])
            }
            print(Format.table(rows), terminator: "")
        }
    }
}

// MARK: status

extension Drawbridge {
    struct Status: ParsableCommand {
        // Names are given, not derived from the type: deriving costs dynamic casts at every start.
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "Show whether the agent runs and what it manages.")

        @OptionGroup var connection: ConnectionOptions

        func run() throws {
            let response = try Client(options: connection).send(LocalAPI.Request(command: .status))
            guard !connection.json, let status = response.status else { return }
            var kernel = "kernel \(status.kernelRelease)"
            switch status.kernelDestroysElements {
            case true?: kernel += " (idempotent element deletes)"
            case false?: kernel += " (no DESTROYSETELEM before Linux 6.3: deletes near expiry go apart)"
            case nil: break
            }
            print("drawbridged \(status.version), \(kernel)")
            print("policy: \(status.policyPath)")
            print("managed: \(status.managedPorts.map { "\($0.name) \($0.service)" }.joined(separator: ", "))")
            print("on expiry: \(status.onExpiry.rawValue)")
            print("active grants: \(status.activeGrants)")
            for port in status.ports ?? [] {
                var line = "  \(port.name) \(port.port)"
                if let hooks = port.hooks, hooks != ["input"] { line += " (\(hooks.joined(separator: ", ")))" }
                line += ": \(port.grants) grant\(port.grants == 1 ? "" : "s")"
                if let dropped = port.dropped, let accepted = port.accepted, let seconds = port.seconds {
                    line += "; \(dropped) dropped, \(accepted) accepted in the last \(Int(seconds.rounded())) s"
                }
                print(line)
            }
            print("table: \(status.table)")
            print("repairs since start: \(status.repairs)" + (status.lastRepair.map { ", last \($0)" } ?? ""))
            if let checks = status.safetyChecks { print("safety checks since start: \(checks)") }
            print("storage: \(status.storage)")
            print("audit trail: \(status.audit)")
            if let etcd = status.etcd {
                var line = "etcd: \(etcd.connection)" + (etcd.endpoint.map { " to \(TextCheck.escaped($0))" } ?? "")
                if let applied = etcd.appliedRevision {
                    line += ", applied revision \(applied)"
                    if let latest = etcd.latestRevision { line += ", \(max(0, latest - applied)) behind" }
                }
                if let seconds = etcd.secondsSinceContact { line += ", last report \(Int(seconds))s ago" }
                print(line)
                print("etcd host \(etcd.host): \(etcd.grants) grants from etcd, \(etcd.refused) keys refused")
                if let error = etcd.error { print("etcd error: \(TextCheck.escaped(error))") }
            }
            if let knock = status.knock {
                let contact =
                    knock.secondsSinceContact.map { "last report from drawbridge-knock \(Int($0))s ago" }
                    ?? "no report from drawbridge-knock since the agent started (systemctl status drawbridge-knock)"
                print("knock: \(knock.port); \(knock.opened) opened, \(knock.refused) refused since start; \(contact)")
            }
            print("metrics: \(status.metrics ?? "no endpoint (drawbridge metrics prints them)")")
            for warning in status.warnings { print("warning: \(TextCheck.escaped(warning))") }
        }
    }
}

// MARK: metrics

extension Drawbridge {
    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "metrics", abstract: "Print the agent's Prometheus metrics.",
            discussion: """
                Prints the same text the agent serves at GET /metrics when the policy has a metrics section \
                (metrics: { listen: "127.0.0.1:9447" }), read over the local socket, so it works on hosts that \
                expose no port: drawbridge_up, drawbridge_grants_active{port,origin}, \
                drawbridge_grants_total{event}, drawbridge_repairs_total, drawbridge_kernel_apply_seconds and \
                drawbridge_request_seconds{command}. Pipe it to `promtool check metrics` to lint it.
                """)

        @OptionGroup var connection: ConnectionOptions

        func run() throws {
            let response = try Client(options: connection).send(LocalAPI.Request(command: .metrics))
            guard !connection.json, let text = response.metrics else { return }
            print(text, terminator: "")
        }
    }
}

// MARK: check and rules

extension Drawbridge {
    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Validate a policy file and show what it would enforce.",
            discussion: "Exits 0 when the policy is valid (warnings included), 65 when it is not.")

        @Argument(help: "The policy file.")
        var file = "/etc/drawbridge/policy.yaml"

        @Flag(help: "Print the result as JSON.")
        var json = false

        struct Report: Encodable {
            struct Port: Encodable {
                var name: String
                var port: Int
                var `protocol`: String
                var maxDuration: String
                var allowedSources: [String]
                var hooks: [String]
                enum CodingKeys: String, CodingKey {
                    case name, port, `protocol`
                    case maxDuration = "max_duration"
                    case allowedSources = "allowed_sources"
                    case hooks
                }
            }
            struct Role: Encodable {
                var group: String
                var ports: [String]
                var maxDuration: String
                enum CodingKeys: String, CodingKey {
                    case group, ports
                    case maxDuration = "max_duration"
                }
            }
            var valid: Bool
            var error: String?
            var managed: [Port]?
            var alwaysAllow: [String]?
            var onExpiry: String?
            var roles: [Role]?
            var grantFiles: [String]?
            var knock: Knock?
            var warnings: [String]?
            enum CodingKeys: String, CodingKey {
                case valid, error, managed
                case alwaysAllow = "always_allow"
                case onExpiry = "on_expiry"
                case roles
                case grantFiles = "grant_files"
                case knock, warnings
            }
            struct Knock: Encodable {
                struct KeyRule: Encodable {
                    var keys: String
                    var ports: [String]
                    var maxDuration: String
                    enum CodingKeys: String, CodingKey {
                        case keys, ports
                        case maxDuration = "max_duration"
                    }
                }
                var port: String
                var maxSkew: String
                var keys: [KeyRule]
                enum CodingKeys: String, CodingKey {
                    case port
                    case maxSkew = "max_skew"
                    case keys
                }
            }
        }

        /// How `check` says where a port is guarded, when not only on input.
        static func hooksNote(_ hooks: [Policy.Hook]) -> String {
            switch hooks {
            case [.input]: return ""
            case [.forward]: return "; forwarded traffic only (containers, VMs: by the port asked for, before DNAT)"
            default: return "; to this host and forwarded (containers, VMs: by the port asked for, before DNAT)"
            }
        }

        func run() throws {
            let policy: Policy
            do {
                policy = try PolicyFile.load(file)
            } catch {
                if json {
                    Output.json(Report(valid: false, error: error.description))
                } else {
                    Output.error("\(error)")
                }
                throw ExitStatus.invalidData
            }
            let warnings = PolicyReview.warnings(for: policy)
            if json {
                Output.json(
                    Report(
                        valid: true, error: nil,
                        managed: policy.ports.map {
                            Report.Port(
                                name: $0.name, port: Int($0.service.port), protocol: $0.service.transport.rawValue,
                                maxDuration: GrantDuration.format($0.maxDuration),
                                allowedSources: $0.allowedSources.map(\.description), hooks: $0.hooks.map(\.rawValue))
                        },
                        alwaysAllow: policy.alwaysAllow.map(\.description), onExpiry: policy.onExpiry.rawValue,
                        roles: policy.roles.map {
                            Report.Role(
                                group: $0.group, ports: $0.ports, maxDuration: GrantDuration.format($0.maxDuration))
                        },
                        grantFiles: policy.grantFiles,
                        knock: policy.knock.map { knock in
                            Report.Knock(
                                port: knock.service.description, maxSkew: GrantDuration.format(knock.maxSkew),
                                keys: knock.keys.map {
                                    Report.Knock.KeyRule(
                                        keys: Self.describe($0.keys), ports: $0.ports,
                                        maxDuration: GrantDuration.format($0.maxDuration))
                                })
                        }, warnings: warnings))
                return
            }
            print("\(file): valid")
            print("\nmanaged ports (closed except for grants):")
            for port in policy.ports {
                print(
                    "  \(port.name) \(port.service): grants up to \(GrantDuration.format(port.maxDuration)) "
                        + "from within \(port.allowedSources.map(\.description).joined(separator: ", "))"
                        + Self.hooksNote(port.hooks))
            }
            if policy.ports.isEmpty { print("  none") }
            print(
                "\nalways allowed (break-glass): \(policy.alwaysAllow.isEmpty ? "none" : policy.alwaysAllow.map(\.description).joined(separator: ", "))"
            )
            print(
                "on expiry: \(policy.onExpiry.rawValue)"
                    + (policy.onExpiry == .keepSessions
                        ? " (open connections continue)" : " (open connections are cut)"))
            print("\nroles:")
            for role in policy.roles {
                print(
                    "  group \(role.group): \(role.ports.joined(separator: ", ")) for up to \(GrantDuration.format(role.maxDuration))"
                )
            }
            print("  root: any managed port, within each port's limits")
            if !policy.grantFiles.isEmpty { print("\ngrants files: \(policy.grantFiles.joined(separator: ", "))") }
            if let knock = policy.knock {
                print(
                    "\nknocks on \(knock.service) (handed to drawbridge-knock; never answered), timestamps within "
                        + "\(GrantDuration.format(knock.maxSkew)):")
                for rule in knock.keys {
                    print(
                        "  \(Self.describe(rule.keys)): \(rule.ports.joined(separator: ", ")) for up to "
                            + GrantDuration.format(rule.maxDuration))
                }
            }
            if let metrics = policy.metrics {
                print(
                    "\nmetrics: served at http://\(metrics.listen)/metrics"
                        + (metrics.isLoopback ? "" : " (not a loopback address: reachable from the network)"))
            }
            for warning in warnings { print("\nwarning: \(warning)") }
        }

        /// `keys in /etc/…/admins`, or `key ssh-ed25519 … alice@laptop` (the base64 left out).
        static func describe(_ keys: KnockSettings.KeyRule.Keys) -> String {
            switch keys {
            case .authorizedKeys(let path): return "keys in \(path)"
            case .key(let line):
                let fields = line.split(separator: " ")
                return "key \(fields[0])" + (fields.count > 2 ? " " + fields[2...].joined(separator: " ") : "")
            }
        }
    }

    struct Rules: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rules",
            abstract: "Print the nftables table drawbridged builds for a policy, in nft syntax.",
            discussion: "Grants are not shown: they are elements added at run time (see `drawbridge list`).")

        @Option(name: [.customLong("config"), .short], help: "The policy file.")
        var config = "/etc/drawbridge/policy.yaml"

        func run() throws {
            let policy: Policy
            do {
                policy = try PolicyFile.load(config)
            } catch {
                Output.error("\(error)")
                throw ExitStatus.invalidData
            }
            let layout = TableLayout(policy: policy)
            print(
                DrawbridgeTable.ruleset(
                    mode: layout.mode, managedServices: layout.managedServices, alwaysAllowed: layout.alwaysAllowed,
                    knock: layout.knock, forwardedServices: layout.forwardedServices),
                terminator: "")
        }
    }
}

/// Advice about a valid policy that may still hurt.
enum PolicyReview {
    static func warnings(for policy: Policy) -> [String] {
        var warnings: [String] = []
        if policy.alwaysAllow.isEmpty,
            policy.ports.contains(where: { $0.service == Service(port: 22, transport: .tcp) })
        {
            warnings.append(
                "SSH (22/tcp) is managed and always_allow is empty: if drawbridged cannot be reached, nobody can "
                    + "log in over the network; add your management network to always_allow")
        }
        for role in policy.roles where Accounts.groupID(named: role.group) == nil {
            warnings.append("group \(role.group) does not exist on this host; its role grants nothing until it does")
        }
        for port in policy.ports where port.allowedSources.contains(where: { $0.length == 0 }) {
            warnings.append(
                "\(port.name) may be opened to the whole internet (\(port.allowedSources.filter { $0.length == 0 }.map(\.description).joined(separator: ", "))) by anyone with a role for it"
            )
        }
        return warnings
    }
}

// MARK: Fleet commands

/// `grant`, `revoke` and `list` with `--host` or `--group` (and `list --all`) act on grants in etcd for a fleet. This
/// binary has no gRPC, HTTP/2 or TLS code (it stays within its size budget, and a requester's command needs no
/// agent), so it hands such a command line to drawbridge-etcd, unchanged.
enum Fleet {
    static let options = ["--host", "--group"]

    /// Whether the arguments are a fleet command: one of the three commands with a fleet option before any `--`.
    static func isFleetCommand(_ arguments: [String]) -> Bool {
        guard arguments.count > 2, ["grant", "revoke", "list"].contains(arguments[1]) else { return false }
        for argument in arguments.dropFirst(2) {
            if argument == "--" { return false }
            let name = String(argument.prefix { $0 != "=" })
            if options.contains(name) || (arguments[1] == "list" && argument == "--all") { return true }
        }
        return false
    }

}

/// `drawbridge knock`: listed here for --help; main() hands the command line to drawbridge-knock send first.
struct KnockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "knock",
        abstract: "Open a port on another host with your SSH key (runs drawbridge-knock send).")

    @Argument(parsing: .captureForPassthrough, help: "HOST PORT… --for DURATION [--reason TEXT] [--key FILE]")
    var arguments: [String] = []

    func run() throws {
        Helper.run("drawbridge-knock", arguments: ["send"] + arguments, need: "drawbridge knock needs")
    }
}

/// Commands that live in binaries of their own packages.
enum Helper {
    /// Replaces this process with `name` (beside this executable, else /usr/bin) run with `arguments`, or exits 69
    /// saying which package is missing.
    static func run(_ name: String, arguments: [String], need: String) -> Never {
        var candidates = ["/usr/bin/\(name)"]
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if length > 0 {
            let executable = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let slash = executable.lastIndex(of: "/") {
                candidates.insert(String(executable[..<slash]) + "/\(name)", at: 0)
            }
        }
        for path in candidates where access(path, X_OK) == 0 {
            let argv = ([name] + arguments).map { strdup($0) } + [nil]
            execv(path, argv)
            Output.error("cannot run \(path): \(String(cString: strerror(errno)))")
            exit(ExitStatus.unavailable.rawValue)
        }
        Output.error("\(need) \(name) (package \(name))")
        exit(ExitStatus.unavailable.rawValue)
    }
}

// MARK: Talking to the agent

struct Client {
    var socket: String
    var json: Bool

    init(options: ConnectionOptions) {
        socket = options.socket
        json = options.json
    }

    init(socket: String, json: Bool) {
        self.socket = socket
        self.json = json
    }

    /// Sends one request and returns the answer; prints errors in words and exits with the matching status.
    ///
    /// With --json the answer has been printed as it came, and only its `ok` and `error` are read from it (so a list
    /// of 100,000 grants is not decoded only to be dropped): the response returned then holds nothing else.
    func send(_ request: LocalAPI.Request) throws -> LocalAPI.Response {
        let raw = try answer(request)
        let response: LocalAPI.Response
        if json {
            guard let head = try? LocalAPI.decoder().decode(Head.self, from: Data(raw)) else { throw notUnderstood() }
            response = LocalAPI.Response(ok: head.ok, error: head.error)
        } else {
            guard let full = try? LocalAPI.decoder().decode(LocalAPI.Response.self, from: Data(raw)) else {
                throw notUnderstood()
            }
            response = full
        }
        try check(ok: response.ok, response.error)
        return response
    }

    /// Whether an answer succeeded, and why not.
    private struct Head: Decodable {
        var ok: Bool
        var error: LocalAPI.Failure?
    }

    /// The answer's bytes, printed as they are with --json; a connection problem is printed and thrown as its status.
    func answer(_ request: LocalAPI.Request) throws -> [UInt8] {
        let raw: [UInt8]
        do {
            raw = try AgentSocket.exchange(line: request.jsonLine(), path: socket).answer
        } catch {
            Output.error(error.message)
            switch error.kind {
            case .notRunning, .permissionDenied, .unreachable: throw ExitStatus.unavailable
            case .pathTooLong: throw ExitCode.validationFailure
            case .noAnswer: throw ExitCode.failure
            }
        }
        if json { StandardOutput.write(String(decoding: raw, as: UTF8.self) + "\n") }
        return raw
    }

    /// Says that the answer could not be read; the status to exit with.
    func notUnderstood() -> ExitCode {
        Output.error("the agent's answer was not understood; is \(socket) a drawbridged socket?")
        return .failure
    }

    /// Throws the status for a failed request (after printing its message, unless --json printed the answer).
    func check(ok: Bool, _ failure: LocalAPI.Failure?) throws {
        guard let failure, !ok else { return }
        if !json { Output.error(failure.message) }
        switch failure.code {
        case .refused, .forbidden: throw ExitStatus.refused
        case .notFound: throw ExitStatus.notFound
        case .badRequest: throw ExitCode.validationFailure
        case .busy: throw ExitStatus.busy
        case .kernel, .internal, .storage: throw ExitCode.failure
        }
    }
}

enum Output {
    static func error(_ message: String) {
        StandardError.write("drawbridge: \(TextCheck.escaped(message))\n")
    }

    static func warnings(_ response: LocalAPI.Response) {
        for warning in response.warnings ?? [] { error("warning: \(warning)") }
    }

    static func json(_ value: some Encodable) {
        if let data = try? LocalAPI.encoder().encode(value) { print(String(decoding: data, as: UTF8.self)) }
    }
}

enum Format {
    static func remaining(_ date: Date) -> String {
        let seconds = date.timeIntervalSince(SystemClock.wall())
        return seconds > 0 ? "in \(GrantDuration.format(seconds))" : "expired"
    }

    static func table(_ rows: [[String]]) -> String { TextTable.render(rows) }
}
