import DrawbridgeCore
import FoundationEssentials

/// What the policy makes of the table: the parts that do not change with grants.
public struct TableLayout: Sendable, Equatable {
    public var mode: SessionMode
    /// The ports guarded on the input hook (packets to this host).
    public var managedServices: [Service]
    public var alwaysAllowed: [IPPrefix]
    /// The knock port's rules, when the policy takes knocks.
    public var knock: KnockRule?
    /// The ports guarded on the forward hook, by the connection's original destination port (containers, VMs and
    /// anything DNAT sends on).
    public var forwardedServices: [Service]

    public init(
        mode: SessionMode, managedServices: [Service], alwaysAllowed: [IPPrefix], knock: KnockRule? = nil,
        forwardedServices: [Service] = []
    ) {
        self.mode = mode
        self.managedServices = managedServices
        self.alwaysAllowed = alwaysAllowed
        self.knock = knock
        self.forwardedServices = forwardedServices
    }
}

extension TableLayout {
    /// The layout a policy asks for.
    public init(policy: Policy) {
        self.init(
            mode: policy.onExpiry, managedServices: policy.managedServices, alwaysAllowed: policy.alwaysAllow,
            knock: policy.knock.map { KnockRule(port: $0.port, group: $0.logGroup, rate: $0.rate) },
            forwardedServices: policy.forwardedServices)
    }
}

/// How the table treats the knock port: up to `rate` packets a second go to NFLOG group `group` (where
/// drawbridge-knock reads them) and are dropped; the rest are dropped and counted. Nothing ever answers.
public struct KnockRule: Sendable, Equatable {
    public var port: UInt16
    public var group: UInt16
    public var rate: UInt32
    /// The packets a burst may hold beyond the rate (nft's default for packet limits).
    public static let burst: UInt32 = 5

    public init(port: UInt16, group: UInt16, rate: UInt32) {
        self.port = port
        self.group = group
        self.rate = rate
    }
}

/// The one table drawbridged owns: its sets, chains and rules, and how grants become set elements.
///
/// rules/drawbridge.nft is this definition in nft syntax (`ruleset(mode:)` prints it), and a kernel test checks
/// that what this type builds lists exactly like what `nft -f rules/drawbridge.nft` builds.
public enum DrawbridgeTable {
    public static let name = "drawbridge"

    /// `inet_proto . inet_service`: the ports under just-in-time control on the input hook.
    public static let managed = SetDefinition(name: "managed", keyTypes: [.inetProtocol, .inetService])
    /// The same for the forward hook, matched against the connection's original destination port.
    public static let forwarded = SetDefinition(name: "forwarded", keyTypes: [.inetProtocol, .inetService])
    /// Break-glass prefixes, always allowed on every managed port.
    public static let allow4 = SetDefinition(name: "allow4", keyTypes: [.ipv4Address], interval: true)
    public static let allow6 = SetDefinition(name: "allow6", keyTypes: [.ipv6Address], interval: true)
    /// Grants from single addresses: exact-match hash sets, linear and cheap at any size.
    public static let grants4 = SetDefinition(
        name: "grants4", keyTypes: [.ipv4Address, .inetProtocol, .inetService], timeout: true)
    public static let grants6 = SetDefinition(
        name: "grants6", keyTypes: [.ipv6Address, .inetProtocol, .inetService], timeout: true)
    /// Grants from prefixes: concatenated interval sets (the kernel's pipapo backend).
    public static let ranges4 = SetDefinition(
        name: "ranges4", keyTypes: [.ipv4Address, .inetProtocol, .inetService], interval: true, timeout: true)
    public static let ranges6 = SetDefinition(
        name: "ranges6", keyTypes: [.ipv6Address, .inetProtocol, .inetService], interval: true, timeout: true)

    public static let sets = [managed, forwarded, allow4, allow6, grants4, grants6, ranges4, ranges6]
    /// The sets that hold grants, each with a timeout per element.
    public static let grantSets = [grants4, grants6, ranges4, ranges6]

