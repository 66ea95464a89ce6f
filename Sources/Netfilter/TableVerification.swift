import CNftnl
import DrawbridgeCore
import Foundation

extension NetfilterConnection {
    /// The rules of a chain, each as the list of its expressions printed by libnftnl (counter values left out), so
    /// rules read from the kernel can be compared with rules built locally.
    public func listRules(table: String, chain: String) throws(NetfilterError) -> [[String]] {
        var rules: [[String]] = []
        try request(
            type: NFT_MSG_GETRULE, family: UInt16(NFPROTO_INET), dump: true, operation: "list rules",
            table: table, object: chain,
            build: { header in
                let rule = nftnl_rule_alloc()!
                defer { nftnl_rule_free(rule) }
                nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), table)
                nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
                nftnl_rule_nlmsg_build_payload(header, rule)
            }
        ) { message in
            let rule = nftnl_rule_alloc()!
            defer { nftnl_rule_free(rule) }
            guard nftnl_rule_nlmsg_parse(message, rule) >= 0 else { return }
            // A dump filtered by chain still needs the check: older kernels ignore the filter.
            guard let name = nftnl_rule_get_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue)),
                String(cString: name) == chain
            else { return }
            rules.append(RuleBuilder.signature(of: rule))
        }
        return rules
    }
}

extension RuleBuilder {
    /// The expressions of a rule as text, for comparing two rules.
    static func signature(of rule: OpaquePointer) -> [String] {
        var expressions: [String] = []
        let iterator = nftnl_expr_iter_create(rule)!
        defer { nftnl_expr_iter_destroy(iterator) }
        var buffer = [CChar](repeating: 0, count: 1024)
        while let expression = nftnl_expr_iter_next(iterator) {
            let name = String(cString: nftnl_expr_get_str(expression, UInt16(NFTNL_EXPR_NAME)))
            if name == "counter" {
                expressions.append(name)
                continue
            }
            nftnl_expr_snprintf(&buffer, buffer.count, expression, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0)
            expressions.append(
                name + " " + String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return expressions
    }

    static func signature(of definition: RuleDefinition) -> [String] {
        let rule = build(table: "t", chain: "c", definition)
        defer { nftnl_rule_free(rule) }
        return signature(of: rule)
    }
}

extension GrantEnforcer {
    /// Compares the table in the kernel with what drawbridge installs for this policy: the table, its sets and
    /// chains, the rules, the managed ports and the break-glass prefixes (grant elements are the reconcile's job).
    ///
    /// - Returns: one sentence per difference; empty when the table is intact.
    public func verify(
        mode: SessionMode, managedServices: [Service], alwaysAllowed: [IPPrefix]
    ) throws(NetfilterError) -> [String] {
        let table = DrawbridgeTable.name
        guard try connection.tableExists(table) else { return ["table inet \(table) is missing"] }
        var problems: [String] = []

        let expected = DrawbridgeTable.installation(
            mode: mode, managedServices: managedServices, alwaysAllowed: alwaysAllowed)
        var expectedElements: [String: [SetElement]] = [:]
        for case .addElements(_, let set, let elements) in expected.changes { expectedElements[set.name] = elements }
        for set in [DrawbridgeTable.managed, DrawbridgeTable.allow4, DrawbridgeTable.allow6] {
            do {
                let listed = try connection.listElements(table: table, set: set.name)
                let actual = Set(listed.map { "\($0.key)\($0.isIntervalEnd)" })
                let wanted = Set((expectedElements[set.name] ?? []).map { "\($0.key)\($0.isIntervalEnd)" })
                if actual != wanted { problems.append("set \(set.name) holds elements the policy does not give it") }
            } catch  where error.code == .objectMissing {
                problems.append("set \(set.name) is missing")
            }
        }
        // Only whether they exist: their elements are the reconcile's to read, once.
        for set in DrawbridgeTable.grantSets where try !connection.setExists(table: table, set: set.name) {
            problems.append("set \(set.name) is missing")
        }
        let rules = DrawbridgeTable.rules(mode: mode)
        for chain in [DrawbridgeTable.input, DrawbridgeTable.gate] {
            let wanted = rules.filter { $0.chain == chain.name }.map { RuleBuilder.signature(of: $0.rule) }
            do {
                if try connection.listRules(table: table, chain: chain.name) != wanted {
                    problems.append("the rules of chain \(chain.name) were changed")
                }
            } catch  where error.code == .objectMissing {
                problems.append("chain \(chain.name) is missing")
            }
        }
        return problems
    }
}
