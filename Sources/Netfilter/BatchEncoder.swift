import CMnl
import CNftnl
import DrawbridgeCore
import NetfilterModel

/// What one message of a batch was for, so a kernel error on its sequence number can be named.
struct MessageRecord {
    var operation: String
    var table: String?
    var object: String?
    var elementCount: Int
}

/// Turns a `Transaction` into one nfnetlink batch (BATCH_BEGIN … BATCH_END) in libnftnl's paged buffer.
///
/// Element lists are split into messages of at most 64 KiB with `nftnl_set_elems_nlmsg_build_payload_iter` (the
/// nest length is 16 bits; the non-iterating builder overflows it silently). Every message asks for an ACK so the
/// reader can count one reply per message.
final class BatchEncoder {
    private let batch: OpaquePointer
    private(set) var records: [UInt32: MessageRecord] = [:]
    private(set) var firstSequence: UInt32
    private var nextSequence: UInt32
    private var nextSetID: UInt32 = 0
    /// The instant element timeouts are computed against.
    let now: Instants

    /// - Parameters:
    ///   - firstSequence: the sequence number of BATCH_BEGIN; messages count up from there.
    ///   - generation: when given, the kernel refuses the batch if the ruleset generation moved on from it.
    ///   - now: the instant element timeouts count from: a connection reads the clocks just before encoding, so a
    ///     grant loses no time between planning and sending; tests pass a fixed one.
    ///   - small: a batch of few messages (a grant): its buffer is allocated below glibc's mmap threshold. Only for
    ///     a transaction `fitsSmallBuffer` accepts: every message must fit in the 32 KiB page (a larger one is lost).
    init(firstSequence: UInt32, generation: UInt32?, now: Instants, small: Bool = false) {
        // 2 MiB pages like nft; the overrun must hold the largest single message (64 KiB of elements + headers). A
        // small batch takes one 112 KiB buffer instead: below the mmap threshold the agent fixes (128 KiB), so a
        // grant's commit neither maps nor unmaps memory (each munmap in a process with several threads interrupts
        // the other CPUs to flush their TLBs: 7.6 % of the agent's CPU for lone grants). Pages chain when one fills,
        // so a batch that turns out larger still fits; big batches keep 2 MiB pages so that their iovecs stay few.
        batch = small ? nftnl_batch_alloc(32 * 1024, 80 * 1024) : nftnl_batch_alloc(2 * 1024 * 1024, 128 * 1024)
        self.firstSequence = firstSequence
        nextSequence = firstSequence
        self.now = now
        let begin = nftnl_batch_begin(buffer, take())
        if let generation, let begin {
            // NFNL_BATCH_GENID: the kernel refuses the whole batch with ERESTART if the ruleset changed since.
            mnl_attr_put_u32(begin, UInt16(NFNL_BATCH_GENID.rawValue), generation.bigEndian)
        }
        nftnl_batch_update(batch)
    }

    deinit {
        nftnl_batch_free(batch)
    }

    /// Whether every message of `transaction` fits a small batch's 32 KiB page: at most 256 elements (the largest, an
    /// IPv6 prefix with its end and a timeout, takes about 100 bytes: 256 of them under 26 KiB in one message) and at
    /// most 64 changes (a rule or a set definition is far under 32 KiB).
    static func fitsSmallBuffer(_ transaction: Transaction) -> Bool {
        transaction.changes.count <= 64 && transaction.elementCount <= 256
    }

    private var buffer: UnsafeMutablePointer<CChar> {
        nftnl_batch_buffer(batch).assumingMemoryBound(to: CChar.self)
    }

    private func take() -> UInt32 {
        defer { nextSequence &+= 1 }
        return nextSequence
    }

    /// The number of messages between begin and end.
    var messageCount: Int { records.count }

