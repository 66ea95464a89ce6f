import ArgumentParser
import DrawbridgeCore
import Etcd
import EtcdSync
import FoundationEssentials
import Glibc
import HostSystem

// MARK: grant

extension DrawbridgeEtcd {
    struct Grant: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "grant",
            abstract: "Write a grant for a host or a group to etcd, and wait for the hosts to apply it.",
            discussion: """
                Examples:
                  drawbridge-etcd grant ssh --from 203.0.113.7 --for 2h --host web-1 --reason "hotfix"
                  drawbridge-etcd grant ssh 5432/tcp --from 198.51.100.0/24 --for 30m --group db --wait 10

                Checked here, before anything is written: ports are policy names (ssh) or NUMBER/PROTO (22/tcp), \
                at most 16; --from is an address or prefix without host bits; --for is a duration like 90s, 30m, \
                2h or 1h30m; --reason is one line of printable text (at most 1024 bytes); --id and the host or group \
                names have a safe spelling. etcd then checks that your user may write under that host's or group's \
                key (a writer limited to group web cannot write for group db).

                Checked by each host, against its own policy, when its agent reads the value: whether the ports are \
                managed there, the source lies within their allowed sources, and the duration within their longest \
                grant. A grant that asks for more is refused, never trimmed; the host reports the refusal in its \
                status key, and this command prints it.

                The value is {"id","source","ports","expires_at","reason","requested_by"} with an absolute expiry; \
                the key is written with a lease of the remaining time plus 5 minutes, so etcd deletes it after it \
                expired (the hosts enforce the expiry in the value, not the lease). Writing an existing --id again \
                replaces that grant.

                Then it waits up to --wait seconds for the status keys of the hosts concerned (the named host, or \
                every host whose status lists the group) and prints, per host, applied, refused with the reason, or \
                no report yet. Exit status 77 when a host refused.
                """)

        @Argument(help: ArgumentHelp("Managed ports: policy names or NUMBER/PROTO.", valueName: "port"))
        var ports: [String]

        @Option(
            name: .customLong("from"),
            help: ArgumentHelp(
                "The source address or CIDR prefix (203.0.113.7, 198.51.100.0/24, 2001:db8::/64).", valueName: "prefix"))
        var source: String

        @Option(name: .customLong("for"), help: ArgumentHelp("How long: 90s, 30m, 2h, 1h30m.", valueName: "duration"))
        var duration: String

        @OptionGroup var target: TargetOptions

        @Option(help: "Why: kept in every host's audit trail.")
        var reason = ""

        @Option(help: ArgumentHelp("The grant's id (default: a new random one, g-…).", valueName: "id"))
        var id: String?

        @Option(help: ArgumentHelp("Who asks (default: $USER, else your login name).", valueName: "name"))
        var requestedBy: String?

        @Option(help: ArgumentHelp("How long to wait for the hosts' reports; 0 does not wait.", valueName: "seconds"))
        var wait: Double = 5

        @Flag(help: "Print the result as JSON.")
        var json = false

        @OptionGroup var etcd: EtcdOptions

        var requester: String {
            requestedBy ?? getenv("USER").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
                ?? Accounts.currentUser
        }

        func makeGrant() throws -> FleetGrant {
            do {
                return try FleetGrant.make(
                    ports: ports, source: source, duration: duration, reason: reason, id: id, requestedBy: requester,
                    target: try target.target(), now: SystemClock.wall())
            } catch let problem as FleetProblem {
                throw ValidationError(problem.message)
            }
        }

        func validate() throws {
            _ = try makeGrant()
            guard wait >= 0, wait <= 600 else { throw ValidationError("--wait is 0 to 600 seconds") }
        }

        struct Report: Encodable {
            var id: String
            var key: String
            var target: String
            var revision: Int64
            var expiresAt: Date
            var hosts: [HostReport]

            enum CodingKeys: String, CodingKey {
                case id, key, target, revision
                case expiresAt = "expires_at"
                case hosts
            }
        }

        func run() async throws {
            let grant = try makeGrant()
            let settings = try etcd.settings()
            let key = grant.key(prefix: settings.prefix)
            let json = self.json
            let wait = self.wait
            let (revision, outcomes) = try await etcd.withClient(settings) { client in
                let existed = id != nil ? try? await client.range(prefix: key).keyValues.contains { $0.key == key } : false
                let lease = try await client.grantLease(ttl: grant.leaseTTL(now: SystemClock.wall()))
                let revision: Int64
                do {
                    revision = try await client.put(key, value: grant.value(), lease: lease)
                } catch {
                    try? await client.revokeLease(lease)
                    throw error
                }
                if !json {
                    let ports = grant.ports.joined(separator: ", ")
                    print(
                        "\(existed == true ? "replaced" : "granted") \(grant.id) for \(grant.target): \(grant.source) "
                            + "may reach \(ports) until \(Timestamp.format(grant.expiresAt)) "
                            + "(\(Output.remaining(grant.expiresAt)))")
                    print("key \(key) (revision \(revision))")
                }
                guard wait > 0 else { return (revision, [HostOutcome]()) }
                let outcomes = await Self.waitForHosts(
                    client, key: key, target: grant.target, revision: revision, prefix: settings.prefix,
                    seconds: wait, quiet: json)
                return (revision, outcomes)
            }
            if json {
                Output.json(
                    Report(
                        id: grant.id, key: key, target: grant.target.description, revision: revision,
                        expiresAt: grant.expiresAt, hosts: outcomes.map(HostReport.init)))
            } else if wait > 0 {
                if outcomes.isEmpty {
                    print("no host reports following \(grant.target) yet")
                }
                for outcome in outcomes { print("\(outcome.host): \(TextCheck.escaped(outcome.text))") }
            }
            if outcomes.contains(where: { if case .refused = $0.state { true } else { false } }) {
                throw ExitStatus.refused
            }
        }

        /// Reads the status keys until every host concerned has settled, or `seconds` pass.
        static func waitForHosts(
            _ client: EtcdClient, key: String, target: FleetTarget, revision: Int64, prefix: String, seconds: Double,
            quiet: Bool
        ) async -> [HostOutcome] {
            let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
            var outcomes: [HostOutcome] = []
            while true {
                do {
                    let statuses = try await HostStatuses.read(client, prefix: prefix).statuses
                    outcomes = HostOutcome.outcomes(of: key, target: target, revision: revision, statuses: statuses)
                } catch {
                    if !quiet { Output.error("cannot read the hosts' reports: \(error)") }
                    return outcomes
                }
                if !outcomes.isEmpty, outcomes.allSatisfy(\.isSettled) { return outcomes }
                if ContinuousClock.now >= deadline { return outcomes }
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
    }
}

