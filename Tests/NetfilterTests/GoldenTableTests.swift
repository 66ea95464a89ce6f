import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import NetfilterModel
import TestSupport
import Testing

/// The table built through libnftnl must be the table rules/drawbridge.nft describes, as `nft` itself sees both.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct GoldenTableTests {
    static let rulesFile = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("rules/drawbridge.nft")

    /// Whether this machine's `nft` can load its own translation of a lookup in a concatenated interval set
    /// (`ip saddr . meta l4proto . th dport @ranges4`). Debian 12's nft 1.0.6 adds a byte-order conversion of the
    /// one-byte protocol that Linux 6.12's stable series refuses (EOPNOTSUPP; 6.1 and 6.18 accept it). drawbridge
    /// encodes that lookup itself, without the conversion, and the kernel tests prove it on every kernel; where nft
    /// cannot load those rules, the comparisons below leave them out of what nft loads, and `rulesTextMatches` still
    /// checks them as nft lists them back.
    static let nftLoadsRangeLookups: Bool = {
        guard let namespace = try? NetworkNamespace.createAnonymous() else { return true }
        let probe = """
            table inet drawbridge_probe {
            	set ranges { type ipv4_addr . inet_proto . inet_service; flags interval,timeout; }
            	chain c { ip saddr . meta l4proto . th dport @ranges accept; }
            }

            """
        guard let result = try? run(["nft", "-f", "-"], in: namespace, input: probe, check: false) else { return true }
        // Only this refusal: any other failure of nft fails the tests that use it, loudly.
        let loads = result.succeeded || !result.error.contains("Operation not supported")
        if !loads {
            print("KERNEL-BEHAVIOUR \(RunningKernel.release): this nft cannot load its own interval-set lookups")
        }
        return loads
    }()

    /// `text` as nft can load it here: without the range-set lookups where it cannot (see `nftLoadsRangeLookups`).
    static func nftLoadable(_ text: String) -> String {
        guard !nftLoadsRangeLookups else { return text }
        return text.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.contains("@ranges") }.joined(separator: "\n")
    }

    /// `nft -j list table inet drawbridge` without the parts that differ between any two loads (handles, the nft
    /// version banner), with set elements sorted; unless `allRules`, without range-set lookups where nft cannot load
    /// them (for comparisons with what nft loaded).
    static func normalizedListing(in namespace: NetworkNamespace, allRules: Bool = false) throws -> String {
        let listing = try run(["nft", "-j", "list", "table", "inet", "drawbridge"], in: namespace).output
        let json = try JSONSerialization.jsonObject(with: Data(listing.utf8)) as! [String: Any]
        let items = (json["nftables"] as! [[String: Any]]).filter { item in
            guard item["metainfo"] == nil else { return false }
            guard !allRules, !nftLoadsRangeLookups, let rule = item["rule"] else { return true }
            let data = (try? JSONSerialization.data(withJSONObject: rule)) ?? Data()
            return !String(decoding: data, as: UTF8.self).contains("@ranges")
        }
        func strip(_ value: Any) -> Any {
            if var dictionary = value as? [String: Any] {
                dictionary.removeValue(forKey: "handle")
                for (key, inner) in dictionary { dictionary[key] = strip(inner) }
                return dictionary
            }
            if let array = value as? [Any] { return array.map(strip) }
            return value
        }
        let data = try JSONSerialization.data(withJSONObject: strip(items), options: [.sortedKeys, .prettyPrinted])
        return String(decoding: data, as: UTF8.self)
    }

    @Test("the module builds exactly the table of rules/drawbridge.nft")
    func moduleMatchesRulesFile() throws {
        let fromFile = try NetworkNamespace.createAnonymous()
        let file = try String(contentsOf: Self.rulesFile, encoding: .utf8)
        try run(["nft", "-f", "-"], in: fromFile, input: Self.nftLoadable(file))

        let fromModule = try NetworkNamespace.createAnonymous()
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: fromModule))
        try enforcer.install(mode: .keepSessions, managedServices: [], alwaysAllowed: [])

        let expected = try Self.normalizedListing(in: fromFile)
        #expect(expected.contains("\"gate\""))
        #expect(try Self.normalizedListing(in: fromModule) == expected)
    }

    @Test("rules/drawbridge.nft is what the module prints and what nft lists back", arguments: SessionMode.allCases)
    func rulesTextMatches(mode: SessionMode) throws {
        let namespace = try NetworkNamespace.createAnonymous()
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: namespace))
        try enforcer.install(mode: mode, managedServices: [], alwaysAllowed: [])
        let listed = try run(["nft", "list", "table", "inet", "drawbridge"], in: namespace).output
            .replacingOccurrences(of: "counter packets 0 bytes 0", with: "counter")
        #expect(listed == DrawbridgeTable.ruleset(mode: mode))
        if mode == .keepSessions {
            let file = try String(contentsOf: Self.rulesFile, encoding: .utf8)
            let withoutComments = file.split(separator: "\n", omittingEmptySubsequences: false)
                .drop { $0.hasPrefix("#") }.joined(separator: "\n")
            #expect(withoutComments == DrawbridgeTable.ruleset(mode: mode))
        }
    }

    @Test("with knocks, ports and forwarded ports: the module's rules are what nft loads from the printed text and lists back")
    func knockRulesMatchNft() throws {
        let layout = TableLayout(
            mode: .keepSessions,
            managedServices: [Service(port: 22, transport: .tcp), Service(port: 53, transport: .udp)], alwaysAllowed: [],
            knock: KnockRule(port: 62201, group: 4711, rate: 150),
            forwardedServices: [Service(port: 2222, transport: .tcp), Service(port: 53, transport: .udp)])
        let fromModule = try NetworkNamespace.createAnonymous()
        let driver = TableDriver(connection: try NetfilterConnection(namespace: fromModule))
        try driver.rebuild(layout, elements: [:])
        #expect(try driver.verify(layout) == [], "the agent's own check finds the knock rules intact")

        let text = DrawbridgeTable.ruleset(
            mode: .keepSessions, managedServices: layout.managedServices, knock: layout.knock,
            forwardedServices: layout.forwardedServices)
        #expect(text.contains("udp dport 62201 limit rate 150/second log group 4711 drop"))
        // Each managed port's own counting rules: drops at the end of gate, accepts in granted.
        #expect(text.contains("\t\ttcp dport 22 counter drop\n\t\tudp dport 53 counter drop\n\t\tcounter drop\n"))
        #expect(text.contains("\t\ttcp dport 22 counter accept\n\t\tudp dport 53 counter accept\n\t\tcounter accept\n"))
        // Forwarded ports: judged by the connection's original destination port, counted the same way.
        #expect(text.contains("meta l4proto tcp ip saddr . meta l4proto . ct original proto-dst @grants4 goto granted_forward"))
        #expect(text.contains("\t\tmeta l4proto tcp ct original proto-dst 2222 counter drop\n"))
        let fromText = try NetworkNamespace.createAnonymous()
        try run(["nft", "-f", "-"], in: fromText, input: Self.nftLoadable(text))
        #expect(try Self.normalizedListing(in: fromModule) == Self.normalizedListing(in: fromText))
        // nft wraps a list of elements over lines; the printed text keeps them on one.
        let listed = try run(["nft", "list", "table", "inet", "drawbridge"], in: fromModule).output
            .replacingOccurrences(of: "counter packets 0 bytes 0", with: "counter")
            .replacingOccurrences(of: ",\n\t\t\t     ", with: ", ")
        #expect(listed == text)

        // Another rate, group or port is a changed rule; no knock section at all means no knock rules.
        var other = layout
        other.knock = KnockRule(port: 62201, group: 4712, rate: 150)
        #expect(try driver.verify(other) == ["the rules of chain input were changed"])
        other.knock = nil
        #expect(try driver.verify(other) == ["the rules of chain input were changed"])
    }

    @Test("managed ports and break-glass prefixes list as nft would load them")
    func elementsMatchNft() throws {
        let managed = [
            Service(port: 22, transport: .tcp), Service(port: 5432, transport: .tcp),
            Service(port: 53, transport: .udp),
        ]
        let allowed = try [
            "192.0.2.10", "198.51.100.0/24", "203.0.113.0/25", "203.0.113.128/25", "2001:db8::/32", "::/0",
        ]
        .map { try IPPrefix(parsing: $0) }

        let fromModule = try NetworkNamespace.createAnonymous()
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: fromModule))
        try enforcer.install(mode: .cutSessions, managedServices: managed, alwaysAllowed: allowed)

        let fromFile = try NetworkNamespace.createAnonymous()
        let ruleset = DrawbridgeTable.ruleset(mode: .cutSessions, managedServices: managed)
        try run(["nft", "-f", "-"], in: fromFile, input: Self.nftLoadable(ruleset))
        try run(
            ["nft", "-f", "-"], in: fromFile,
            input: """
                add element inet drawbridge managed { tcp . 22, tcp . 5432, udp . 53 }
                add element inet drawbridge allow4 { 192.0.2.10, 198.51.100.0/24, 203.0.113.0/24 }
                add element inet drawbridge allow6 { ::/0 }

                """)
        #expect(try Self.normalizedListing(in: fromModule) == Self.normalizedListing(in: fromFile))
    }

    @Test("installing again keeps grants and does not duplicate rules")
    func reinstallIsIdempotent() throws {
        let namespace = try NetworkNamespace.createAnonymous()
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: namespace))
        let ssh = Service(port: 22, transport: .tcp)
        try enforcer.install(mode: .keepSessions, managedServices: [ssh], alwaysAllowed: [])
        let key = AccessKey(source: IPPrefix(address: IPAddress("203.0.113.7")!), service: ssh)
        try enforcer.reconcile(desired: [key: Date().addingTimeInterval(600)])
        let before = try Self.normalizedListing(in: namespace, allRules: true)

        try enforcer.install(mode: .keepSessions, managedServices: [ssh], alwaysAllowed: [])
        #expect(try enforcer.elements().keys.contains(key))
        let after = try Self.normalizedListing(in: namespace, allRules: true)
        // Only the expiry countdown may differ; the rules must not have been appended twice.
        let rules = { (listing: String) in listing.components(separatedBy: "\"rule\"").count }
        #expect(rules(after) == rules(before))
        #expect(rules(after) == DrawbridgeTable.rules(mode: .keepSessions, managedServices: [ssh]).count + 1)
    }
}
