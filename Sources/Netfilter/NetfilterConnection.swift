import CMnl
import CNftnl
import DrawbridgeCore
import FoundationEssentials
import HostSystem
import NetfilterModel

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A connection to nf_tables in one network namespace.
///
/// Changes are sent as transactions (`commit`), each one nfnetlink batch in one `sendmsg`: the kernel applies all of
/// it or none of it. Reads are `generation()`, `tableExists(_:)` and `listElements(table:set:)`.
///
/// Not thread-safe: give each connection one owner (the agent keeps it inside an actor).
public final class NetfilterConnection {
    private let socket: NetlinkSocket
    private var sequence: UInt32

    /// Opens a connection in the calling thread's network namespace, or inside `namespace`.
    public init(namespace: NetworkNamespace? = nil) throws(NetfilterError) {
        if let namespace {
            do {
                socket = try namespace.perform { try NetlinkSocket() }
            } catch let error as NetfilterError {
                throw error
            } catch {
                throw NetfilterError(.other, operation: "open netlink socket in namespace", detail: "\(error)")
            }
        } else {
            socket = try NetlinkSocket()
        }
        // Start from the clock so two connections of one process seldom share numbers; they only need to be
        // unique per socket.
        sequence = UInt32(truncatingIfNeeded: Int(Date().timeIntervalSince1970))
    }

    /// The netlink port of this connection's socket: notifications of its commits carry it.
    public var portID: UInt32 { socket.portID }

    private func nextSequence(reserving count: Int = 1) -> UInt32 {
        defer { sequence &+= UInt32(count) }
        return sequence
    }

    // MARK: Transactions

    /// Applies `transaction` atomically.
    ///
    /// - Parameter generation: when given, the kernel refuses the transaction (`.generationChanged`) if any other
    ///   change was committed since this ruleset generation was read, so a change computed from a stale view is
    ///   never applied.
    /// - Throws: `NetfilterError` naming the first failing change; the kernel then applied nothing, except for
    ///   `.outcomeUnknown`, after which the caller must read the state again.
    @discardableResult
    public func commit(_ transaction: Transaction, generation: UInt32? = nil) throws(NetfilterError) -> CommitReport {
        guard !transaction.isEmpty else {
            return CommitReport(messages: 0, bytes: 0, encodedAt: SystemClock.wall(), transactions: 0)
        }
        let encoder = BatchEncoder(
            firstSequence: nextSequence(), generation: generation, now: SystemClock.now(),
            small: BatchEncoder.fitsSmallBuffer(transaction))
        for change in transaction.changes { encoder.encode(change) }
        var (iovecs, bytes) = encoder.finish()
        sequence = sequence &+ UInt32(encoder.messageCount + 2)
        let expected = encoder.messageCount
        socket.reserve(sendBytes: bytes, replies: expected)
        try discardStaleReplies()
        try socket.send(&iovecs, operation: "send transaction of \(expected) messages (\(bytes) bytes)")

        // The kernel processes the whole batch inside sendmsg, so every reply is queued by now: read without
        // waiting until the socket is empty.
        var acknowledged = 0
        var failures: [(sequence: UInt32, errno: Int32, offset: UInt32?, message: String)] = []
        do {
            while try socket.receive(
                wait: false, operation: "read transaction replies",
                { reply in
                    switch reply.kind {
                    case .acknowledgement: acknowledged += 1
                    case .error(let errno, let offset, let message):
                        failures.append((reply.sequence, errno, offset, message))
                    case .done, .data: break
                    }
                })
            {}
        } catch  where error.code == .outcomeUnknown {
            throw NetfilterError(
                .outcomeUnknown, operation: "commit transaction", errno: ENOBUFS,
                detail: "\(expected) messages, \(transaction.elementCount) elements")
        }
        if let failure = failures.min(by: { $0.sequence < $1.sequence }) {
            throw describe(failure: failure, records: encoder.records, batchBegin: encoder.firstSequence)
        }
        guard acknowledged == expected else {
            throw NetfilterError(
                .outcomeUnknown, operation: "commit transaction",
                detail: "the kernel acknowledged \(acknowledged) of \(expected) messages")
        }
        return CommitReport(messages: expected, bytes: bytes, encodedAt: encoder.now.wall)
    }

