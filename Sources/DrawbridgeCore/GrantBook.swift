import HeapModule

/// The grants the agent holds, from every origin: the desired state that the kernel is made to follow.
///
/// A value type with no I/O. Every change costs what it changes: grants are indexed by id, by the kernel elements
/// they stand for and by origin, and deadlines sit in a heap, so a grant, a revocation or an expiry never walks the
/// whole book. Each change returns the access keys whose desired element may have changed, for the planner.
///
/// Memory matters at a million grants: grants sit in an array of slots and every index holds 32-bit slot numbers
/// instead of copies of ids; identical port lists share one array.
public struct GrantBook: Sendable {
    private var slots: [Grant?] = []
    private var freeSlots: [Int32] = []
    private var slotOfID: [String: Int32] = [:]
    /// The grant that calls for each element; most elements have exactly one.
    private var contributor: [AccessKey: Int32] = [:]
    /// The other grants of the elements that have more than one.
    private var moreContributors: [AccessKey: [Int32]] = [:]
    /// The grants of each origin but local (files and controllers are read whole and compared).
    private var byOrigin: [GrantOrigin: Set<Int32>] = [:]
    /// Ids of file grants revoked by hand: the file still lists them, but they must not come back.
    public private(set) var revokedFileGrants: Set<String> = []
    /// Deadlines, soonest first; an entry whose slot now holds another deadline is stale and skipped.
    private var deadlines = Heap<DeadlineEntry>()
    /// One shared array per distinct list of ports.
    private var portLists: [[GrantedPort]: [GrantedPort]] = [:]
    /// How many grants open each port name, by kind of origin, kept by every change (status and metrics read it
    /// instead of walking a million grants).
    public private(set) var portCounts: [PortCount: Int] = [:]

    public struct PortCount: Hashable, Sendable {
        public var port: String
        /// ``GrantOrigin/kind``.
        public var origin: String

        public init(port: String, origin: String) {
            self.port = port
            self.origin = origin
        }
    }

    /// The list shared last: the grants of a file mostly have the same ports, and comparing is cheaper than hashing.
    private var lastPorts: [GrantedPort] = []

    public init() {}

    public var count: Int { slotOfID.count }
    public var isEmpty: Bool { slotOfID.isEmpty }

    public subscript(id: String) -> Grant? {
        guard let slot = slotOfID[id] else { return nil }
        return slots[Int(slot)]
    }

    /// Every grant, in no particular order.
    public var values: [Grant] { slots.compactMap { $0 } }

    /// The grants that satisfy `isIncluded`, without copying the others first.
    public func grants(where isIncluded: (Grant) -> Bool) -> [Grant] {
        var found: [Grant] = []
        for case let grant? in slots where isIncluded(grant) { found.append(grant) }
        return found
    }

    private struct DeadlineEntry: Comparable, Sendable {
        var deadline: MonotonicInstant
        var slot: Int32
        static func < (lhs: Self, rhs: Self) -> Bool { (lhs.deadline, lhs.slot) < (rhs.deadline, rhs.slot) }
    }

    /// Makes room for `count` more grants (before a large load), from `origin` when they share one.
    public mutating func reserveCapacity(_ additional: Int, origin: GrantOrigin? = nil) {
        guard additional > 0 else { return }
        slots.reserveCapacity(slots.count + additional)
        slotOfID.reserveCapacity(slotOfID.count + additional)
        contributor.reserveCapacity(contributor.count + additional)
        if let origin, origin != .local {
            byOrigin[origin, default: []].reserveCapacity((byOrigin[origin]?.count ?? 0) + additional)
        }
    }

    // MARK: Reading

    private func slots(for key: AccessKey) -> [Int32] {
        guard let first = contributor[key] else { return [] }
        return [first] + (moreContributors[key] ?? [])
    }

    /// The active grant that asking for `grant` again would extend: same origin, source, ports and requester.
    ///
    /// Another user asking for the same access gets a grant of their own (the kernel element takes the later
    /// deadline of the two), so nobody can take over, shorten or lengthen someone else's grant by asking.
    public func extendable(like grant: Grant, now: MonotonicInstant) -> Grant? {
        guard let key = grant.accessKeys.first else { return nil }
        for slot in slots(for: key) {
            guard let existing = slots[Int(slot)], existing.isActive(at: now), existing.origin == grant.origin,
                existing.source == grant.source, existing.ports == grant.ports, existing.uid == grant.uid,
                existing.requestedBy == grant.requestedBy
            else { continue }
            return existing
        }
        return nil
    }

