import CNftnl
import DrawbridgeCore
import Glibc
import HostSystem
import NetfilterModel

/// The one owner of the drawbridge table in the kernel: builds it, changes its grant elements a few at a time, and
/// checks it.
///
/// It keeps a view of the grant elements it wrote (key and deadline), so a change is computed against that view and
/// costs what it changes; the kernel is never dumped to decide anything. When the view cannot be trusted (at start,
/// after another program changed the table, after a failed commit whose outcome is unknown) the whole table is
/// rebuilt from the desired state in one transaction: delete and create again, atomically, with every grant element
/// — packets see the old table until the commit and the complete new one after it.
///
/// Correct on the kernels production hosts run (5.10 and later):
/// - an expiry is changed by delete + add in one transaction, because before Linux 6.12 re-adding an existing
///   element silently keeps its old expiry;
/// - deletions use the idempotent DESTROYSETELEM where the kernel has it (6.3+); elsewhere deletions of elements
///   close to their expiry go in a second transaction, so an element that expires in between never aborts the rest.
///
/// Not thread-safe: give it one owner.
public final class TableDriver {
    public let connection: NetfilterConnection
    /// Whether the kernel accepts NFT_MSG_DESTROYSETELEM (found by `probe`, or forced by tests).
    public private(set) var canDestroyElements: Bool
    /// The grant elements this driver believes the kernel holds, with their deadlines.
    public private(set) var view: [AccessKey: MonotonicInstant] = [:]

    /// - Parameter canDestroyElements: nil to ask the kernel (`probe()` after the table exists); false forces the
    ///   pre-6.3 delete path (tests prove it on new kernels).
    public init(connection: NetfilterConnection, canDestroyElements: Bool? = nil) {
        self.connection = connection
        self.canDestroyElements = canDestroyElements ?? false
        probeWanted = canDestroyElements == nil
    }

    private var probeWanted: Bool

    // MARK: Whole table

    /// Deletes the table (whatever it holds) and creates it again with `elements`, in one transaction.
    @discardableResult
    public func rebuild(
        _ layout: TableLayout, elements: [AccessKey: MonotonicInstant]
    ) throws(NetfilterError) -> CommitReport {
        let now = SystemClock.monotonic()
        let live = elements.filter { $0.value > now }
        let report = try connection.commit(DrawbridgeTable.replacement(layout, elements: live))
        view = live
        if probeWanted {
            canDestroyElements = try probeDestroySupport()
            probeWanted = false
        }
        return report
    }

    /// Rewrites the rules and fixed sets for a new policy in one transaction (creating the table if it is missing),
    /// keeping every grant element: a reload never flushes grants.
    @discardableResult
    public func install(_ layout: TableLayout) throws(NetfilterError) -> CommitReport {
        let report = try connection.commit(DrawbridgeTable.installation(layout))
        if probeWanted {
            canDestroyElements = try probeDestroySupport()
            probeWanted = false
        }
        return report
    }

    /// Asks the kernel to destroy an element that cannot exist (0.0.0.0 . 0 . 0 in grants4): 6.3+ answers with
    /// success, older kernels reject the unknown message type.
    private func probeDestroySupport() throws(NetfilterError) -> Bool {
        let probe = SetElement(key: [UInt8](repeating: 0, count: 12))
        do {
            try connection.commit(
                Transaction([.destroyElements(table: DrawbridgeTable.name, set: DrawbridgeTable.grants4, [probe])]))
            return true
        } catch  where error.code == .invalidRequest || error.code == .other {
            return false
        }
    }

    /// Compares the table with `layout`; see ``DrawbridgeTable/verify(_:on:)``.
    public func verify(_ layout: TableLayout) throws(NetfilterError) -> [String] {
        try DrawbridgeTable.verify(layout, on: connection)
    }

    /// Each managed port's drops and accepts as the table counts them; see ``DrawbridgeTable/portCounts(_:on:)``.
    public func portCounts(_ layout: TableLayout) throws(NetfilterError) -> [Service: PortCounts]? {
        try DrawbridgeTable.portCounts(layout, on: connection)
    }

    // MARK: Grant elements

    /// What applying targets did.
    public struct ApplyReport: Sendable {
        public var added = 0
        public var refreshed = 0
        public var deleted = 0
        /// Transactions committed (0 when nothing needed changing).
        public var transactions = 0
        public var messages = 0
        public var bytes = 0
    }

