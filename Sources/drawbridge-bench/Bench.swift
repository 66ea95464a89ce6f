import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import NetfilterModel

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
}

/// What reading a set back found.
struct Verification {
    var count: Int
    /// The grant elements as read, with the absolute expiries the dump implies.
    var elements: [AccessKey: Date]
    var dumpSpreadMilliseconds: Double
    var readSeconds: Double
    var shortReads: Int
}

/// A namespace of its own with the drawbridge table installed, and the enforcer that owns a connection into it.
struct Arena {
    let namespace: NetworkNamespace
    let enforcer: TableDriver

    /// A fresh anonymous namespace with the table built by `TableDriver.rebuild`, exactly as drawbridged builds it.
    static func make() throws -> Arena {
        let namespace = try NetworkNamespace.createAnonymous()
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: namespace), canDestroyElements: true)
        try enforcer.rebuild(
            TableLayout(mode: .keepSessions, managedServices: [Service(port: 22, transport: .tcp)], alwaysAllowed: []),
            elements: [:])
        return Arena(namespace: namespace, enforcer: enforcer)
    }
}

/// Runs the measurements. Everything it changes lives in namespaces it created and drops.
final class Bench {
    let elements: Int
    let changes: Int
    let runs: Int
    let nsenter: String
    let nft: String
    let spawner: Spawner
    let scratch: URL
    let log: (String) -> Void
    private let clock = ContinuousClock()
    private(set) var maxBackgroundLoad = 0.0

    init(
        elements: Int, changes: Int, runs: Int, nsenter: String, nft: String, scratch: URL,
        log: @escaping (String) -> Void
    ) {
        self.elements = elements
        self.changes = changes
        self.runs = runs
        self.nsenter = nsenter
        self.nft = nft
        self.scratch = scratch
        self.spawner = Spawner(scratch: scratch)
        self.log = log
    }

    private func nftCommand(in arena: Arena, _ arguments: [String]) -> [String] {
        [nsenter, "--net=\(arena.namespace.path)", nft] + arguments
    }

    // MARK: Process start

    /// The nft version, and what starting a process through nsenter costs on its own.
    func processStart() throws -> (version: String, start: ProcessStart) {
        let arena = try Arena.make()
        let version = try spawner.check(nftCommand(in: arena, ["--version"]), what: "nft --version")
            .standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let truePath = locate("true") ?? "/bin/true"
        var trueTimes: [Double] = []
        var versionTimes: [Double] = []
        for _ in 0..<max(changes, 5) {
            trueTimes.append(
                try spawner.check([nsenter, "--net=\(arena.namespace.path)", truePath], what: "nsenter true").wall
                    .seconds * 1000)
            versionTimes.append(
                try spawner.check(nftCommand(in: arena, ["--version"]), what: "nft --version").wall.seconds * 1000)
        }
        return (
            version,
            ProcessStart(nsenterTrueMilliseconds: median(trueTimes), nftVersionMilliseconds: median(versionTimes))
        )
    }

    // MARK: One kind