    /// Writes one message header; `build` fills in its payload.
    private func message(
        _ type: nf_tables_msg_types,
        flags: Int32,
        record: MessageRecord,
        build: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) {
        let sequence = take()
        let header = nftnl_nlmsg_build_hdr(
            buffer, UInt16(type.rawValue), UInt16(NFPROTO_INET), UInt16(flags | NLM_F_ACK), sequence)!
        build(header)
        zeroAttributePadding(
            UnsafeMutableRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len)), headerLength: 20)
        nftnl_batch_update(batch)
        records[sequence] = record
    }

    func encode(_ change: Change) {
        switch change {
        case .createTable(let name):
            let table = nftnl_table_alloc()!
            defer { nftnl_table_free(table) }
            nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), name)
            nftnl_table_set_u32(table, UInt16(NFTNL_TABLE_FAMILY.rawValue), UInt32(NFPROTO_INET))
            message(
                NFT_MSG_NEWTABLE, flags: NLM_F_CREATE,
                record: .init(operation: "create table", table: name, elementCount: 0)
            ) {
                nftnl_table_nlmsg_build_payload($0, table)
            }
        case .deleteTable(let name):
            let table = nftnl_table_alloc()!
            defer { nftnl_table_free(table) }
            nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), name)
            message(NFT_MSG_DELTABLE, flags: 0, record: .init(operation: "delete table", table: name, elementCount: 0))
            {
                nftnl_table_nlmsg_build_payload($0, table)
            }
        case .createChain(let table, let definition):
            let chain = makeChain(table: table, definition)
            defer { nftnl_chain_free(chain) }
            message(
                NFT_MSG_NEWCHAIN, flags: NLM_F_CREATE,
                record: .init(operation: "create chain", table: table, object: definition.name, elementCount: 0)
            ) { nftnl_chain_nlmsg_build_payload($0, chain) }
        case .flushChain(let table, let chainName):
            let rule = nftnl_rule_alloc()!
            defer { nftnl_rule_free(rule) }
            nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_TABLE.rawValue), table)
            nftnl_rule_set_str(rule, UInt16(NFTNL_RULE_CHAIN.rawValue), chainName)
            message(
                NFT_MSG_DELRULE, flags: 0,
                record: .init(operation: "flush chain", table: table, object: chainName, elementCount: 0)
            ) { nftnl_rule_nlmsg_build_payload($0, rule) }
        case .appendRule(let table, let chainName, let definition):
            let rule = RuleBuilder.build(table: table, chain: chainName, definition)
            defer { nftnl_rule_free(rule) }
            message(
                NFT_MSG_NEWRULE, flags: NLM_F_CREATE | NLM_F_APPEND,
                record: .init(operation: "append rule", table: table, object: chainName, elementCount: 0)
            ) { nftnl_rule_nlmsg_build_payload($0, rule) }
        case .createSet(let table, let definition):
            let set = makeSet(table: table, definition, full: true)
            defer { nftnl_set_free(set) }
            message(
                NFT_MSG_NEWSET, flags: NLM_F_CREATE,
                record: .init(operation: "create set", table: table, object: definition.name, elementCount: 0)
            ) { nftnl_set_nlmsg_build_payload($0, set) }
        case .flushSet(let table, let name):
            let set = makeSetReference(table: table, name: name)
            defer { nftnl_set_free(set) }
            // DELSETELEM without an element list deletes them all.
            message(
                NFT_MSG_DELSETELEM, flags: 0,
                record: .init(operation: "flush set", table: table, object: name, elementCount: 0)
            ) {
                nftnl_set_elems_nlmsg_build_payload($0, set)
            }
        case .addElements(let table, let definition, let elements):
            encodeElements(
                NFT_MSG_NEWSETELEM, flags: NLM_F_CREATE, operation: "add elements", table: table, definition, elements)
        case .deleteElements(let table, let definition, let elements):
            encodeElements(
                NFT_MSG_DELSETELEM, flags: 0, operation: "delete elements", table: table, definition, elements)
        case .destroyElements(let table, let definition, let elements):
            // Not in the 6.1 UAPI headers this builds against; the number is fixed by the kernel ABI.
            encodeElements(
                nf_tables_msg_types(rawValue: 30), flags: 0, operation: "destroy elements", table: table, definition,
                elements)
        case .grantElements(let operation, let table, let definition, let elements):
            encodeGrantElements(operation, table: table, definition, elements)
        }
    }

    /// Ends the batch and returns its buffers, ready for one sendmsg.
    func finish() -> (iovecs: [iovec], bytes: Int) {
        nftnl_batch_end(buffer, take())
        nftnl_batch_update(batch)
        let count = Int(nftnl_batch_iovec_len(batch))
        var iovecs = [iovec](repeating: iovec(), count: count)
        iovecs.withUnsafeMutableBufferPointer { nftnl_batch_iovec(batch, $0.baseAddress, UInt32(count)) }
        return (iovecs, iovecs.reduce(0) { $0 + $1.iov_len })
    }

    /// Grant elements, written from their keys in chunks: at most `chunk` libnftnl elements exist at a time, and no
    /// Swift array per element is ever made.
    private func encodeGrantElements(
        _ operation: GrantElementOperation, table: String, _ definition: SetDefinition, _ elements: [GrantElement]
    ) {
        guard !elements.isEmpty else { return }
        let (type, flags, name): (nf_tables_msg_types, Int32, String) =
            switch operation {
            case .add: (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add elements")
            case .delete: (NFT_MSG_DELSETELEM, 0, "delete elements")
            // Not in the 6.1 UAPI headers this builds against; the number is fixed by the kernel ABI.
            case .destroy: (nf_tables_msg_types(rawValue: 30), 0, "destroy elements")
            }
        let chunk = 1024
        var buffer = [UInt8](repeating: 0, count: 24)
        var start = 0
        while start < elements.count {
            let end = min(start + chunk, elements.count)
            let set = makeSetReference(table: table, name: definition.name)
            for element in elements[start..<end] {
                let item = nftnl_set_elem_alloc()!
                buffer.withUnsafeMutableBytes { raw in
                    let length = DrawbridgeTable.writeKey(of: element.key, end: false, into: raw)
                    _ = nftnl_set_elem_set(item, UInt16(NFTNL_SET_ELEM_KEY), raw.baseAddress, UInt32(length))
                    if !element.key.source.isSingleAddress {
                        _ = DrawbridgeTable.writeKey(of: element.key, end: true, into: raw)
                        _ = nftnl_set_elem_set(item, UInt16(NFTNL_SET_ELEM_KEY_END), raw.baseAddress, UInt32(length))
                    }
                }
                if operation == .add, let deadline = element.deadline,
                    let timeout = ElementExpiry.deadline(deadline).timeoutMilliseconds(now: now)
                {
                    nftnl_set_elem_set_u64(item, UInt16(NFTNL_SET_ELEM_TIMEOUT), timeout)
                }
                nftnl_set_elem_add(set, item)
            }
            let iterator = nftnl_set_elems_iter_create(set)!
            var more: Int32 = 1
            while more > 0 {
                message(
                    type, flags: flags,
                    record: .init(operation: name, table: table, object: definition.name, elementCount: 0)
                ) {
                    more = nftnl_set_elems_nlmsg_build_payload_iter($0, iterator)
                }
            }
            nftnl_set_elems_iter_destroy(iterator)
            nftnl_set_free(set)
            start = end
        }
        let last = nextSequence &- 1
        records[last]?.elementCount = elements.count
    }

    private func encodeElements(
        _ type: nf_tables_msg_types,
        flags: Int32,
        operation: String,
        table: String,
        _ definition: SetDefinition,
        _ elements: [SetElement]
    ) {
        guard !elements.isEmpty else { return }
        let set = makeSet(table: table, definition, full: false)
        defer { nftnl_set_free(set) }
        for element in elements {
            let item = makeElement(element)
            if type == NFT_MSG_NEWSETELEM, let timeout = element.expiry.timeoutMilliseconds(now: now) {
                nftnl_set_elem_set_u64(item, UInt16(NFTNL_SET_ELEM_TIMEOUT), timeout)
            }
            nftnl_set_elem_add(set, item)
        }
        let iterator = nftnl_set_elems_iter_create(set)!
        defer { nftnl_set_elems_iter_destroy(iterator) }
        var more: Int32 = 1
        while more > 0 {
            message(
                type, flags: flags,
                record: .init(operation: operation, table: table, object: definition.name, elementCount: 0)
            ) {
                more = nftnl_set_elems_nlmsg_build_payload_iter($0, iterator)
            }
        }
        // Per-message element counts are not known from the iterator; record the total on the last message so an
        // error still says how large the change was.
        let last = nextSequence &- 1
        records[last]?.elementCount = elements.count
    }

    private func makeSet(table: String, _ definition: SetDefinition, full: Bool) -> OpaquePointer {
        let set = makeSetReference(table: table, name: definition.name)
        guard full else { return set }
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_FAMILY.rawValue), UInt32(NFPROTO_INET))
        // The kernel requires a transaction-local id on every new set (NFTA_SET_ID), so later messages of the same
        // batch could refer to it before it has a handle.
        nextSetID += 1
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_ID.rawValue), nextSetID)
        let describeFields = definition.describesFields
        let flags = definition.kernelFlags
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_FLAGS.rawValue), flags)
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_KEY_TYPE.rawValue), definition.keyTypeID)
        nftnl_set_set_u32(set, UInt16(NFTNL_SET_KEY_LEN.rawValue), UInt32(definition.keyLength))
        if let size = definition.size { nftnl_set_set_u32(set, UInt16(NFTNL_SET_DESC_SIZE.rawValue), size) }
        if describeFields {
            // Unpadded field lengths as uint8_t[]; libnftnl counts fields up to the first zero.
            let lengths = definition.keyTypes.map(\.length)
            lengths.withUnsafeBytes {
                _ = nftnl_set_set_data(set, UInt16(NFTNL_SET_DESC_CONCAT.rawValue), $0.baseAddress, UInt32($0.count))
            }
        }
        return set
    }

    private func makeChain(table: String, _ definition: ChainDefinition) -> OpaquePointer {
        let chain = nftnl_chain_alloc()!
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TABLE.rawValue), table)
        nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_NAME.rawValue), definition.name)
        if let base = definition.base {
            nftnl_chain_set_str(chain, UInt16(NFTNL_CHAIN_TYPE.rawValue), "filter")
            nftnl_chain_set_u32(chain, UInt16(NFTNL_CHAIN_HOOKNUM.rawValue), base.hook.number)
            nftnl_chain_set_s32(chain, UInt16(NFTNL_CHAIN_PRIO.rawValue), base.priority)
            nftnl_chain_set_u32(
                chain, UInt16(NFTNL_CHAIN_POLICY.rawValue), UInt32(base.acceptByDefault ? NF_ACCEPT : NF_DROP))
        }
        return chain
    }
}

