import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import NIOPosix

/// The agent's local socket, from `drawbridge-etcd sync`'s side.
///
/// Each request is one connection (connect, one line out, one line back), made on NIO's blocking-I/O thread pool so
/// that no thread of the concurrency pool — which also carries the gRPC connection — waits on the agent.
public struct AgentClient: Sendable {
    public var socketPath: String
    /// How long the agent may take to read a request and to answer it (a large snapshot takes a while to journal).
    public var timeoutSeconds: Int

    public init(socketPath: String, timeoutSeconds: Int = 60) {
        self.socketPath = socketPath
        self.timeoutSeconds = timeoutSeconds
    }

    /// The agent's answer, and which agent process gave it.
    public struct Answer: Sendable {
        public var response: LocalAPI.Response
        public var agentProcess: pid_t?
    }

    /// Sends one request; an unreachable agent, an answer that is not understood and an answer with `ok: false`
    /// all throw, with the words to log.
    public func send(_ request: some Encodable & Sendable) async throws(AgentProblem) -> Answer {
        let path = socketPath
        let timeout = timeoutSeconds
        let outcome: Result<AgentSocket.Exchange, AgentSocket.Failure>
        do {
            outcome = try await NIOThreadPool.singleton.runIfActive {
                Result { () throws(AgentSocket.Failure) in
                    try AgentSocket.exchange(
                        request, path: path, timeoutSeconds: timeout, maximumAnswerBytes: LocalAPI.maximumSyncRequestBytes)
                }
            }
        } catch {
            throw AgentProblem("cannot reach the agent: \(error)")
        }
        let exchange: AgentSocket.Exchange
        switch outcome {
        case .success(let value): exchange = value
        case .failure(let failure): throw AgentProblem(failure.message)
        }
        guard let response = try? LocalAPI.decoder().decode(LocalAPI.Response.self, from: Data(exchange.answer)) else {
            throw AgentProblem("the agent's answer was not understood; is \(path) a drawbridged socket?")
        }
        if !response.ok {
            let failure = response.error
            throw AgentProblem(
                "the agent refused: \(failure?.message ?? "no reason given")"
                    + (failure.map { " [\($0.code.rawValue)]" } ?? ""))
        }
        return Answer(response: response, agentProcess: exchange.agentProcess)
    }
}

/// Why the agent did not take a request.
public struct AgentProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
