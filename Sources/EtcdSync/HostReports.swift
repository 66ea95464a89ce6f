/// What the hosts a grant is for say about it, from their status keys: what `drawbridge-etcd grant` waits for and
/// `list` shows.
public struct HostOutcome: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case applied
        case refused(reason: String)
        /// The host's agent is past the grant's revision, yet its report does not list the key.
        case absent(revision: Int64)
        /// No word from the host about this key yet.
        case pending
    }

    public var host: String
    public var state: State
    /// The host's agent, when it is not `ok`.
    public var agentProblem: String?

    public init(host: String, state: State, agentProblem: String? = nil) {
        self.host = host
        self.state = state
        self.agentProblem = agentProblem
    }

    /// Whether the host has said its last word on the key.
    public var isSettled: Bool { state != .pending }

    /// `applied`, `refused: REASON`, …, as one line for a person.
    public var text: String {
        var text =
            switch state {
            case .applied: "applied"
            case .refused(let reason): "refused: \(reason)"
            case .absent(let revision): "not enforced: its report at revision \(revision) does not list the key"
            case .pending: "no report yet"
            }
        if let agentProblem, state == .pending { text += " (its sync says: agent \(agentProblem))" }
        return text
    }

    /// The word for scripts: applied, refused, absent or pending.
    public var stateName: String {
        switch state {
        case .applied: "applied"
        case .refused: "refused"
        case .absent: "absent"
        case .pending: "pending"
        }
    }

    /// The outcome at every host `target` covers: the named host (pending when it has no status at all), or every
    /// host whose status lists the group. `revision` is the revision the key was written at, when known.
    public static func outcomes(
        of key: String, target: FleetTarget, revision: Int64?, statuses: [HostStatus]
    ) -> [HostOutcome] {
        var outcomes: [HostOutcome] = statuses.filter(target.covers).map { status in
            let state: State
            switch status.outcome(of: key) {
            case .applied: state = .applied
            case .refused(let reason): state = .refused(reason: reason)
            case nil:
                if let revision, let applied = status.appliedRevision, applied >= revision, status.truncated != true {
                    state = .absent(revision: applied)
                } else {
                    state = .pending
                }
            }
            return HostOutcome(host: status.host, state: state, agentProblem: status.agent == "ok" ? nil : status.agent)
        }
        if case .host(let name) = target, outcomes.isEmpty { outcomes = [HostOutcome(host: name, state: .pending)] }
        return outcomes.sorted { $0.host < $1.host }
    }
}