    /// Makes the kernel follow `targets` (later targets for a key win), one transaction for all of them.
    ///
    /// On failure the view is as it was before the failed transaction, and the error says what happened; after
    /// `.outcomeUnknown`, `.tableMissing` or `.objectMissing` the caller rebuilds.
    @discardableResult
    public func apply(_ targets: [ElementTarget]) throws(NetfilterError) -> ApplyReport {
        var wanted: [AccessKey: MonotonicInstant?] = [:]
        for target in targets { wanted[target.key] = target.deadline }
        let now = SystemClock.monotonic()
        var additions: [(AccessKey, MonotonicInstant)] = []
        var refreshes: [(AccessKey, MonotonicInstant)] = []
        var deletions: [AccessKey] = []
        for (key, deadline) in wanted {
            let current = view[key].flatMap { $0 > now ? $0 : nil }
            switch (current, deadline) {
            case (nil, let deadline?) where deadline > now:
                additions.append((key, deadline))
            case (let current?, let deadline?) where deadline > now:
                if current != deadline { refreshes.append((key, deadline)) }
            case (.some, _):
                deletions.append(key)
            default:
                view[key] = nil  // absent, or already expired in the kernel by itself
            }
        }
        var report = ApplyReport()
        guard !additions.isEmpty || !refreshes.isEmpty || !deletions.isEmpty else { return report }

        // Before 6.3, a strict delete of an element that expired a moment ago aborts the whole transaction: those
        // close to expiry go last, on their own.
        var late = (refreshes: [(AccessKey, MonotonicInstant)](), deletions: [AccessKey]())
        if !canDestroyElements {
            let soon = now.advanced(by: Self.expiryMargin)
            late.refreshes = refreshes.filter { view[$0.0]! < soon }
            late.deletions = deletions.filter { view[$0]! < soon }
            refreshes.removeAll { view[$0.0]! < soon }
            deletions.removeAll { view[$0]! < soon }
        }
        let main = transaction(additions: additions, refreshes: refreshes, deletions: deletions)
        if !main.isEmpty {
            let committed = try connection.commit(main)
            report.transactions += committed.transactions
            report.messages += committed.messages
            report.bytes += committed.bytes
            for (key, deadline) in additions + refreshes { view[key] = deadline }
            for key in deletions { view[key] = nil }
            report.added += additions.count
            report.refreshed += refreshes.count
            report.deleted += deletions.count
        }
        guard !late.refreshes.isEmpty || !late.deletions.isEmpty else { return report }
        var lateAdditions: [(AccessKey, MonotonicInstant)] = []
        var failure = NetfilterError(.elementAbsent, operation: "delete elements")
        for _ in 0..<4 {
            do {
                let committed = try connection.commit(
                    transaction(additions: lateAdditions, refreshes: late.refreshes, deletions: late.deletions))
                report.transactions += committed.transactions
                report.messages += committed.messages
                report.bytes += committed.bytes
                for (key, deadline) in lateAdditions + late.refreshes { view[key] = deadline }
                for key in late.deletions { view[key] = nil }
                report.added += lateAdditions.count
                report.refreshed += late.refreshes.count
                report.deleted += late.deletions.count
                return report
            } catch {
                failure = error
            }
            guard failure.code == .elementAbsent else { throw failure }
            // Drop what the kernel no longer has: a refresh of a vanished element becomes an addition.
            var stillRefreshing: [(AccessKey, MonotonicInstant)] = []
            for (key, deadline) in late.refreshes {
                if try isPresent(key) {
                    stillRefreshing.append((key, deadline))
                } else {
                    lateAdditions.append((key, deadline))
                }
            }
            var stillDeleting: [AccessKey] = []
            for key in late.deletions {
                if try isPresent(key) { stillDeleting.append(key) } else { view[key] = nil }
            }
            late = (stillRefreshing, stillDeleting)
        }
        throw failure
    }

    /// How close to its expiry an element must be for a strict delete of it to risk ENOENT: its clock in the
    /// kernel and ours differ by milliseconds, the margin is generous.
    public static let expiryMargin: Double = 5

    private func isPresent(_ key: AccessKey) throws(NetfilterError) -> Bool {
        do {
            let found = try connection.getElements(
                table: DrawbridgeTable.name, set: DrawbridgeTable.grantSet(for: key).name,
                [DrawbridgeTable.element(for: key)])
            return !found.isEmpty
        } catch  where error.code == .objectMissing || error.errno == ENOENT {
            return false
        }
    }

