import DrawbridgeCore
import FoundationEssentials

/// The data types a set key can be built from, with the ids the `nft` tool uses to print them.
public enum SetKeyType: Sendable, Hashable {
    case ipv4Address
    case ipv6Address
    case inetProtocol
    case inetService

    /// nft's datatype id (include/datatype.h); only userspace interprets it, to print elements.
    var datatypeID: UInt32 {
        switch self {
        case .ipv4Address: return 7
        case .ipv6Address: return 8
        case .inetProtocol: return 12
        case .inetService: return 13
        }
    }

    /// The field's own length in bytes, before padding to a 4-byte register.
    package var length: UInt8 {
        switch self {
        case .ipv4Address: return 4
        case .ipv6Address: return 16
        case .inetProtocol: return 1
        case .inetService: return 2
        }
    }

    var paddedLength: Int { (Int(length) + 3) & ~3 }
}

/// The definition of a named set.
public struct SetDefinition: Sendable, Hashable {
    public var name: String
    /// One type, or several for a concatenation (`ipv4_addr . inet_proto . inet_service`).
    public var keyTypes: [SetKeyType]
    /// Elements are ranges (prefixes). With several key types this selects the kernel's pipapo backend.
    public var interval: Bool
    /// Elements carry their own timeout and the kernel stops matching them at expiry.
    public var timeout: Bool
    /// The most elements the set may hold (the kernel answers ENFILE beyond it); nil for no limit.
    public var size: UInt32?

    public init(
        name: String, keyTypes: [SetKeyType], interval: Bool = false, timeout: Bool = false, size: UInt32? = nil
    ) {
        precondition(!keyTypes.isEmpty && keyTypes.count <= 5, "a set key has one to five fields")
        self.name = name
        self.keyTypes = keyTypes
        self.interval = interval
        self.timeout = timeout
        self.size = size
    }

    var isConcatenation: Bool { keyTypes.count > 1 }

    /// The kernel wants CONCAT and the field lengths together for concatenated interval sets, and neither for
    /// concatenated hash sets (nft sends neither there); a mismatch is EINVAL.
    package var describesFields: Bool { isConcatenation && interval }

    /// NFTA_SET_FLAGS as drawbridge sends them (and the kernel reports them back).
    package var kernelFlags: UInt32 {
        var flags: UInt32 = 0
        if interval { flags |= 0x4 }  // NFT_SET_INTERVAL
        if timeout { flags |= 0x10 }  // NFT_SET_TIMEOUT
        if describesFields { flags |= 0x80 }  // NFT_SET_CONCAT
        return flags
    }

    /// The key type id as nft packs it: 6 bits per field, the first field in the highest slot.
    package var keyTypeID: UInt32 { keyTypes.reduce(0) { $0 << 6 | $1.datatypeID } }

    /// The key length: every field padded to a 4-byte register (except a lone field, which keeps its own length).
    package var keyLength: Int {
        isConcatenation ? keyTypes.reduce(0) { $0 + $1.paddedLength } : Int(keyTypes[0].length)
    }
}

/// A hook on which a base chain runs.
public enum ChainHook: Sendable, Hashable {
    case input
    case forward

    /// The hook number (NF_INET_LOCAL_IN is 1, NF_INET_FORWARD 2).
    package var number: UInt32 {
        switch self {
        case .input: return 1
        case .forward: return 2
        }
    }

    /// The hook's name in nft syntax.
    package var name: String {
        switch self {
        case .input: return "input"
        case .forward: return "forward"
        }
    }
}

/// A chain: a base chain when it has a hook, a regular chain (a jump target) otherwise.
public struct ChainDefinition: Sendable, Hashable {
    public struct Base: Sendable, Hashable {
        public var hook: ChainHook
        public var priority: Int32
        /// The verdict for packets no rule decided: true for accept.
        public var acceptByDefault: Bool

        public init(hook: ChainHook, priority: Int32, acceptByDefault: Bool) {
            self.hook = hook
            self.priority = priority
            self.acceptByDefault = acceptByDefault
        }
    }

    public var name: String
    public var base: Base?

    public init(name: String, base: Base? = nil) {
        self.name = name
        self.base = base
    }
}

/// The verdict that ends a rule.
public enum Verdict: Sendable, Hashable {
    case accept
    case drop
    case jump(String)
    /// Like jump, but the chain's verdict is final: no return to the calling chain.
    case goto(String)
}