    private func discardStaleReplies() throws(NetfilterError) {
        while try socket.receive(wait: false, operation: "drain socket", { _ in }) {}
    }

    private func describe(
        failure: (sequence: UInt32, errno: Int32, offset: UInt32?, message: String),
        records: [UInt32: MessageRecord],
        batchBegin: UInt32
    ) -> NetfilterError {
        guard let record = records[failure.sequence] else {
            // Errors on BATCH_BEGIN concern the whole transaction (a stale generation id, a malformed batch).
            return NetfilterError(
                errno: failure.errno, operation: "commit transaction",
                detail: failure.message.isEmpty ? nil : failure.message)
        }
        var details: [String] = []
        if !failure.message.isEmpty { details.append(failure.message) }
        if record.elementCount > 0 { details.append("\(record.elementCount) elements in this change") }
        var error = NetfilterError(
            errno: failure.errno, operation: record.operation, table: record.table, object: record.object,
            detail: details.isEmpty ? nil : details.joined(separator: "; "))
        if failure.errno == ENOENT, let table = record.table {
            // ENOENT can mean a missing table, set or chain, or (on delete) a missing element: ask the kernel.
            if (try? tableExists(table)) == false {
                error.code = .tableMissing
            } else if record.operation == "delete elements" {
                error.code = .elementAbsent
            }
        }
        return error
    }

    // MARK: Reads

    /// The ruleset generation: every committed transaction increments it. The corresponding C function is
    /// `nftnl_gen_nlmsg_parse`.
    public func generation() throws(NetfilterError) -> UInt32 {
        var result: UInt32?
        try request(
            type: NFT_MSG_GETGEN, family: UInt16(AF_UNSPEC), dump: false, operation: "read ruleset generation",
            build: { _ in }
        ) { message in
            let generation = nftnl_gen_alloc()!
            defer { nftnl_gen_free(generation) }
            if nftnl_gen_nlmsg_parse(message, generation) == 0 {
                result = nftnl_gen_get_u32(generation, UInt16(NFTNL_GEN_ID))
            }
        }
        guard let result else {
            throw NetfilterError(.protocolViolation, operation: "read ruleset generation", detail: "no NEWGEN reply")
        }
        return result
    }

    /// Whether an inet table of this name exists.
    public func tableExists(_ name: String) throws(NetfilterError) -> Bool {
        do {
            try request(
                type: NFT_MSG_GETTABLE, family: UInt16(NFPROTO_INET), dump: false, operation: "read table",
                build: { header in
                    let table = nftnl_table_alloc()!
                    defer { nftnl_table_free(table) }
                    nftnl_table_set_str(table, UInt16(NFTNL_TABLE_NAME.rawValue), name)
                    nftnl_table_nlmsg_build_payload(header, table)
                }
            ) { _ in }
            return true
        } catch  where error.errno == ENOENT {
            return false
        }
    }

    /// Whether a set of this name exists in an inet table (one GETSET, without reading its elements).
    public func setExists(table: String, set name: String) throws(NetfilterError) -> Bool {
        do {
            try request(
                type: NFT_MSG_GETSET, family: UInt16(NFPROTO_INET), dump: false, operation: "read set",
                build: { header in
                    let set = makeSetReference(table: table, name: name)
                    defer { nftnl_set_free(set) }
                    nftnl_set_nlmsg_build_payload(header, set)
                }
            ) { _ in }
            return true
        } catch  where error.errno == ENOENT {
            return false
        }
    }

