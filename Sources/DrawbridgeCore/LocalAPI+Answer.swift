import FoundationEssentials

// The agent's answers that carry grants (grant, revoke, list), written by hand. JSONEncoder walks every field of
// every grant through generic containers: for one grant that was a twentieth of the agent's CPU per request, and a
// list of thousands of grants spent most of its time there. Tests hold the hand-written document equal to the
// encoder's: byte for byte for plain text, and read back to the same answer for any text.

extension LocalAPI.Response {
    /// The answer as JSON (no newline), with keys sorted and dates written as `LocalAPI.encoder()` writes them; nil
    /// for an answer that is not a successful one carrying only grants, an outcome and warnings (those go to the
    /// encoder).
    public func handWrittenJSON() -> [UInt8]? {
        guard ok, error == nil, status == nil, etcd == nil, metrics == nil, let grants else { return nil }
        var out = JSONBytes(capacity: 64 + 400 * grants.count)
        out.raw("{\"grants\":[")
        for (index, status) in grants.enumerated() {
            if index > 0 { out.raw(",") }
            out.grantStatus(status)
        }
        out.raw("],\"ok\":true")
        if let outcome {
            out.raw(",\"outcome\":")
            out.string(outcome)
        }
        if let warnings {
            out.raw(",\"warnings\":[")
            for (index, warning) in warnings.enumerated() {
                if index > 0 { out.raw(",") }
                out.string(warning)
            }
            out.raw("]")
        }
        out.raw("}")
        return out.bytes
    }
}

/// A JSON document being written into bytes.
struct JSONBytes {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    /// Text that is already JSON (punctuation and keys).
    mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    /// A string literal. Text without anything to escape (the usual case: ids, addresses, names, times) is copied as
    /// it is; anything else is escaped as `JSONText.quoted` escapes it.
    mutating func string(_ text: String) {
        var text = text
        let plain = text.withUTF8 { utf8 in
            guard !utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5c || $0 >= 0x7f }) else { return false }
            bytes.append(0x22)
            bytes.append(contentsOf: utf8)
            bytes.append(0x22)
            return true
        }
        if !plain { bytes.append(contentsOf: JSONText.quoted(text).utf8) }
    }

    mutating func number(_ value: Double) {
        bytes.append(contentsOf: LocalAPI.Request.number(value).utf8)
    }

    mutating func grantStatus(_ status: LocalAPI.GrantStatus) {
        raw("{\"grant\":")
        grant(status.grant)
        raw(",\"kernel_remaining_seconds\":{")
        for (index, entry) in status.kernelRemainingSeconds.sorted(by: { $0.key < $1.key }).enumerated() {
            if index > 0 { raw(",") }
            string(entry.key)
            raw(":")
            if let seconds = entry.value { number(seconds) } else { raw("null") }
        }
        raw("}}")
    }

    mutating func grant(_ grant: Grant) {
        raw("{\"created_at\":")
        string(Timestamp.format(grant.createdAt))
        raw(",\"expires_at\":")
        string(Timestamp.format(grant.expiresAt))
        raw(",\"id\":")
        string(grant.id)
        raw(",\"issued_at\":")
        string(Timestamp.format(grant.issuedAt))
        raw(",\"origin\":")
        string(grant.origin.description)
        raw(",\"ports\":[")
        for (index, port) in grant.ports.enumerated() {
            if index > 0 { raw(",") }
            raw("{\"name\":")
            string(port.name)
            raw(",\"service\":")
            string(port.service.description)
            raw("}")
        }
        raw("],\"reason\":")
        string(grant.reason)
        raw(",\"requested_by\":")
        string(grant.requestedBy)
        raw(",\"source\":")
        string(grant.source.description)
        if let uid = grant.uid {
            raw(",\"uid\":")
            bytes.append(contentsOf: String(uid).utf8)
        }
        raw("}")
    }
}
