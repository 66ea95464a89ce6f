import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import NetfilterModel

/// Wall-clock conveniences over the table driver for kernel tests.
extension TableDriver {
    /// Installs the table for a layout given by its parts.
    @discardableResult
    public func install(mode: SessionMode, managedServices: [Service], alwaysAllowed: [IPPrefix]) throws -> CommitReport
    {
        try install(TableLayout(mode: mode, managedServices: managedServices, alwaysAllowed: alwaysAllowed))
    }

    /// Makes the grant sets hold exactly `desired` (wall-clock expiries): reads the kernel, then applies targets.
    @discardableResult
    public func reconcile(desired: [AccessKey: Date]) throws(NetfilterError) -> ApplyReport {
        try resynchronize()
        let now = SystemClock.now()
        var targets = view.keys.map { ElementTarget(key: $0, deadline: nil) }
        targets += desired.map { ElementTarget(key: $0.key, deadline: now.deadline(forWall: $0.value)) }
        return try apply(targets)
    }

    /// Adds or changes elements to end at wall-clock instants.
    @discardableResult
    public func put(_ elements: [AccessKey: Date]) throws(NetfilterError) -> ApplyReport {
        let now = SystemClock.now()
        return try apply(elements.map { ElementTarget(key: $0.key, deadline: now.deadline(forWall: $0.value)) })
    }

    /// Every grant element with its wall-clock expiry, read from the kernel (a dump).
    public func elements() throws -> [AccessKey: Date] {
        let now = SystemClock.now()
        return try readGrantSets().elements.mapValues { now.wall(forDeadline: $0) }
    }

    /// Compares the table with a layout given by its parts.
    public func verify(mode: SessionMode, managedServices: [Service], alwaysAllowed: [IPPrefix]) throws -> [String] {
        try verify(TableLayout(mode: mode, managedServices: managedServices, alwaysAllowed: alwaysAllowed))
    }
}
