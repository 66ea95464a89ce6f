import ArgumentParser
import DrawbridgeAgent
import DrawbridgeCore
import Glibc
import HostSystem
import Logging
import Netfilter
import NetfilterModel

@main
struct Drawbridged: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drawbridged",
        abstract: "The Drawbridge agent: keeps managed ports closed except for granted sources, until they expire.",
        discussion: """
            drawbridged owns one nftables table, `inet drawbridge`. Packets to the ports the policy manages are \
            dropped unless their source is granted or always allowed. Each grant is a set element with a kernel \
            timeout: the kernel itself closes the port again at expiry, whether or not drawbridged is running.

            Grants arrive over a local Unix socket (`drawbridge grant`), identified by the caller's Unix \
            credentials and checked against the policy's roles, and from the grants files the policy lists. \
            They are kept in the state directory (a journal and snapshots) and come back with their remaining \
            time after a restart.

            Only one drawbridged runs per network namespace: a second one stops before it touches the kernel. \
            When another program changes the table (`nft flush ruleset`, a hand-edited rule or element), the \
            table is rebuilt in one transaction within milliseconds.

            Signals: SIGHUP re-reads the policy (nothing is flushed; a bad policy is refused and the old one \
            stays) and reopens the audit trail; SIGTERM stops the agent and leaves enforcement in the kernel.

            Every grant, extension, revocation, expiry, refusal, reload and repair is written as one JSON line to \
            the audit trail and to the journal. A grant that cannot be stored or audited is refused.
            """,
        version: drawbridgeVersion)

    @Option(name: [.customLong("config"), .short], help: "The policy file (YAML).")
    var config = "/etc/drawbridge/policy.yaml"

    @Option(help: "The local API socket (an absolute path; its directory must belong to root).")
    var socket = LocalAPI.defaultSocketPath

    @Option(help: ArgumentHelp("The group allowed to use the socket (mode 0660).", valueName: "group"))
    var socketGroup = "drawbridge"

    @Option(help: "Where grants are kept across restarts.")
    var stateDir = "/var/lib/drawbridge"

    @Option(help: "The audit trail, one JSON object per line.")
    var auditLog = "/var/log/drawbridge/audit.jsonl"

    @Option(help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel = "info"

    @Flag(help: "Check the policy file and exit: 0 when it is valid, 1 with the error otherwise.")
    var checkConfig = false

    @Flag(help: "Delete the drawbridge table from the kernel and exit: every managed port opens again. For package removal.")
    var removeTable = false

    @Flag(help: .hidden)
    var forceStrictDeletes = false

    /// Seconds between safety checks (tests shorten the minute to see several checks).
    @Option(help: .hidden)
    var safetyCheckSeconds = 60

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard socket.hasPrefix("/") else {
            throw ValidationError(
                "--socket must be an absolute path (an abstract socket cannot carry the group and mode that decide "
                    + "who may use it): \(TextCheck.escaped(socket))")
        }
        guard socket.utf8.count < 108 else { throw ValidationError("--socket is longer than 107 bytes") }
        guard (1...3600).contains(safetyCheckSeconds) else {
            throw ValidationError("--safety-check-seconds must be between 1 and 3600")
        }
    }

    func run() async throws {
        // A client that hangs up must never end the agent: writes to it fail with EPIPE instead.
        signal(SIGPIPE, SIG_IGN)
        mapLargeBlocks()
        if checkConfig {
            do {
                let policy = try PolicyFile.load(config)
                print("\(config): valid; manages \(policy.ports.map { "\($0.name) \($0.service)" }.joined(separator: ", "))")
                return
            } catch {
                fail("\(error)")
            }
        }
        if removeTable {
            do {
                let connection = try NetfilterConnection()
                guard try connection.tableExists(DrawbridgeTable.name) else {
                    print("table inet \(DrawbridgeTable.name) is not in the kernel; nothing to remove")
                    return
                }
                try connection.commit(Transaction([.deleteTable(DrawbridgeTable.name)]))
                print("removed table inet \(DrawbridgeTable.name): managed ports are no longer filtered by drawbridge")
                return
            } catch {
                fail("\(error)")
            }
        }
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "drawbridged")
        let configuration = AgentConfiguration(
            policyPath: config, socketPath: socket, socketGroup: socketGroup.isEmpty ? nil : socketGroup,
            stateDirectory: stateDir, auditLogPath: auditLog, version: drawbridgeVersion,
            canDestroyElements: forceStrictDeletes ? false : nil)

        // Before anything touches the kernel: one agent per network namespace, one per state directory.
        let namespaceLock: NamespaceLock
        let stateLock: FileLock
        do {
            guard let lock = try NamespaceLock(name: "drawbridged/table/\(DrawbridgeTable.name)") else {
                fail(
                    "another drawbridged already runs in this network namespace and owns table inet "
                        + "\(DrawbridgeTable.name); this one stops without touching the kernel")
            }
            namespaceLock = lock
            try Files.createDirectory(stateDir, mode: 0o750)
            guard let lock = try FileLock(path: stateDir + "/lock") else {
                fail("another drawbridged uses the state directory \(stateDir); this one stops without touching the kernel")
            }
            stateLock = lock
        } catch {
            fail("cannot take the agent's lock: \(error)")
        }

        let policy: Policy
        do {
            policy = try PolicyFile.load(config)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            fail("\(error)")
        }
        let agent: Agent
        let server: LocalAPIServer
        do {
            agent = try Agent(configuration: configuration, policy: policy, logger: logger)
            // Bound before the table is touched, so a second agent on the same socket stops first; served only
            // once enforcement is complete.
            server = try LocalAPIServer(path: socket, group: configuration.socketGroup, agent: agent, logger: logger)
            try await agent.start()
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            fail("\(error)")
        }

        var services: [any AgentService] = [LocalAPIService(server: server), SafetyCheckService(agent: agent, interval: .seconds(safetyCheckSeconds))]
        if let metrics = policy.metrics {
            services.append(MetricsService(server: MetricsServer(settings: metrics, agent: agent, logger: logger)))
        }
        var fileWatch: DirectoryWatch?
        var clockWatch: ClockStepWatch?
        do {
            let events = try EventWatch()
            let monitor = try RulesetMonitor(on: events, ignoring: agent.kernelPortID)
            if !monitor.ignoresOwnCommits {
                logger.notice("the agent's own commits cannot be filtered from nf_tables notifications; it reads and skips them")
            }
            services.append(RulesetWatchService(agent: agent, monitor: monitor))
            do {
                fileWatch = try DirectoryWatch(on: events)
            } catch {
                logger.warning("inotify is not available", metadata: ["error": "\(error)"])
            }
            do {
                clockWatch = try ClockStepWatch(on: events)
            } catch {
                logger.warning(
                    "wall-clock steps cannot be watched; deadlines stay monotonic, but displayed expiries and file grants follow a step only after a restart",
                    metadata: ["error": "\(error)"])
            }
        } catch {
            // Without notifications the once-a-minute safety check still repairs the table.
            logger.error(
                "cannot subscribe to nf_tables notifications; repairs wait for the safety check",
                metadata: ["error": "\(error)"])
        }
        services.append(ClockStepService(agent: agent, watch: clockWatch))
        services.append(GrantFileWatchService(agent: agent, watch: fileWatch, logger: logger))
        let notifier = SystemdNotifier()
        services.append(ReloadService(agent: agent, notifier: notifier, fileWatch: fileWatch, logger: logger))
        notifier.notify("READY=1")
        logger.notice("ready", metadata: ["api.socket": "\(socket)"])
        try await ServiceRunner.run(services, logger: logger)
        notifier.notify("STOPPING=1")
        await agent.stop()
        withExtendedLifetime((namespaceLock, stateLock)) {}
    }

    func fail(_ message: String) -> Never {
        StandardError.write("drawbridged: \(message)\n")
        Drawbridged.exit(withError: ExitCode.failure)
    }
}