    /// One transaction: deletions first, so a refreshed or re-split prefix never overlaps its old self, then
    /// additions.
    private func transaction(
        additions: [(AccessKey, MonotonicInstant)], refreshes: [(AccessKey, MonotonicInstant)], deletions: [AccessKey]
    ) -> Transaction {
        var removals: [SetDefinition: [GrantElement]] = [:]
        var inserts: [SetDefinition: [GrantElement]] = [:]
        for key in deletions + refreshes.map(\.0) {
            removals[DrawbridgeTable.grantSet(for: key), default: []].append(GrantElement(key: key))
        }
        for (key, deadline) in refreshes + additions {
            inserts[DrawbridgeTable.grantSet(for: key), default: []].append(GrantElement(key: key, deadline: deadline))
        }
        var transaction = Transaction()
        for set in DrawbridgeTable.grantSets {
            if let elements = removals[set] {
                transaction.append(
                    .grantElements(canDestroyElements ? .destroy : .delete, table: DrawbridgeTable.name, set: set, elements))
            }
        }
        for set in DrawbridgeTable.grantSets {
            if let elements = inserts[set] {
                transaction.append(.grantElements(.add, table: DrawbridgeTable.name, set: set, elements))
            }
        }
        return transaction
    }

    // MARK: Reading

    /// Seconds the kernel still gives each element, read with point queries (no dump), in one request per set and
    /// 32 elements at a time; nil for an element it does not hold.
    public func remaining(_ keys: [AccessKey]) throws(NetfilterError) -> [AccessKey: Double] {
        var result: [AccessKey: Double] = [:]
        var bySet: [SetDefinition: [AccessKey]] = [:]
        for key in Set(keys) { bySet[DrawbridgeTable.grantSet(for: key), default: []].append(key) }
        for (set, setKeys) in bySet {
            var index = 0
            while index < setKeys.count {
                // 32 replies fit even a receive buffer that cannot be raised past the default rmem_max (208 KiB).
                let chunk = Array(setKeys[index..<min(index + 32, setKeys.count)])
                index += chunk.count
                // A query for a missing element fails the whole request (ENOENT): fall back to one at a time.
                do {
                    let found = try connection.getElements(
                        table: DrawbridgeTable.name, set: set.name, chunk.map { DrawbridgeTable.element(for: $0) })
                    for element in found {
                        if let key = DrawbridgeTable.accessKey(from: element),
                            let milliseconds = element.remainingMilliseconds
                        {
                            result[key] = Double(milliseconds) / 1000
                        }
                    }
                } catch  where error.errno == ENOENT {
                    for key in chunk {
                        if let found = try? connection.getElements(
                            table: DrawbridgeTable.name, set: set.name, [DrawbridgeTable.element(for: key)]),
                            let milliseconds = found.first?.remainingMilliseconds
                        {
                            result[key] = Double(milliseconds) / 1000
                        }
                    }
                }
            }
        }
        return result
    }

    /// Takes what the kernel holds as the view, by dumping the grant sets (diagnostics and tests).
    public func resynchronize() throws(NetfilterError) {
        view = try readGrantSets().elements
    }

    /// Replaces the view with a belief about the kernel, right or wrong: tests use it to prove what happens when
    /// the view is stale (an element expired in the kernel a moment ago).
    public func assumeView(_ belief: [AccessKey: MonotonicInstant]) {
        view = belief
    }

    /// Every grant element the kernel holds, by dumping the grant sets. Tests and diagnostics only: the agent never
    /// needs a dump to decide anything.
    public func readGrantSets() throws(NetfilterError) -> (
        elements: [AccessKey: MonotonicInstant], foreign: [ListedElement]
    ) {
        var elements: [AccessKey: MonotonicInstant] = [:]
        var foreign: [ListedElement] = []
        for set in DrawbridgeTable.grantSets {
            for listed in try connection.listElements(table: DrawbridgeTable.name, set: set.name) {
                guard let key = DrawbridgeTable.accessKey(from: listed), DrawbridgeTable.grantSet(for: key) == set,
                    let deadline = listed.deadline
                else {
                    foreign.append(listed)
                    continue
                }
                elements[key] = deadline
            }
        }
        return (elements, foreign)
    }
}
