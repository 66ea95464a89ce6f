import DrawbridgeCore
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// One line of the audit trail.
public struct AuditEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case start, stop, reload, grant, extend, revoke, expire, refuse, repair, error
    }

    public var time: Date
    public var event: Kind
    public var grantID: String?
    /// Who: a Unix user for local requests, a file path for grants files.
    public var user: String?
    public var uid: UInt32?
    public var source: String?
    public var ports: [String]?
    public var expiresAt: Date?
    public var reason: String?
    public var origin: String?
    /// Why a request was refused, what a repair restored, what failed.
    public var detail: String?

    public init(
        _ event: Kind, grant: Grant? = nil, user: String? = nil, uid: UInt32? = nil, source: String? = nil,
        ports: [String]? = nil, reason: String? = nil, origin: String? = nil, detail: String? = nil, time: Date = Date()
    ) {
        self.time = time
        self.event = event
        self.grantID = grant?.id
        self.user = user ?? grant?.requestedBy
        self.uid = uid ?? grant?.uid
        self.source = source ?? grant?.source.description
        self.ports = ports ?? grant?.ports.map { "\($0.name) \($0.service)" }
        self.expiresAt = grant?.expiresAt
        self.reason = reason ?? grant?.reason
        self.origin = origin ?? grant?.origin.description
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey {
        case time, event
        case grantID = "grant_id"
        case user, uid, source, ports
        case expiresAt = "expires_at"
        case reason, origin, detail
    }
}

/// The append-only audit trail: one JSON object per line, each written with a single write(2) to a file opened
/// O_APPEND, so concurrent readers never see half a line. Every event also goes to the log.
public final class AuditLog: @unchecked Sendable {
    private let descriptor: Int32
    private let logger: Logger
    private let encoder = LocalAPI.encoder()
    public let path: String

    public init(path: String, logger: Logger) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw AgentError("cannot open the audit log \(path): \(String(cString: strerror(errno)))")
        }
        self.path = path
        self.logger = logger
    }

    deinit { close(descriptor) }

    public func record(_ event: AuditEvent) {
        var metadata: Logger.Metadata = ["audit.event": "\(event.event.rawValue)"]
        if let id = event.grantID { metadata["grant.id"] = "\(id)" }
        if let user = event.user { metadata["grant.user"] = "\(user)" }
        if let source = event.source { metadata["grant.source"] = "\(source)" }
        if let ports = event.ports { metadata["grant.ports"] = "\(ports.joined(separator: ","))" }
        if let origin = event.origin { metadata["grant.origin"] = "\(origin)" }
        if let expiresAt = event.expiresAt { metadata["grant.expires_at"] = "\(expiresAt)" }
        if let reason = event.reason, !reason.isEmpty { metadata["grant.reason"] = "\(reason)" }
        if let detail = event.detail { metadata["audit.detail"] = "\(detail)" }
        let level: Logger.Level = [.refuse, .repair, .error].contains(event.event) ? .warning : .notice
        logger.log(level: level, "\(event.event.rawValue)", metadata: metadata)

        guard var line = try? encoder.encode(event) else { return }
        line.append(0x0a)
        let written = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        if written != line.count {
            logger.error("audit log write failed", metadata: ["audit.path": "\(path)", "errno": "\(errno)"])
        }
    }
}

/// An error of the agent's own, with a sentence for the operator.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