    /// Every live element of a set, with its remaining time. Expired elements the kernel has not collected yet are
    /// not listed (the kernel skips them, as lookups do).
    ///
    /// A dump that spans several messages is several walks of the set, each skipping what the previous ones sent.
    /// If the kernel rehashes a hash set between two walks (it grows in the background after a large insert), the
    /// skip lands in a different order and elements are missed or repeated — without NLM_F_DUMP_INTR, which only
    /// reports ruleset changes. So a dump with a repeated key is read again, and a large set is read until two
    /// dumps in a row agree.
    public func listElements(table: String, set: String) throws(NetfilterError) -> [ListedElement] {
        var previous: Set<ElementIdentity>?
        for _ in 0..<8 {
            let (elements, consistent) = try dumpElements(table: table, set: set)
            guard consistent else { continue }
            // One message holds a few hundred elements: a set that small is read in one walk.
            if elements.count <= 256 { return elements }
            let identities = Set(elements.map(ElementIdentity.init))
            if identities == previous { return elements }
            previous = identities
        }
        throw NetfilterError(
            .other, operation: "list elements", table: table, set: set, errno: EINTR,
            detail: "the set kept changing while it was read")
    }

    /// Looks up chosen elements with one non-dump GETSETELEM: each answer comes within microseconds of the others,
    /// so their remaining times compare exactly (a dump of a large set takes long enough to smear them).
    ///
    /// - Returns: the kernel's view of each element, in the order given.
    /// - Throws: `.objectMissing` when any of them is not in the set.
    public func getElements(table: String, set: String, _ elements: [SetElement]) throws(NetfilterError)
        -> [ListedElement]
    {
        var found: [ListedElement] = []
        try request(
            type: NFT_MSG_GETSETELEM, family: UInt16(NFPROTO_INET), dump: false, operation: "get elements",
            table: table, object: set, bufferSize: 64 + elements.count * 96,
            // The kernel answers each element with a reply of its own, a page-sized skb, all queued before the first
            // is read: the receive buffer must hold them (`reserve` counts about a kilobyte per reply).
            replies: elements.count * 8,
            build: { header in
                let container = makeSetReference(table: table, name: set)
                defer { nftnl_set_free(container) }
                for element in elements { nftnl_set_elem_add(container, makeElement(element)) }
                nftnl_set_elems_nlmsg_build_payload(header, container)
            }
        ) { message in
            Self.parseElements(message, into: &found)
        }
        return found
    }

    private struct ElementIdentity: Hashable {
        var key: [UInt8]
        var keyEnd: [UInt8]?
        var isIntervalEnd: Bool
        init(_ element: ListedElement) {
            key = element.key
            keyEnd = element.keyEnd
            isIntervalEnd = element.isIntervalEnd
        }
    }

    /// One dump; `consistent` is false when the kernel flagged it interrupted or a key came twice.
    private func dumpElements(table: String, set: String) throws(NetfilterError) -> ([ListedElement], consistent: Bool)
    {
        var elements: [ListedElement] = []
        var interrupted = false
        try request(
            type: NFT_MSG_GETSETELEM, family: UInt16(NFPROTO_INET), dump: true, operation: "list elements",
            table: table, object: set,
            build: { header in
                let container = makeSetReference(table: table, name: set)
                defer { nftnl_set_free(container) }
                nftnl_set_elems_nlmsg_build_payload(header, container)
            }
        ) { message in
            if message.pointee.nlmsg_flags & UInt16(NLM_F_DUMP_INTR) != 0 { interrupted = true }
            Self.parseElements(message, into: &elements)
        }
        if interrupted { return (elements, false) }
        var seen = Swift.Set<ElementIdentity>()
        let unique = elements.allSatisfy { seen.insert(ElementIdentity($0)).inserted }
        return (elements, unique)
    }

    /// The elements of one GETSETELEM reply message (as `NetlinkReply.decode` hands it over: `nlmsg_len` bytes).
    package static func parseElements(message: UnsafeRawBufferPointer) -> [ListedElement] {
        var elements: [ListedElement] = []
        guard let base = message.baseAddress else { return elements }
        parseElements(base.assumingMemoryBound(to: nlmsghdr.self), into: &elements)
        return elements
    }

