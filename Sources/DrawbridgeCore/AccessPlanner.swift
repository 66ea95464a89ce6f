/// What the kernel should hold for one element: present until a deadline, or absent.
public struct ElementTarget: Hashable, Sendable, CustomStringConvertible {
    public var key: AccessKey
    /// Nil: the kernel should not hold the element.
    public var deadline: MonotonicInstant?

    public init(key: AccessKey, deadline: MonotonicInstant?) {
        self.key = key
        self.deadline = deadline
    }

    public var description: String { "\(key) -> \(deadline.map { "\($0)" } ?? "absent")" }
}

/// Turns grants into the elements the kernel should hold, a few at a time.
///
/// Single addresses (/32, /128) live in exact-match sets: an element there is the latest deadline of the grants for
/// it. Prefixes live in interval sets, which refuse overlapping elements, and two grants may well overlap
/// (`198.51.100.0/24` for an hour and `198.51.100.7/32` … or `/25` for a day). For each service and family the planner
/// keeps every address's latest deadline and nothing more:
/// - a prefix inside a wider one that lasts at least as long adds nothing and gets no element;
/// - a wider prefix that ends sooner than one inside it is split into the pieces around the inner one, so neither
///   grant is cut short and no address gets more time than some grant gave it.
///
/// Prefixes are kept sorted, so a change re-plans only the outermost prefix that contains it (a sweep over that
/// region, O(k log n) for k changed prefixes when regions are small) instead of comparing every prefix with every
/// other.
public struct AccessPlanner: Sendable {
    private var layers: [LayerKey: PrefixLayer] = [:]

    public init() {}

    private struct LayerKey: Hashable, Sendable {
        var service: Service
        var family: AddressFamily
    }

    /// Re-plans the elements that grants for `keys` decide, after the book changed for them.
    ///
    /// - Returns: a target for every element whose desired state may have changed (some may equal what the
    ///   kernel already holds; the kernel side skips those).
    public mutating func update(
        _ keys: some Sequence<AccessKey>, book: GrantBook, now: MonotonicInstant
    ) -> [ElementTarget] {
        var targets: [ElementTarget] = []
        var prefixesByLayer: [LayerKey: [IPPrefix]] = [:]
        for key in keys {
            if key.source.isSingleAddress {
                targets.append(ElementTarget(key: key, deadline: book.deadline(for: key, now: now)))
            } else {
                prefixesByLayer[LayerKey(service: key.service, family: key.source.family), default: []]
                    .append(key.source)
            }
        }
        for (layerKey, prefixes) in prefixesByLayer {
            // Taken out of the dictionary while it changes: mutating a copy while the dictionary still held the
            // layer made Swift copy all of it (every prefix and element) on every change.
            var layer = layers.removeValue(forKey: layerKey) ?? PrefixLayer()
            for prefix in prefixes {
                let value = book.deadline(for: AccessKey(source: prefix, service: layerKey.service), now: now)
                let region = layer.outermost(containing: prefix)
                layer.set(prefix, value)
                for (piece, deadline) in layer.replan(region, now: now) {
                    targets.append(ElementTarget(key: AccessKey(source: piece, service: layerKey.service), deadline: deadline))
                }
            }
            if !layer.isEmpty { layers[layerKey] = layer }
        }
        return targets
    }

    /// Forgets everything and plans every grant of the book (after loading it).
    public mutating func reset(book: GrantBook, now: MonotonicInstant) {
        layers = [:]
        let prefixes = book.accessKeys.filter { !$0.source.isSingleAddress }
        _ = update(prefixes, book: book, now: now)
    }

    /// Every element the kernel should hold now, with its deadline: for rebuilding the table in one transaction.
    public func elements(book: GrantBook, now: MonotonicInstant) -> [AccessKey: MonotonicInstant] {
        var result: [AccessKey: MonotonicInstant] = [:]
        result.reserveCapacity(book.count)
        for key in book.accessKeys where key.source.isSingleAddress {
            if let deadline = book.deadline(for: key, now: now) { result[key] = deadline }
        }
        for (layerKey, layer) in layers {
            for (piece, deadline) in layer.emitted where deadline > now {
                result[AccessKey(source: piece, service: layerKey.service)] = deadline
            }
        }
        return result
    }

