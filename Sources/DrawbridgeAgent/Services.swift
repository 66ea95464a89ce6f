import CDrawbridgeLinux
import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import Logging
import Netfilter
import UnixSignals

/// Serves the local API until graceful shutdown, then drains the requests in progress.
public struct LocalAPIService: AgentService {
    public var name: String { "LocalAPIService" }
    let server: LocalAPIServer

    public init(server: LocalAPIServer) { self.server = server }

    public func run(until shutdown: Shutdown) async throws { try await server.run(until: shutdown) }
}

/// Hands nf_tables notifications to the agent the moment they arrive: a flushed ruleset or an edited table is
/// repaired within milliseconds.
public struct RulesetWatchService: AgentService {
    public var name: String { "RulesetWatchService" }
    let agent: Agent
    let monitor: RulesetMonitor

    public init(agent: Agent, monitor: RulesetMonitor) {
        self.agent = agent
        self.monitor = monitor
    }

    public func run(until shutdown: Shutdown) async throws {
        await shutdown.cancelling {
            for await event in monitor.events { await agent.rulesetChanged(event) }
        }
    }
}

/// Follows edits of the grants files through inotify on their directories. Without inotify (no instances left,
/// say) it warns and falls back to looking every five seconds.
public struct GrantFileWatchService: AgentService {
    public var name: String { "GrantFileWatchService" }
    let agent: Agent
    let watch: DirectoryWatch?
    let logger: Logger

    public init(agent: Agent, watch: DirectoryWatch?, logger: Logger) {
        self.agent = agent
        self.watch = watch
        self.logger = logger
    }

    public func run(until shutdown: Shutdown) async throws {
        await shutdown.cancelling {
            guard let watch else {
                logger.warning("inotify is not available; grants files are checked every 5 seconds instead")
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(5))
                    await agent.refreshGrantFiles()
                }
                return
            }
            await Self.follow(agent: agent, watch: watch, logger: logger)
            for await _ in watch.changes {
                await Self.follow(agent: agent, watch: watch, logger: logger)
                await agent.refreshGrantFiles()
            }
        }
    }

    /// Watches the directories of the files the policy names now (the list changes with a reload).
    static func follow(agent: Agent, watch: DirectoryWatch, logger: Logger) async {
        let directories = Set(
            await agent.grantFilePaths.map { path -> String in
                let slash = path.lastIndex(of: "/") ?? path.startIndex
                return slash == path.startIndex ? "/" : String(path[..<slash])
            })
        for (directory, error) in watch.set(directories) {
            logger.warning(
                "cannot watch a grants file directory; it is read again on the next change or reload",
                metadata: ["file.directory": "\(directory)", "error": "\(error)"])
        }
    }
}

/// Tells the agent when the wall clock was stepped: from the kernel (a timerfd cancelled on clock set) and on
/// SIGUSR2, which asks the agent to compare its clocks now (after `date -s` on a system where the timerfd is not
/// available, and in tests, which cannot step the machine's clock).
public struct ClockStepService: AgentService {
    public var name: String { "ClockStepService" }
    let agent: Agent
    let watch: ClockStepWatch?

    public init(agent: Agent, watch: ClockStepWatch?) {
        self.agent = agent
        self.watch = watch
    }

    public func run(until shutdown: Shutdown) async throws {
        let signals = await UnixSignalsSequence(trapping: .sigusr2)
        await shutdown.cancelling {
            await withDiscardingTaskGroup { group in
                if let watch {
                    group.addTask { for await _ in watch.steps { await agent.clockStepped() } }
                }
                group.addTask { for await _ in signals { await agent.clockStepped() } }
            }
        }
    }
}

/// The documented safety check, once a minute: the only periodic wake-up of an idle agent.
public struct SafetyCheckService: AgentService {
    public var name: String { "SafetyCheckService" }
    public static let defaultInterval = Duration.seconds(60)
    let agent: Agent
    let interval: Duration

    public init(agent: Agent, interval: Duration = Self.defaultInterval) {
        self.agent = agent
        self.interval = interval
    }

    public func run(until shutdown: Shutdown) async throws {
        await shutdown.cancelling {
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                await agent.safetyCheck()
            }
        }
    }
}

/// SIGHUP re-reads the policy without flushing anything, and reopens the audit trail (after logrotate).
public struct ReloadService: AgentService {
    public var name: String { "ReloadService" }
    let agent: Agent
    let notifier: SystemdNotifier
    let fileWatch: DirectoryWatch?
    let logger: Logger

    public init(agent: Agent, notifier: SystemdNotifier, fileWatch: DirectoryWatch?, logger: Logger) {
        self.agent = agent
        self.notifier = notifier
        self.fileWatch = fileWatch
        self.logger = logger
    }

    public func run(until shutdown: Shutdown) async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await shutdown.cancelling {
            for await _ in signals {
                notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemClock.monotonic().nanoseconds / 1000)")
                await agent.reload()
                if let fileWatch { await GrantFileWatchService.follow(agent: agent, watch: fileWatch, logger: logger) }
                notifier.notify("READY=1")
            }
        }
    }
}

/// The sd_notify protocol: one datagram to $NOTIFY_SOCKET ("READY=1", "STOPPING=1"). Does nothing outside systemd.
public struct SystemdNotifier: Sendable {
    let path: String?

    public init(path: String? = getenv("NOTIFY_SOCKET").map { String(cString: $0) }) {
        self.path = path
    }

    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard let path, !path.isEmpty else { return false }
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        let sent = try? UnixSocket.withAddress(path) { (address, length) throws(SystemError) -> Int in
            state.utf8CString.withUnsafeBufferPointer { message in
                sendto(descriptor, message.baseAddress, message.count - 1, Int32(MSG_NOSIGNAL), address, length)
            }
        }
        return (sent ?? -1) >= 0
    }
}