    /// The base chain: only packets to managed ports go on to the gate; everything else is not ours to judge.
    public static let input = ChainDefinition(
        name: "input", base: .init(hook: .input, priority: -10, acceptByDefault: true))
    /// Decides packets to managed ports: accept what a grant or break-glass prefix allows, drop the rest (each
    /// managed port's drops counted by a rule of its own).
    public static let gate = ChainDefinition(name: "gate")
    /// Where the gate sends what a grant or break-glass prefix allows: each managed port's accepts counted by a rule
    /// of its own, then accepted.
    public static let granted = ChainDefinition(name: "granted")
    /// The forward hook's base chain: only forwarded packets whose protocol and original destination port are in
    /// `forwarded` go on to its gate. At the same priority as `input`, so before Docker's (filter) chains.
    public static let forward = ChainDefinition(
        name: "forward", base: .init(hook: .forward, priority: -10, acceptByDefault: true))
    /// `gate` and `granted` for forwarded packets, judged by the original destination port.
    public static let gateForward = ChainDefinition(name: "gate_forward")
    public static let grantedForward = ChainDefinition(name: "granted_forward")
    /// Every chain of the table, in the order they are created and printed.
    public static let chains = [input, gate, granted, forward, gateForward, grantedForward]

    /// The rules of each chain, in order.
    ///
    /// Packets reach `gate` only when their protocol and destination port are in `managed`; a packet whose port
    /// cannot be read (no transport header) never jumps, so nothing but a managed port can ever be dropped here.
    /// What a grant or break-glass prefix allows goes on to `granted`; what nothing allows meets its port's counting
    /// drop rule (the last `counter drop` catches any packet whose port has none, as a safety net).
    ///
    /// Forwarded packets take the same way through `forward`, `gate_forward` and `granted_forward`, with the
    /// connection's original destination port in place of the packet's (after DNAT the packet's port is the
    /// container's), and without the loopback rule.
    public static func rules(
        mode: SessionMode, managedServices: [Service] = [], knock: KnockRule? = nil, forwardedServices: [Service] = []
    ) -> [(chain: String, rule: RuleDefinition)] {
        func unique(_ list: [Service]) -> [Service] {
            var seen: [Service] = []
            for service in list where !seen.contains(service) { seen.append(service) }
            return seen
        }
        var rules: [(String, RuleDefinition)] = []
        if let knock {
            rules.append((input.name, .knock(port: knock.port, group: knock.group, rate: knock.rate)))
            rules.append((input.name, .portCounter(Service(port: knock.port, transport: .udp), .drop)))
        }
        for forwarding in [false, true] {
            let (base, gate, granted, set) =
                forwarding ? (forward, gateForward, grantedForward, forwarded) : (input, gate, granted, managed)
            let port: Selector = forwarding ? .originalDestinationPort : .destinationPort
            let services = unique(forwarding ? forwardedServices : managedServices)
            // nft reads `ct original proto-dst` as a port only after a protocol match: one rule per protocol.
            let transports: [TransportProtocol?] = forwarding ? TransportProtocol.allCases : [nil]
            for transport in transports {
                rules.append(
                    (
                        base.name,
                        .lookup([.transportProtocol, port], set: set.name, verdict: .jump(gate.name), protocol: transport)
                    ))
            }
            if !forwarding { rules.append((gate.name, .loopbackInterface(.accept))) }
            if mode == .keepSessions { rules.append((gate.name, .establishedOrRelated(.accept))) }
            rules += [
                (gate.name, .lookup([.ipv4Source], set: allow4.name, verdict: .goto(granted.name))),
                (gate.name, .lookup([.ipv6Source], set: allow6.name, verdict: .goto(granted.name))),
            ]
            for (source, sets) in [(Selector.ipv4Source, [grants4, ranges4]), (.ipv6Source, [grants6, ranges6])] {
                for grantSet in sets {
                    for transport in transports {
                        rules.append(
                            (
                                gate.name,
                                .lookup(
                                    [source, .transportProtocol, port], set: grantSet.name,
                                    verdict: .goto(granted.name), protocol: transport)
                            ))
                    }
                }
            }
            rules += services.map { (gate.name, .portCounter($0, .drop, original: forwarding)) }
            rules.append((gate.name, .counted(.drop)))
            rules += services.map { (granted.name, .portCounter($0, .accept, original: forwarding)) }
            rules.append((granted.name, .counted(.accept)))
        }
        return rules
    }

