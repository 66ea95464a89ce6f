import DrawbridgeCore
import HostSystem
import NetfilterModel

/// Each managed port's drops and accepts, from the table's own counting rules, as totals that only grow.
///
/// The kernel's counters start from zero whenever the rules are installed again (a reload, a repair); the counts
/// read just before are folded into ``base`` so the totals the metrics serve never go back. Samples of the totals,
/// taken whenever they are read (at least by the once-a-minute safety check, so no extra wake-up), give `status` its
/// "last minute".
struct PortTraffic {
    var base: [Service: PortCounts] = [:]
    /// The counts last read from the rules now installed.
    var current: [Service: PortCounts] = [:]
    var samples: [(time: MonotonicInstant, totals: [Service: PortCounts])] = []

    static let window: Double = 60

    var totals: [Service: PortCounts] {
        base.merging(current, uniquingKeysWith: +)
    }

    /// Takes counts read from the kernel. A count lower than the last one means the rules were replaced without the
    /// agent folding them (another program's doing): what was counted before is kept.
    mutating func update(_ read: [Service: PortCounts], at time: MonotonicInstant) {
        for (service, counts) in read {
            if let previous = current[service],
                counts.droppedPackets < previous.droppedPackets || counts.acceptedPackets < previous.acceptedPackets
            {
                base[service] = (base[service] ?? PortCounts()) + previous
            }
            current[service] = counts
        }
        samples.append((time, totals))
        // Keep the newest sample older than the window and everything after it.
        if let keep = samples.lastIndex(where: { time.seconds(since: $0.time) >= Self.window }), keep > 0 {
            samples.removeFirst(keep)
        }
    }

    /// The rules were installed again: what they counted so far becomes part of the base.
    mutating func rulesReplaced() {
        base = totals
        current = [:]
    }

    /// Drops and accepts per port over the last minute (or since the oldest sample, when younger), and its length.
    func recent(now: MonotonicInstant) -> (counts: [Service: PortCounts], seconds: Double)? {
        guard let latest = samples.last else { return nil }
        let from = samples.last { now.seconds(since: $0.time) >= Self.window } ?? samples.first!
        var counts: [Service: PortCounts] = [:]
        for (service, total) in latest.totals { counts[service] = total - (from.totals[service] ?? PortCounts()) }
        return (counts, latest.time.seconds(since: from.time))
    }
}

extension Agent {
    /// Reads the per-port counters (on the reads connection) into ``traffic``; returns the totals. A read that fails
    /// or finds the rules changed leaves the totals as they were (the repair check deals with the table).
    @discardableResult
    func sampleTraffic() async -> [Service: PortCounts] {
        let layout = self.layout
        if let read = try? await kernelReads.portCounts(layout), layout == self.layout {
            traffic.update(read, at: SystemClock.monotonic())
        }
        return traffic.totals
    }

    /// What `status` shows per managed port: grants now, drops and accepts in the last minute.
    func portActivity() async -> [LocalAPI.PortActivity] {
        await sampleTraffic()
        let recent = traffic.recent(now: SystemClock.monotonic())
        var grants: [String: Int] = [:]
        for (key, count) in grantCounts() { grants[key.port, default: 0] += count }
        return policy.ports.map { (port: Policy.ManagedPort) -> LocalAPI.PortActivity in
            let counts: PortCounts? = recent?.counts[port.service]
            return LocalAPI.PortActivity(
                name: port.name, port: port.service.description, grants: grants[port.name] ?? 0,
                dropped: counts.map { Int(clamping: $0.droppedPackets) },
                accepted: counts.map { Int(clamping: $0.acceptedPackets) },
                seconds: recent?.seconds, hooks: port.hooks.map(\.rawValue))
        }
    }
}
