import FoundationEssentials

// The CLI's side of the local API without Codable. A `drawbridge grant` lives for a few milliseconds, and Codable's
// first use in a process (generic metadata, protocol conformance lookups over the whole binary) cost it about as much
// as the agent's work; requests are written by hand and a grant's answer is read with JSONReader. The agent still
// writes its answers with `LocalAPI.encoder()`; tests hold the two readings of the same answer equal.

extension LocalAPI.Request {
    /// The request as one JSON line (newline included), keys sorted as `LocalAPI.encoder()` sorts them.
    public func jsonLine() -> [UInt8] {
        var members: [String] = ["\"command\":" + JSONText.quoted(command.rawValue)]
        if let durationSeconds { members.append("\"duration_seconds\":" + Self.number(durationSeconds)) }
        if let id { members.append("\"id\":" + JSONText.quoted(id)) }
        if let ports { members.append("\"ports\":[" + ports.map(JSONText.quoted).joined(separator: ",") + "]") }
        if let reason { members.append("\"reason\":" + JSONText.quoted(reason)) }
        if let source { members.append("\"source\":" + JSONText.quoted(source)) }
        return Array(("{" + members.joined(separator: ",") + "}\n").utf8)
    }

    /// A JSON number: whole seconds without a fraction, others as Swift writes them (shortest exact form, valid
    /// JSON); null for what JSON cannot hold (no duration parses to it).
    static func number(_ value: Double) -> String {
        guard value.isFinite else { return "null" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return value.description
    }
}

extension LocalAPI {
    /// What `drawbridge grant` shows of the agent's answer: success or the failure, the first grant, the warnings.
    public struct GrantAnswer: Sendable, Equatable {
        public struct Granted: Sendable, Equatable {
            public var id: String
            public var source: String
            public var ports: [GrantedPort]
            public var expiresAt: Date
        }

        public var ok: Bool
        public var error: Failure?
        /// "created", "extended" or "unchanged".
        public var outcome: String?
        public var grant: Granted?
        public var warnings: [String]

        /// Reads an answer line; nil when it is not one the agent writes (not JSON, a field of the wrong kind).
        public init?(_ bytes: [UInt8]) {
            guard case .object(let answer)? = try? JSONReader.parse(bytes) else { return nil }
            func member(_ members: [(key: String, value: JSONValue)], _ key: String) -> JSONValue? {
                members.first { $0.key == key }?.value
            }
            func string(_ value: JSONValue?) -> String?? {
                switch value {
                case nil, .null?: return .some(nil)
                case .string(let text)?: return text
                default: return nil
                }
            }
            guard case .bool(let ok)? = member(answer, "ok"), let outcome = string(member(answer, "outcome")) else {
                return nil
            }
            self.ok = ok
            self.outcome = outcome
            switch member(answer, "error") {
            case nil, .null?: error = nil
            case .object(let failure)?:
                guard case .string(let codeText)? = member(failure, "code"), let code = Failure.Code(rawValue: codeText),
                    case .string(let message)? = member(failure, "message"),
                    let reason = string(member(failure, "reason"))
                else { return nil }
                error = Failure(code: code, reason: reason, message: message)
            default: return nil
            }
            switch member(answer, "warnings") {
            case nil, .null?: warnings = []
            case .array(let items)?:
                var texts: [String] = []
                for item in items {
                    guard case .string(let text) = item else { return nil }
                    texts.append(text)
                }
                warnings = texts
            default: return nil
            }
            switch member(answer, "grants") {
            case nil, .null?: grant = nil
            case .array(let statuses)?:
                guard let first = statuses.first else {
                    grant = nil
                    break
                }
                guard case .object(let status) = first, case .object(let fields)? = member(status, "grant"),
                    case .string(let id)? = member(fields, "id"), case .string(let source)? = member(fields, "source"),
                    case .string(let expires)? = member(fields, "expires_at"), let expiresAt = Timestamp.parse(expires),
                    case .array(let portValues)? = member(fields, "ports")
                else { return nil }
                var ports: [GrantedPort] = []
                for value in portValues {
                    guard case .object(let port) = value, case .string(let name)? = member(port, "name"),
                        case .string(let serviceText)? = member(port, "service"),
                        let service = Service(parsing: serviceText)
                    else { return nil }
                    ports.append(GrantedPort(name: name, service: service))
                }
                grant = Granted(id: id, source: source, ports: ports, expiresAt: expiresAt)
            default: return nil
            }
        }
    }
}
