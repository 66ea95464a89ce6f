import DrawbridgeCore
import Foundation
import Netfilter
import TestSupport
import Testing

/// Tamper detection: an intact table verifies clean; every kind of foreign edit is named.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct VerificationTests {
    static let managed = [Service(port: 22, transport: .tcp), Service(port: 53, transport: .udp)]
    static let allowed = [try! IPPrefix(parsing: "192.0.2.10"), try! IPPrefix(parsing: "2001:db8::/48")]

    static func installed(_ mode: SessionMode) throws -> (NetworkNamespace, GrantEnforcer) {
        let namespace = try NetworkNamespace.createAnonymous()
        let enforcer = GrantEnforcer(connection: try NetfilterConnection(namespace: namespace))
        try enforcer.install(mode: mode, managedServices: managed, alwaysAllowed: allowed)
        return (namespace, enforcer)
    }

    func problems(_ enforcer: GrantEnforcer, _ mode: SessionMode) throws -> [String] {
        try enforcer.verify(mode: mode, managedServices: Self.managed, alwaysAllowed: Self.allowed)
    }

    @Test("a freshly installed table verifies clean", arguments: SessionMode.allCases)
    func clean(mode: SessionMode) throws {
        let (_, enforcer) = try Self.installed(mode)
        #expect(try problems(enforcer, mode) == [])
        let other: SessionMode = mode == .keepSessions ? .cutSessions : .keepSessions
        #expect(try problems(enforcer, other) == ["the rules of chain gate were changed"])
    }

    @Test(
        "foreign edits are named",
        arguments: [
            ("add rule inet drawbridge input tcp dport 22 accept", "the rules of chain input were changed"),
            ("add rule inet drawbridge gate accept", "the rules of chain gate were changed"),
            (
                "add element inet drawbridge allow4 { 203.0.113.0/24 }",
                "set allow4 holds elements the policy does not give it"
            ),
            (
                "delete element inet drawbridge managed { tcp . 22 }",
                "set managed holds elements the policy does not give it"
            ),
            ("flush chain inet drawbridge gate", "the rules of chain gate were changed"),
            ("delete table inet drawbridge", "table inet drawbridge is missing"),
            ("flush chain inet drawbridge gate; delete set inet drawbridge ranges6", "set ranges6 is missing"),
        ])
    func tampering(command: String, problem: String) throws {
        let (namespace, enforcer) = try Self.installed(.keepSessions)
        try run(["nft", command], in: namespace)
        #expect(try problems(enforcer, .keepSessions).contains(problem))
        try enforcer.install(mode: .keepSessions, managedServices: Self.managed, alwaysAllowed: Self.allowed)
        #expect(try problems(enforcer, .keepSessions) == [], "installing again repairs it")
    }
}
