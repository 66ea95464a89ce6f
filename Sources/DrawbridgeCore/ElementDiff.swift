import Foundation

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

/// An element as the kernel should hold it, or as it was read back: a key with an absolute expiry.
public struct AccessElement: Hashable, Sendable {
    public var key: AccessKey
    /// When the kernel stops matching the element (UTC wall clock).
    public var expiresAt: Date

    public init(key: AccessKey, expiresAt: Date) {
        self.key = key
        self.expiresAt = expiresAt
    }
}

/// The difference between the elements the kernel should hold and those it holds, as the three kinds of change a
/// reconcile applies in one transaction.
///
/// This is a pure function of its inputs so it can be tested without a kernel.
public struct ElementDiff: Equatable, Sendable {
    /// Elements to add: desired, absent from the kernel.
    public var additions: [AccessElement]
    /// Elements to replace with a new expiry (delete and add in one transaction, which is correct on every kernel;
    /// a plain re-add keeps the old expiry before Linux 6.12).
    public var refreshes: [AccessElement]
    /// Elements to delete: in the kernel, not desired.
    public var deletions: [AccessKey]
    /// When the elements to delete or refresh expire in the kernel, as read: an element close to its expiry may be
    /// gone by the time a strict delete reaches the kernel.
    public var currentExpiries: [AccessKey: Date]

    public var isEmpty: Bool { additions.isEmpty && refreshes.isEmpty && deletions.isEmpty }

    public init(
        additions: [AccessElement] = [], refreshes: [AccessElement] = [], deletions: [AccessKey] = [],
        currentExpiries: [AccessKey: Date] = [:]
    ) {
        self.additions = additions
        self.refreshes = refreshes
        self.deletions = deletions
        self.currentExpiries = currentExpiries
    }

    /// Compares desired with actual state.
    ///
    /// - Parameters:
    ///   - desired: one expiry per key; elements whose expiry is not after `now` are treated as absent.
    ///   - actual: what the kernel holds, expiries computed from the remaining time it reported.
    ///   - now: the instant the comparison is made for.
    ///   - tolerance: expiries closer than this are equal. The kernel counts in jiffies and starts an element's clock
    ///     when it processes the message, so a freshly written element reads back a few milliseconds off.
    public init(desired: [AccessKey: Date], actual: [AccessKey: Date], now: Date, tolerance: TimeInterval = 1) {
        var additions: [AccessElement] = []
        var refreshes: [AccessElement] = []
        var deletions: [AccessKey] = []
        for (key, expiresAt) in desired where expiresAt > now {
            if let current = actual[key], current > now {
                if abs(current.timeIntervalSince(expiresAt)) > tolerance {
                    refreshes.append(AccessElement(key: key, expiresAt: expiresAt))
                }
            } else {
                additions.append(AccessElement(key: key, expiresAt: expiresAt))
            }
        }
        for (key, expiresAt) in actual where expiresAt > now {
            if let wanted = desired[key], wanted > now { continue }
            deletions.append(key)
        }
        self.additions = additions.sorted { $0.key < $1.key }
        self.refreshes = refreshes.sorted { $0.key < $1.key }
        self.deletions = deletions.sorted()
        var currentExpiries: [AccessKey: Date] = [:]
        for key in deletions + refreshes.map(\.key) { currentExpiries[key] = actual[key] }
        self.currentExpiries = currentExpiries
    }
}