    func measure(_ kind: SetKind) throws -> KindResult {
        let workload = Workload(kind: kind, elements: elements, changes: changes)
        let expected = Set(workload.keys)
        let file = scratch.appendingPathComponent("\(kind.rawValue)-bulk.nft")
        let fileText = workload.nftFile()
        try fileText.write(to: file, atomically: false, encoding: .utf8)

        var drawbridgeSamples: [LoadSample] = []
        var nftSamples: [LoadSample] = []
        var diffTimes: [Double] = []
        // The arenas of the latest run, kept for the 1-element changes; earlier ones are dropped as the next starts.
        var drawbridgeArena: Arena?
        var nftArena: Arena?

        for run in 0..<runs {
            // Alternate which tool goes first, so neither always runs right after the other's teardown.
            for drawbridgeTurn in run % 2 == 0 ? [true, false] : [false, true] {
                if drawbridgeTurn {
                    drawbridgeArena = nil
                    let arena = try Arena.make()
                    waitForQuiet()
                    let (sample, diffSeconds) = try drawbridgeBulk(workload, into: arena, expected: expected)
                    drawbridgeSamples.append(sample)
                    diffTimes.append(diffSeconds)
                    drawbridgeArena = arena
                    log(
                        "\(kind.rawValue) bulk \(run + 1)/\(runs): drawbridge \(formatSeconds(sample.seconds)) (\(sample.verifiedElements) verified)"
                    )
                } else {
                    nftArena = nil
                    let arena = try Arena.make()
                    waitForQuiet()
                    let sample = try nftBulk(file: file, workload, into: arena, expected: expected)
                    nftSamples.append(sample)
                    nftArena = arena
                    log(
                        "\(kind.rawValue) bulk \(run + 1)/\(runs): nft -f     \(formatSeconds(sample.seconds)) (\(sample.verifiedElements) verified)"
                    )
                }
            }
        }
        let bulkDrawbridge = median(drawbridgeSamples.map(\.seconds))
        let bulkNft = median(nftSamples.map(\.seconds))
        let bulk = BulkResult(
            drawbridge: drawbridgeSamples, nft: nftSamples, drawbridgeMedianSeconds: bulkDrawbridge,
            nftMedianSeconds: bulkNft, ratio: bulkNft / bulkDrawbridge, diffSeconds: median(diffTimes),
            nftFileBytes: fileText.utf8.count)

        let change = try singleChanges(workload, drawbridge: drawbridgeArena!, nft: nftArena!, expected: expected)
        log(
            "\(kind.rawValue) 1-element x\(changes): drawbridge median \(formatMilliseconds(change.drawbridgeMedianMilliseconds)), "
                + "nft median \(formatMilliseconds(change.nftMedianMilliseconds))")
        return KindResult(
            kind: kind, set: kind.set.name,
            setType: "ipv4_addr . inet_proto . inet_service; flags \(kind == .hash ? "timeout" : "interval,timeout")",
            backend: kind.backend, bulk: bulk, change: change)
    }

    /// One transaction of N additions into the empty set; the diff is computed before the clock starts.
    private func drawbridgeBulk(_ workload: Workload, into arena: Arena, expected: Set<AccessKey>) throws
        -> (LoadSample, Double)
    {
        let planStart = clock.now
        let now = Date()
        let desired = workload.desired(now: now)
        let requested = now.addingTimeInterval(TimeInterval(Workload.timeoutSeconds))
        let instants = SystemClock.now()
        let targets = desired.map { ElementTarget(key: $0.key, deadline: instants.deadline(forWall: $0.value)) }
        let diffSeconds = (clock.now - planStart).seconds
        guard targets.count == elements else {
            throw BenchFailure(description: "the plan holds \(targets.count) elements, expected \(elements)")
        }

        let machineBefore = machineCPUSeconds()
        let cpuBefore = threadCPUTime()
        let started = clock.now
        let report = try arena.enforcer.apply(targets)
        let wall = clock.now - started
        let cpuAfter = threadCPUTime()
        let own = (cpuAfter.user - cpuBefore.user) + (cpuAfter.system - cpuBefore.system)
        let background = max(0, machineCPUSeconds() - machineBefore - own) / wall.seconds

        let check = try verify(arena, expected: expected, who: "drawbridge", kind: workload.kind)
        let skew = try expirySkew(workload, in: arena, requested: requested)
        // What drawbridged would do if it reconciled now, from the same read.
        let rewrites = desired.filter { key, expiry in
            check.elements[key].map { abs($0.timeIntervalSince(expiry)) > 1 } ?? true
        }.count
        return (
            LoadSample(
                seconds: wall.seconds, userSeconds: cpuAfter.user - cpuBefore.user,
                systemSeconds: cpuAfter.system - cpuBefore.system, maxResidentMiB: nil, messages: report.messages,
                bytes: report.bytes, verifiedElements: check.count,
                expirySkewMilliseconds: skew.spread, expiryOffsetMinMilliseconds: skew.offsets?.lowerBound,
                expiryOffsetMaxMilliseconds: skew.offsets?.upperBound,
                reconcileRefreshes: rewrites,
                dumpSpreadMilliseconds: check.dumpSpreadMilliseconds, readSeconds: check.readSeconds,
                shortReads: check.shortReads, backgroundCPUs: background),
            diffSeconds
        )
    }

