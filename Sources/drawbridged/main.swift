import ArgumentParser
import DrawbridgeAgent
import DrawbridgeCore
import Foundation
import Logging
import Netfilter
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// The version both binaries report; the Debian package build checks it against its changelog.
let drawbridgeVersion = "0.1.0"

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
            They are stored in the state directory and come back with their remaining time after a restart.

            Signals: SIGHUP re-reads the policy (nothing is flushed; a bad policy is refused and the old one \
            stays); SIGTERM stops the agent and leaves enforcement in the kernel.

            Every grant, extension, revocation, expiry, refusal, reload and repair is written as one JSON line to \
            the audit log and to the journal.
            """,
        version: drawbridgeVersion)

    @Option(name: [.customLong("config"), .short], help: "The policy file (YAML).")
    var config = "/etc/drawbridge/policy.yaml"

    @Option(help: "The local API socket.")
    var socket = LocalAPI.defaultSocketPath

    @Option(help: ArgumentHelp("The group allowed to use the socket (mode 0660).", valueName: "group"))
    var socketGroup = "drawbridge"

    @Option(help: "Where grants are stored across restarts.")
    var stateDir = "/var/lib/drawbridge"

    @Option(help: "The audit trail, one JSON object per line.")
    var auditLog = "/var/log/drawbridge/audit.jsonl"

    @Option(help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel = "info"

    @Flag(help: "Check the policy file and exit: 0 when it is valid, 1 with the error otherwise.")
    var checkConfig = false

    @Flag(
        help: ArgumentHelp(
            "Delete the drawbridge table from the kernel and exit: every managed port opens again. For package removal.",
            visibility: .default))
    var removeTable = false

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() async throws {
        if checkConfig {
            do {
                let policy = try Policy.load(path: config)
                print(
                    "\(config): valid; manages \(policy.ports.map { "\($0.name) \($0.service)" }.joined(separator: ", "))"
                )
                return
            } catch {
                FileHandle.standardError.write(Data("drawbridged: \(error)\n".utf8))
                throw ExitCode.failure
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
                FileHandle.standardError.write(Data("drawbridged: \(error)\n".utf8))
                throw ExitCode.failure
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
            stateDirectory: stateDir, auditLogPath: auditLog, version: drawbridgeVersion)
        let agent: Agent
        do {
            agent = try Agent(configuration: configuration, logger: logger)
            try await agent.start()
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            FileHandle.standardError.write(Data("drawbridged: \(error)\n".utf8))
            throw ExitCode.failure
        }
        let watch: RulesetWatchService
        do {
            watch = try RulesetWatchService(agent: agent)
        } catch {
            logger.critical("cannot subscribe to nf_tables notifications", metadata: ["error": "\(error)"])
            FileHandle.standardError.write(Data("drawbridged: \(error)\n".utf8))
            throw ExitCode.failure
        }
        // The socket is bound before readiness is announced: when systemd (or a script) sees READY=1, the table is
        // installed, grants are restored and `drawbridge` can connect.
        let api = LocalAPIService(agent: agent, configuration: configuration, logger: logger)
        do {
            try api.start()
        } catch {
            logger.critical("cannot serve the local API", metadata: ["error": "\(error)"])
            FileHandle.standardError.write(Data("drawbridged: \(error)\n".utf8))
            throw ExitCode.failure
        }
        let notifier = SystemdNotifier()
        notifier.notify("READY=1")
        logger.notice("ready", metadata: ["api.socket": "\(socket)"])
        let group = ServiceGroup(
            services: [
                api, watch, GrantFileWatchService(agent: agent), MaintenanceService(agent: agent),
                ReloadService(agent: agent, notifier: notifier),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        try await group.run()
        notifier.notify("STOPPING=1")
        await agent.stop()
    }
}