/// A libnftnl set that only names a set of an inet table: what element messages, flushes and element reads carry.
/// The caller frees it (`nftnl_set_free`).
func makeSetReference(table: String, name: String) -> OpaquePointer {
    let set = nftnl_set_alloc()!
    nftnl_set_set_str(set, UInt16(NFTNL_SET_TABLE.rawValue), table)
    nftnl_set_set_str(set, UInt16(NFTNL_SET_NAME.rawValue), name)
    return set
}

/// A libnftnl element with the key, key end and interval-end flag of `element` (no timeout). Adding it to a set
/// (`nftnl_set_elem_add`) hands it over.
func makeElement(_ element: SetElement) -> OpaquePointer {
    let item = nftnl_set_elem_alloc()!
    element.key.withUnsafeBytes {
        _ = nftnl_set_elem_set(item, UInt16(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count))
    }
    if let end = element.keyEnd {
        end.withUnsafeBytes {
            _ = nftnl_set_elem_set(item, UInt16(NFTNL_SET_ELEM_KEY_END), $0.baseAddress, UInt32($0.count))
        }
    }
    if element.isIntervalEnd {
        nftnl_set_elem_set_u32(item, UInt16(NFTNL_SET_ELEM_FLAGS), NFT_SET_ELEM_INTERVAL_END.rawValue)
    }
    return item
}