    /// The rules of `layout`.
    public static func rules(_ layout: TableLayout) -> [(chain: String, rule: RuleDefinition)] {
        rules(
            mode: layout.mode, managedServices: layout.managedServices, knock: layout.knock,
            forwardedServices: layout.forwardedServices)
    }

    /// The changes that create the table if missing and (re)write its chains and rules, leaving every grant element
    /// in place. Sent as one transaction, the rules are replaced atomically: no packet ever sees a half-built gate.
    public static func installation(_ layout: TableLayout) -> Transaction {
        var transaction = Transaction([.createTable(name)])
        for set in sets { transaction.append(.createSet(table: name, set)) }
        for chain in chains { transaction.append(.createChain(table: name, chain)) }
        for chain in chains { transaction.append(.flushChain(table: name, chain: chain.name)) }
        for (chain, rule) in rules(layout) {
            transaction.append(.appendRule(table: name, chain: chain, rule))
        }
        transaction.changes +=
            replaceManaged(layout.managedServices, forwarded: layout.forwardedServices)
            + replaceAlwaysAllowed(layout.alwaysAllowed)
        return transaction
    }

    /// The one transaction that replaces whatever the kernel holds under this table's name with the table for
    /// `layout` and exactly `elements`: create (in case it is missing), delete (with everything in it: foreign
    /// chains, a dormant flag, another layout), create again. Packets see the old table until the commit, the new
    /// one after it, never none. Elements go in key order, so the same state always makes the same transaction.
    public static func replacement(_ layout: TableLayout, elements: [AccessKey: MonotonicInstant]) -> Transaction {
        var transaction = Transaction([.createTable(name), .deleteTable(name)])
        transaction.changes += installation(layout).changes
        var bySet: [SetDefinition: [GrantElement]] = [:]
        for (key, deadline) in elements {
            bySet[grantSet(for: key), default: []].append(GrantElement(key: key, deadline: deadline))
        }
        for set in grantSets {
            guard var items = bySet[set] else { continue }
            // Sorted so that a small batch encodes to the same bytes every time (golden tests); a large one is sent
            // as it comes, since sorting a million keys costs more than it could ever show.
            if items.count <= 4096 { items.sort { $0.key < $1.key } }
            transaction.append(.grantElements(.add, table: name, set: set, items))
        }
        return transaction
    }

    /// Replaces the managed ports of both hooks (flush and refill, atomic inside a transaction).
    public static func replaceManaged(_ services: [Service], forwarded forwardedServices: [Service] = []) -> [Change] {
        var changes: [Change] = []
        for (set, list) in [(managed, services), (forwarded, forwardedServices)] {
            let elements = Set(list).sorted().map { SetElement(key: ElementKey.protocolAndPort($0)) }
            changes += [.flushSet(table: name, set: set.name), .addElements(table: name, set: set, elements)]
        }
        return changes
    }

    /// Replaces the break-glass prefixes of both families (flush and refill).
    public static func replaceAlwaysAllowed(_ prefixes: [IPPrefix]) -> [Change] {
        var changes: [Change] = []
        for (family, set) in [(AddressFamily.ipv4, allow4), (.ipv6, allow6)] {
            changes.append(.flushSet(table: name, set: set.name))
            let ranges = AddressRange.merged(prefixes.filter { $0.family == family })
            changes.append(.addElements(table: name, set: set, ranges.flatMap(ElementKey.intervalElements)))
        }
        return changes
    }

    /// The set that holds a grant's element: exact-match for single addresses, interval for prefixes.
    public static func grantSet(for key: AccessKey) -> SetDefinition {
        switch (key.source.family, key.source.isSingleAddress) {
        case (.ipv4, true): return grants4
        case (.ipv4, false): return ranges4
        case (.ipv6, true): return grants6
        case (.ipv6, false): return ranges6
        }
    }

