import FoundationEssentials

/// Who is asking, as the kernel vouches for it (the local socket's peer credentials), never as a request claims.
public struct Caller: Sendable, Equatable, Codable {
    /// The numeric user id; 0 is root.
    public var uid: UInt32
    /// The user name, for messages and the audit record.
    public var user: String
    /// The names of every Unix group the user belongs to, primary and supplementary.
    public var groups: [String]

    /// Root may grant anything the policy's ports allow, with or without a role.
    public var isRoot: Bool { uid == 0 }

    public init(uid: UInt32, user: String, groups: [String]) {
        self.uid = uid
        self.user = user
        self.groups = groups
    }
}

/// A request to open ports to a source for a while, before the policy has looked at it.
public struct GrantRequest: Sendable, Equatable, Codable {
    /// Port names from the policy (`ssh`) or numbers with an optional protocol (`22/tcp`, `5432`, meaning TCP).
    public var ports: [String]
    /// The prefix to open the ports to.
    public var source: IPPrefix
    /// How long the grant lasts, in seconds.
    public var duration: TimeInterval
    /// Why, in the requester's words, for the audit record.
    public var reason: String

    public init(ports: [String], source: IPPrefix, duration: TimeInterval, reason: String) {
        self.ports = ports
        self.source = source
        self.duration = duration
        self.reason = reason
    }
}

/// A request that the policy allows, with its ports resolved.
public struct AuthorizedGrant: Sendable, Equatable {
    /// The requested ports without duplicates, in policy order.
    public var ports: [Policy.ManagedPort]
    /// The prefix the ports open to.
    public var source: IPPrefix
    /// How long the grant lasts, in seconds: exactly what was asked for, never clamped.
    public var duration: TimeInterval

    public init(ports: [Policy.ManagedPort], source: IPPrefix, duration: TimeInterval) {
        self.ports = ports
        self.source = source
        self.duration = duration
    }
}

/// Why the policy refused a request, in a sentence the requester can act on.
public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of refusal, stable for scripts and the audit record.
    public enum Reason: String, Sendable, Codable {
        /// A port that is neither a policy name nor a managed NUMBER/PROTO.
        case unknownPort = "unknown-port"
        /// The source is not within the prefixes a port may be opened to.
        case sourceNotAllowed = "source-not-allowed"
        /// Longer than the port or the caller's roles allow.
        case durationTooLong = "duration-too-long"
        /// No role of the caller covers the port.
        case notPermitted = "not-permitted"
        /// The request itself is malformed (no ports, a duration that is not positive).
        case invalidRequest = "invalid-request"
    }

    public var reason: Reason
    public var message: String

    public init(reason: Reason, message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }
}

extension Policy {
    /// Resolves a port as a person names it: a policy name (`ssh`) or `NUMBER[/PROTO]` (`22/tcp`, `5432`, which
    /// means TCP).
    ///
    /// Port names cannot start with a digit, so the two forms never collide. An unmanaged port is refused with the
    /// list of managed ones: "5432/tcp is not a managed port; managed: ssh 22/tcp".
    public func resolvePort(_ text: String) -> Result<ManagedPort, Refusal> {
        let trimmed = text.trimmingWhitespace()
        if let service = Service(parsing: trimmed) {
            if let port = port(for: service) { return .success(port) }
            let message = "\(service) is not a managed port; managed: \(managedList)"
            return .failure(Refusal(reason: .unknownPort, message: message))
        }
        if let port = port(named: trimmed.lowercased()) { return .success(port) }
        var message = "'\(trimmed)' is not a managed port; managed: \(managedList)"
        if let first = trimmed.first, first.isASCIIDigit {
            message =
                "'\(trimmed)' is not a port: write NUMBER or NUMBER/tcp or NUMBER/udp with a number from 1 to "
                + "65535, or a port name; managed: \(managedList)"
        } else if let suggestion = Spelling.closest(to: trimmed, among: ports.map(\.name)) {
            message += "; did you mean \(suggestion)?"
        }
        return .failure(Refusal(reason: .unknownPort, message: message))
    }

