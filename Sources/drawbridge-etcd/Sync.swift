import ArgumentParser
import DrawbridgeCore
import Etcd
import EtcdSync
import HostSystem
import Logging
import UnixSignals

extension DrawbridgeEtcd {
    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sync",
            abstract: "Follow this host's grants in etcd and hand every change to the agent (the service).",
            discussion: """
                Reads the policy's etcd: section (endpoints, tls or user/password_file, prefix, host, groups), then:

                1. connects to an endpoint (the next one after each failure, with jittered exponential backoff up \
                to 30 s);
                2. reads this host's directory and each group's at one revision R and sends the agent a complete \
                snapshot (etcd-sync, complete: true);
                3. watches them from R + 1 and sends each watch response whole (etcd-sync, complete: false);
                4. after a compaction past the watch, or every 10 minutes anyway, reads everything again and sends \
                a complete snapshot; after a lost connection it resumes where each directory stopped;
                5. when the agent cannot be reached or answers an error, keeps following etcd and sends a complete \
                snapshot, read anew, once the agent answers again.

                It tells the agent how the etcd connection stands (etcd-connection), and writes \
                <prefix>/v1/status/<host> on a lease of its own (30 s, kept alive): what the agent applied and \
                refused, for requesters (drawbridge-etcd grant --wait, list, status).

                Run it as the policy's etcd.sync_user (default drawbridge-etcd), which may read the policy, the \
                password file or TLS key, and use the agent's socket. Values pass through unparsed; the agent checks \
                each against the policy. A value that is not UTF-8 or is larger than 16 KiB is passed as a problem \
                (the agent refuses it and ends its grant).

                The host name is the policy's etcd.host, else --host, else this machine's host name; the agent \
                reads its keys under the same name, so set etcd.host in the policy rather than --host.

                Logs go to standard error (the journal), one line per event. SIGTERM or SIGINT stops the watch, \
                revokes the status lease and exits 0; the agent keeps enforcing what it holds.
                """)

        @Option(name: [.customLong("config"), .short], help: "The policy file, with its etcd: section.")
        var config = "/etc/drawbridge/policy.yaml"

        @Option(help: "The agent's socket.")
        var socket = LocalAPI.defaultSocketPath

        @Option(help: ArgumentHelp("This host's etcd name when the policy does not set etcd.host.", valueName: "name"))
        var host: String?

        @Option(help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
        var logLevel = "info"

        /// Tests shorten the safety-net interval and the status lease.
        @Option(help: .hidden)
        var fullResyncSeconds: Int = 600

        @Option(help: .hidden)
        var statusTtlSeconds: Int = 30

        func validate() throws {
            guard Logger.Level(rawValue: logLevel) != nil else {
                throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
            }
            if let host, let problem = EtcdSettings.nameProblem(host, kind: "host") {
                throw ValidationError("--host: \(problem)")
            }
            guard fullResyncSeconds >= 1, statusTtlSeconds >= 2 else {
                throw ValidationError("the resync interval and the status TTL must be positive")
            }
        }

        func run() async throws {
            let level = Logger.Level(rawValue: logLevel)!
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let logger = Logger(label: "drawbridge-etcd")

            let policy: Policy
            do {
                policy = try PolicyFile.load(config)
            } catch {
                Output.error("\(error)")
                throw ExitStatus.invalidData
            }
            guard let etcd = policy.etcd else {
                Output.error(
                    "\(config) has no etcd: section, so this host takes no grants from etcd; add one like "
                        + "etcd: { endpoints: [\"https://192.0.2.10:2379\"], groups: [web] }")
                throw ExitStatus.notConfigured
            }
            let machine = machineHostName()
            let hostName = etcd.host ?? host ?? machine
            if let problem = EtcdSettings.nameProblem(hostName, kind: "host") {
                Output.error("\(problem); set etcd.host in \(config)")
                throw ExitStatus.invalidData
            }
            if let host, host != hostName {
                logger.warning(
                    "--host is ignored: the policy sets etcd.host", metadata: ["etcd.host": "\(hostName)"])
            } else if host != nil, hostName != machine {
                logger.warning(
                    """
                    the policy sets no etcd.host, so the agent follows the machine's host name; keys under another \
                    name are refused as outside its directories: set etcd.host in the policy
                    """,
                    metadata: ["etcd.host": "\(hostName)", "machine": "\(machine)"])
            }

            let client = ClientSettings(policy: etcd)
            let configuration: EtcdConfiguration
            do {
                configuration = try client.configuration(password: try EtcdOptions.checkedSecrets(client))
                // Certificate files and endpoints are checked now, not at the first connection.
                for endpoint in configuration.endpoints {
                    _ = try EtcdClient(configuration: configuration, endpoint: endpoint)
                }
            } catch let error as EtcdError {
                Output.error("\(error)")
                throw ExitStatus.invalidData
            }
            var settings = SyncSettings(
                layout: EtcdLayout(prefix: etcd.prefix, host: hostName, groups: etcd.groups), configuration: configuration,
                agent: AgentClient(socketPath: socket))
            settings.fullResyncInterval = .seconds(fullResyncSeconds)
            settings.statusTTL = .seconds(statusTtlSeconds)

            let daemon = SyncDaemon(settings: settings, logger: logger)
            let handle = daemon.handle
            let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await signal in signals {
                        logger.notice("stopping", metadata: ["signal": "\(signal)"])
                        handle.stop()
                        return
                    }
                }
                await daemon.run()
                group.cancelAll()
            }
        }
    }
}