    /// `nft -f FILE` inside the namespace, timed from spawn to exit.
    private func nftBulk(file: URL, _ workload: Workload, into arena: Arena, expected: Set<AccessKey>) throws
        -> LoadSample
    {
        let machineBefore = machineCPUSeconds()
        let outcome = try spawner.check(
            nftCommand(in: arena, ["-f", file.path]), what: "nft -f \(file.lastPathComponent)")
        let own = outcome.userSeconds + outcome.systemSeconds
        let background = max(0, machineCPUSeconds() - machineBefore - own) / outcome.wall.seconds
        let check = try verify(arena, expected: expected, who: "nft -f", kind: workload.kind)
        return LoadSample(
            seconds: outcome.wall.seconds, userSeconds: outcome.userSeconds, systemSeconds: outcome.systemSeconds,
            maxResidentMiB: Double(outcome.maxResidentKiB) / 1024, messages: nil, bytes: nil,
            verifiedElements: check.count, expirySkewMilliseconds: try expirySkew(workload, in: arena).spread,
            expiryOffsetMinMilliseconds: nil, expiryOffsetMaxMilliseconds: nil, reconcileRefreshes: nil,
            dumpSpreadMilliseconds: check.dumpSpreadMilliseconds, readSeconds: check.readSeconds,
            shortReads: check.shortReads, backgroundCPUs: background)
    }

    /// `changes` single-element additions into each namespace holding N, alternating the tools.
    private func singleChanges(
        _ workload: Workload, drawbridge: Arena, nft nftArena: Arena, expected: Set<AccessKey>
    ) throws -> ChangeResult {
        var drawbridgeTimes: [Double] = []
        var nftTimes: [Double] = []
        waitForQuiet()
        for (index, key) in workload.extras.enumerated() {
            for drawbridgeTurn in index % 2 == 0 ? [true, false] : [false, true] {
                if drawbridgeTurn {
                    let target = ElementTarget(
                        key: key, deadline: SystemClock.monotonic().advanced(by: Double(Workload.timeoutSeconds)))
                    let started = clock.now
                    let report = try drawbridge.enforcer.apply([target])
                    drawbridgeTimes.append((clock.now - started).seconds * 1000)
                    guard report.messages == 1 else {
                        throw BenchFailure(description: "a 1-element change took \(report.messages) messages")
                    }
                } else {
                    let outcome = try spawner.check(
                        nftCommand(in: nftArena, [workload.nftAddCommand(key)]), what: "nft add element")
                    nftTimes.append(outcome.wall.seconds * 1000)
                }
            }
        }
        let all = expected.union(workload.extras)
        _ = try verify(drawbridge, expected: all, who: "drawbridge (after 1-element changes)", kind: workload.kind)
        _ = try verify(nftArena, expected: all, who: "nft (after 1-element changes)", kind: workload.kind)
        let drawbridgeMedian = median(drawbridgeTimes)
        let nftMedian = median(nftTimes)
        return ChangeResult(
            elementsPresent: elements, drawbridgeMilliseconds: drawbridgeTimes, nftMilliseconds: nftTimes,
            drawbridgeMedianMilliseconds: drawbridgeMedian, nftMedianMilliseconds: nftMedian,
            ratio: nftMedian / drawbridgeMedian)
    }

    // MARK: Verification

    /// Reads every grant set back and fails unless the kernel holds exactly `expected`, each with a timeout.
    ///
    /// A dump of an rhash set taken while the kernel is still resizing the table after a big load comes back with
    /// some elements twice and others not at all (without NLM_F_DUMP_INTR), so a short read is repeated a few
    /// times before the load is declared wrong; `shortReads` counts them.
    private func verify(_ arena: Arena, expected: Set<AccessKey>, who: String, kind: SetKind) throws -> Verification {
        var shortReads = 0
        while true {
            let started = clock.now
            let state = try arena.enforcer.readGrantSets()
            let readSeconds = (clock.now - started).seconds
            let now = SystemClock.now()
            let held = state.elements.mapValues { now.wall(forDeadline: $0) }
            if held.count == expected.count, state.foreign.isEmpty, expected.allSatisfy({ held[$0] != nil }) {
                var earliest = Date.distantFuture
                var latest = Date.distantPast
                for expiry in held.values {
                    earliest = min(earliest, expiry)
                    latest = max(latest, expiry)
                }
                return Verification(
                    count: held.count, elements: held,
                    dumpSpreadMilliseconds: latest.timeIntervalSince(earliest) * 1000,
                    readSeconds: readSeconds, shortReads: shortReads)
            }
            shortReads += 1
            if shortReads < 10 {
                usleep(50_000)
                continue
            }
            let missing = expected.filter { held[$0] == nil }
            // Ask a second reader, so the report says whether the load or the read is short.
            let listing = try? spawner.run(
                nftCommand(in: arena, ["list", "set", "inet", DrawbridgeTable.name, kind.set.name]))
            let nftCount =
                listing.map { String($0.standardOutput.components(separatedBy: " expires ").count - 1) } ?? "?"
            throw BenchFailure(
                description:
                    "\(who) load into \(kind.set.name) is wrong: the kernel holds \(held.count) grant elements "
                    + "(\(state.foreign.count) not decodable), expected \(expected.count); \(missing.count) missing"
                    + (missing.first.map { ", e.g. \($0)" } ?? "") + "; `nft list set` lists \(nftCount)")
        }
    }