    /// The kernel element for a grant: for prefixes the exact start key and inclusive end key, which is also what
    /// deleting it must name (the kernel looks a pipapo element up by its start as a point).
    public static func element(for key: AccessKey, expiresAt: Date? = nil) -> SetElement {
        element(for: key, expiry: expiresAt.map(ElementExpiry.at) ?? .never)
    }

    /// Writes a grant element's key (or, for a prefix, its inclusive key end) into `buffer`, which has room for 24
    /// bytes, without allocating: how the encoder writes a million of them.
    ///
    /// - Returns: the key's length.
    public static func writeKey(of key: AccessKey, end: Bool, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        ElementKey.writeAccess(end ? key.source.lastAddress : key.source.network, key.service, into: buffer)
    }

    /// The kernel element for a grant that ends at a monotonic deadline.
    public static func element(for key: AccessKey, deadline: MonotonicInstant) -> SetElement {
        element(for: key, expiry: .deadline(deadline))
    }

    static func element(for key: AccessKey, expiry: ElementExpiry) -> SetElement {
        let start = ElementKey.access(address: key.source.network, key.service)
        let end = key.source.isSingleAddress ? nil : ElementKey.access(address: key.source.lastAddress, key.service)
        return SetElement(key: start, keyEnd: end, expiry: expiry)
    }

    /// Reads a grant element back, or nil if it is not one drawbridge could have written (a hand-added range that is
    /// not a CIDR prefix, a protocol other than tcp/udp).
    public static func accessKey(from element: ListedElement) -> AccessKey? {
        guard let (start, service) = ElementKey.parseAccess(element.key) else { return nil }
        guard let keyEnd = element.keyEnd, keyEnd != element.key else {
            return AccessKey(source: IPPrefix(address: start), service: service)
        }
        guard let (end, endService) = ElementKey.parseAccess(keyEnd), endService == service,
            let prefix = IPPrefix(spanning: start, end)
        else { return nil }
        return AccessKey(source: prefix, service: service)
    }

    /// The table in nft syntax: exactly rules/drawbridge.nft for keep-sessions with no elements; with a policy's
    /// managed ports and break-glass prefixes, what `nft list table inet drawbridge` shows before any grant.
    public static func ruleset(
        mode: SessionMode, managedServices: [Service] = [], alwaysAllowed: [IPPrefix] = [], knock: KnockRule? = nil,
        forwardedServices: [Service] = []
    ) -> String {
        var elements: [String: [String]] = [
            managed.name: Set(managedServices).sorted().map { "\($0.transport.rawValue) . \($0.port)" },
            forwarded.name: Set(forwardedServices).sorted().map { "\($0.transport.rawValue) . \($0.port)" },
        ]
        for (family, set) in [(AddressFamily.ipv4, allow4), (.ipv6, allow6)] {
            elements[set.name] = AddressRange.merged(alwaysAllowed.filter { $0.family == family }).map(\.nftText)
        }
        var text = "table inet \(name) {\n"
        for set in sets {
            text += "\tset \(set.name) {\n\t\ttype \(set.keyTypes.map(\.nftName).joined(separator: " . "))\n"
            let flags = (set.interval ? ["interval"] : []) + (set.timeout ? ["timeout"] : [])
            if !flags.isEmpty { text += "\t\tflags \(flags.joined(separator: ","))\n" }
            if let items = elements[set.name], !items.isEmpty {
                text += "\t\telements = { \(items.joined(separator: ", ")) }\n"
            }
            text += "\t}\n\n"
        }
        let all = rules(
            mode: mode, managedServices: managedServices, knock: knock, forwardedServices: forwardedServices)
        for chain in chains {
            text += "\tchain \(chain.name) {\n"
            if let base = chain.base {
                let priority =
                    base.priority == 0 ? "filter" : "filter \(base.priority < 0 ? "-" : "+") \(abs(base.priority))"
                text +=
                    "\t\ttype filter hook \(base.hook.name) priority \(priority); policy "
                    + "\(base.acceptByDefault ? "accept" : "drop");\n"
            }
            for (_, rule) in all.filter({ $0.chain == chain.name }) {
                text += "\t\t\(rule.nftText)\n"
            }
            text += "\t}\n" + (chain.name == chains.last?.name ? "" : "\n")
        }
        return text + "}\n"
    }
}