/// One host's word on one grant, for JSON.
struct HostReport: Encodable {
    var host: String
    var state: String
    var reason: String?

    init(_ outcome: HostOutcome) {
        host = outcome.host
        state = outcome.stateName
        switch outcome.state {
        case .refused(let reason): self.reason = reason
        case .pending: self.reason = outcome.agentProblem.map { "agent: \($0)" }
        case .applied, .absent: self.reason = nil
        }
    }
}

/// The status keys under a prefix.
enum HostStatuses {
    static func read(
        _ client: EtcdClient, prefix: String
    ) async throws(EtcdError) -> (statuses: [HostStatus], unreadable: [String]) {
        let range = try await client.range(prefix: EtcdLayout.statusDirectory(prefix: prefix))
        var statuses: [HostStatus] = []
        var unreadable: [String] = []
        for keyValue in range.keyValues {
            if let status = HostStatus.decode(keyValue.value) {
                statuses.append(status)
            } else {
                unreadable.append(keyValue.key)
            }
        }
        return (statuses, unreadable)
    }
}

// MARK: revoke

extension DrawbridgeEtcd {
    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke",
            abstract: "Delete a grant from etcd; every host that enforces it ends it.",
            discussion: """
                Examples:
                  drawbridge-etcd revoke g-k3v9q2x7mz --group web
                  drawbridge-etcd revoke deploy --host web-1

                The id is the last part of the key (drawbridge-etcd list shows it). Exit status 2 when there is no \
                such key.
                """)

        @Argument(help: "The grant's id.")
        var id: String

        @OptionGroup var target: TargetOptions

        @Flag(help: "Print the result as JSON.")
        var json = false

        @OptionGroup var etcd: EtcdOptions

        func validate() throws {
            _ = try target.target()
            if let problem = TextCheck.identifierProblem(id, field: "the grant id") { throw ValidationError(problem) }
        }

        struct Report: Encodable {
            var id: String
            var key: String
            var deleted: Bool
            var revision: Int64
        }

        func run() async throws {
            let target = try target.target()
            let settings = try etcd.settings()
            let key = target.directory(prefix: settings.prefix) + id
            let (revision, deleted) = try await etcd.withClient(settings) { client in try await client.delete(key) }
            if json {
                Output.json(Report(id: id, key: key, deleted: deleted, revision: revision))
            } else if deleted {
                print("revoked \(id) for \(target) (key \(key), revision \(revision))")
            }
            guard deleted else {
                if !json { Output.error("no grant \(id) for \(target): key \(key) does not exist") }
                throw ExitStatus.notFound
            }
        }
    }
}

// MARK: list

