import Foundation

/// What happens to connections that were opened during a grant when the grant ends.
public enum SessionMode: String, Sendable, Codable, CaseIterable {
    /// Established connections continue (like Azure JIT); only new connections are refused.
    case keepSessions = "keep-sessions"
    /// The kernel drops every packet of the ended grant, including those of open connections.
    case cutSessions = "cut-sessions"
}

/// Turns the union of all grants into the elements the kernel should hold.
public enum AccessPlan {
    /// Makes the desired elements safe to load into interval sets.
    ///
    /// The kernel's concatenated interval sets refuse an element whose start lies inside another element (EEXIST),
    /// and two grants may well overlap: `198.51.100.0/24` for an hour and `198.51.100.7/32` for a day. For each
    /// service this keeps every address's longest expiry and nothing more:
    /// - a prefix inside a wider one that lasts at least as long is dropped (it adds nothing);
    /// - a wider prefix that ends sooner than a prefix inside it is split into the pieces around the inner one, so
    ///   neither grant is cut short and no address gets more time than some grant gave it.
    ///
    /// Single addresses (/32, /128) are kept as they are: they live in exact-match sets, where overlap with a prefix
    /// is harmless.
    public static func normalize(_ desired: [AccessKey: Date]) -> [AccessKey: Date] {
        var result: [AccessKey: Date] = [:]
        var prefixesByService: [ServiceFamily: [(IPPrefix, Date)]] = [:]
        for (key, expiresAt) in desired {
            if key.source.isSingleAddress {
                result[key] = expiresAt
            } else {
                prefixesByService[ServiceFamily(service: key.service, family: key.source.family), default: []]
                    .append((key.source, expiresAt))
            }
        }
        for (group, prefixes) in prefixesByService {
            for (prefix, expiresAt) in disjoint(prefixes) {
                result[AccessKey(source: prefix, service: group.service)] = expiresAt
            }
        }
        return result
    }

    private struct ServiceFamily: Hashable {
        var service: Service
        var family: AddressFamily
    }

    /// Rewrites overlapping prefixes into disjoint ones, each address keeping the latest expiry any input gave it.
    static func disjoint(_ input: [(IPPrefix, Date)]) -> [(IPPrefix, Date)] {
        // Longest expiry first: every later (shorter-lived) prefix only fills the addresses not yet covered.
        let ordered = input.sorted { ($0.1, $1.0.length, $0.0) > ($1.1, $0.0.length, $1.0) }
        var placed: [(IPPrefix, Date)] = []
        for (prefix, expiresAt) in ordered {
            var pieces = [prefix]
            for (existing, _) in placed {
                pieces = pieces.flatMap { subtract(existing, from: $0) }
                if pieces.isEmpty { break }
            }
            placed.append(contentsOf: pieces.map { ($0, expiresAt) })
        }
        return placed
    }

    /// `minuend` without the addresses of `subtrahend`, as a list of disjoint prefixes.
    static func subtract(_ subtrahend: IPPrefix, from minuend: IPPrefix) -> [IPPrefix] {
        if subtrahend.contains(minuend) { return [] }
        guard minuend.contains(subtrahend) else { return [minuend] }
        // Walk from the minuend down to the subtrahend; at each level keep the half that does not hold it.
        var pieces: [IPPrefix] = []
        var current = minuend
        while current.length < subtrahend.length {
            let (lower, upper) = current.halves()
            if lower.contains(subtrahend) {
                pieces.append(upper)
                current = lower
            } else {
                pieces.append(lower)
                current = upper
            }
        }
        return pieces
    }
}

extension IPPrefix {
    /// The two prefixes one bit longer that together make up this one.
    func halves() -> (IPPrefix, IPPrefix) {
        let length = self.length + 1
        let lower = IPPrefix(unchecked: network, length: length)
        let upperNetwork: IPAddress
        switch network {
        case .v4(let value):
            upperNetwork = .v4(value | (UInt32(1) << UInt32(32 - length)))
        case .v6(let high, let low):
            if length <= 64 {
                upperNetwork = .v6(high: high | (UInt64(1) << UInt64(64 - length)), low: low)
            } else {
                upperNetwork = .v6(high: high, low: low | (UInt64(1) << UInt64(128 - length)))
            }
        }
        return (lower, IPPrefix(unchecked: upperNetwork, length: length))
    }
}