    private static func parseElements(_ message: UnsafePointer<nlmsghdr>, into elements: inout [ListedElement]) {
        let container = nftnl_set_alloc()!
        defer { nftnl_set_free(container) }
        guard nftnl_set_elems_nlmsg_parse(message, container) >= 0 else { return }
        let readAt = SystemClock.now()
        let iterator = nftnl_set_elems_iter_create(container)!
        defer { nftnl_set_elems_iter_destroy(iterator) }
        while let element = nftnl_set_elems_iter_next(iterator) {
            func bytes(_ attribute: Int) -> [UInt8]? {
                guard nftnl_set_elem_is_set(element, UInt16(attribute)) else { return nil }
                var length: UInt32 = 0
                guard let data = nftnl_set_elem_get(element, UInt16(attribute), &length) else { return nil }
                return Array(UnsafeRawBufferPointer(start: data, count: Int(length)))
            }
            func number(_ attribute: Int) -> UInt64? {
                nftnl_set_elem_is_set(element, UInt16(attribute))
                    ? nftnl_set_elem_get_u64(element, UInt16(attribute)) : nil
            }
            let flags =
                nftnl_set_elem_is_set(element, UInt16(NFTNL_SET_ELEM_FLAGS))
                ? nftnl_set_elem_get_u32(element, UInt16(NFTNL_SET_ELEM_FLAGS)) : 0
            elements.append(
                ListedElement(
                    key: bytes(NFTNL_SET_ELEM_KEY) ?? [],
                    keyEnd: bytes(NFTNL_SET_ELEM_KEY_END),
                    isIntervalEnd: flags & NFT_SET_ELEM_INTERVAL_END.rawValue != 0,
                    timeoutMilliseconds: number(NFTNL_SET_ELEM_TIMEOUT),
                    remainingMilliseconds: number(NFTNL_SET_ELEM_EXPIRATION), readAt: readAt))
        }
    }

    /// Sends one request and reads its replies until the kernel's ACK (non-dump) or NLMSG_DONE (dump).
    func request(
        type: nf_tables_msg_types,
        family: UInt16,
        dump: Bool,
        operation: String,
        table: String? = nil,
        object: String? = nil,
        bufferSize: Int = 4096,
        replies: Int = 0,
        build: (UnsafeMutablePointer<nlmsghdr>) -> Void,
        handle: (UnsafePointer<nlmsghdr>) -> Void
    ) throws(NetfilterError) {
        if replies > 0 { socket.reserve(sendBytes: bufferSize, replies: replies) }
        try discardStaleReplies()
        let requestSequence = nextSequence()
        var buffer = [UInt8](repeating: 0, count: max(4096, bufferSize))
        let length = buffer.withUnsafeMutableBytes { raw -> Int in
            let flags = UInt16(dump ? NLM_F_DUMP : NLM_F_ACK)
            let header = nftnl_nlmsg_build_hdr(
                raw.baseAddress!.assumingMemoryBound(to: CChar.self), UInt16(type.rawValue), family, flags,
                requestSequence)!
            build(header)
            return Int(header.pointee.nlmsg_len)
        }
        let sendResult = buffer.withUnsafeBytes { raw in
            Result { () throws(NetfilterError) in
                try socket.send(UnsafeRawBufferPointer(rebasing: raw[0..<length]), operation: operation)
            }
        }
        try sendResult.get()
        var finished = false
        var failure: NetfilterError?
        while !finished {
            _ = try socket.receive(wait: true, operation: operation) { reply in
                guard reply.sequence == requestSequence else { return }
                switch reply.kind {
                case .acknowledgement, .done:
                    finished = true
                case .error(let errno, _, let message):
                    failure = NetfilterError(
                        errno: errno, operation: operation, table: table, object: object,
                        detail: message.isEmpty ? nil : message)
                    finished = true
                case .data(let bytes):
                    handle(bytes.baseAddress!.assumingMemoryBound(to: nlmsghdr.self))
                }
            }
        }
        guard var failure else { return }
        // ENOENT names no object: say so when it is the whole table that is missing.
        if failure.errno == ENOENT, let table, object != nil, (try? tableExists(table)) == false {
            failure.code = .tableMissing
        }
        throw failure
    }
}