    /// The prefix elements the planner has given out, for tests.
    public func prefixElements() -> [AccessKey: MonotonicInstant] {
        var result: [AccessKey: MonotonicInstant] = [:]
        for (layerKey, layer) in layers {
            for (piece, deadline) in layer.emitted { result[AccessKey(source: piece, service: layerKey.service)] = deadline }
        }
        return result
    }
}

/// The prefix grants of one service and family, and the disjoint elements planned for them.
struct PrefixLayer: Sendable {
    typealias Item = (prefix: IPPrefix, deadline: MonotonicInstant)
    /// Each granted prefix with its latest deadline, sorted by (network, length): a prefix comes right before the
    /// prefixes inside it.
    private(set) var items: [Item] = []
    private var values: [IPPrefix: MonotonicInstant] = [:]
    /// How many items have each length, to find containing items without trying every length.
    private var lengths: [Int: Int] = [:]
    /// The planned elements, disjoint, sorted by network.
    private(set) var emitted: [Item] = []

    var isEmpty: Bool { items.isEmpty && emitted.isEmpty }

    /// The outermost granted prefix that contains `prefix`, or `prefix` itself: the region a change re-plans.
    func outermost(containing prefix: IPPrefix) -> IPPrefix {
        for length in lengths.keys.sorted() where length < prefix.length {
            let candidate = IPPrefix(unchecked: prefix.network.masked(to: length), length: length)
            if values[candidate] != nil { return candidate }
        }
        return prefix
    }

    private func itemIndex(of prefix: IPPrefix) -> Int {
        items.partitioningIndex { ($0.prefix.network, $0.prefix.length) >= (prefix.network, prefix.length) }
    }

    /// Sets (or with nil removes) a prefix's deadline.
    mutating func set(_ prefix: IPPrefix, _ deadline: MonotonicInstant?) {
        let index = itemIndex(of: prefix)
        let present = index < items.count && items[index].prefix == prefix
        switch (present, deadline) {
        case (true, let deadline?):
            items[index].deadline = deadline
            values[prefix] = deadline
        case (true, nil):
            items.remove(at: index)
            values[prefix] = nil
            lengths[prefix.length]! -= 1
            if lengths[prefix.length] == 0 { lengths[prefix.length] = nil }
        case (false, let deadline?):
            items.insert((prefix, deadline), at: index)
            values[prefix] = deadline
            lengths[prefix.length, default: 0] += 1
        case (false, nil):
            break
        }
    }

    /// Plans `region` again and replaces its elements.
    ///
    /// - Returns: the elements whose state changed: new or with another deadline (a deadline), or gone (nil).
    mutating func replan(_ region: IPPrefix, now: MonotonicInstant) -> [(IPPrefix, MonotonicInstant?)] {
        let last = region.lastAddress
        let itemStart = items.partitioningIndex { $0.prefix.network >= region.network }
        let itemEnd = items.partitioningIndex { $0.prefix.network > last }
        let planned = Self.plan(region, items[itemStart..<itemEnd], now: now)

        let emittedStart = emitted.partitioningIndex { $0.prefix.network >= region.network }
        let emittedEnd = emitted.partitioningIndex { $0.prefix.network > last }
        var old: [IPPrefix: MonotonicInstant] = [:]
        for item in emitted[emittedStart..<emittedEnd] { old[item.prefix] = item.deadline }
        emitted.replaceSubrange(emittedStart..<emittedEnd, with: planned)

        var changes: [(IPPrefix, MonotonicInstant?)] = []
        for item in planned {
            if old.removeValue(forKey: item.prefix) != item.deadline { changes.append((item.prefix, item.deadline)) }
        }
        for (prefix, _) in old { changes.append((prefix, nil)) }
        return changes
    }

