import DrawbridgeCore
import Foundation
import Netfilter
import NetfilterModel

/// The two kinds of grant set drawbridge loads.
enum SetKind: String, CaseIterable, Codable, Sendable {
    /// Single addresses in `grants4` (`ipv4_addr . inet_proto . inet_service`, flags timeout): the rhash backend.
    case hash
    /// Prefixes in `ranges4` (the same concatenation, flags interval,timeout): the pipapo backend.
    case interval

    var set: SetDefinition { self == .hash ? DrawbridgeTable.grants4 : DrawbridgeTable.ranges4 }

    /// How the kernel stores this set (inferred from its selection rules, not visible through netlink).
    var backend: String { self == .hash ? "rhash" : "pipapo" }

    /// Bulk sources: the 256 addresses of 192.0.2.0/24, or the 64 /30 prefixes of 198.51.100.0/24.
    var sourceCount: Int { self == .hash ? 256 : 64 }

    /// The most elements the documentation ranges give (every source times ports 1-65535).
    var maxElements: Int { sourceCount * 65535 }

    /// The `index`th bulk source (RFC 5737 TEST-NET-1 for addresses, TEST-NET-2 for prefixes).
    func bulkSource(_ index: Int) -> IPPrefix {
        switch self {
        case .hash: return IPPrefix(address: .v4(0xC000_0200 | UInt32(index)))
        case .interval: return try! IPPrefix(network: .v4(0xC633_6400 | UInt32(index * 4)), length: 30)
        }
    }

    /// The `index`th 1-element change, from TEST-NET-3 (203.0.113.0/24) on port 22 and up, so it never collides with
    /// a bulk element.
    func extra(_ index: Int) -> AccessKey {
        let ssh = 22
        switch self {
        case .hash:
            let address = IPAddress.v4(0xCB00_7100 | UInt32(1 + index % 254))
            return AccessKey(
                source: IPPrefix(address: address), service: Service(port: UInt16(ssh + index / 254), transport: .tcp))
        case .interval:
            let prefix = try! IPPrefix(network: .v4(0xCB00_7100 | UInt32(4 * (index % 64))), length: 30)
            return AccessKey(source: prefix, service: Service(port: UInt16(ssh + index / 64), transport: .tcp))
        }
    }
}

/// The elements of one measurement: N bulk elements and the 1-element changes, all with a one-hour timeout.
struct Workload {
    static let timeoutSeconds = 3600

    let kind: SetKind
    /// In the order both tools send them: sorted as `ElementDiff` sorts additions (source, then service).
    let keys: [AccessKey]
    let extras: [AccessKey]

    init(kind: SetKind, elements: Int, changes: Int) {
        self.kind = kind
        // Every source gets the same run of ports 1, 2, …; the last ports are cut so the total is exactly N.
        let portsPerSource = (elements + kind.sourceCount - 1) / kind.sourceCount
        var keys: [AccessKey] = []
        keys.reserveCapacity(elements)
        outer: for sourceIndex in 0..<kind.sourceCount {
            let source = kind.bulkSource(sourceIndex)
            for port in 1...max(1, portsPerSource) {
                if keys.count == elements { break outer }
                keys.append(AccessKey(source: source, service: Service(port: UInt16(port), transport: .tcp)))
            }
        }
        self.keys = keys
        extras = (0..<changes).map(kind.extra)
    }

    /// Every bulk key with the same absolute expiry, an hour from `now`.
    func desired(now: Date) -> [AccessKey: Date] {
        let expiry = now.addingTimeInterval(TimeInterval(Self.timeoutSeconds))
        var desired: [AccessKey: Date] = [:]
        desired.reserveCapacity(keys.count)
        for key in keys { desired[key] = expiry }
        return desired
    }

    /// One element in nft syntax: `192.0.2.7 . tcp . 22 timeout 3600s` or `198.51.100.4/30 . tcp . 22 timeout 3600s`.
    static func nftElement(_ key: AccessKey) -> String {
        "\(key.source) . \(key.service.transport.rawValue) . \(key.service.port) timeout \(timeoutSeconds)s"
    }

    /// The `nft -f` file for the bulk load: one `add element` statement, one element per line.
    func nftFile() -> String {
        var text = "add element inet \(DrawbridgeTable.name) \(kind.set.name) {\n"
        text.reserveCapacity(keys.count * 40)
        for (index, key) in keys.enumerated() {
            text += "\t" + Self.nftElement(key) + (index == keys.count - 1 ? "\n" : ",\n")
        }
        return text + "}\n"
    }

    /// The `nft` command line (after `nft`) for one 1-element change.
    func nftAddCommand(_ key: AccessKey) -> String {
        "add element inet \(DrawbridgeTable.name) \(kind.set.name) { \(Self.nftElement(key)) }"
    }
}
