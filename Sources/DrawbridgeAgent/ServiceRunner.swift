import Logging
import Synchronization
import UnixSignals

/// One long-running part of the agent. It runs until `shutdown` begins, then finishes what it owes (the local API
/// answers the requests in progress) and returns.
public protocol AgentService: Sendable {
    var name: String { get }
    func run(until shutdown: Shutdown) async throws
}

/// The moment the agent begins to stop: waited on by services, triggered once by SIGTERM/SIGINT or by a service
/// that ended on its own.
public final class Shutdown: Sendable {
    private struct State {
        var triggered = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var actions: [@Sendable () -> Void] = []
    }

    private let state = Mutex(State())

    public init() {}

    public var isTriggered: Bool { state.withLock { $0.triggered } }

    /// Begins the shutdown; later calls do nothing.
    public func trigger() {
        let (waiters, actions) = state.withLock { state -> ([CheckedContinuation<Void, Never>], [@Sendable () -> Void]) in
            guard !state.triggered else { return ([], []) }
            state.triggered = true
            defer {
                state.waiters = [:]
                state.actions = []
            }
            return (Array(state.waiters.values), state.actions)
        }
        for action in actions { action() }
        for waiter in waiters { waiter.resume() }
    }

    /// Runs `action` when the shutdown begins (at once if it has).
    public func onTrigger(_ action: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            if state.triggered { return true }
            state.actions.append(action)
            return false
        }
        if now { action() }
    }

    /// Returns when the shutdown begins, or when the waiting task is cancelled.
    public func wait() async {
        let id = state.withLock { state -> Int in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.triggered || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Runs `body` until it returns or the shutdown begins, whichever comes first; then `body`'s task is cancelled.
    public func cancelling(_ body: @escaping @Sendable () async -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await body() }
            group.addTask { await self.wait() }
            await group.next()
            group.cancelAll()
        }
    }
}

/// Runs the agent's services together until SIGTERM or SIGINT, then lets each finish. A service that ends or
/// fails on its own stops the others too: the agent never runs with a part missing (systemd restarts it whole).
public enum ServiceRunner {
    public static func run(_ services: [any AgentService], logger: Logger) async throws {
        let shutdown = Shutdown()
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        var failure: (any Error)?
        await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await shutdown.cancelling {
                    for await signal in signals {
                        logger.notice("stopping", metadata: ["signal": "\(signal)"])
                        shutdown.trigger()
                        return
                    }
                }
            }
            for service in services {
                group.addTask {
                    do {
                        try await service.run(until: shutdown)
                        if !shutdown.isTriggered {
                            logger.error("a service ended on its own; stopping", metadata: ["service": "\(service.name)"])
                        }
                    } catch {
                        logger.error(
                            "a service failed; stopping", metadata: ["service": "\(service.name)", "error": "\(error)"])
                        shutdown.trigger()
                        throw error
                    }
                    shutdown.trigger()
                }
            }
            while let result = await group.nextResult() {
                if case .failure(let error) = result, failure == nil { failure = error }
            }
        }
        if let failure { throw failure }
    }
}
