import CDrawbridgeLinux
import DrawbridgeCore
import Foundation
import Logging
import Netfilter
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// Serves the local API socket until graceful shutdown.
public struct LocalAPIService: ServiceLifecycle.Service {
    let server: LocalAPIServer

    public init(agent: Agent, configuration: AgentConfiguration, logger: Logger) {
        server = LocalAPIServer(path: configuration.socketPath, group: configuration.socketGroup, logger: logger) {
            request, caller in
            await agent.handle(request, from: caller)
        }
    }

    /// Binds the socket; call before `run`.
    public func start() throws {
        try server.start()
    }

    public func run() async throws {
        try? await gracefulShutdown()
        server.stop()
    }
}

/// Once a second: expiries, repairs after foreign ruleset changes, grants file edits.
public struct MaintenanceService: ServiceLifecycle.Service, Sendable {
    let agent: Agent

    public init(agent: Agent) { self.agent = agent }

    public func run() async throws {
        // Graceful shutdown cancels the sleep; that is the normal end of this service, not a failure.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await agent.tick()
                try await Task.sleep(for: .seconds(1))
            }
        }
    }
}

/// Checks the table the moment any program changes the ruleset (an `nft flush ruleset` opens every managed port
/// until the table is back, so a second of polling is too long).
public final class RulesetWatchService: ServiceLifecycle.Service, @unchecked Sendable {
    let agent: Agent
    let monitor: RulesetMonitor
    private let lock = NSLock()
    private var running = true

    public init(agent: Agent) throws {
        self.agent = agent
        monitor = try RulesetMonitor()
    }

    public func run() async throws {
        let thread = Thread { [self] in
            // Blocking reads on a thread of its own; each burst of notifications leads to one check.
            while lock.withLock({ running }) {
                guard monitor.waitForChange(timeout: .milliseconds(500)) else { continue }
                blockingCall { await self.agent.verifyKernel() }
            }
        }
        thread.name = "drawbridge-ruleset-watch"
        thread.start()
        try? await gracefulShutdown()
        lock.withLock { running = false }
    }
}

/// Follows edits of the grants files as they happen: inotify on the directories that hold them (editors and
/// configuration management replace files by rename, which a watch on the file itself would miss).
public final class GrantFileWatchService: ServiceLifecycle.Service, @unchecked Sendable {
    let agent: Agent
    private let lock = NSLock()
    private var running = true

    public init(agent: Agent) {
        self.agent = agent
    }

    public func run() async throws {
        let descriptor = inotify_init1(Int32(IN_CLOEXEC) | Int32(IN_NONBLOCK))
        guard descriptor >= 0 else { return }  // the one-second check still follows the files
        let thread = Thread { [self] in
            defer { close(descriptor) }
            var watched: [String: Int32] = [:]
            var buffer = [UInt8](repeating: 0, count: 8192)
            while lock.withLock({ running }) {
                // The policy (and so the list of files) can change on reload: keep the watches in step.
                let directories = Set(
                    blockingCall { await self.agent.grantFilePaths }.map {
                        ($0 as NSString).deletingLastPathComponent
                    })
                for directory in directories where watched[directory] == nil {
                    let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB)
                    let watch = inotify_add_watch(descriptor, directory, mask)
                    if watch >= 0 { watched[directory] = watch }
                }
                for (directory, watch) in watched where !directories.contains(directory) {
                    inotify_rm_watch(descriptor, watch)
                    watched[directory] = nil
                }
                var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                guard poll(&poller, 1, 500) > 0 else { continue }
                while read(descriptor, &buffer, buffer.count) > 0 {}
                blockingCall { await self.agent.checkGrantFiles() }
            }
        }
        thread.name = "drawbridge-grant-files"
        thread.start()
        try? await gracefulShutdown()
        lock.withLock { running = false }
    }
}

final class ResultBox<Value>: @unchecked Sendable {
    var value: Value?
}

/// Runs async work from a plain thread and waits for its result.
func blockingCall<Result: Sendable>(_ work: @escaping @Sendable () async -> Result) -> Result {
    let box = ResultBox<Result>()
    let done = DispatchSemaphore(value: 0)
    Task {
        box.value = await work()
        done.signal()
    }
    done.wait()
    return box.value!
}

/// SIGHUP re-reads the policy without flushing anything.
public struct ReloadService: ServiceLifecycle.Service, Sendable {
    let agent: Agent
    let notifier: SystemdNotifier

    public init(agent: Agent, notifier: SystemdNotifier) {
        self.agent = agent
        self.notifier = notifier
    }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                notifier.notify("RELOADING=1")
                await agent.reload()
                notifier.notify("READY=1")
            }
        }
    }
}

/// The sd_notify protocol: one datagram to $NOTIFY_SOCKET ("READY=1", "STOPPING=1"). Does nothing outside systemd.
public struct SystemdNotifier: Sendable {
    let path: String?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        path = environment["NOTIFY_SOCKET"]
    }

    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard let path, !path.isEmpty else { return false }
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        var length: socklen_t = 0
        guard drawbridge_unix_address(path, &address, &length) == 0 else { return false }
        let sent = state.utf8CString.withUnsafeBufferPointer { message in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, message.baseAddress, message.count - 1, Int32(MSG_NOSIGNAL), $0, length)
                }
            }
        }
        return sent >= 0
    }
}