/// A value a rule can match, loaded into a register.
public enum Selector: Sendable, Hashable {
    /// `ip saddr` in an inet table (with the implied check that the packet is IPv4).
    case ipv4Source
    /// `ip6 saddr` in an inet table (with the implied check that the packet is IPv6).
    case ipv6Source
    /// `meta l4proto`.
    case transportProtocol
    /// `th dport`: the destination port of whatever transport header the packet has.
    case destinationPort
    /// `ct original proto-dst`: the destination port the connection's first packet had, before any DNAT (how a
    /// forwarded packet is judged by the port the client asked for).
    case originalDestinationPort
}

/// One rule of a chain, in the small vocabulary the drawbridge table needs.
public enum RuleDefinition: Sendable, Hashable {
    /// `SELECTOR . SELECTOR ... @set VERDICT`; with `protocol`, preceded by `meta l4proto PROTOCOL` (which nft needs
    /// before it can read `ct original proto-dst` as a port).
    case lookup([Selector], set: String, verdict: Verdict, protocol: TransportProtocol? = nil)
    /// `iif "lo" VERDICT` (the loopback interface is index 1 in every namespace).
    case loopbackInterface(Verdict)
    /// `ct state established,related VERDICT`.
    case establishedOrRelated(Verdict)
    /// `counter VERDICT`.
    case counted(Verdict)
    /// `udp dport PORT limit rate RATE/second burst 5 packets log group GROUP drop`: the knock port's packets, up to
    /// the rate, to NFLOG and dropped.
    case knock(port: UInt16, group: UInt16, rate: UInt32)
    /// `tcp dport PORT counter VERDICT` (or udp): one port's packets, counted by the rule itself. The managed ports'
    /// drops and accepts are counted this way, and the knock port's packets the limit let through.
    /// With `original`, the port is the connection's original destination port: `meta l4proto tcp ct original
    /// proto-dst PORT counter VERDICT`, for forwarded packets.
    case portCounter(Service, Verdict, original: Bool = false)
}

/// The expiry an element carries into the kernel.
public enum ElementExpiry: Sendable, Hashable {
    /// No timeout: the element stays until deleted.
    case never
    /// The kernel stops matching the element at this wall-clock instant. The timeout sent is computed from it as
    /// the transaction is encoded, as late as possible.
    case at(Date)
    /// The kernel stops matching the element at this monotonic instant (the clock its timeouts run on); the timeout
    /// sent is computed from it as the transaction is encoded.
    case deadline(MonotonicInstant)

    /// The timeout to send for this expiry when the transaction is encoded at `now`, in whole milliseconds; nil for
    /// `.never`.
    ///
    /// Rounded up, so a grant is never shorter than asked, and at least 1: 0 would mean "no timeout" to the kernel,
    /// an element that never expires, so an expiry already past is sent as 1 ms.
    public func timeoutMilliseconds(now: Instants) -> UInt64? {
        switch self {
        case .never:
            return nil
        case .at(let expiry):
            let milliseconds = expiry.timeIntervalSince(now.wall) * 1000
            guard milliseconds > 1 else { return 1 }
            return UInt64(min(milliseconds, 1e15).rounded(.up))
        case .deadline(let deadline):
            // In integer nanoseconds: a deadline N ms from now is exactly N ms, with no floating-point rounding.
            let (nanoseconds, overflow) = deadline.nanoseconds.subtractingReportingOverflow(now.monotonic.nanoseconds)
            if overflow { return deadline.nanoseconds > 0 ? UInt64(Int64.max / 1_000_000) : 1 }
            guard nanoseconds > 1_000_000 else { return 1 }
            return UInt64((nanoseconds - 1) / 1_000_000 + 1)
        }
    }
}

/// A set element as bytes, ready for the kernel: a key, an inclusive key end for ranges in concatenated interval
/// sets, and an expiry.
public struct SetElement: Sendable, Hashable {
    public var key: [UInt8]
    public var keyEnd: [UInt8]?
    /// `NFT_SET_ELEM_INTERVAL_END`: the exclusive end of a range in a single-field interval set.
    public var isIntervalEnd: Bool
    public var expiry: ElementExpiry

    public init(key: [UInt8], keyEnd: [UInt8]? = nil, isIntervalEnd: Bool = false, expiry: ElementExpiry = .never) {
        self.key = key
        self.keyEnd = keyEnd
        self.isIntervalEnd = isIntervalEnd
        self.expiry = expiry
    }
}