    /// The spread (max - min) of the absolute expiries of a sample of the loaded elements, spread evenly over the
    /// order they were sent in (first and last included), read by one point query; and, given the instant the
    /// elements were asked to expire at, how far before (-) or after (+) it they actually expire.
    private func expirySkew(_ workload: Workload, in arena: Arena, requested: Date? = nil) throws
        -> (spread: Double, offsets: ClosedRange<Double>?)
    {
        let count = workload.keys.count
        let samples = min(count, 256)
        let indices = Set((0..<samples).map { samples == 1 ? 0 : $0 * (count - 1) / (samples - 1) }).sorted()
        let elements = indices.map { DrawbridgeTable.element(for: workload.keys[$0]) }
        let asked = Date()
        // One non-dump GETSETELEM: the kernel answers for every sampled element within microseconds.
        let remaining = try arena.enforcer.connection.getElements(
            table: DrawbridgeTable.name, set: workload.kind.set.name, elements
        ).map(\.remainingMilliseconds)
        let answered = Date()
        let values = remaining.compactMap { $0 }
        guard values.count == elements.count, let low = values.min(), let high = values.max() else {
            throw BenchFailure(
                description: "the point query of \(workload.kind.set.name) returned elements without a timeout")
        }
        // The kernel computed every remaining time between `asked` and `answered` (well under a millisecond apart).
        let offsets = requested.map { requested -> ClosedRange<Double> in
            let base =
                (asked.timeIntervalSince1970 + answered.timeIntervalSince1970) / 2 - requested.timeIntervalSince1970
            return (base * 1000 + Double(low))...(base * 1000 + Double(high))
        }
        return (Double(high - low), offsets)
    }

    // MARK: Quiet machine

    /// Waits (at most 3 s) until the CPUs are nearly idle, so a timed step does not share them with the kernel
    /// tearing down the namespace just dropped (freeing 100k elements runs in a kernel worker).
    private func waitForQuiet() {
        let started = clock.now
        let deadline = started + .seconds(3)
        var load = 1.0
        repeat {
            load = cpuLoad(over: .milliseconds(100))
            if load < 0.05 { break }
        } while clock.now < deadline
        maxBackgroundLoad = max(maxBackgroundLoad, load)
        let waited = clock.now - started
        if waited > .milliseconds(500) {
            log(
                "waited \(formatSeconds(waited.seconds)) for the CPUs to settle (last 100 ms: \(Int(load * 100))% busy)"
            )
        }
    }

    /// The share of all CPUs' time spent busy over `interval` (from /proc/stat).
    private func cpuLoad(over interval: Duration) -> Double {
        guard let before = Self.machineCPU() else { return 0 }
        usleep(UInt32(interval.seconds * 1_000_000))
        guard let after = Self.machineCPU(), after.total > before.total else { return 0 }
        return (after.busy - before.busy) / (after.total - before.total)
    }

    /// Busy CPU seconds of the whole machine so far (all CPUs, in USER_HZ ticks of 10 ms).
    private func machineCPUSeconds() -> Double {
        (Self.machineCPU()?.busy ?? 0) / 100
    }

    /// The aggregate "cpu" line of /proc/stat: busy (everything but idle and iowait) and total ticks.
    private static func machineCPU() -> (busy: Double, total: Double)? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = text.split(separator: "\n").first
        else { return nil }
        let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard fields.count >= 5 else { return nil }
        let total = fields.prefix(8).reduce(0, +)
        return (total - fields[3] - fields[4], total)
    }
}
