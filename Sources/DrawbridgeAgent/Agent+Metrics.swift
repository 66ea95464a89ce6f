import DrawbridgeCore
import NetfilterModel

extension Agent {
    /// The Prometheus text: the grants gauge recomputed from the book (every managed port and origin kind appears,
    /// at 0 when none holds), then every metric of the registry.
    func metricsText() async -> [UInt8] {
        let totals = await sampleTraffic()
        metrics.setTraffic(
            policy.ports.map { port in (port.name, totals[port.service] ?? PortCounts()) })
        metrics.setActive(grantCounts())
        return metrics.exposition()
    }

    /// Grants in force by managed port and origin kind: every pair of the policy's ports and the origin kinds, at 0
    /// when no grant holds it.
    func grantCounts() -> [AgentMetrics.ActiveKey: Int] {
        var counts: [AgentMetrics.ActiveKey: Int] = [:]
        for port in policy.ports {
            for origin in GrantOrigin.kinds { counts[AgentMetrics.ActiveKey(port: port.name, origin: origin)] = 0 }
        }
        for (key, count) in book.portCounts {
            counts[AgentMetrics.ActiveKey(port: key.port, origin: key.origin), default: 0] += count
        }
        return counts
    }
}