extension SetKeyType {
    var nftName: String {
        switch self {
        case .ipv4Address: return "ipv4_addr"
        case .ipv6Address: return "ipv6_addr"
        case .inetProtocol: return "inet_proto"
        case .inetService: return "inet_service"
        }
    }
}

extension RuleDefinition {
    /// The rule as `nft list` prints it.
    var nftText: String {
        func verdictText(_ verdict: Verdict) -> String {
            switch verdict {
            case .accept: return "accept"
            case .drop: return "drop"
            case .jump(let chain): return "jump \(chain)"
            case .goto(let chain): return "goto \(chain)"
            }
        }
        switch self {
        case .lookup(let selectors, let set, let verdict, let transport):
            let names = selectors.map { selector in
                switch selector {
                case .ipv4Source: return "ip saddr"
                case .ipv6Source: return "ip6 saddr"
                case .transportProtocol: return "meta l4proto"
                case .destinationPort: return "th dport"
                case .originalDestinationPort: return "ct original proto-dst"
                }
            }
            let condition = transport.map { "meta l4proto \($0.rawValue) " } ?? ""
            return "\(condition)\(names.joined(separator: " . ")) @\(set) \(verdictText(verdict))"
        case .loopbackInterface(let verdict):
            return "iif \"lo\" \(verdictText(verdict))"
        case .establishedOrRelated(let verdict):
            return "ct state established,related \(verdictText(verdict))"
        case .counted(let verdict):
            return "counter \(verdictText(verdict))"
        case .portCounter(let service, let verdict, let original):
            let match =
                original
                ? "meta l4proto \(service.transport.rawValue) ct original proto-dst \(service.port)"
                : "\(service.transport.rawValue) dport \(service.port)"
            return "\(match) counter \(verdictText(verdict))"
        case .knock(let port, let group, let rate):
            // nft leaves out a packet limit's burst when it is the default 5.
            return "udp dport \(port) limit rate \(rate)/second log group \(group) drop"
        }
    }
}

/// Byte layouts of set keys: every field in network order, padded to a 4-byte register.
enum ElementKey {
    static func protocolAndPort(_ service: Service) -> [UInt8] {
        [service.transport.number, 0, 0, 0, UInt8(service.port >> 8), UInt8(service.port & 0xff), 0, 0]
    }

    static func access(address: IPAddress, _ service: Service) -> [UInt8] {
        address.bytes + protocolAndPort(service)
    }

    /// Writes the key of `address . protocol . port` into `buffer` (room for 24 bytes) without allocating.
    ///
    /// - Returns: the key's length, 12 or 24.
    static func writeAccess(_ address: IPAddress, _ service: Service, into buffer: UnsafeMutableRawBufferPointer)
        -> Int
    {
        var offset = 0
        switch address {
        case .v4(let value):
            buffer.storeBytes(of: value.bigEndian, toByteOffset: 0, as: UInt32.self)
            offset = 4
        case .v6(let high, let low):
            buffer.storeBytes(of: high.bigEndian, toByteOffset: 0, as: UInt64.self)
            buffer.storeBytes(of: low.bigEndian, toByteOffset: 8, as: UInt64.self)
            offset = 16
        }
        // Protocol and port each in a 4-byte register: [proto, 0, 0, 0, port high, port low, 0, 0].
        for index in 0..<8 { buffer[offset + index] = 0 }
        buffer[offset] = service.transport.number
        buffer[offset + 4] = UInt8(service.port >> 8)
        buffer[offset + 5] = UInt8(service.port & 0xff)
        return offset + 8
    }

    static func parseAccess(_ key: [UInt8]) -> (IPAddress, Service)? {
        guard key.count == 12 || key.count == 24 else { return nil }
        let addressLength = key.count - 8
        guard let address = IPAddress(bytes: key[0..<addressLength]),
            let transport = TransportProtocol(number: key[addressLength])
        else { return nil }
        let port = UInt16(key[addressLength + 4]) << 8 | UInt16(key[addressLength + 5])
        return (address, Service(port: port, transport: transport))
    }

