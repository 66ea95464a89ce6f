import DrawbridgeCore
import NetfilterModel
import Prometheus
import Synchronization

/// The agent's Prometheus metrics (swift-prometheus' registry; text exposition 0.0.4), served by
/// ``MetricsServer`` and by `drawbridge metrics` over the local socket.
///
/// Event counters follow the audit trail (every grant, extension, revocation, expiry, refusal and repair is an audit
/// record, so the two cannot disagree); the grants gauge is computed from the grant book at each scrape; the
/// histograms time requests (per command) and kernel transactions. Thread-safe: the socket server, the kernel's
/// thread and the agent record into it concurrently.
public final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let events: [AuditEvent.Kind: Counter]
    private let repairs: Counter
    private let kernelApply: DurationHistogram
    private let requests: [LocalAPI.Verb: DurationHistogram]
    /// The gauges of the grants by port and origin, created as label pairs appear.
    private let active = Mutex<[ActiveKey: Gauge]>([:])
    /// Per port name: the four traffic counters and the totals they have been brought to.
    private let traffic = Mutex<[String: (counters: [Counter], reported: [UInt64])]>([:])

    struct ActiveKey: Hashable {
        var port: String
        var origin: String
    }


    static let countedEvents: [AuditEvent.Kind] = [.grant, .extend, .revoke, .expire, .refuse]

    public init() {
        func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "drawbridge", metricName: metric, unitName: unit, helpText: help)
        }
        let up = registry.makeGauge(
            descriptor: name("up", "", "1 while drawbridged runs and answers (a failed scrape means it does not)"))
        up.set(1.0)
        var events: [AuditEvent.Kind: Counter] = [:]
        let grants = name(
            "grants", "total", "Grant events since the agent started: grant, extend, revoke, expire, refuse")
        for kind in Self.countedEvents {
            events[kind] = registry.makeCounter(descriptor: grants, labels: [("event", kind.rawValue)])
        }
        self.events = events
        repairs = registry.makeCounter(
            descriptor: name("repairs", "total", "Times the agent restored its table after it was changed or removed"))
        kernelApply = registry.makeDurationHistogram(
            descriptor: name("kernel_apply", "seconds", "Time of one kernel transaction (netlink batch and its answer)"),
            labels: [],
            buckets: [
                .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
                .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(100), .milliseconds(500),
                .seconds(2),
            ])
        var requests: [LocalAPI.Verb: DurationHistogram] = [:]
        let request = name("request", "seconds", "Time from a request read to its answer, per command of the local API")
        for verb in LocalAPI.Verb.allCases {
            requests[verb] = registry.makeDurationHistogram(
                descriptor: request, labels: [("command", verb.rawValue)],
                buckets: [
                    .microseconds(250), .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10),
                    .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
                    .seconds(5),
                ])
        }
        self.requests = requests
    }

    /// Counts what an audit record says happened.
    func record(_ event: AuditEvent) {
        if event.event == .repair {
            repairs.increment()
        } else {
            events[event.event]?.increment()
        }
    }

    func observeKernelApply(_ duration: Duration) { kernelApply.record(duration) }

    public func observeRequest(_ verb: LocalAPI.Verb, _ duration: Duration) { requests[verb]?.record(duration) }

    /// Sets the grants gauge from the book: `counts` by port name and origin kind. Pairs that had grants and have
    /// none now read 0 (a series that vanished would hide the drop).
    func setActive(_ counts: [ActiveKey: Int]) {
        active.withLock { gauges in
            for key in Set(gauges.keys).union(counts.keys) {
                let gauge =
                    gauges[key]
                    ?? registry.makeGauge(
                        descriptor: MetricNameDescriptor(
                            namespace: "drawbridge", metricName: "grants_active", unitName: "",
                            helpText: "Grants in force now, by managed port and where they came from"),
                        labels: [("port", key.port), ("origin", key.origin)])
                gauges[key] = gauge
                gauge.set(Double(counts[key] ?? 0))
            }
        }
    }

    /// Brings the per-port traffic counters to the totals read from the table (counters only grow: a total below
    /// what was reported, after a port was renamed and back say, is left until it catches up).
    func setTraffic(_ ports: [(name: String, counts: PortCounts)]) {
        traffic.withLock { traffic in
            for (name, counts) in ports {
                let entry =
                    traffic[name]
                    ?? (
                        counters: [
                            ("dropped_packets", "Packets to the port dropped without a grant, counted by the table"),
                            ("dropped_bytes", "Bytes of those packets"),
                            ("accepted_packets", "Packets to the port accepted by a grant or always_allow, counted by "
                                + "the table (packets of connections already open are not)"),
                            ("accepted_bytes", "Bytes of those packets"),
                        ].map { metric, help in
                            registry.makeCounter(
                                descriptor: MetricNameDescriptor(
                                    namespace: "drawbridge", metricName: metric, unitName: "total", helpText: help),
                                labels: [("port", name)])
                        },
                        reported: [0, 0, 0, 0]
                    )
                let values = [counts.droppedPackets, counts.droppedBytes, counts.acceptedPackets, counts.acceptedBytes]
                var reported = entry.reported
                for index in 0..<4 where values[index] > reported[index] {
                    entry.counters[index].increment(by: Int64(clamping: values[index] - reported[index]))
                    reported[index] = values[index]
                }
                traffic[name] = (entry.counters, reported)
            }
        }
    }

    /// Gauges and counters whose label values appear at run time (sync sources, knock results), made on first use.
    private let labelled = Mutex<(gauges: [String: Gauge], counters: [String: Counter])>(([:], [:]))

    private func gauge(_ metric: String, unit: String, help: String, labels: [(String, String)]) -> Gauge {
        let key = metric + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        return labelled.withLock { state in
            if let gauge = state.gauges[key] { return gauge }
            let gauge = registry.makeGauge(
                descriptor: MetricNameDescriptor(namespace: "drawbridge", metricName: metric, unitName: unit, helpText: help),
                labels: labels)
            state.gauges[key] = gauge
            return gauge
        }
    }

    private func counter(_ metric: String, help: String, labels: [(String, String)]) -> Counter {
        let key = metric + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        return labelled.withLock { state in
            if let counter = state.counters[key] { return counter }
            let counter = registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "drawbridge", metricName: metric, unitName: "total", helpText: help),
                labels: labels)
            state.counters[key] = counter
            return counter
        }
    }

    /// A sync source (`etcd`, `file:PATH`) delivered grants the agent applied: when (wall clock, Unix seconds) and,
    /// for etcd, the revision.
    func syncSucceeded(_ source: String, at seconds: Double, revision: Int64? = nil) {
        gauge(
            "sync_last_success", unit: "timestamp_seconds",
            help: "When each sync source (etcd, a grants file) last delivered grants the agent applied",
            labels: [("source", source)]
        ).set(seconds)
        if let revision {
            gauge(
                "sync", unit: "revision", help: "The etcd revision the agent's grants reflect",
                labels: [("source", source)]
            ).set(Double(revision))
        }
    }

    /// A sync source lost its connection (drawbridge-etcd reported etcd unreachable after it was connected).
    func syncRestarted(_ source: String) {
        counter(
            "sync_restarts", help: "Times a sync source lost its connection and started again",
            labels: [("source", source)]
        ).increment()
    }

    /// Knocks handed to the agent: `opened` or `refused` (by drawbridge-knock or the agent).
    func knocks(_ result: String, count: Int = 1) {
        guard count > 0 else { return }
        counter("knocks", help: "Knocks by result: opened, refused", labels: [("result", result)])
            .increment(by: Int64(count))
    }

    /// The text exposition of every metric.
    func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(16 * 1024)
        registry.emit(into: &buffer)
        return buffer
    }
}
