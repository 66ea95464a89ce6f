import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import NetfilterModel
import TestSupport
import Testing

/// Tamper detection: an intact table verifies clean; every edit that could change a verdict is named, and a rebuild
/// puts the table back with its grants.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct VerificationTests {
    static let managed = [Service(port: 22, transport: .tcp), Service(port: 53, transport: .udp)]
    static let forwarded = [Service(port: 2222, transport: .tcp)]
    static let allowed = [try! IPPrefix(parsing: "192.0.2.10"), try! IPPrefix(parsing: "2001:db8::/48")]
    static func layout(_ mode: SessionMode = .keepSessions) -> TableLayout {
        TableLayout(mode: mode, managedServices: managed, alwaysAllowed: allowed, forwardedServices: forwarded)
    }

    static func installed(_ mode: SessionMode) throws -> (NetworkNamespace, TableDriver) {
        let namespace = try NetworkNamespace.createAnonymous()
        let driver = TableDriver(connection: try NetfilterConnection(namespace: namespace))
        try driver.rebuild(layout(mode), elements: [:])
        return (namespace, driver)
    }

    @Test("a freshly built table verifies clean", arguments: SessionMode.allCases)
    func clean(mode: SessionMode) throws {
        let (_, driver) = try Self.installed(mode)
        #expect(try driver.verify(Self.layout(mode)) == [])
        let other: SessionMode = mode == .keepSessions ? .cutSessions : .keepSessions
        #expect(
            try driver.verify(Self.layout(other)) == [
                "the rules of chain gate were changed", "the rules of chain gate_forward were changed",
            ])
    }

    @Test(
        "every edit that could change a verdict is named",
        arguments: [
            ("add rule inet drawbridge input tcp dport 22 accept", "the rules of chain input were changed"),
            ("add rule inet drawbridge gate accept", "the rules of chain gate were changed"),
            ("add element inet drawbridge allow4 { 203.0.113.0/24 }", "set allow4 holds elements"),
            ("delete element inet drawbridge managed { tcp . 22 }", "set managed holds elements"),
            ("flush chain inet drawbridge gate", "the rules of chain gate were changed"),
            ("delete table inet drawbridge", "table inet drawbridge is missing"),
            (
                "flush chain inet drawbridge gate; flush chain inet drawbridge gate_forward; "
                    + "delete set inet drawbridge ranges6",
                "set ranges6 is missing"
            ),
            // The per-port counting rules and the forward path are checked like the rest.
            ("flush chain inet drawbridge granted", "the rules of chain granted were changed"),
            ("add rule inet drawbridge gate_forward accept", "the rules of chain gate_forward were changed"),
            ("delete element inet drawbridge forwarded { tcp . 2222 }", "set forwarded holds elements"),
            (
                "flush chain inet drawbridge forward; delete chain inet drawbridge forward; "
                    + "add chain inet drawbridge forward { type filter hook forward priority 10; policy accept; }",
                "chain forward is not a filter chain on hook forward at priority -10"
            ),
            ("add table inet drawbridge { flags dormant; }", "has flags dormant"),
            (
                "flush chain inet drawbridge input; delete chain inet drawbridge input; "
                    + "add chain inet drawbridge input { type filter hook output priority -10; policy accept; }",
                "chain input is not a filter chain on hook input"
            ),
            (
                "flush chain inet drawbridge input; delete chain inet drawbridge input; "
                    + "add chain inet drawbridge input { type filter hook input priority 100; policy accept; }",
                "priority 100"
            ),
            (
                "flush chain inet drawbridge input; delete chain inet drawbridge input; add chain inet drawbridge input",
                "chain input is not a filter chain"
            ),
            (
                "add chain inet drawbridge input2 { type filter hook input priority -20; }",
                "chain input2 is not drawbridge's"
            ),
            ("add set inet drawbridge extra { type ipv4_addr; }", "set extra is not drawbridge's"),
            ("add counter inet drawbridge probes", "stateful objects"),
        ])
    func tampering(command: String, problem: String) throws {
        let (namespace, driver) = try Self.installed(.keepSessions)
        let key = AccessKey(source: try IPPrefix(parsing: "203.0.113.7"), service: Self.managed[0])
        try driver.put([key: Date().addingTimeInterval(600)])
        try run(["nft", command], in: namespace)
        let problems = try driver.verify(Self.layout())
        #expect(problems.contains { $0.contains(problem) }, "\(problems)")
        try driver.rebuild(Self.layout(), elements: [key: SystemClock.monotonic().advanced(by: 600)])
        #expect(try driver.verify(Self.layout()) == [], "a rebuild repairs it")
        #expect(Set(try driver.elements().keys) == [key], "with its grants")
    }

    @Test("a table of another layout under our name is replaced in one transaction")
    func foreignLayout() throws {
        let namespace = try NetworkNamespace.createAnonymous()
        try run(
            [
                "nft",
                "add table inet drawbridge; add set inet drawbridge grants4 { type ipv4_addr; }; "
                    + "add chain inet drawbridge input { type filter hook input priority 0; policy drop; }",
            ],
            in: namespace)
        let driver = TableDriver(connection: try NetfilterConnection(namespace: namespace))
        #expect(try !driver.verify(Self.layout()).isEmpty)
        try driver.rebuild(Self.layout(), elements: [:])
        #expect(try driver.verify(Self.layout()) == [])
    }
}