    /// The latest deadline any active grant gives an element, or nil when none calls for it.
    public func deadline(for key: AccessKey, now: MonotonicInstant) -> MonotonicInstant? {
        guard let first = contributor[key] else { return nil }
        var latest: MonotonicInstant?
        if let grant = slots[Int(first)], grant.deadline > now { latest = grant.deadline }
        for slot in moreContributors[key] ?? [] {
            guard let grant = slots[Int(slot)], grant.deadline > now else { continue }
            latest = max(latest ?? grant.deadline, grant.deadline)
        }
        return latest
    }

    /// The grants that call for an element.
    public func grants(for key: AccessKey) -> [Grant] {
        slots(for: key).compactMap { slots[Int($0)] }
    }

    /// Every element some grant calls for.
    public var accessKeys: [AccessKey] { Array(contributor.keys) }

    /// The ids of the grants that came from `origin` (not kept for local grants: always empty for them).
    /// The ids of every grant from etcd (each key is an origin of its own).
    public var idsFromEtcd: [String] {
        var ids: [String] = []
        for (origin, members) in byOrigin {
            guard case .etcd = origin else { continue }
            ids += members.compactMap { slots[Int($0)]?.id }
        }
        return ids
    }

    public func ids(from origin: GrantOrigin) -> Set<String> {
        Set((byOrigin[origin] ?? []).compactMap { slots[Int($0)]?.id })
    }

    /// The origins other than local that grants came from.
    public var origins: [GrantOrigin] { byOrigin.compactMap { $0.value.isEmpty ? nil : $0.key } }

    /// The soonest deadline among the grants, if any.
    public mutating func nextDeadline() -> MonotonicInstant? {
        while let top = deadlines.min {
            if slots[Int(top.slot)]?.deadline == top.deadline { return top.deadline }
            _ = deadlines.popMin()
        }
        return nil
    }

    /// Every grant, soonest expiry first.
    public var sorted: [Grant] {
        values.sorted { ($0.deadline, $0.id) < ($1.deadline, $1.id) }
    }

    // MARK: Changing

    /// Puts a grant in: a new one, or a new version of the grant with the same id.
    ///
    /// - Returns: the version it replaced, and the elements whose desired state may have changed.
    @discardableResult
    public mutating func put(_ grant: Grant) -> (previous: Grant?, changed: [AccessKey]) {
        var grant = grant
        if grant.ports == lastPorts {
            grant.ports = lastPorts
        } else if let shared = portLists[grant.ports] {
            grant.ports = shared
            lastPorts = shared
        } else {
            portLists[grant.ports] = grant.ports
            lastPorts = grant.ports
        }
        let keys = grant.accessKeys
        // One lookup that also claims a slot for a new id: a free slot or the next one (no existing id holds either).
        let candidate = freeSlots.last ?? Int32(slots.count)
        let slot = Self.value(&slotOfID[grant.id, default: candidate])
        count(grant, by: 1)
        if slot != candidate {
            let previous = slots[Int(slot)]!
            count(previous, by: -1)
            slots[Int(slot)] = grant
            var changed = keys
            if previous.source != grant.source || previous.ports != grant.ports {
                let oldKeys = previous.accessKeys
                for key in oldKeys { removeContributor(slot, from: key) }
                for key in keys { addContributor(slot, to: key) }
                changed = Array(Set(oldKeys + keys))
            }
            if previous.origin != grant.origin {
                removeOrigin(previous.origin, slot)
                addOrigin(grant.origin, slot)
            }
            if previous.deadline != grant.deadline {
                deadlines.insert(DeadlineEntry(deadline: grant.deadline, slot: slot))
                compactDeadlinesIfNeeded()
            }
            return (previous, changed)
        }
        if freeSlots.isEmpty {
            slots.append(grant)
        } else {
            freeSlots.removeLast()
            slots[Int(slot)] = grant
        }
        for key in keys { addContributor(slot, to: key) }
        addOrigin(grant.origin, slot)
        deadlines.insert(DeadlineEntry(deadline: grant.deadline, slot: slot))
        return (nil, keys)
    }

    private static func value(_ slot: inout Int32) -> Int32 { slot }

    private mutating func count(_ grant: Grant, by change: Int) {
        let origin = grant.origin.kind
        for port in grant.ports {
            let key = PortCount(port: port.name, origin: origin)
            let total = (portCounts[key] ?? 0) + change
            portCounts[key] = total == 0 ? nil : total
        }
    }

    /// Removes one grant.
    ///
    /// - Returns: the grant, and the elements whose desired state may have changed.
    @discardableResult
    public mutating func remove(id: String) -> (removed: Grant?, changed: [AccessKey]) {
        guard let slot = slotOfID.removeValue(forKey: id), let grant = slots[Int(slot)] else { return (nil, []) }
        slots[Int(slot)] = nil
        freeSlots.append(slot)
        count(grant, by: -1)
        let keys = grant.accessKeys
        for key in keys { removeContributor(slot, from: key) }
        removeOrigin(grant.origin, slot)
        return (grant, keys)
    }

