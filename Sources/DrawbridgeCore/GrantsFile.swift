import Foundation

/// A watched grants file: a JSON document that lists grants with absolute expiries.
///
/// ```json
/// {
///   "grants": [
///     { "id": "deploy", "source": "203.0.113.7", "ports": ["ssh"], "expires_at": "2026-11-26T12:00:00Z",
///       "reason": "nightly deploy" }
///   ]
/// }
/// ```
/// `id` is optional (without it the entry's content names it); `reason` is optional. Each entry is checked against
/// the policy as if root asked for it, for the time left until `expires_at`.
public enum GrantsFile {
    /// A grants file that could not be read as a whole; the agent then keeps the file's last good grants.
    public struct FormatError: Error, Sendable, Equatable, CustomStringConvertible {
        public var path: String
        public var message: String
        public var description: String { "\(path): \(message)" }
    }

    /// What a readable file yields: the grants that pass the policy, and the entries refused with why.
    public struct Contents: Sendable, Equatable {
        public var grants: [Grant]
        public var refusals: [(entry: String, refusal: Refusal)]

        public static func == (lhs: Contents, rhs: Contents) -> Bool {
            lhs.grants == rhs.grants && lhs.refusals.map(\.entry) == rhs.refusals.map(\.entry)
                && lhs.refusals.map(\.refusal) == rhs.refusals.map(\.refusal)
        }
    }

    static let entryKeys: Set<String> = ["id", "source", "ports", "expires_at", "reason"]

    /// Parses and checks a grants file. Entries whose expiry has passed are left out without complaint.
    public static func parse(_ data: Data, path: String, policy: Policy, now: Date) throws(FormatError) -> Contents {
        func fail(_ message: String) -> FormatError { FormatError(path: path, message: message) }
        let document: Any
        do {
            document = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw fail("not valid JSON (\((error as NSError).userInfo["NSDebugDescription"] ?? error))")
        }
        guard let top = document as? [String: Any] else {
            throw fail("the document must be an object with a \"grants\" list")
        }
        if let unknown = top.keys.first(where: { $0 != "grants" }) {
            throw fail("unknown key \"\(unknown)\" at the top level; the only key is \"grants\"")
        }
        guard let entries = top["grants"] as? [Any] else { throw fail("\"grants\" must be a list of grant objects") }

        let origin = GrantOrigin.file(path)
        var grants: [Grant] = []
        var refusals: [(String, Refusal)] = []
        var seen: Set<String> = []
        for (index, raw) in entries.enumerated() {
            let place = "grants[\(index)]"
            guard let entry = raw as? [String: Any] else { throw fail("\(place) must be an object") }
            if let unknown = entry.keys.sorted().first(where: { !entryKeys.contains($0) }) {
                throw fail(
                    "\(place): unknown key \"\(unknown)\"; allowed: \(entryKeys.sorted().joined(separator: ", "))")
            }
            guard let sourceText = entry["source"] as? String else {
                throw fail("\(place).source must be a string prefix")
            }
            let source: IPPrefix
            do {
                source = try IPPrefix(parsing: sourceText)
            } catch {
                throw fail("\(place).source: \(error.description)")
            }
            guard let ports = entry["ports"] as? [String], !ports.isEmpty else {
                throw fail("\(place).ports must be a non-empty list of port names (or NUMBER/PROTO)")
            }
            guard let expiryText = entry["expires_at"] as? String, let expiresAt = parseTimestamp(expiryText) else {
                throw fail("\(place).expires_at must be a UTC timestamp like 2026-11-26T12:00:00Z")
            }
            let reason = entry["reason"] ?? ""
            guard let reason = reason as? String else { throw fail("\(place).reason must be a string") }
            if let id = entry["id"], !(id is String) || (id as! String).isEmpty {
                throw fail("\(place).id must be a non-empty string")
            }

            let suffix =
                (entry["id"] as? String) ?? String(fnv1a("\(source)|\(ports.sorted())|\(expiryText)"), radix: 16)
            let id = GrantBook.fileIdentifierPrefix(for: origin) + suffix
            guard seen.insert(id).inserted else { throw fail("\(place): duplicate id \"\(suffix)\"") }
            guard expiresAt > now else { continue }

            let request = GrantRequest(
                ports: ports, source: source, duration: expiresAt.timeIntervalSince(now), reason: reason)
            switch policy.authorize(request, by: Caller(uid: 0, user: "root", groups: [])) {
            case .failure(let refusal):
                refusals.append(("\(place) (\(sourceText) \(ports.joined(separator: ",")))", refusal))
            case .success(let authorized):
                grants.append(
                    Grant(
                        id: id, source: source,
                        ports: authorized.ports.map { GrantedPort(name: $0.name, service: $0.service) },
                        createdAt: now, expiresAt: expiresAt, requestedBy: path, uid: nil, reason: reason,
                        origin: origin))
            }
        }
        return Contents(grants: grants, refusals: refusals)
    }

    static func parseTimestamp(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }
}
