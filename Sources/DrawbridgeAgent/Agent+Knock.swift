import DrawbridgeCore
import FoundationEssentials
import HostSystem

/// What the agent has seen of knocks since it started, for `drawbridge status`.
struct KnockView {
    var opened = 0
    var refused = 0
    var lastContact: MonotonicInstant?
}

extension Agent {
    var knockStatus: LocalAPI.KnockStatus? {
        guard let knock = policy.knock else { return nil }
        return LocalAPI.KnockStatus(
            port: knock.service.description, opened: knocks.opened, refused: knocks.refused,
            secondsSinceContact: knocks.lastContact.map { SystemClock.monotonic().seconds(since: $0) })
    }

    /// Whether `caller` may hand the agent knocks: root, or the policy's `knock.user`.
    private func mayKnock(_ caller: Caller) -> Bool {
        guard let knock = policy.knock else { return false }
        return caller.isRoot || caller.user == knock.user
    }

    private func knockForbidden(_ caller: Caller, what: String) -> LocalAPI.Response {
        guard let knock = policy.knock else {
            return .failure(.init(code: .badRequest, message: "this host's policy has no knock section; it takes no knocks"))
        }
        audit.record(
            AuditEvent(
                .refuse, user: caller.user, uid: caller.uid, origin: "knock",
                detail: "\(what) from a caller that is neither root nor \(knock.user)"))
        return .failure(
            .init(code: .forbidden, message: "only root and the knock user (\(knock.user)) may hand the agent \(what)"))
    }

    /// A knock that drawbridge-knock verified: opened if the policy's key rule and ports allow it, refused and
    /// audited otherwise. The grant's origin is `knock:<fingerprint>`; it lists, extends, revokes and expires like any.
    func knock(_ knock: KnockGrant, _ caller: Caller) async -> LocalAPI.Response {
        guard let settings = policy.knock, mayKnock(caller) else { return knockForbidden(caller, what: "knocks") }
        knocks.lastContact = SystemClock.monotonic()
        let origin = GrantOrigin.knock(knock.fingerprint)
        let request = knock.request
        let who = knock.keyComment.map { "\(knock.fingerprint) (\($0))" } ?? knock.fingerprint
        func refuse(_ refusal: Refusal) -> LocalAPI.Response {
            knocks.refused += 1
            audit.record(
                AuditEvent(
                    .refuse, user: who, source: request.source.description, ports: request.ports,
                    reason: request.reason, origin: origin.description, detail: refusal.message))
            return .failure(.init(code: .refused, reason: refusal.reason.rawValue, message: refusal.message))
        }
        guard knock.keyRule <= settings.keys.count else {
            return refuse(
                Refusal(
                    reason: .notPermitted,
                    message: "knock key rule \(knock.keyRule) does not exist (the policy has \(settings.keys.count))"))
        }
        let rule = settings.keys[knock.keyRule - 1]
        let resolved: [Policy.ManagedPort]
        switch policy.resolvePorts(request.ports) {
        case .failure(let refusal): return refuse(refusal)
        case .success(let ports): resolved = ports
        }
        for port in resolved where !rule.ports.contains(port.name) {
            return refuse(
                Refusal(
                    reason: .notPermitted,
                    message: "key \(knock.fingerprint) may not open \(port.name) by knocking; its rule (knock key "
                        + "\(knock.keyRule)) allows \(rule.ports.joined(separator: ", "))"))
        }
        if request.duration > rule.maxDuration {
            return refuse(
                Refusal(
                    reason: .durationTooLong,
                    message: "key \(knock.fingerprint) may open ports for at most "
                        + "\(GrantDuration.format(rule.maxDuration)) (knock key \(knock.keyRule)); asked for "
                        + GrantDuration.format(request.duration)))
        }
        // Each port's own limits (allowed sources, max_duration) as for any grant; the key rule stood in for a role.
        let authorized: AuthorizedGrant
        switch policy.authorize(resolved, request: request, by: Caller(uid: 0, user: "root", groups: [])) {
        case .failure(let refusal): return refuse(refusal)
        case .success(let value): authorized = value
        }
        let claimed = knock.clientAddress.flatMap { IPAddress($0) }.map(IPPrefix.init(address:))
        if settings.requireSourceAddress, claimed != request.source {
            return refuse(
                Refusal(
                    reason: .sourceNotAllowed,
                    message: "the knock came from \(request.source) but was signed for "
                        + "\(knock.clientAddress ?? "no address") (knock.require_source_address: true)"))
        }
        var detail = "knock key \(knock.keyRule)"
        if let client = knock.clientAddress, IPAddress(client).map(IPPrefix.init(address:)) != request.source {
            detail += "; the client saw itself as \(client) (NAT between it and this host)"
        }
        let response = await open(
            authorized, request: request, requestedBy: who, uid: nil, origin: origin, auditDetail: detail)
        if response.ok { knocks.opened += 1 } else { knocks.refused += 1 }
        return response
    }

    /// A knock drawbridge-knock refused: audited, nothing else.
    func knockRefused(_ report: KnockRefusalReport, _ caller: Caller) -> LocalAPI.Response {
        guard mayKnock(caller) else { return knockForbidden(caller, what: "knock reports") }
        knocks.lastContact = SystemClock.monotonic()
        // A summary stands for many refusals: "N more knocks refused …".
        let summarized = report.problem.split(separator: " ", maxSplits: 1).first.flatMap { Int($0) }
        knocks.refused += report.problem.contains("more knocks refused") ? (summarized ?? 1) : 1
        audit.record(
            AuditEvent(
                .refuse, user: report.fingerprint, source: report.source,
                origin: report.fingerprint.map { GrantOrigin.knock($0).description } ?? "knock",
                detail: "knock refused: \(report.problem)"))
        return LocalAPI.Response(ok: true, outcome: "audited")
    }
}