    /// Decides whether `caller` may open the requested ports to the source for the duration.
    ///
    /// Checks, in this order, each over all requested ports so the most basic problem is reported first:
    /// 1. every port resolves (`unknown-port`), and the duration is positive (`invalid-request`);
    /// 2. unless the caller is root, one of its roles covers the port (`not-permitted`);
    /// 3. the source lies within one of the port's allowed sources (`source-not-allowed`); a grant to
    ///    `0.0.0.0/0` therefore needs a policy that allows exactly that;
    /// 4. the duration is within the port's limit, and unless the caller is root, within the longest limit of the
    ///    caller's roles that cover the port (`duration-too-long`). A duration is never clamped.
    public func authorize(_ request: GrantRequest, by caller: Caller) -> Result<AuthorizedGrant, Refusal> {
        switch resolvePorts(request.ports) {
        case .failure(let refusal): return .failure(refusal)
        case .success(let resolved): return authorize(resolved, request: request, by: caller)
        }
    }

    /// The managed ports a request names, without duplicates, in policy order; refused when it names none or one
    /// that is not managed.
    public func resolvePorts(_ texts: [String]) -> Result<[ManagedPort], Refusal> {
        guard !texts.isEmpty else {
            return .failure(Refusal(reason: .invalidRequest, message: "the request names no port; managed: \(managedList)"))
        }
        var requested: Set<String> = []
        for text in texts {
            switch resolvePort(text) {
            case .success(let port): requested.insert(port.name)
            case .failure(let refusal): return .failure(refusal)
            }
        }
        return .success(ports.filter { requested.contains($0.name) })
    }

    /// Steps 2 to 4 of ``authorize(_:by:)`` for ports already resolved (a grants file resolves each distinct list
    /// of ports once, not once per entry).
    public func authorize(
        _ resolved: [ManagedPort], request: GrantRequest, by caller: Caller
    ) -> Result<AuthorizedGrant, Refusal> {
        func refuse(_ reason: Refusal.Reason, _ message: String) -> Result<AuthorizedGrant, Refusal> {
            .failure(Refusal(reason: reason, message: message))
        }
        let duration = request.duration
        guard duration.isFinite, duration > 0 else {
            return refuse(.invalidRequest, "a grant must last longer than zero; asked for \(duration) seconds")
        }
        // Spelled out only for a refusal (a grants file checks a million entries).
        var asked: String { GrantDuration.format(duration) }

        let callerRoles = caller.isRoot ? [] : roles(of: caller)
        if !caller.isRoot {
            for port in resolved where !callerRoles.contains(where: { $0.ports.contains(port.name) }) {
                let groups = caller.groups.isEmpty ? "none" : caller.groups.joined(separator: ", ")
                let allowed = grantablePorts(for: caller).map(\.name)
                let allowedList = allowed.isEmpty ? "nothing" : allowed.joined(separator: ", ")
                return refuse(
                    .notPermitted,
                    "user \(caller.user) (groups: \(groups)) may not grant \(port.name); roles allow: \(allowedList)")
            }
        }
        for port in resolved where !port.allowedSources.contains(where: { $0.contains(request.source) }) {
            let allowed = port.allowedSources.map(\.description).joined(separator: ", ")
            return refuse(
                .sourceNotAllowed,
                "\(port.name) may not be opened to \(request.source); its allowed sources are \(allowed)")
        }
        for port in resolved {
            if duration > port.maxDuration {
                let limit = GrantDuration.format(port.maxDuration)
                return refuse(.durationTooLong, "\(port.name) allows at most \(limit); asked for \(asked)")
            }
            if caller.isRoot { continue }
            // Checked above: at least one of the caller's roles covers the port.
            let longest = callerRoles.filter { $0.ports.contains(port.name) }.max { $0.maxDuration < $1.maxDuration }!
            if duration > longest.maxDuration {
                let limit = GrantDuration.format(longest.maxDuration)
                return refuse(
                    .durationTooLong,
                    "user \(caller.user) may grant \(port.name) for at most \(limit) "
                        + "(role for group \(longest.group)); asked for \(asked)")
            }
        }
        return .success(AuthorizedGrant(ports: resolved, source: request.source, duration: duration))
    }

    /// The roles whose group the caller belongs to, in policy order.
    public func roles(of caller: Caller) -> [Role] {
        roles.filter { caller.groups.contains($0.group) }
    }

    /// The ports the caller may grant (all of them for root), in policy order.
    public func grantablePorts(for caller: Caller) -> [ManagedPort] {
        if caller.isRoot { return ports }
        let names = Set(roles(of: caller).flatMap(\.ports))
        return ports.filter { names.contains($0.name) }
    }

    /// `ssh 22/tcp, postgres 5432/tcp`, or `none` when the policy manages nothing.
    private var managedList: String {
        ports.isEmpty ? "none" : ports.map { "\($0.name) \($0.service)" }.joined(separator: ", ")
    }
}
