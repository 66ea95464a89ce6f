import DrawbridgeCore
import HostSystem
import NIOCore
import NIOPosix
import Netfilter
import NetfilterModel

/// The one owner of the netlink connection, on a thread of its own: kernel calls block for microseconds to
/// milliseconds, and nothing else — requests, the API, disk — waits on that thread.
public actor KernelLink {
    private let driver: TableDriver
    private let loop: any EventLoop
    private let group: MultiThreadedEventLoopGroup
    private let metrics: AgentMetrics?

    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }

    /// Opens the connection (in the calling thread's network namespace).
    public init(canDestroyElements: Bool? = nil, metrics: AgentMetrics? = nil) throws(NetfilterError) {
        self.metrics = metrics
        let connection = try NetfilterConnection()
        portID = connection.portID
        driver = TableDriver(connection: connection, canDestroyElements: canDestroyElements)
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
    }

    deinit {
        group.shutdownGracefully { _ in }
    }

    /// Replaces the table with the layout and exactly these elements, in one transaction.
    public func rebuild(_ layout: TableLayout, elements: [AccessKey: MonotonicInstant]) throws(NetfilterError)
        -> CommitReport
    {
        let report = try timed { () throws(NetfilterError) in try driver.rebuild(layout, elements: elements) }
        noteCommit()
        return report
    }

    /// Rewrites rules and fixed sets, keeping the grant elements.
    public func install(_ layout: TableLayout) throws(NetfilterError) {
        try timed { () throws(NetfilterError) in try driver.install(layout) }
        noteCommit()
    }

    /// Applies element targets in one transaction (two before Linux 6.3 for elements near expiry).
    public func apply(_ targets: [ElementTarget]) throws(NetfilterError) -> TableDriver.ApplyReport {
        let report = try timed { () throws(NetfilterError) in try driver.apply(targets) }
        if report.transactions > 0 { noteCommit() }
        return report
    }

    /// The ruleset generation read right after this link's latest commit (nil before the first, or when that read
    /// failed). The ruleset monitor does not hear of this link's own commits (they are filtered out in the kernel),
    /// so the safety check takes this generation as seen too.
    public private(set) var committedGeneration: UInt32?

    private func noteCommit() {
        committedGeneration = try? driver.connection.generation()
    }

    /// Applies element targets, then reads what the kernel gives `keys` on this same thread right after the commit
    /// (a grant's answer then needs no further hop to the reading connection); nil when that read failed.
    public func apply(_ targets: [ElementTarget], readingBack keys: [AccessKey]) throws(NetfilterError)
        -> [AccessKey: Double]?
    {
        _ = try apply(targets)
        return keys.isEmpty ? [:] : try? driver.remaining(keys)
    }

    /// Runs one kernel transaction, timing it for `drawbridge_kernel_apply_seconds`.
    @discardableResult
    private func timed<T>(_ body: () throws(NetfilterError) -> T) throws(NetfilterError) -> T {
        let clock = ContinuousClock()
        let started = clock.now
        defer { metrics?.observeKernelApply(clock.now - started) }
        return try body()
    }

    /// The differences between the table and the layout; empty when intact.
    public func verify(_ layout: TableLayout) throws(NetfilterError) -> [String] {
        try driver.verify(layout)
    }

    /// Each managed port's drops and accepts as the table counts them; nil when its rules are not as laid out.
    public func portCounts(_ layout: TableLayout) throws(NetfilterError) -> [Service: PortCounts]? {
        try driver.portCounts(layout)
    }

    /// Seconds the kernel still gives each element (point queries).
    public func remaining(_ keys: [AccessKey]) throws(NetfilterError) -> [AccessKey: Double] {
        try driver.remaining(keys)
    }

    /// The ruleset generation.
    public func generation() throws(NetfilterError) -> UInt32 {
        try driver.connection.generation()
    }

    /// The ruleset generation now, and as it was right after this link's latest commit.
    public func generations() throws(NetfilterError) -> (current: UInt32, committed: UInt32?) {
        (try driver.connection.generation(), committedGeneration)
    }

    /// Whether the kernel destroys elements idempotently (6.3+).
    public var canDestroyElements: Bool { driver.canDestroyElements }

    /// The netlink port of the connection: notifications of our own commits carry it.
    public nonisolated let portID: UInt32

    /// How many grant elements the driver believes the kernel holds.
    public var elementCount: Int { driver.view.count }
}
