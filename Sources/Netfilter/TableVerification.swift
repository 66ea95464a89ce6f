import CMnl
import CNftnl
import DrawbridgeCore
import Glibc
import NetfilterModel

/// A chain as the kernel reports it.
public struct ChainState: Sendable, Equatable {
    public var name: String
    public var type: String?
    public var hook: UInt32?
    public var priority: Int32?
    public var policy: UInt32?
    public var device: String?
    public var flags: UInt32
}

/// A set as the kernel reports it.
public struct SetState: Sendable, Equatable {
    public var name: String
    public var flags: UInt32
    public var keyType: UInt32
    public var keyLength: UInt32
    public var dataType: UInt32?
    public var objectType: UInt32?
    public var defaultTimeout: UInt64?
    public var fieldLengths: [UInt8]
    public var hasExpressions: Bool
}

extension NetfilterConnection {
    /// The flags of an inet table (NFT_TABLE_F_DORMANT is 1), or nil when it does not exist.
    public func tableFlags(_ name: String) throws(NetfilterError) -> UInt32? {
        var flags: UInt32 = 0
        do {
            try request(
                type: NFT_MSG_GETTABLE, family: UInt16(NFPROTO_INET), dump: false, operation: "read table",
                build: { header in
                    let table = nftnl_table_alloc()!
                    defer { nftnl_table_free(table) }
                    nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), name)
                    nftnl_table_nlmsg_build_payload(header, table)
                }
            ) { message in
                let table = nftnl_table_alloc()!
                defer { nftnl_table_free(table) }
                if nftnl_table_nlmsg_parse(message, table) >= 0,
                    nftnl_table_is_set(table, UInt16(NFTNL_TABLE_FLAGS.rawValue))
                {
                    flags = nftnl_table_get_u32(table, UInt16(NFTNL_TABLE_FLAGS.rawValue))
                }
            }
            return flags
        } catch  where error.errno == ENOENT {
            return nil
        }
    }

    /// Every chain of an inet table.
    public func listChains(table: String) throws(NetfilterError) -> [ChainState] {
        var chains: [ChainState] = []
        try request(
            type: NFT_MSG_GETCHAIN, family: UInt16(NFPROTO_INET), dump: true, operation: "list chains", table: table,
            object: "chains",
            build: { header in
                let chain = nftnl_chain_alloc()!
                defer { nftnl_chain_free(chain) }
                nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TABLE.rawValue), table)
                nftnl_chain_nlmsg_build_payload(header, chain)
            }
        ) { message in
            let chain = nftnl_chain_alloc()!
            defer { nftnl_chain_free(chain) }
            guard nftnl_chain_nlmsg_parse(message, chain) >= 0 else { return }
            func text(_ attribute: nftnl_chain_attr) -> String? {
                guard nftnl_chain_is_set(chain, UInt16(attribute.rawValue)),
                    let value = nftnl_chain_get_str(chain, UInt16(attribute.rawValue))
                else { return nil }
                return String(cString: value)
            }
            func number(_ attribute: nftnl_chain_attr) -> UInt32? {
                nftnl_chain_is_set(chain, UInt16(attribute.rawValue))
                    ? nftnl_chain_get_u32(chain, UInt16(attribute.rawValue)) : nil
            }
            // Older kernels ignore the table filter of a dump.
            guard text(NFTNL_CHAIN_TABLE) == table, let name = text(NFTNL_CHAIN_NAME) else { return }
            chains.append(
                ChainState(
                    name: name, type: text(NFTNL_CHAIN_TYPE), hook: number(NFTNL_CHAIN_HOOKNUM),
                    priority: nftnl_chain_is_set(chain, UInt16(NFTNL_CHAIN_PRIO.rawValue))
                        ? nftnl_chain_get_s32(chain, UInt16(NFTNL_CHAIN_PRIO.rawValue)) : nil,
                    policy: number(NFTNL_CHAIN_POLICY), device: text(NFTNL_CHAIN_DEV),
                    flags: number(NFTNL_CHAIN_FLAGS) ?? 0))
        }
        return chains
    }

    /// Every set of an inet table.
    public func listSets(table: String) throws(NetfilterError) -> [SetState] {
        var sets: [SetState] = []
        try request(
            type: NFT_MSG_GETSET, family: UInt16(NFPROTO_INET), dump: true, operation: "list sets", table: table,
            object: "sets",
            build: { header in
                let set = nftnl_set_alloc()!
                defer { nftnl_set_free(set) }
                nftnl_set_set_str(set, UInt16(NFTNL_SET_TABLE.rawValue), table)
                nftnl_set_nlmsg_build_payload(header, set)
            }
        ) { message in
            let set = nftnl_set_alloc()!
            defer { nftnl_set_free(set) }
            guard nftnl_set_nlmsg_parse(message, set) >= 0 else { return }
            func isSet(_ attribute: nftnl_set_attr) -> Bool { nftnl_set_is_set(set, UInt16(attribute.rawValue)) }
            func number(_ attribute: nftnl_set_attr) -> UInt32? {
                isSet(attribute) ? nftnl_set_get_u32(set, UInt16(attribute.rawValue)) : nil
            }
            guard isSet(NFTNL_SET_TABLE),
                String(cString: nftnl_set_get_str(set, UInt16(NFTNL_SET_TABLE.rawValue)))
                    == table, isSet(NFTNL_SET_NAME)
            else { return }
            var lengths: [UInt8] = []
            if isSet(NFTNL_SET_DESC_CONCAT) {
                var length: UInt32 = 0
                if let data = nftnl_set_get_data(set, UInt16(NFTNL_SET_DESC_CONCAT.rawValue), &length) {
                    lengths = Array(UnsafeRawBufferPointer(start: data, count: Int(length))).prefix { $0 != 0 }
                }
            }
            sets.append(
                SetState(
                    name: String(cString: nftnl_set_get_str(set, UInt16(NFTNL_SET_NAME.rawValue))),
                    flags: number(NFTNL_SET_FLAGS) ?? 0, keyType: number(NFTNL_SET_KEY_TYPE) ?? 0,
                    keyLength: number(NFTNL_SET_KEY_LEN) ?? 0, dataType: number(NFTNL_SET_DATA_TYPE),
                    objectType: number(NFTNL_SET_OBJ_TYPE),
                    defaultTimeout: isSet(NFTNL_SET_TIMEOUT)
                        ? nftnl_set_get_u64(set, UInt16(NFTNL_SET_TIMEOUT.rawValue)) : nil,
                    fieldLengths: lengths, hasExpressions: isSet(NFTNL_SET_EXPR) || isSet(NFTNL_SET_EXPRESSIONS)))
        }
        return sets
    }

    /// How many stateful objects (counters, quotas, limits, …) or flowtables an inet table holds.
    public func countObjects(table: String, flowtables: Bool) throws(NetfilterError) -> Int {
        var count = 0
        try request(
            type: flowtables ? NFT_MSG_GETFLOWTABLE : NFT_MSG_GETOBJ, family: UInt16(NFPROTO_INET), dump: true,
            operation: flowtables ? "list flowtables" : "list objects", table: table,
            build: { _ in }
        ) { message in
            let raw = UnsafeRawBufferPointer(start: message, count: Int(message.pointee.nlmsg_len))
            if NetfilterMessage(raw)?.table == table { count += 1 }
        }
        return count
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

extension NetfilterConnection {
    /// The rules of a chain, each as the list of its expressions printed by libnftnl (counter values left out), so
    /// rules read from the kernel can be compared with rules built locally.
    public func listRules(table: String, chain: String) throws(NetfilterError) -> [[String]] {
        try dumpRules(table: table, chain: chain) { RuleBuilder.signature(of: $0) }
    }

    /// Each rule of a chain: the packets and bytes its counter has counted, or nil for a rule without a counter.
    public func listRuleCounters(table: String, chain: String) throws(NetfilterError)
        -> [(packets: UInt64, bytes: UInt64)?]
    {
        try dumpRules(table: table, chain: chain) { rule in
            let iterator = nftnl_expr_iter_create(rule)!
            defer { nftnl_expr_iter_destroy(iterator) }
            while let expression = nftnl_expr_iter_next(iterator) {
                guard String(cString: nftnl_expr_get_str(expression, UInt16(NFTNL_EXPR_NAME))) == "counter" else {
                    continue
                }
                return (
                    nftnl_expr_get_u64(expression, UInt16(NFTNL_EXPR_CTR_PACKETS)),
                    nftnl_expr_get_u64(expression, UInt16(NFTNL_EXPR_CTR_BYTES))
                )
            }
            return nil
        }
    }

    /// Dumps the rules of one chain, each read by `read` (in chain order).
    private func dumpRules<T>(table: String, chain: String, _ read: (OpaquePointer) -> T) throws(NetfilterError)
        -> [T]
    {
        var rules: [T] = []
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
            if let rule = Self.parseRule(message, table: table, chain: chain, read) { rules.append(rule) }
        }
        return rules
    }

    /// One rule of a GETRULE dump, read by `read` (its expressions' text, say); nil when the message is not a rule
    /// of this chain.
    static func parseRule<T>(
        _ message: UnsafePointer<nlmsghdr>, table: String, chain: String, _ read: (OpaquePointer) -> T
    ) -> T? {
        let rule = nftnl_rule_alloc()!
        defer { nftnl_rule_free(rule) }
        guard nftnl_rule_nlmsg_parse(message, rule) >= 0 else { return nil }
        // A dump filtered by chain still needs the check: older kernels ignore the filter.
        guard let tableName = nftnl_rule_get_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue)),
            String(cString: tableName) == table,
            let name = nftnl_rule_get_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue)),
            String(cString: name) == chain
        else { return nil }
        return read(rule)
    }

    /// `parseRule` (as expressions' text) on one reply message as `NetlinkReply.decode` hands it over (`nlmsg_len` bytes).
    package static func parseRule(message: UnsafeRawBufferPointer, table: String, chain: String) -> [String]? {
        guard let base = message.baseAddress else { return nil }
        return parseRule(base.assumingMemoryBound(to: nlmsghdr.self), table: table, chain: chain) {
            RuleBuilder.signature(of: $0)
        }
    }
}

