import CNftnl
import DrawbridgeCore
import NetfilterModel

/// Builds libnftnl rules from `RuleDefinition`s, with the same expressions `nft` itself generates (so that `nft list`
/// prints them back in the syntax of rules/drawbridge.nft).
enum RuleBuilder {
    static func build(table: String, chain: String, _ definition: RuleDefinition) -> OpaquePointer {
        let rule = nftnl_rule_alloc()!
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), table)
        nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chain)
        nftnl_rule_set_u32(rule, UInt16(NFTNL_RULE_FAMILY.rawValue), UInt32(NFPROTO_INET))
        let expressions = ExpressionList(rule: rule)
        switch definition {
        case .lookup(let selectors, let set, let verdict, let transport):
            if let transport {
                expressions.loadMeta(NFT_META_L4PROTO, into: NFT_REG_1.rawValue)
                expressions.compare(register: NFT_REG_1.rawValue, equal: true, to: [transport.number])
            }
            // `ip saddr` in an inet table implies "and the packet is IPv4": nft emits that check first.
            for selector in selectors {
                switch selector {
                case .ipv4Source: expressions.matchNetworkProtocol(UInt8(NFPROTO_IPV4))
                case .ipv6Source: expressions.matchNetworkProtocol(UInt8(NFPROTO_IPV6))
                case .transportProtocol, .destinationPort, .originalDestinationPort: break
                }
            }
            // Each field goes to the register at the padded length of the fields before it.
            var offset = 0
            for selector in selectors {
                // Like nft (and like the kernel reports it back): a 16-byte register where the offset allows.
                let register =
                    offset % 16 == 0
                    ? NFT_REG_1.rawValue + UInt32(offset / 16) : NFT_REG32_00.rawValue + UInt32(offset / 4)
                switch selector {
                case .ipv4Source:
                    expressions.loadPayload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, length: 4, into: register)
                    offset += 4
                case .ipv6Source:
                    expressions.loadPayload(base: NFT_PAYLOAD_NETWORK_HEADER, offset: 8, length: 16, into: register)
                    offset += 16
                case .transportProtocol:
                    expressions.loadMeta(NFT_META_L4PROTO, into: register)
                    offset += 4
                case .destinationPort:
                    expressions.loadPayload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, into: register)
                    offset += 4
                case .originalDestinationPort:
                    expressions.loadOriginalDestinationPort(into: register)
                    offset += 4
                }
            }
            expressions.lookup(set: set, from: NFT_REG_1.rawValue)
            expressions.verdict(verdict)
        case .loopbackInterface(let verdict):
            expressions.loadMeta(NFT_META_IIF, into: NFT_REG_1.rawValue)
            // The loopback device is interface index 1 in every network namespace (LOOPBACK_IFINDEX).
            expressions.compare(
                register: NFT_REG_1.rawValue, equal: true, to: withUnsafeBytes(of: UInt32(1)) { Array($0) })
            expressions.verdict(verdict)
        case .establishedOrRelated(let verdict):
            expressions.add("ct") {
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_CT_KEY), NFT_CT_STATE.rawValue)
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_CT_DREG), NFT_REG_1.rawValue)
            }
            // ct state is a host-order bitmask: established (bit 1) | related (bit 2).
            let mask = withUnsafeBytes(of: UInt32(0x6)) { Array($0) }
            let zero = [UInt8](repeating: 0, count: 4)
            expressions.add("bitwise") {
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_BITWISE_SREG), NFT_REG_1.rawValue)
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_BITWISE_DREG), NFT_REG_1.rawValue)
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_BITWISE_LEN), 4)
                setData($0, UInt16(NFTNL_EXPR_BITWISE_MASK), mask)
                setData($0, UInt16(NFTNL_EXPR_BITWISE_XOR), zero)
            }
            expressions.compare(register: NFT_REG_1.rawValue, equal: false, to: zero)
            expressions.verdict(verdict)
        case .counted(let verdict):
            expressions.add("counter") { _ in }
            expressions.verdict(verdict)
        case .knock(let port, let group, let rate):
            expressions.matchPort(Service(port: port, transport: .udp))
            expressions.add("limit") {
                nftnl_expr_set_u64($0, UInt16(NFTNL_EXPR_LIMIT_RATE), UInt64(rate))
                nftnl_expr_set_u64($0, UInt16(NFTNL_EXPR_LIMIT_UNIT), 1)
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_LIMIT_BURST), KnockRule.burst)
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_LIMIT_TYPE), NFT_LIMIT_PKTS.rawValue)
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_LIMIT_FLAGS), 0)
            }
            expressions.add("log") {
                nftnl_expr_set_u16($0, UInt16(NFTNL_EXPR_LOG_GROUP), group)
            }
            expressions.verdict(.drop)
        case .portCounter(let service, let verdict, let original):
            if original {
                expressions.loadMeta(NFT_META_L4PROTO, into: NFT_REG_1.rawValue)
                expressions.compare(register: NFT_REG_1.rawValue, equal: true, to: [service.transport.number])
                expressions.loadOriginalDestinationPort(into: NFT_REG_1.rawValue)
                expressions.compare(
                    register: NFT_REG_1.rawValue, equal: true,
                    to: [UInt8(service.port >> 8), UInt8(service.port & 0xff)])
            } else {
                expressions.matchPort(service)
            }
            expressions.add("counter") { _ in }
            expressions.verdict(verdict)
        }
        return rule
    }
}

