/// A failure talking to etcd, named by the member, what was being done, and as whom — never a bare gRPC status.
///
/// ```
/// etcd 192.0.2.10:2379: permission denied reading /drawbridge/v1/grants/host/b/ (user web-1)
/// ```
///
/// ``isRetryable`` tells the caller's reconnect policy whether to try again (after a jittered backoff, perhaps on
/// the next of ``EtcdConfiguration/endpoints``) or to stop and report.
public struct EtcdError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure, for code that needs to react to it.
    public enum Code: Sendable, Hashable {
        /// The member could not be reached, the connection was lost, the member has no leader, is stopping or is
        /// overloaded. Retryable.
        case unavailable
        /// The request took longer than ``EtcdConfiguration/requestTimeout``. Retryable.
        case timedOut
        /// The user may not read or write that key or prefix.
        case permissionDenied
        /// The user name or password is wrong, or the member refused the identity (token or certificate) again after
        /// a fresh authentication.
        case authenticationFailed
        /// The TLS handshake failed over a certificate: the member refused the client's (or its absence), or the
        /// client does not trust the member's. Not retryable: a file or the member's settings must change first.
        case certificateRejected
        /// The revision asked for is older than the oldest one etcd keeps (``EtcdError/compactRevision``). A watcher
        /// must list again and watch from the listed revision; resuming later would lose events.
        case compacted
        /// The revision asked for does not exist yet.
        case futureRevision
        /// The lease does not exist (any more): revoked, or expired.
        case leaseNotFound
        /// The configuration cannot work: a malformed endpoint, an unreadable certificate file, TLS files for an
        /// `http://` endpoint.
        case invalidConfiguration
        /// etcd's database is full (its space quota is exceeded); only an operator can fix that.
        case noSpace
        /// The member answered something this client does not understand.
        case protocolViolation
        /// Anything else etcd refused; ``EtcdError/detail`` has its words.
        case other
    }

    /// What kind of failure it is.
    public var code: Code
    /// The member that failed, when one was involved.
    public var endpoint: EtcdEndpoint?
    /// What was being done, in words: "reading /drawbridge/v1/grants/host/b/", "watching /a/ from revision 7".
    public var operation: String
    /// The etcd user the client acted as: the password user, or the common name of the client certificate.
    public var user: String?
    /// The server's or the transport's own words, when they add something to the code.
    public var detail: String?
    /// For ``Code/compacted``: the oldest revision etcd still has. List at this revision or later, then watch.
    public var compactRevision: Int64?
    /// The prefix a watch failure concerns.
    public var prefix: String?

    /// An error from its parts; the client makes them, tests and fakes may too.
    public init(
        _ code: Code, endpoint: EtcdEndpoint? = nil, operation: String, user: String? = nil, detail: String? = nil,
        compactRevision: Int64? = nil, prefix: String? = nil
    ) {
        self.code = code
        self.endpoint = endpoint
        self.operation = operation
        self.user = user
        self.detail = detail
        self.compactRevision = compactRevision
        self.prefix = prefix
    }

    /// Whether the same request may succeed later or on another member: true for ``Code/unavailable`` and
    /// ``Code/timedOut``. A compaction is not retryable as such: the caller must list again first.
    public var isRetryable: Bool {
        switch code {
        case .unavailable, .timedOut: true
        default: false
        }
    }

    /// One line for a person: "etcd MEMBER: WHAT OPERATION (user USER): DETAIL", and for a compaction or a full
    /// database what to do next.
    public var description: String {
        var text = endpoint.map { "etcd \($0): " } ?? "etcd: "
        switch code {
        case .unavailable: text += "unavailable \(operation)"
        case .timedOut: text += "timed out \(operation)"
        case .permissionDenied: text += "permission denied \(operation)"
        case .authenticationFailed: text += "authentication failed \(operation)"
        case .certificateRejected: text += "TLS certificate rejected \(operation)"
        case .compacted:
            let oldest = compactRevision.map { " (the oldest revision kept is \($0))" } ?? ""
            text += "history compacted\(oldest) \(operation)"
        case .futureRevision: text += "revision not reached yet \(operation)"
        case .leaseNotFound: text += "lease not found \(operation)"
        case .invalidConfiguration: text += "invalid configuration \(operation)"
        case .noSpace: text += "database space exceeded \(operation)"
        case .protocolViolation: text += "unexpected answer \(operation)"
        case .other: text += "failed \(operation)"
        }
        if let user { text += " (user \(user))" }
        if let detail, !detail.isEmpty { text += ": \(detail)" }
        switch code {
        case .compacted: text += "; list again, then watch from the listed revision"
        case .noSpace: text += "; an operator must compact and defragment etcd or raise its quota"
        default: break
        }
        return text
    }
}
