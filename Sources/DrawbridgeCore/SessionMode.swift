/// What happens to connections that were opened during a grant when the grant ends.
public enum SessionMode: String, Sendable, Codable, CaseIterable {
    /// Established connections continue (like Azure JIT); only new connections are refused.
    case keepSessions = "keep-sessions"
    /// The kernel drops every packet of the ended grant, including those of open connections.
    case cutSessions = "cut-sessions"
}
