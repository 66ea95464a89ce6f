import Foundation

/// The local API between `drawbridge` and `drawbridged`: one JSON object per line over a Unix socket, one request
/// and one response per connection. Who is asking is never part of the request: the agent reads it from the
/// socket's peer credentials.
public enum LocalAPI {
    /// The default socket path.
    public static let defaultSocketPath = "/run/drawbridge/drawbridge.sock"
    /// Requests larger than this are refused unread.
    public static let maximumRequestBytes = 64 * 1024

    public enum Command: String, Codable, Sendable {
        case grant, revoke, list, status
    }

    public struct Request: Codable, Sendable, Equatable {
        public var command: Command
        /// grant: policy names or NUMBER/PROTO.
        public var ports: [String]?
        /// grant: the source prefix; revoke: revoke every grant inside it.
        public var source: String?
        /// grant: seconds.
        public var durationSeconds: Double?
        public var reason: String?
        /// revoke: one grant.
        public var id: String?

        public init(
            command: Command, ports: [String]? = nil, source: String? = nil, durationSeconds: Double? = nil,
            reason: String? = nil, id: String? = nil
        ) {
            self.command = command
            self.ports = ports
            self.source = source
            self.durationSeconds = durationSeconds
            self.reason = reason
            self.id = id
        }

        enum CodingKeys: String, CodingKey {
            case command, ports, source
            case durationSeconds = "duration_seconds"
            case reason, id
        }
    }

    /// Why a request failed, for scripts (`code`) and people (`message`).
    public struct Failure: Codable, Sendable, Equatable, Error, CustomStringConvertible {
        public enum Code: String, Codable, Sendable {
            /// The policy does not allow it (unknown port, source, duration, role).
            case refused
            /// The caller may not do this (revoking someone else's grant).
            case forbidden
            /// The request is malformed.
            case badRequest = "bad-request"
            /// No such grant.
            case notFound = "not-found"
            /// The kernel refused the change; nothing was changed.
            case kernel
            /// Something failed inside the agent.
            case `internal`
        }

        public var code: Code
        /// For `refused`: which rule (unknown-port, source-not-allowed, duration-too-long, not-permitted).
        public var reason: String?
        public var message: String

        public init(code: Code, reason: String? = nil, message: String) {
            self.code = code
            self.reason = reason
            self.message = message
        }

        public var description: String { message }
    }

    /// A grant as `list` shows it, with what the kernel says about each of its ports.
    public struct GrantStatus: Codable, Sendable, Equatable {
        public var grant: Grant
        /// Seconds the kernel still gives each port's element; nil when the kernel holds no element for it.
        public var kernelRemainingSeconds: [String: Double?]

        public init(grant: Grant, kernelRemainingSeconds: [String: Double?]) {
            self.grant = grant
            self.kernelRemainingSeconds = kernelRemainingSeconds
        }

        enum CodingKeys: String, CodingKey {
            case grant
            case kernelRemainingSeconds = "kernel_remaining_seconds"
        }
    }

    public struct AgentStatus: Codable, Sendable, Equatable {
        public var version: String
        public var policyPath: String
        public var managedPorts: [GrantedPort]
        public var onExpiry: SessionMode
        public var activeGrants: Int
        public var kernelRelease: String

        public init(
            version: String, policyPath: String, managedPorts: [GrantedPort], onExpiry: SessionMode, activeGrants: Int,
            kernelRelease: String
        ) {
            self.version = version
            self.policyPath = policyPath
            self.managedPorts = managedPorts
            self.onExpiry = onExpiry
            self.activeGrants = activeGrants
            self.kernelRelease = kernelRelease
        }

        enum CodingKeys: String, CodingKey {
            case version
            case policyPath = "policy_path"
            case managedPorts = "managed_ports"
            case onExpiry = "on_expiry"
            case activeGrants = "active_grants"
            case kernelRelease = "kernel_release"
        }
    }

    public struct Response: Codable, Sendable, Equatable {
        public var ok: Bool
        public var error: Failure?
        /// grant: the one grant (new or extended); revoke: the revoked ones; list: all.
        public var grants: [GrantStatus]?
        /// grant: "created", "extended" or "unchanged".
        public var outcome: String?
        public var status: AgentStatus?

        public init(
            ok: Bool, error: Failure? = nil, grants: [GrantStatus]? = nil, outcome: String? = nil,
            status: AgentStatus? = nil
        ) {
            self.ok = ok
            self.error = error
            self.grants = grants
            self.outcome = outcome
            self.status = status
        }

        public static func failure(_ failure: Failure) -> Response { Response(ok: false, error: failure) }
    }

    /// JSON with ISO 8601 dates and sorted keys, as both ends and the state file use it.
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