extension DrawbridgeEtcd {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "Show the grants etcd holds, and which hosts applied or refused each.",
            discussion: """
                Examples:
                  drawbridge-etcd list --group web
                  drawbridge-etcd list --all --json

                What etcd holds is not what a host enforces: each host checks every grant against its own policy. \
                The HOSTS column comes from the hosts' status keys (needs read access to <prefix>/v1/status/).
                """)

        @OptionGroup var target: TargetOptions

        @Flag(help: "Every grant under the prefix, for every host and group.")
        var all = false

        @Flag(help: "Print the result as JSON.")
        var json = false

        @OptionGroup var etcd: EtcdOptions

        func validate() throws {
            if all {
                guard target.host == nil, target.group == nil else {
                    throw ValidationError("give --all, or one of --host NAME or --group NAME")
                }
            } else {
                _ = try target.target()
            }
        }

        struct Entry: Encodable {
            var key: String
            var id: String
            var target: String
            var source: String?
            var ports: [String]?
            var expiresAt: Date?
            var requestedBy: String?
            var reason: String?
            var problem: String?
            var hosts: [HostReport]

            enum CodingKeys: String, CodingKey {
                case key, id, target, source, ports
                case expiresAt = "expires_at"
                case requestedBy = "requested_by"
                case reason, problem, hosts
            }
        }

        func run() async throws {
            let target: FleetTarget? = all ? nil : try self.target.target()
            let settings = try etcd.settings()
            let prefix = settings.prefix
            let directory = target?.directory(prefix: prefix) ?? "\(prefix)/v1/grants/"
            let (grants, statuses) = try await etcd.withClient(settings) { client in
                let grants = try await client.range(prefix: directory)
                let statuses: [HostStatus]?
                do throws(EtcdError) {
                    statuses = try await HostStatuses.read(client, prefix: prefix).statuses
                } catch {
                    statuses = nil
                    if error.code != .permissionDenied { throw error }
                }
                return (grants, statuses)
            }
            var entries: [Entry] = []
            for keyValue in grants.keyValues {
                guard let (keyTarget, id) = FleetTarget.parse(key: keyValue.key, prefix: prefix) else { continue }
                var entry = Entry(key: keyValue.key, id: id, target: keyTarget.description, hosts: [])
                var reader = JSONReader(keyValue.value, maximumDepth: 3)
                do throws(FieldError) {
                    let value = try GrantEntry.read(&reader, place: "value")
                    do throws(JSONError) { try reader.finish() } catch { throw FieldError("value: \(error)") }
                    entry.source = value.source.description
                    entry.ports = value.ports
                    entry.expiresAt = value.expiresAt
                    entry.requestedBy = value.requestedBy
                    entry.reason = value.reason
                } catch {
                    entry.problem = error.description
                }
                entry.hosts = HostOutcome.outcomes(
                    of: keyValue.key, target: keyTarget, revision: keyValue.modRevision, statuses: statuses ?? []
                ).filter { $0.state != .pending || statuses != nil }.map(HostReport.init)
                entries.append(entry)
            }
            if json {
                Output.json(entries)
                return
            }
            guard !entries.isEmpty else {
                print("no grants under \(directory)")
                return
            }
            var rows = [["ID", "TARGET", "SOURCE", "PORTS", "EXPIRES", "BY", "HOSTS", "REASON"]]
            var refusals: [String] = []
            for entry in entries {
                let hosts = entry.hosts.map { "\($0.host) \($0.state)" }.joined(separator: ", ")
                for host in entry.hosts where host.state == "refused" {
                    refusals.append("\(entry.id) at \(host.host): \(host.reason ?? "")")
                }
                rows.append(
                    [
                        entry.id, entry.target, entry.source ?? "-", entry.ports?.joined(separator: ",") ?? "-",
                        entry.expiresAt.map(Output.remaining) ?? "-", entry.requestedBy ?? "-",
                        statuses == nil ? "(status unreadable)" : (hosts.isEmpty ? "-" : hosts),
                        entry.problem.map { "malformed: \($0)" } ?? entry.reason ?? "",
                    ].map(TextCheck.escaped))
            }
            print(TextTable.render(rows), terminator: "")
            for refusal in refusals { print("refused: \(TextCheck.escaped(refusal))") }
        }
    }
}

// MARK: status

extension DrawbridgeEtcd {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status",
            abstract: "Show every host's report: what its agent applied and refused, and when.",
            discussion: """
                Each host's drawbridge-etcd sync writes <prefix>/v1/status/<host> on a lease: a host that stopped \
                reporting disappears from this list within 30 seconds.
                """)

        @Flag(help: "Print the status documents as JSON.")
        var json = false

        @OptionGroup var etcd: EtcdOptions

        func run() async throws {
            let settings = try etcd.settings()
            let (statuses, unreadable) = try await etcd.withClient(settings) { client in
                try await HostStatuses.read(client, prefix: settings.prefix)
            }
            if json {
                Output.json(statuses)
                return
            }
            guard !statuses.isEmpty || !unreadable.isEmpty else {
                print("no host reports under \(EtcdLayout.statusDirectory(prefix: settings.prefix))")
                return
            }
            var rows = [["HOST", "GROUPS", "REVISION", "UPDATED (UTC)", "GRANTS", "REFUSED", "AGENT"]]
            for status in statuses {
                rows.append(
                    [
                        status.host, status.groups.joined(separator: ","), status.appliedRevision.map { "\($0)" } ?? "-",
                        Timestamp.format(status.updatedAt), "\(status.grants.count)", "\(status.refused.count)",
                        status.agent,
                    ].map(TextCheck.escaped))
            }
            print(TextTable.render(rows), terminator: "")
            for key in unreadable { Output.error("\(key) is not a status document") }
        }
    }
}
