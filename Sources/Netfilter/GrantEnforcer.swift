import DrawbridgeCore
import Foundation

/// The grant elements the kernel holds, as read in one pass.
public struct KernelAccessState: Sendable {
    /// Every grant element drawbridge can name, with its absolute expiry.
    public var elements: [AccessKey: Date]
    /// Elements in the grant sets that drawbridge could not have written (hand-added ranges that are not prefixes);
    /// reconciling deletes them.
    public var foreign: [ForeignElement]
    /// The ruleset generation read before the sets were dumped.
    public var generation: UInt32
    public var readAt: Date
}

/// An element of a grant set that does not decode to a grant.
public struct ForeignElement: Sendable, Hashable {
    public var set: SetDefinition
    public var element: ListedElement
}

/// What a reconcile did.
public struct ReconcileOutcome: Sendable {
    public var diff: ElementDiff
    public var foreignRemoved: Int
    /// Transactions tried: more than one when an element expired or another writer committed in between.
    public var attempts: Int
    public var report: CommitReport?
    /// The ruleset generation after the commit (or as read, when nothing needed changing).
    public var generation: UInt32
}

/// Keeps the grant sets of the drawbridge table equal to a desired state.
///
/// Every change is one transaction. Correct on the kernels production hosts run (5.10 and later):
/// - an expiry is changed by delete + add in one transaction, because before Linux 6.12 re-adding an existing
///   element silently keeps its old expiry;
/// - deletions use the idempotent DESTROYSETELEM where the kernel has it (6.3+); elsewhere a delete that finds the
///   element already expired aborts the transaction (ENOENT) and the reconcile reads the state and tries again.
public final class GrantEnforcer {
    public let connection: NetfilterConnection
    /// Whether the kernel accepts NFT_MSG_DESTROYSETELEM, found by asking it (`install` probes).
    public private(set) var canDestroyElements: Bool
    private var probed = false

    /// - Parameter canDestroyElements: force the pre-6.3 delete path (tests use this to prove it on new kernels).
    public init(connection: NetfilterConnection, canDestroyElements: Bool = false) {
        self.connection = connection
        self.canDestroyElements = canDestroyElements
    }

    /// Creates the table if needed and writes its rules, managed ports and break-glass prefixes in one transaction,
    /// keeping every grant element. Then probes whether the kernel can destroy elements idempotently.
    @discardableResult
    public func install(
        mode: SessionMode, managedServices: [Service], alwaysAllowed: [IPPrefix], probeDestroy: Bool = true
    ) throws(NetfilterError) -> CommitReport {
        let report = try connection.commit(
            DrawbridgeTable.installation(mode: mode, managedServices: managedServices, alwaysAllowed: alwaysAllowed))
        // Once per enforcer: installs on reload and repair need not ask the kernel again.
        if probeDestroy && !probed {
            canDestroyElements = try probeDestroySupport()
            probed = true
        }
        return report
    }

    /// Asks the kernel to destroy an element that cannot exist (an address of 0.0.0.0/32 for port 0 in grants4):
    /// 6.3+ answers with success, older kernels reject the unknown message type.
    private func probeDestroySupport() throws(NetfilterError) -> Bool {
        let probe = SetElement(key: [UInt8](repeating: 0, count: 12))
        do {
            try connection.commit(
                Transaction([.destroyElements(table: DrawbridgeTable.name, set: DrawbridgeTable.grants4, [probe])]))
            return true
        } catch  where error.code == .invalidRequest {
            return false
        }
    }

    /// Reads every grant set.
    public func read() throws(NetfilterError) -> KernelAccessState {
        let generation = try connection.generation()
        var elements: [AccessKey: Date] = [:]
        var foreign: [ForeignElement] = []
        let readAt = Date()
        for set in DrawbridgeTable.grantSets {
            for listed in try connection.listElements(table: DrawbridgeTable.name, set: set.name) {
                guard let key = DrawbridgeTable.accessKey(from: listed), DrawbridgeTable.grantSet(for: key) == set,
                    let expiresAt = listed.expiresAt
                else {
                    // Not decodable, in the wrong set, or without a timeout (it would never expire): not ours.
                    foreign.append(ForeignElement(set: set, element: listed))
                    continue
                }
                elements[key] = expiresAt
            }
        }
        return KernelAccessState(elements: elements, foreign: foreign, generation: generation, readAt: readAt)
    }