/// An element as a dump returned it.
public struct ListedElement: Sendable, Hashable {
    public var key: [UInt8]
    public var keyEnd: [UInt8]?
    public var isIntervalEnd: Bool
    /// The element's timeout in milliseconds, if it has one.
    public var timeoutMilliseconds: UInt64?
    /// The time left before expiry in milliseconds, if it has a timeout.
    public var remainingMilliseconds: UInt64?
    /// When the message carrying this element was read: the instant `remainingMilliseconds` counts from (a dump of
    /// a large set takes long enough that one instant for all of it would skew the expiries).
    public var readAt: Date
    /// The same instant on the monotonic clock.
    public var readAtMonotonic: MonotonicInstant

    /// - Parameter readAt: when the message carrying the element was read; the model reads no clock.
    public init(
        key: [UInt8], keyEnd: [UInt8]? = nil, isIntervalEnd: Bool = false, timeoutMilliseconds: UInt64? = nil,
        remainingMilliseconds: UInt64? = nil, readAt: Instants
    ) {
        self.key = key
        self.keyEnd = keyEnd
        self.isIntervalEnd = isIntervalEnd
        self.timeoutMilliseconds = timeoutMilliseconds
        self.remainingMilliseconds = remainingMilliseconds
        self.readAt = readAt.wall
        readAtMonotonic = readAt.monotonic
    }

    /// The absolute expiry on the wall clock, if the element has a timeout.
    public var expiresAt: Date? {
        remainingMilliseconds.map { readAt.addingTimeInterval(Double($0) / 1000) }
    }

    /// The expiry on the monotonic clock, if the element has a timeout.
    public var deadline: MonotonicInstant? {
        remainingMilliseconds.map { readAtMonotonic.advanced(by: Double($0) / 1000) }
    }
}

/// One change inside a transaction.
public enum Change: Sendable {
    case createTable(String)
    case deleteTable(String)
    case createChain(table: String, ChainDefinition)
    /// Deletes every rule of a chain.
    case flushChain(table: String, chain: String)
    case appendRule(table: String, chain: String, RuleDefinition)
    case createSet(table: String, SetDefinition)
    /// Deletes every element of a set.
    case flushSet(table: String, set: String)
    case addElements(table: String, set: SetDefinition, [SetElement])
    /// Deletes elements, identified by their exact key (for ranges: the exact start key that was added).
    case deleteElements(table: String, set: SetDefinition, [SetElement])
    /// Deletes elements that are present and ignores those that are not (NFT_MSG_DESTROYSETELEM, Linux 6.3+; older
    /// kernels refuse the transaction with EINVAL).
    case destroyElements(table: String, set: SetDefinition, [SetElement])
    /// Grant elements, by key: the encoder writes their bytes straight into the message, so a million of them cost
    /// no million small arrays on the way.
    case grantElements(GrantElementOperation, table: String, set: SetDefinition, [GrantElement])
}

/// What to do with grant elements.
public enum GrantElementOperation: Sendable, Hashable {
    case add
    case delete
    /// Delete if present (NFT_MSG_DESTROYSETELEM, Linux 6.3+).
    case destroy
}

/// A grant element: a key and, to add it, the monotonic deadline its timeout is computed from.
public struct GrantElement: Sendable, Hashable {
    public var key: AccessKey
    public var deadline: MonotonicInstant?

    public init(key: AccessKey, deadline: MonotonicInstant? = nil) {
        self.key = key
        self.deadline = deadline
    }
}

/// A list of changes the kernel applies as one atomic transaction: all of them, or (on any error) none.
public struct Transaction: Sendable {
    public var changes: [Change] = []

    public init(_ changes: [Change] = []) {
        self.changes = changes
    }

    public mutating func append(_ change: Change) {
        changes.append(change)
    }

    public var isEmpty: Bool { changes.isEmpty }

    /// The number of elements added or deleted.
    public var elementCount: Int {
        changes.reduce(0) {
            switch $1 {
            case .addElements(_, _, let elements), .deleteElements(_, _, let elements),
                .destroyElements(_, _, let elements):
                return $0 + elements.count
            case .grantElements(_, _, _, let elements):
                return $0 + elements.count
            default: return $0
            }
        }
    }
}

/// What committing cost.
public struct CommitReport: Sendable {
    /// Netlink messages between batch begin and end.
    public var messages: Int
    /// Bytes handed to the kernel in the one sendmsg.
    public var bytes: Int
    /// The timeouts that were computed for elements with an absolute expiry were read against this instant.
    public var encodedAt: Date
    /// Transactions the kernel committed: each moves the ruleset generation by one. 0 for an empty change.
    public var transactions: Int = 1

    public init(messages: Int, bytes: Int, encodedAt: Date, transactions: Int = 1) {
        self.messages = messages
        self.bytes = bytes
        self.encodedAt = encodedAt
        self.transactions = transactions
    }
}
