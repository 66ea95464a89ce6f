/// What `drawbridge-knock listen` hands the agent over the local socket once a knock verified (signature, freshness,
/// replay, target host). Only root and the policy's `knock.user` may send these; the agent checks the rest against
/// its own policy: that a rule of its knock section lists the key now, that rule's ports and `max_duration`, each
/// port's allowed sources and limit.
///
/// ```json
/// {"command":"knock","fingerprint":"SHA256:…","key":"ssh-ed25519 AAAA…","source":"203.0.113.7","ports":["ssh"],
///  "duration_seconds":3600,"reason":"incident 4711","client_address":"192.0.2.7","key_comment":"alice@laptop"}
/// {"command":"knock-refused","source":"203.0.113.9","fingerprint":"SHA256:…","problem":"the timestamp is 61 s old"}
/// {"command":"knock-refused","count":310,"problem":"310 more knocks refused without a record each (…)"}
/// ```
public struct KnockGrant: Sendable, Equatable {
    /// The signing key's OpenSSH fingerprint; the grant's origin is `knock:<fingerprint>`.
    public var fingerprint: String
    /// The key the knock was verified with; the agent looks it up in its own policy.
    public var key: KnockKeyIdentity
    /// What the knock asks for; the source is the packet's source address as this host saw it.
    public var request: GrantRequest
    /// The address the client believed it had, when it said and it differs (NAT), for the audit trail.
    public var clientAddress: String?
    /// The key's comment from the policy or authorized_keys file, for the audit trail.
    public var keyComment: String?

    public init(
        fingerprint: String, key: KnockKeyIdentity, request: GrantRequest, clientAddress: String? = nil,
        keyComment: String? = nil
    ) {
        self.fingerprint = fingerprint
        self.key = key
        self.request = request
        self.clientAddress = clientAddress
        self.keyComment = keyComment
    }
}

/// A knock drawbridge-knock refused (bad signature, stale, replayed, unknown key, another host, malformed), for the
/// agent's audit trail: every knock leaves a record, whether it opened anything or not.
/// One report may stand for many refusals (`count`), which then have no single source.
public struct KnockRefusalReport: Sendable, Equatable {
    public var source: String?
    public var fingerprint: String?
    public var problem: String
    /// How many refused knocks the report stands for: 1, or the number a per-second summary counted (0 when it only
    /// reports packets the kernel dropped before drawbridge-knock read them).
    public var count: Int

    public static let maximumCount = 1_000_000

    public init(source: String?, fingerprint: String? = nil, problem: String, count: Int = 1) {
        self.source = source
        self.fingerprint = fingerprint
        self.problem = problem
        self.count = count
    }
}

extension LocalAPI {
    static func decodeKnock(_ fields: JSONFields) throws(FieldError) -> Command {
        guard let fingerprint = try fields.string("fingerprint") else { throw FieldError("knock needs a fingerprint") }
        if let problem = fingerprintProblem(fingerprint) { throw FieldError(problem) }
        guard let keyText = try fields.string("key") else { throw FieldError("knock needs the key it was verified with") }
        guard let key = KnockKeyIdentity(keyText) else {
            throw FieldError("knock.key must be a public key as type and base64, like \"ssh-ed25519 AAAA…\"")
        }
        guard let sourceText = try fields.string("source"), let address = IPAddress(sourceText) else {
            throw FieldError("knock.source must be one IP address")
        }
        guard let ports = try fields.strings("ports"), !ports.isEmpty, ports.count <= GrantEntry.maximumPorts else {
            throw FieldError("knock.ports must name 1 to \(GrantEntry.maximumPorts) ports")
        }
        for port in ports {
            if let problem = TextCheck.problem(with: port, field: "knock.ports", maximumBytes: 64) {
                throw FieldError(problem)
            }
        }
        guard let seconds = try fields.number("duration_seconds"), seconds.isFinite, seconds >= 1,
            seconds <= maximumDurationSeconds
        else { throw FieldError("knock.duration_seconds must be a number of seconds from 1") }
        let reason = try fields.string("reason") ?? ""
        if let problem = TextCheck.problem(with: reason, field: "the reason", maximumBytes: TextCheck.maximumReasonBytes) {
            throw FieldError(problem)
        }
        var grant = KnockGrant(
            fingerprint: fingerprint, key: key,
            request: GrantRequest(ports: ports, source: IPPrefix(address: address), duration: seconds, reason: reason))
        if let client = try fields.string("client_address") {
            guard IPAddress(client) != nil else { throw FieldError("knock.client_address must be one IP address") }
            grant.clientAddress = client
        }
        if let comment = try fields.string("key_comment") {
            if let problem = TextCheck.problem(with: comment, field: "knock.key_comment", maximumBytes: 256) {
                throw FieldError(problem)
            }
            grant.keyComment = comment
        }
        return .knock(grant)
    }

    static func decodeKnockRefused(_ fields: JSONFields) throws(FieldError) -> Command {
        let source = try fields.string("source")
        if let source, IPAddress(source) == nil { throw FieldError("knock-refused.source must be one IP address") }
        var count = 1
        if let number = try fields.number("count") {
            guard let whole = Int(exactly: number), whole >= 0, whole <= KnockRefusalReport.maximumCount else {
                throw FieldError("knock-refused.count must be a whole number from 0 to \(KnockRefusalReport.maximumCount)")
            }
            count = whole
        }
        guard let problem = try fields.string("problem") else { throw FieldError("knock-refused needs a problem") }
        if let text = TextCheck.problem(with: problem, field: "knock-refused.problem", maximumBytes: 1024) {
            throw FieldError(text)
        }
        var report = KnockRefusalReport(source: source, problem: problem, count: count)
        if let fingerprint = try fields.string("fingerprint") {
            if let text = fingerprintProblem(fingerprint) { throw FieldError(text) }
            report.fingerprint = fingerprint
        }
        return .knockRefused(report)
    }

    /// `SHA256:` and 43 characters of unpadded base64, as OpenSSH prints a fingerprint.
    static func fingerprintProblem(_ text: String) -> String? {
        let body = text.utf8.dropFirst(7)
        guard text.hasPrefix("SHA256:"), body.count == 43,
            body.allSatisfy({ byte in
                (0x41...0x5a).contains(byte) || (0x61...0x7a).contains(byte) || (0x30...0x39).contains(byte)
                    || byte == UInt8(ascii: "+") || byte == UInt8(ascii: "/")
            })
        else { return "a fingerprint is SHA256: and 43 base64 characters" }
        return nil
    }
}