    /// The one transaction that applies `diff` (and removes `foreign` elements): deletions first, so a refreshed
    /// or re-split prefix never overlaps its old self, then additions.
    public func transaction(for diff: ElementDiff, removing foreign: [ForeignElement] = []) -> Transaction {
        var deletions: [SetDefinition: [SetElement]] = [:]
        var additions: [SetDefinition: [SetElement]] = [:]
        for key in diff.deletions + diff.refreshes.map(\.key) {
            deletions[DrawbridgeTable.grantSet(for: key), default: []].append(DrawbridgeTable.element(for: key))
        }
        for item in foreign {
            deletions[item.set, default: []].append(SetElement(key: item.element.key, keyEnd: item.element.keyEnd))
        }
        for element in diff.refreshes + diff.additions {
            additions[DrawbridgeTable.grantSet(for: element.key), default: []]
                .append(DrawbridgeTable.element(for: element.key, expiresAt: element.expiresAt))
        }
        var transaction = Transaction()
        for set in DrawbridgeTable.grantSets {
            if let elements = deletions[set] {
                transaction.append(
                    canDestroyElements
                        ? .destroyElements(table: DrawbridgeTable.name, set: set, elements)
                        : .deleteElements(table: DrawbridgeTable.name, set: set, elements))
            }
        }
        for set in DrawbridgeTable.grantSets {
            if let elements = additions[set] {
                transaction.append(.addElements(table: DrawbridgeTable.name, set: set, elements))
            }
        }
        return transaction
    }

    /// How close to its expiry an element must be for a strict delete of it to risk ENOENT: its clock in the
    /// kernel and the expiry read back differ by milliseconds, the margin is generous.
    public static let expiryMargin: TimeInterval = 5

    /// Applies a diff computed from a known state, refused whole if the ruleset generation moved.
    ///
    /// Where the kernel lacks DESTROYSETELEM (before 6.3), deleting an element that expired a moment ago fails the
    /// transaction with ENOENT. So there, deletions and refreshes of elements within `expiryMargin` of their expiry
    /// go in a second transaction after the rest, which therefore never fails for them; if the second one meets an
    /// element that did expire, the elements the kernel no longer has are dropped from it (a refresh becomes an
    /// addition) and it is sent again.
    @discardableResult
    public func apply(
        _ diff: ElementDiff, removing foreign: [ForeignElement] = [], generation: UInt32? = nil
    ) throws(NetfilterError) -> CommitReport {
        var main = diff
        var late = ElementDiff()
        if !canDestroyElements {
            let soon = Date().addingTimeInterval(Self.expiryMargin)
            let expiring = Set(diff.currentExpiries.filter { $0.value < soon }.keys)
            main.deletions.removeAll { expiring.contains($0) }
            main.refreshes.removeAll { expiring.contains($0.key) }
            late.deletions = diff.deletions.filter { expiring.contains($0) }
            late.refreshes = diff.refreshes.filter { expiring.contains($0.key) }
        }
        let report = try connection.commit(transaction(for: main, removing: foreign), generation: generation)
        guard !late.isEmpty else { return report }
        let next = generation.map { $0 &+ UInt32(report.transactions) }
        var failure = NetfilterError(.elementAbsent, operation: "delete elements")
        for _ in 0..<4 {
            do {
                return report.followed(by: try connection.commit(transaction(for: late), generation: next))
            } catch {
                failure = error
            }
            guard failure.code == .elementAbsent else { throw failure }
            late = try withoutVanished(late)
        }
        throw failure
    }

    /// `diff` without deletions of elements the kernel no longer has; refreshes of those become additions.
    private func withoutVanished(_ diff: ElementDiff) throws(NetfilterError) -> ElementDiff {
        func present(_ key: AccessKey) throws(NetfilterError) -> Bool {
            do {
                let found = try connection.getElements(
                    table: DrawbridgeTable.name, set: DrawbridgeTable.grantSet(for: key).name,
                    [DrawbridgeTable.element(for: key)])
                return !found.isEmpty
            } catch  where error.code == .objectMissing || error.errno == ENOENT {
                return false
            }
        }
        var result = ElementDiff(additions: diff.additions)
        for key in diff.deletions where try present(key) { result.deletions.append(key) }
        for element in diff.refreshes {
            if try present(element.key) { result.refreshes.append(element) } else { result.additions.append(element) }
        }
        return result
    }

    /// Reads the kernel, compares with `desired`, and applies the difference; retries (up to `attempts` times) when
    /// an element expired or another writer committed between the read and the commit.
    @discardableResult
    public func reconcile(desired: [AccessKey: Date], attempts: Int = 5) throws(NetfilterError) -> ReconcileOutcome {
        let planned = AccessPlan.normalize(desired)
        var lastError: NetfilterError?
        for attempt in 1...max(1, attempts) {
            let state = try read()
            let diff = ElementDiff(desired: planned, actual: state.elements, now: Date())
            if diff.isEmpty && state.foreign.isEmpty {
                return ReconcileOutcome(
                    diff: diff, foreignRemoved: 0, attempts: attempt, report: nil, generation: state.generation)
            }
            do {
                let report = try apply(diff, removing: state.foreign, generation: state.generation)
                return ReconcileOutcome(
                    diff: diff, foreignRemoved: state.foreign.count, attempts: attempt, report: report,
                    generation: state.generation &+ UInt32(report.transactions))
            } catch  where [.elementAbsent, .generationChanged, .outcomeUnknown].contains(error.code) {
                lastError = error
            }
        }
        throw lastError!
    }
}
