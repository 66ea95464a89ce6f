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
            metrics.knocks("refused")
            audit.record(
                AuditEvent(
                    .refuse, user: who, source: request.source.description, ports: request.ports,
                    reason: request.reason, origin: origin.description, detail: refusal.message))
            return .failure(.init(code: .refused, reason: refusal.reason.rawValue, message: refusal.message))
        }
        // The key must be listed by this policy now, whatever the listener was started with.
        let (numbers, unreadable) = Self.rules(listing: knock.key, in: settings)
        guard let firstNumber = numbers.first else {
            var message = "key \(knock.fingerprint) is not in this host's knock policy (any more): no rule of knock.keys "
                + "lists it"
            if !unreadable.isEmpty { message += "; could not read \(unreadable.joined(separator: "; "))" }
            return refuse(Refusal(reason: .notPermitted, message: message))
        }
        let resolved: [Policy.ManagedPort]
        switch policy.resolvePorts(request.ports) {
        case .failure(let refusal): return refuse(refusal)
        case .success(let ports): resolved = ports
        }
        // The first rule listing the key that allows every port and the duration; else the first rule's reasons.
        let number =
            numbers.first { number in
                let rule = settings.keys[number - 1]
                return request.duration <= rule.maxDuration && resolved.allSatisfy { rule.ports.contains($0.name) }
            } ?? firstNumber
        let rule = settings.keys[number - 1]
        for port in resolved where !rule.ports.contains(port.name) {
            return refuse(
                Refusal(
                    reason: .notPermitted,
                    message: "key \(knock.fingerprint) may not open \(port.name) by knocking; its rule (knock key "
                        + "\(number)) allows \(rule.ports.joined(separator: ", "))"))
        }
        if request.duration > rule.maxDuration {
            return refuse(
                Refusal(
                    reason: .durationTooLong,
                    message: "key \(knock.fingerprint) may open ports for at most "
                        + "\(GrantDuration.format(rule.maxDuration)) (knock key \(number)); asked for "
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
        var detail = "knock key \(number)"
        if let client = knock.clientAddress, IPAddress(client).map(IPPrefix.init(address:)) != request.source {
            detail += "; the client saw itself as \(client) (NAT between it and this host)"
        }
        let response = await open(
            authorized, request: request, requestedBy: who, uid: nil, origin: origin, auditDetail: detail)
        if response.ok { knocks.opened += 1 } else { knocks.refused += 1 }
        metrics.knocks(response.ok ? "opened" : "refused")
        return response
    }

    /// The rules (1-based) of the knock section that list `key`: `key:` lines compared by key, authorized_keys files
    /// read afresh (as files that grant access: owned by root and writable by nobody else), so that a key taken out
    /// of the policy or its file opens nothing from the next knock on. Also the files that could not be read.
    static func rules(listing key: KnockKeyIdentity, in settings: KnockSettings) -> (numbers: [Int], unreadable: [String]) {
        var numbers: [Int] = []
        var unreadable: [String] = []
        for (index, rule) in settings.keys.enumerated() {
            switch rule.keys {
            case .key(let line):
                if KnockKeyIdentity(line) == key { numbers.append(index + 1) }
            case .authorizedKeys(let path):
                do {
                    let bytes = try Files.readTrusted(path, maximumBytes: 1 << 20)
                    if KnockKeyIdentity.keys(inAuthorizedKeys: String(decoding: bytes, as: UTF8.self)).contains(key) {
                        numbers.append(index + 1)
                    }
                } catch {
                    unreadable.append("\(path) (knock key \(index + 1)): \(error.message)")
                }
            }
        }
        return (numbers, unreadable)
    }

    /// A knock drawbridge-knock refused: audited, nothing else.
    func knockRefused(_ report: KnockRefusalReport, _ caller: Caller) -> LocalAPI.Response {
        guard mayKnock(caller) else { return knockForbidden(caller, what: "knock reports") }
        knocks.lastContact = SystemClock.monotonic()
        knocks.refused += report.count
        metrics.knocks("refused", count: report.count)
        audit.record(
            AuditEvent(
                .refuse, user: report.fingerprint, source: report.source,
                origin: report.fingerprint.map { GrantOrigin.knock($0).description } ?? "knock",
                detail: "knock refused: \(report.problem)"))
        return LocalAPI.Response(ok: true, outcome: "audited")
    }
}