/// Appends expressions to a rule; the rule takes ownership of each.
private struct ExpressionList {
    let rule: OpaquePointer

    func add(_ name: String, _ configure: (OpaquePointer) -> Void) {
        let expression = nftnl_expr_alloc(name)!
        configure(expression)
        nftnl_rule_add_expr(rule, expression)
    }

    /// `tcp dport PORT` or `udp dport PORT`: the protocol, then the destination port (network order in the
    /// register), as nft generates them.
    func matchPort(_ service: Service) {
        loadMeta(NFT_META_L4PROTO, into: NFT_REG_1.rawValue)
        compare(register: NFT_REG_1.rawValue, equal: true, to: [service.transport.number])
        loadPayload(base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, length: 2, into: NFT_REG_1.rawValue)
        compare(
            register: NFT_REG_1.rawValue, equal: true, to: [UInt8(service.port >> 8), UInt8(service.port & 0xff)])
    }

    /// `ct original proto-dst`: the port the connection's first packet was sent to, before any DNAT.
    func loadOriginalDestinationPort(into register: UInt32) {
        add("ct") {
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_CT_KEY), NFT_CT_PROTO_DST.rawValue)
            nftnl_expr_set_u8($0, UInt16(NFTNL_EXPR_CT_DIR), 0)
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_CT_DREG), register)
        }
    }

    func matchNetworkProtocol(_ family: UInt8) {
        loadMeta(NFT_META_NFPROTO, into: NFT_REG_1.rawValue)
        compare(register: NFT_REG_1.rawValue, equal: true, to: [family])
    }

    func loadMeta(_ key: nft_meta_keys, into register: UInt32) {
        add("meta") {
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_META_KEY), key.rawValue)
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_META_DREG), register)
        }
    }

    func loadPayload(base: nft_payload_bases, offset: UInt32, length: UInt32, into register: UInt32) {
        add("payload") {
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_PAYLOAD_BASE), base.rawValue)
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_PAYLOAD_LEN), length)
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_PAYLOAD_DREG), register)
        }
    }

    func compare(register: UInt32, equal: Bool, to data: [UInt8]) {
        add("cmp") {
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_CMP_SREG), register)
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_CMP_OP), (equal ? NFT_CMP_EQ : NFT_CMP_NEQ).rawValue)
            setData($0, UInt16(NFTNL_EXPR_CMP_DATA), data)
        }
    }

    func lookup(set: String, from register: UInt32) {
        add("lookup") {
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_LOOKUP_SREG), register)
            nftnl_expr_set_str($0, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            // Explicit, as the kernel reports it back: a rule read from the kernel then compares equal.
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_LOOKUP_FLAGS), 0)
        }
    }

    func verdict(_ verdict: Verdict) {
        add("immediate") {
            nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_IMM_DREG), NFT_REG_VERDICT.rawValue)
            switch verdict {
            case .accept:
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(NF_ACCEPT))
            case .drop:
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(NF_DROP))
            case .jump(let chain):
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_JUMP.rawValue))
                nftnl_expr_set_str($0, UInt16(NFTNL_EXPR_IMM_CHAIN), chain)
            case .goto(let chain):
                nftnl_expr_set_u32($0, UInt16(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_GOTO.rawValue))
                nftnl_expr_set_str($0, UInt16(NFTNL_EXPR_IMM_CHAIN), chain)
            }
        }
    }
}

private func setData(_ expression: OpaquePointer, _ attribute: UInt16, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { _ = nftnl_expr_set(expression, attribute, $0.baseAddress, UInt32($0.count)) }
}