extension DrawbridgeTable {
    /// Compares the table in the kernel with what drawbridge installs for `layout`: everything that decides a
    /// verdict — the table's flags (a dormant table filters nothing), every chain's type, hook, priority and policy,
    /// every set's type, flags and key, every rule, the managed ports and break-glass prefixes, and no chain, set,
    /// object or flowtable that drawbridge did not make. Grant elements are not read here (that would be a dump of
    /// possibly millions); foreign changes to them are seen in the nf_tables notifications.
    ///
    /// - Returns: one sentence per difference; empty when the table is intact.
    public static func verify(_ layout: TableLayout, on connection: NetfilterConnection) throws(NetfilterError)
        -> [String]
    {
        guard let flags = try connection.tableFlags(name) else { return ["table inet \(name) is missing"] }
        var problems: [String] = []
        if flags != 0 {
            let names = [(1, "dormant"), (2, "owner"), (4, "persist")].filter { flags & UInt32($0.0) != 0 }.map(\.1)
            problems.append(
                "table inet \(name) has flags \(names.isEmpty ? String(flags) : names.joined(separator: ", "))"
                    + (flags & 1 != 0 ? " (a dormant table filters nothing)" : ""))
        }

        let chains = try connection.listChains(table: name)
        for definition in Self.chains {
            guard let chain = chains.first(where: { $0.name == definition.name }) else {
                problems.append("chain \(definition.name) is missing")
                continue
            }
            if let base = definition.base {
                let expected = ChainState(
                    name: definition.name, type: "filter", hook: base.hook.number, priority: base.priority,
                    policy: base.acceptByDefault ? 1 : 0, device: nil, flags: chain.flags & 1)
                if chain != expected {
                    problems.append(
                        "chain \(definition.name) is not a filter chain on hook \(base.hook.name) at priority \(base.priority) "
                            + "with policy accept (found type \(chain.type ?? "none"), hook "
                            + "\(chain.hook.map(String.init) ?? "none"), priority "
                            + "\(chain.priority.map(String.init) ?? "none"), policy "
                            + "\(chain.policy.map { $0 == 1 ? "accept" : "drop" } ?? "none"))")
                }
            } else if chain.hook != nil || chain.type != nil {
                problems.append("chain \(definition.name) was replaced by a base chain on hook \(chain.hook ?? 0)")
            }
        }
        for chain in chains where !Self.chains.contains(where: { $0.name == chain.name }) {
            problems.append("chain \(chain.name) is not drawbridge's")
        }

        let sets = try connection.listSets(table: name)
        for definition in Self.sets {
            guard let set = sets.first(where: { $0.name == definition.name }) else {
                problems.append("set \(definition.name) is missing")
                continue
            }
            let expected = SetState(
                name: definition.name, flags: definition.kernelFlags, keyType: definition.keyTypeID,
                keyLength: UInt32(definition.keyLength), dataType: nil, objectType: nil, defaultTimeout: nil,
                fieldLengths: definition.describesFields ? definition.keyTypes.map(\.length) : [],
                hasExpressions: false)
            if set != expected {
                problems.append("set \(definition.name) is not laid out as drawbridge makes it")
            }
        }
        for set in sets where !Self.sets.contains(where: { $0.name == set.name }) {
            problems.append("set \(set.name) is not drawbridge's")
        }
        if try connection.countObjects(table: name, flowtables: false) > 0 {
            problems.append("the table holds stateful objects drawbridge did not make")
        }
        if try connection.countObjects(table: name, flowtables: true) > 0 {
            problems.append("the table holds flowtables drawbridge did not make")
        }

        let expected = installation(layout)
        var expectedElements: [String: [SetElement]] = [:]
        for case .addElements(_, let set, let elements) in expected.changes { expectedElements[set.name] = elements }
        for set in [managed, forwarded, allow4, allow6] where sets.contains(where: { $0.name == set.name }) {
            let listed = try connection.listElements(table: name, set: set.name)
            let actual = Set(listed.map { "\($0.key)\($0.isIntervalEnd)" })
            let wanted = Set((expectedElements[set.name] ?? []).map { "\($0.key)\($0.isIntervalEnd)" })
            if actual != wanted { problems.append("set \(set.name) holds elements the policy does not give it") }
        }
        let rules = rules(layout)
        for chain in Self.chains where chains.contains(where: { $0.name == chain.name }) {
            let wanted = rules.filter { $0.chain == chain.name }.map { RuleBuilder.signature(of: $0.rule) }
            if try connection.listRules(table: name, chain: chain.name) != wanted {
                problems.append("the rules of chain \(chain.name) were changed")
            }
        }
        return problems
    }
}

