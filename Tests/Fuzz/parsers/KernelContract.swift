/// Which netlink messages the fuzz target hands to the libnftnl-backed decoders (set element and rule dumps).
///
/// libnftnl checks the type of every attribute it knows with `mnl_attr_validate` and, when one does not match, prints
/// "nf_tables kernel ABI is broken, contact your vendor" and calls `exit(1)` (its `abi_breakage()`): by design, a
/// wrongly typed attribute ends the process rather than being reported. drawbridged hands libnftnl only the kernel's
/// replies to its own dump requests, so that is reachable only through a kernel that breaks its ABI; but libFuzzer
/// finds it in a few hundred runs and would report nothing else. So, as the kernel does, the fuzz target keeps to
/// the types: a message reaches libnftnl only if every attribute it has, at every level libnftnl parses, has the type
/// libnftnl expects (strings NUL-terminated, as the kernel writes them; nests well-formed), and only expressions
/// drawbridge's table uses. Lengths, values, nesting, counts and the bytes around them stay free for the fuzzer.
enum KernelContract {
    enum Kind {
        case u8, u16, u32, u64, string, binary
        case nested(Schema)
        /// NFTA_VERDICT_*: a code, and the chain a jump or goto names (the kernel always writes it; libnftnl 1.2.4
        /// dereferences a missing one: a segfault the fuzzer found in nftnl_parse_verdict).
        case verdict
    }

    typealias Schema = [UInt16: Kind]

    /// nf_tables.h: NFTA_DATA_* and NFTA_VERDICT_*.
    static let data: Schema = [1: .binary, 2: .verdict]
    static let verdictFields: Schema = [1: .u32, 2: .string, 3: .u32]

    /// The expressions RuleBuilder writes, with NFTA_<NAME>_* attribute types as libnftnl's expr/*.c check them.
    static let expressions: [String: Schema] = [
        "counter": [1: .u64, 2: .u64],
        "payload": [1: .u32, 2: .u32, 3: .u32, 4: .u32, 5: .u32, 6: .u32, 7: .u32, 8: .u32],
        "cmp": [1: .u32, 2: .u32, 3: .nested(data)],
        "meta": [1: .u32, 2: .u32, 3: .u32],
        "lookup": [1: .string, 2: .u32, 3: .u32, 4: .u32, 5: .u32],
        "immediate": [1: .u32, 2: .nested(data)],
        "ct": [1: .u32, 2: .u32, 3: .u8, 4: .u32],
        "log": [1: .u16, 2: .string, 3: .u32, 4: .u16, 5: .u32, 6: .u32],
        "limit": [1: .u64, 2: .u64, 3: .u32, 4: .u32, 5: .u32],
        "bitwise": [1: .u32, 2: .u32, 3: .u32, 4: .nested(data), 5: .nested(data), 6: .u32, 7: .nested(data)],
    ]

    /// NFTA_SET_ELEM_LIST_*, with each NFTA_LIST_ELEM's NFTA_SET_ELEM_* (no expressions, no object references).
    static let elementList: Schema = [
        1: .string, 2: .string, 4: .u32,
        3: .nested([
            1: .nested([1: .nested(data), 2: .nested(data), 3: .u32, 4: .u64, 5: .u64, 6: .binary, 10: .nested(data)])
        ]),
    ]

    /// NFTA_RULE_*, without NFTA_RULE_COMPAT (expressions are checked apart: their schema depends on their name).
    static let rule: Schema = [1: .string, 2: .string, 3: .u64, 6: .u64, 7: .binary, 8: .u32, 9: .u32]

    /// The attributes of `bytes` (a well-formed list, or nil).
    static func attributes(_ bytes: ArraySlice<UInt8>) -> [(type: UInt16, payload: ArraySlice<UInt8>)]? {
        var result: [(UInt16, ArraySlice<UInt8>)] = []
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            guard bytes.endIndex - offset >= 4 else { return nil }
            let length = Int(UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8)
            let type = (UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8) & 0x3fff
            guard length >= 4, offset + length <= bytes.endIndex else { return nil }
            result.append((type, bytes[(offset + 4)..<(offset + length)]))
            offset += min((length + 3) & ~3, bytes.endIndex - offset)
        }
        return result
    }

    static func conforms(_ payload: ArraySlice<UInt8>, to kind: Kind) -> Bool {
        switch kind {
        case .u8: return payload.count == 1
        case .u16: return payload.count == 2
        case .u32: return payload.count == 4
        case .u64: return payload.count == 8
        case .string: return payload.last == 0
        case .binary: return true
        case .nested(let schema): return conforms(payload, to: schema)
        case .verdict:
            guard conforms(payload, to: verdictFields), let fields = attributes(payload) else { return false }
            let codes = fields.filter { $0.type == 1 }.map { $0.payload.reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
            // NFT_JUMP (-3) and NFT_GOTO (-4) name their chain.
            let jumps = codes.contains { Int32(bitPattern: $0) == -3 || Int32(bitPattern: $0) == -4 }
            return !jumps || fields.contains { $0.type == 2 }
        }
    }

    static func conforms(_ bytes: ArraySlice<UInt8>, to schema: Schema) -> Bool {
        guard let list = attributes(bytes) else { return false }
        return list.allSatisfy { attribute in
            guard let kind = schema[attribute.type] else { return false }
            return conforms(attribute.payload, to: kind)
        }
    }

    /// The attributes after the nlmsghdr and nfgenmsg of a message of `nlmsg_len` bytes.
    static func body(_ message: UnsafeRawBufferPointer) -> ArraySlice<UInt8>? {
        guard message.count >= 20 else { return nil }
        return Array(message)[20...]
    }

    /// A set element dump message (NFT_MSG_NEWSETELEM) as the kernel writes one.
    static func isElementDump(_ message: UnsafeRawBufferPointer) -> Bool {
        guard let body = body(message) else { return false }
        return conforms(body, to: elementList)
    }

    /// A rule dump message (NFT_MSG_NEWRULE) as the kernel writes one, with expressions drawbridge uses.
    static func isRuleDump(_ message: UnsafeRawBufferPointer) -> Bool {
        guard let body = body(message), let list = attributes(body) else { return false }
        return list.allSatisfy { attribute in
            if attribute.type == 4 {
                // NFTA_RULE_EXPRESSIONS: NFTA_LIST_ELEMs of NFTA_EXPR_NAME and NFTA_EXPR_DATA.
                guard let items = attributes(attribute.payload) else { return false }
                return items.allSatisfy { item in
                    guard item.type == 1, let fields = attributes(item.payload) else { return false }
                    guard let nameField = fields.first(where: { $0.type == 1 }), nameField.payload.last == 0,
                        fields.allSatisfy({ $0.type == 1 || $0.type == 2 })
                    else { return false }
                    let name = String(decoding: nameField.payload.dropLast(), as: UTF8.self)
                    guard let schema = expressions[name] else { return false }
                    return fields.allSatisfy { $0.type == 1 ? $0.payload.last == 0 : conforms($0.payload, to: schema) }
                }
            }
            guard let kind = rule[attribute.type] else { return false }
            return conforms(attribute.payload, to: kind)
        }
    }
}