    /// The disjoint elements for the items inside `region`, sorted by network: every address gets the latest
    /// deadline of the live items that contain it, and nothing else.
    static func plan(_ region: IPPrefix, _ items: ArraySlice<Item>, now: MonotonicInstant) -> [Item] {
        var output: [Item] = []
        func visit(_ prefix: IPPrefix, _ inherited: MonotonicInstant?, _ slice: ArraySlice<Item>) {
            var current = inherited
            var rest = slice
            if let first = rest.first, first.prefix == prefix {
                if first.deadline > now { current = max(current ?? first.deadline, first.deadline) }
                rest = rest.dropFirst()
            }
            let floor = max(current ?? now, now)
            let live = rest.filter { $0.deadline > floor }
            guard !live.isEmpty else {
                if let current { output.append((prefix, current)) }
                return
            }
            if current == nil {
                // Nothing to give the addresses around the live items: jump to the smallest prefix that holds them
                // all instead of splitting one bit at a time.
                let covering = IPPrefix.covering(live.first!.prefix.network, live.map(\.prefix.lastAddress).max()!)
                if covering.length > prefix.length {
                    let start = rest.partitioningIndex { $0.prefix.network >= covering.network }
                    let coveringLast = covering.lastAddress
                    let end = rest.partitioningIndex { $0.prefix.network > coveringLast }
                    visit(covering, nil, rest[start..<end])
                    return
                }
            }
            let (lower, upper) = prefix.halves()
            let split = rest.partitioningIndex { $0.prefix.network >= upper.network }
            for (half, halfItems) in [(lower, rest[rest.startIndex..<split]), (upper, rest[split..<rest.endIndex])] {
                if halfItems.isEmpty {
                    if let current { output.append((half, current)) }
                } else {
                    visit(half, current, halfItems)
                }
            }
        }
        visit(region, nil, items)
        return output
    }
}

extension Collection {
    /// The first index whose element satisfies `predicate`, for a collection partitioned so that every element that
    /// does not satisfy it comes first (binary search).
    func partitioningIndex(where predicate: (Element) throws -> Bool) rethrows -> Index {
        var low = startIndex
        var count = self.count
        while count > 0 {
            let half = count / 2
            let middle = index(low, offsetBy: half)
            if try predicate(self[middle]) {
                count = half
            } else {
                low = index(after: middle)
                count -= half + 1
            }
        }
        return low
    }
}

extension IPPrefix {
    /// The two prefixes one bit longer that together make up this one.
    func halves() -> (IPPrefix, IPPrefix) {
        let length = self.length + 1
        let lower = IPPrefix(unchecked: network, length: length)
        let upperNetwork: IPAddress
        switch network {
        case .v4(let value):
            upperNetwork = .v4(value | (UInt32(1) << UInt32(32 - length)))
        case .v6(let high, let low):
            if length <= 64 {
                upperNetwork = .v6(high: high | (UInt64(1) << UInt64(64 - length)), low: low)
            } else {
                upperNetwork = .v6(high: high, low: low | (UInt64(1) << UInt64(128 - length)))
            }
        }
        return (lower, IPPrefix(unchecked: upperNetwork, length: length))
    }

    /// The smallest prefix that holds both addresses (of one family).
    static func covering(_ first: IPAddress, _ last: IPAddress) -> IPPrefix {
        let common: Int
        switch (first, last) {
        case (.v4(let a), .v4(let b)):
            common = (a ^ b).leadingZeroBitCount
        case (.v6(let ah, let al), .v6(let bh, let bl)):
            common = ah == bh ? 64 + (al ^ bl).leadingZeroBitCount : (ah ^ bh).leadingZeroBitCount
        default:
            common = 0
        }
        let length = min(common, first.family.bitWidth)
        return IPPrefix(unchecked: first.masked(to: length), length: length)
    }
}

/// What one kernel set element stands for: a source prefix allowed to reach one service.
public struct AccessKey: Hashable, Sendable, Comparable {
    public var source: IPPrefix
    public var service: Service

    public init(source: IPPrefix, service: Service) {
        self.source = source
        self.service = service
    }

    public static func < (lhs: AccessKey, rhs: AccessKey) -> Bool {
        (lhs.source, lhs.service) < (rhs.source, rhs.service)
    }
}

extension AccessKey: CustomStringConvertible {
    public var description: String { "\(source) . \(service.transport.rawValue) . \(service.port)" }
}