extension DrawbridgeTable {
    /// What the table's own per-port rules have counted since they were installed: for each managed port the packets
    /// and bytes its `counter drop` rule in `gate` dropped and its `counter accept` rule in `granted` accepted.
    ///
    /// Rules are matched to ports by their place in the chains, which ``rules(_:)`` fixes; nil when the chains do
    /// not hold the rules `layout` makes (someone changed them: the repair check will rebuild the table, and the
    /// counts start again from zero).
    public static func portCounts(_ layout: TableLayout, on connection: NetfilterConnection) throws(NetfilterError)
        -> [Service: PortCounts]?
    {
        let expected = rules(layout)
        var counts: [Service: PortCounts] = [:]
        for chain in [gate, granted, gateForward, grantedForward] {
            let wanted = expected.filter { $0.chain == chain.name }.map(\.rule)
            let listed = try connection.listRuleCounters(table: name, chain: chain.name)
            guard listed.count == wanted.count else { return nil }
            for (rule, counter) in zip(wanted, listed) {
                guard case .portCounter(let service, let verdict, _) = rule else { continue }
                guard let counter else { return nil }
                // A port guarded on both hooks is counted on each; its counts are the sum.
                if verdict == .drop {
                    counts[service, default: PortCounts()].droppedPackets += counter.packets
                    counts[service, default: PortCounts()].droppedBytes += counter.bytes
                } else {
                    counts[service, default: PortCounts()].acceptedPackets += counter.packets
                    counts[service, default: PortCounts()].acceptedBytes += counter.bytes
                }
            }
        }
        return counts
    }
}