    /// A range in a single-field interval set, in the kernel's classic encoding: the start, then the first address
    /// after the range flagged as an interval end (omitted when the range runs to the last address).
    static func intervalElements(_ range: AddressRange) -> [SetElement] {
        var elements = [SetElement(key: range.first.bytes)]
        if let after = range.last.successor {
            elements.append(SetElement(key: after.bytes, isIntervalEnd: true))
        }
        return elements
    }
}

/// An inclusive range of addresses of one family.
struct AddressRange: Equatable {
    var first: IPAddress
    var last: IPAddress

    /// `198.51.100.0/24` when the range is a prefix, `192.0.2.10` for one address, `a-b` otherwise.
    var nftText: String {
        if first == last { return first.description }
        if let prefix = IPPrefix(spanning: first, last) { return prefix.description }
        return "\(first)-\(last)"
    }

    /// Merges prefixes into the fewest disjoint, non-adjacent ranges (the kernel refuses overlapping intervals).
    static func merged(_ prefixes: [IPPrefix]) -> [AddressRange] {
        let sorted = prefixes.map { AddressRange(first: $0.network, last: $0.lastAddress) }.sorted {
            $0.first < $1.first
        }
        var result: [AddressRange] = []
        for range in sorted {
            if var previous = result.last, previous.last.successor.map({ range.first <= $0 }) ?? true {
                if range.last > previous.last { previous.last = range.last }
                result[result.count - 1] = previous
            } else {
                result.append(range)
            }
        }
        return result
    }
}

extension IPAddress {
    /// The next address, or nil after the last one of the family.
    var successor: IPAddress? {
        switch self {
        case .v4(let value):
            return value == .max ? nil : .v4(value + 1)
        case .v6(let high, let low):
            if low != .max { return .v6(high: high, low: low + 1) }
            return high == .max ? nil : .v6(high: high + 1, low: 0)
        }
    }
}

extension IPPrefix {
    /// The prefix whose first and last addresses are exactly these, or nil if they do not bound a CIDR prefix.
    init?(spanning first: IPAddress, _ last: IPAddress) {
        guard first.family == last.family else { return nil }
        for length in 0...first.family.bitWidth {
            if let prefix = try? IPPrefix(network: first, length: length), prefix.lastAddress == last {
                self = prefix
                return
            }
        }
        return nil
    }
}

/// One managed port's packets and bytes as the table's rules count them: dropped without a grant (its rule at the
/// end of `gate`), and accepted by a grant or break-glass prefix (its rule in `granted`; packets of connections
/// already open are accepted before the gate and not counted).
public struct PortCounts: Sendable, Equatable {
    public var droppedPackets: UInt64 = 0
    public var droppedBytes: UInt64 = 0
    public var acceptedPackets: UInt64 = 0
    public var acceptedBytes: UInt64 = 0

    public init(droppedPackets: UInt64 = 0, droppedBytes: UInt64 = 0, acceptedPackets: UInt64 = 0, acceptedBytes: UInt64 = 0) {
        self.droppedPackets = droppedPackets
        self.droppedBytes = droppedBytes
        self.acceptedPackets = acceptedPackets
        self.acceptedBytes = acceptedBytes
    }

    /// What was counted between two readings of the same rules (`lhs` the later).
    public static func - (lhs: PortCounts, rhs: PortCounts) -> PortCounts {
        PortCounts(
            droppedPackets: lhs.droppedPackets &- rhs.droppedPackets, droppedBytes: lhs.droppedBytes &- rhs.droppedBytes,
            acceptedPackets: lhs.acceptedPackets &- rhs.acceptedPackets,
            acceptedBytes: lhs.acceptedBytes &- rhs.acceptedBytes)
    }

    public static func + (lhs: PortCounts, rhs: PortCounts) -> PortCounts {
        PortCounts(
            droppedPackets: lhs.droppedPackets &+ rhs.droppedPackets, droppedBytes: lhs.droppedBytes &+ rhs.droppedBytes,
            acceptedPackets: lhs.acceptedPackets &+ rhs.acceptedPackets,
            acceptedBytes: lhs.acceptedBytes &+ rhs.acceptedBytes)
    }
}