    /// Removes and returns the grants whose deadline has passed, soonest first.
    public mutating func removeExpired(now: MonotonicInstant) -> [(grant: Grant, changed: [AccessKey])] {
        var expired: [(Grant, [AccessKey])] = []
        while let top = deadlines.min, top.deadline <= now {
            _ = deadlines.popMin()
            guard let grant = slots[Int(top.slot)], grant.deadline == top.deadline else { continue }
            let (removed, changed) = remove(id: grant.id)
            if let removed { expired.append((removed, changed)) }
        }
        return expired
    }

    /// Remembers that a file grant was revoked by hand, so the file cannot bring it back.
    public mutating func tombstone(_ id: String) {
        revokedFileGrants.insert(id)
    }

    /// Forgets a revocation (the file no longer lists the entry, so a new entry with that id is a new grant).
    public mutating func forgetTombstone(_ id: String) {
        revokedFileGrants.remove(id)
    }

    private mutating func addOrigin(_ origin: GrantOrigin, _ slot: Int32) {
        guard origin != .local else { return }
        byOrigin[origin, default: []].insert(slot)
    }

    private mutating func removeOrigin(_ origin: GrantOrigin, _ slot: Int32) {
        guard origin != .local else { return }
        byOrigin[origin]?.remove(slot)
        if byOrigin[origin]?.isEmpty == true { byOrigin[origin] = nil }
    }

    private mutating func addContributor(_ slot: Int32, to key: AccessKey) {
        // One lookup: the element's first contributor, which is `slot` itself when the element is new.
        let first = Self.value(&contributor[key, default: slot])
        guard first != slot, moreContributors[key]?.contains(slot) != true else { return }
        moreContributors[key, default: []].append(slot)
    }

    private mutating func removeContributor(_ slot: Int32, from key: AccessKey) {
        guard let first = contributor[key] else { return }
        if first == slot {
            if var others = moreContributors[key], !others.isEmpty {
                contributor[key] = others.removeFirst()
                moreContributors[key] = others.isEmpty ? nil : others
            } else {
                contributor[key] = nil
            }
        } else if var others = moreContributors[key] {
            others.removeAll { $0 == slot }
            moreContributors[key] = others.isEmpty ? nil : others
        }
    }

    /// Rebuilds the heap when stale entries (from extensions and revocations) outnumber the live ones.
    private mutating func compactDeadlinesIfNeeded() {
        guard deadlines.count > 2 * count + 1024 else { return }
        var entries: [DeadlineEntry] = []
        entries.reserveCapacity(count)
        for (index, grant) in slots.enumerated() {
            if let grant { entries.append(DeadlineEntry(deadline: grant.deadline, slot: Int32(index))) }
        }
        deadlines = Heap(entries)
    }

    /// File grant ids start with `f-` and a short digest of the file path, so revocations can be matched to files.
    public static func fileIdentifierPrefix(for path: String) -> String {
        "f-" + String(fnv1a("file:" + path) & 0xffff, radix: 16) + "-"
    }
}

/// FNV-1a, 64-bit: a stable digest for identifiers (not for security).
func fnv1a(_ text: String) -> UInt64 {
    fnv1a(text.utf8)
}

func fnv1a(_ bytes: some Sequence<UInt8>, continuing hash: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
    // A string's bytes are contiguous: walking them through a buffer is several times faster than through its view.
    if let digest = bytes.withContiguousStorageIfAvailable({ fnv1a(buffer: $0, continuing: hash) }) { return digest }
    var hash = hash
    for byte in bytes {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    return hash
}

private func fnv1a(buffer: UnsafeBufferPointer<UInt8>, continuing hash: UInt64) -> UInt64 {
    var hash = hash
    for byte in buffer {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    return hash
}

/// `prefix + String(value, radix: 16)`, written straight into one string's storage.
func lowercaseHex(_ value: UInt64, after prefix: String = "") -> String {
    let digits = max(1, (value.bitWidth - value.leadingZeroBitCount + 3) / 4)
    let written = prefix.utf8.withContiguousStorageIfAvailable { head in
        String(unsafeUninitializedCapacity: head.count + digits) { buffer in
            _ = buffer.initialize(fromContentsOf: head)
            var rest = value
            for position in stride(from: head.count + digits - 1, through: head.count, by: -1) {
                let digit = UInt8(truncatingIfNeeded: rest & 0xf)
                buffer[position] = digit < 10 ? 0x30 + digit : 0x57 + digit
                rest >>= 4
            }
            return head.count + digits
        }
    }
    return written ?? prefix + String(value, radix: 16)
}
