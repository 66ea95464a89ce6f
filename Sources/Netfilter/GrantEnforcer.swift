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
        if probeDestroy { canDestroyElements = try probeDestroySupport() }
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

    /// Applies a diff computed from a known state in one transaction, refused if the ruleset generation moved.
    @discardableResult
    public func apply(_ diff: ElementDiff, generation: UInt32? = nil) throws(NetfilterError) -> CommitReport {
        try connection.commit(transaction(for: diff), generation: generation)
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
                let report = try connection.commit(
                    transaction(for: diff, removing: state.foreign), generation: state.generation)
                return ReconcileOutcome(
                    diff: diff, foreignRemoved: state.foreign.count, attempts: attempt, report: report,
                    generation: state.generation &+ 1)
            } catch  where [.elementAbsent, .generationChanged, .outcomeUnknown].contains(error.code) {
                lastError = error
            }
        }
        throw lastError!
    }
}
