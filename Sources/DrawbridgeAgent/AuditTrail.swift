import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import Logging

/// One line of the audit trail.
public struct AuditEvent: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case start, stop, reload, grant, extend, revoke, expire, refuse, repair, error, warning
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
    /// Who ended a grant, when it was not its requester.
    public var by: String?

    public init(
        _ event: Kind, grant: Grant? = nil, user: String? = nil, uid: UInt32? = nil, source: String? = nil,
        ports: [String]? = nil, reason: String? = nil, origin: String? = nil, detail: String? = nil,
        by: String? = nil, time: Date = SystemClock.wall()
    ) {
        self.time = time
        self.event = event
        grantID = grant?.id
        self.user = user ?? grant?.requestedBy
        self.uid = uid ?? grant?.uid
        self.source = source ?? grant?.source.description
        self.ports = ports ?? grant?.ports.map { "\($0.name) \($0.service)" }
        expiresAt = grant?.expiresAt
        self.reason = reason ?? grant?.reason
        self.origin = origin ?? grant?.origin.description
        self.detail = detail
        self.by = by
    }

    /// The JSON line (without its newline), keys sorted, every text escaped.
    public var line: String {
        var members: [(String, String)] = []
        func text(_ key: String, _ value: String?) {
            if let value { members.append((key, JSONText.quoted(value))) }
        }
        text("by", by)
        text("detail", detail)
        text("event", event.rawValue)
        text("expires_at", expiresAt.map(Timestamp.format))
        text("grant_id", grantID)
        text("origin", origin)
        if let ports { members.append(("ports", "[" + ports.map(JSONText.quoted).joined(separator: ",") + "]")) }
        text("reason", reason)
        text("source", source)
        text("time", Timestamp.format(time))
        if let uid { members.append(("uid", String(uid))) }
        text("user", user)
        return "{" + members.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}

/// The append-only audit trail: one JSON object per line, each written whole with a single write to a file opened
/// O_APPEND (a failed or short write is cut back, so no reader ever sees half a line). Every event also goes to the
/// log.
///
/// A grant that cannot be recorded is not made: `record` says whether the line was written. Events that close
/// access are recorded when possible and otherwise kept (up to a limit) and written with the next line that fits.
public final class AuditTrail: @unchecked Sendable {
    public let path: String
    private let logger: Logger
    private var file: AppendFile?
    /// Lines that could not be written yet, oldest first.
    private var pending: [String] = []
    private static let pendingLimit = 10_000
    /// Why the last write failed, or nil.
    public private(set) var problem: String?
    /// Events not written because too many were pending.
    public private(set) var dropped = 0

    /// Counts every record's event (grants, refusals, repairs) for the metrics endpoint.
    private let metrics: AgentMetrics?

    public init(path: String, logger: Logger, metrics: AgentMetrics? = nil) throws(SystemError) {
        self.path = path
        self.logger = logger
        self.metrics = metrics
        let slash = path.lastIndex(of: "/") ?? path.startIndex
        if slash != path.startIndex { try Files.createDirectory(String(path[..<slash]), mode: 0o750) }
        file = try AppendFile(path: path, mode: 0o640)
    }

    /// Opens the file again (after logrotate moved it away: SIGHUP).
    public func reopen() {
        do {
            let fresh = try AppendFile(path: path, mode: 0o640)
            file?.close()
            file = fresh
            flushPending()
        } catch {
            problem = "cannot reopen \(path): \(error)"
            logger.error("audit trail cannot be reopened", metadata: ["audit.path": "\(path)", "error": "\(error)"])
        }
    }

    /// Writes an event to the trail and the log.
    ///
    /// - Returns: whether the line is in the file. When it is not and `required` is false, it is kept to be
    ///   written with a later line.
    @discardableResult
    public func record(_ event: AuditEvent, required: Bool = false) -> Bool {
        metrics?.record(event)
        log(event)
        flushPending()
        if write(event.line) { return true }
        if !required { keep(event.line) }
        return false
    }

    /// Writes many events (an expiry sweep, a grants file change) with one write.
    public func record(batch events: [AuditEvent]) {
        guard !events.isEmpty else { return }
        for event in events { metrics?.record(event) }
        for event in events.prefix(1000) { log(event) }
        if events.count > 1000 { logger.notice("\(events.count - 1000) more audit events of this batch in \(path)") }
        flushPending()
        let lines = events.map(\.line)
        if !write(lines.joined(separator: "\n")) {
            for line in lines { keep(line) }
        }
    }

    private func keep(_ line: String) {
        if pending.count < Self.pendingLimit { pending.append(line) } else { dropped += 1 }
    }

    private func flushPending() {
        guard !pending.isEmpty else { return }
        if write(pending.joined(separator: "\n")) {
            pending.removeAll()
            if dropped > 0 {
                let note = AuditEvent(
                    .error, detail: "\(dropped) audit events were lost while the audit trail could not be written")
                if write(note.line) { dropped = 0 }
            }
        }
    }

    private func write(_ text: String) -> Bool {
        guard let file else { return false }
        do {
            try file.append(Array((text + "\n").utf8))
            problem = nil
            return true
        } catch {
            problem = "cannot write \(path): \(error)"
            logger.error("audit trail write failed", metadata: ["audit.path": "\(path)", "error": "\(error)"])
            return false
        }
    }

    /// Lines waiting to be written.
    public var pendingCount: Int { pending.count }

    /// Writes what is waiting, if the file takes it now.
    public func retryPending() {
        flushPending()
    }

    private func log(_ event: AuditEvent) {
        var metadata: Logger.Metadata = ["audit.event": "\(event.event.rawValue)"]
        if let id = event.grantID { metadata["grant.id"] = "\(id)" }
        if let user = event.user { metadata["grant.user"] = "\(TextCheck.escaped(user))" }
        if let source = event.source { metadata["grant.source"] = "\(source)" }
        if let ports = event.ports { metadata["grant.ports"] = "\(ports.joined(separator: ","))" }
        if let origin = event.origin { metadata["grant.origin"] = "\(TextCheck.escaped(origin))" }
        if let expiresAt = event.expiresAt { metadata["grant.expires_at"] = "\(Timestamp.format(expiresAt))" }
        if let reason = event.reason, !reason.isEmpty { metadata["grant.reason"] = "\(TextCheck.escaped(reason))" }
        if let detail = event.detail { metadata["audit.detail"] = "\(TextCheck.escaped(detail))" }
        if let by = event.by { metadata["audit.by"] = "\(TextCheck.escaped(by))" }
        let level: Logger.Level = [.refuse, .repair, .error, .warning].contains(event.event) ? .warning : .notice
        logger.log(level: level, "\(event.event.rawValue)", metadata: metadata)
    }
}
