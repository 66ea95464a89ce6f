import DrawbridgeCore
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The metrics endpoint of the real drawbridged in a namespace, scraped with curl: what grants and revocations do
/// to the counters and the gauge, what else the endpoint answers, and that idle clients hold up nothing.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)), .serialized)
struct MetricsEndToEndTests {
    static let listen = "127.0.0.1:9447"

    final class Setup: @unchecked Sendable {
        let network: TestNetwork
        let agent: AgentProcess

        init() throws {
            try TestAccounts.ensure()
            network = try TestNetwork()
            agent = try AgentProcess(namespace: network.host, policy: "")
            try agent.writePolicy(AgentTests.policy() + "metrics: { listen: \"\(MetricsEndToEndTests.listen)\" }\n")
            try agent.start()
        }

        /// `curl` inside the host namespace: status code and body.
        func curl(_ path: String = "/metrics", method: String = "GET") throws -> (code: Int, body: String) {
            let result = try run(
                [
                    "curl", "-sS", "--max-time", "5", "-X", method, "-o", "/dev/stdout", "-w", "\n%{http_code}",
                    "http://\(MetricsEndToEndTests.listen)\(path)",
                ], in: network.host, check: false)
            var lines = result.output.split(separator: "\n", omittingEmptySubsequences: false)
            let code = Int(lines.popLast() ?? "") ?? 0
            return (code, lines.joined(separator: "\n"))
        }

        /// The value of one sample (`name{labels} value`), as the scrape shows it.
        func sample(_ series: String) throws -> Double? {
            let scrape = try curl()
            #expect(scrape.code == 200, "\(scrape.body)")
            return Self.value(of: series, in: scrape.body)
        }

        static func value(of series: String, in text: String) -> Double? {
            for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
                return Double(line.dropFirst(series.count + 1))
            }
            return nil
        }
    }

    @Test("grants and revocations move the gauge and the counters; drawbridge metrics prints the same series")
    func grantsAndRevocations() throws {
        let setup = try Setup()
        let active = #"drawbridge_grants_active{port="ssh",origin="local"}"#
        #expect(try setup.sample("drawbridge_up") == 1)
        #expect(try setup.sample(active) == 0)
        #expect(try setup.sample(#"drawbridge_grants_active{port="postgres",origin="knock"}"#) == 0)

        let granted = try setup.agent.cli(["grant", "ssh", "--from", "192.0.2.10", "--for", "10m", "--reason", "m"])
        #expect(granted.succeeded, "\(granted.error)")
        #expect(try setup.sample(active) == 1)
        #expect(try setup.sample(#"drawbridge_grants_total{event="grant"}"#) == 1)
        let extended = try setup.agent.cli(["grant", "ssh", "--from", "192.0.2.10", "--for", "20m", "--reason", "m"])
        #expect(extended.succeeded, "\(extended.error)")
        #expect(try setup.sample(#"drawbridge_grants_total{event="extend"}"#) == 1)
        #expect(try setup.sample(active) == 1, "an extension is still one grant")
        let refused = try setup.agent.cli(["grant", "ssh", "--from", "203.0.113.5", "--for", "10m", "--reason", "m"])
        #expect(!refused.succeeded)
        #expect(try setup.sample(#"drawbridge_grants_total{event="refuse"}"#) == 1)

        let revoked = try setup.agent.cli(["revoke", "--from", "192.0.2.10/32"])
        #expect(revoked.succeeded, "\(revoked.error)")
        #expect(try setup.sample(active) == 0)
        #expect(try setup.sample(#"drawbridge_grants_total{event="revoke"}"#) == 1)

        // Requests and kernel transactions are timed: three grants and a revocation reached the kernel.
        let scrape = try setup.curl().body
        let transactions = Setup.value(of: "drawbridge_kernel_apply_seconds_count", in: scrape) ?? 0
        #expect(transactions >= 3, "\(scrape)")
        #expect((Setup.value(of: #"drawbridge_request_seconds_count{command="grant"}"#, in: scrape) ?? 0) == 3)

        // The socket gives the same series (values of the histograms move with each request, so names compared).
        let cli = try setup.agent.cli(["metrics"])
        #expect(cli.succeeded, "\(cli.error)")
        func names(_ text: String) -> Set<String> {
            Set(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { String($0.split(separator: " ")[0]) })
        }
        #expect(names(cli.output) == names(scrape))
        #expect(cli.output.contains("# TYPE drawbridge_grants_total counter"))
        let status = try setup.agent.cli(["status"])
        #expect(status.output.contains("metrics: http://\(Self.listen)/metrics"), "\(status.output)")

        // Prometheus' own parser and linter accept the exposition.
        let lint = try run(["promtool", "check", "metrics"], input: scrape, check: false)
        #expect(lint.succeeded, "promtool check metrics: \(lint.output) \(lint.error)")
    }

    @Test("the table counts each managed port's drops and accepts: exactly the SYNs sent, also across a reload")
    func kernelCounters() throws {
        let setup = try Setup()
        let listener = try TCPListener(in: setup.network.host, port: 22)
        defer { _ = listener }
        func connect() throws -> Bool {
            // 700 ms is below TCP's first retransmission (1 s): one SYN per attempt.
            try canConnect(from: setup.network.client, to: TestNetwork.hostIPv4, port: 22, source: TestNetwork.clientIPv4)
        }
        let dropped = #"drawbridge_dropped_packets_total{port="ssh"}"#
        let accepted = #"drawbridge_accepted_packets_total{port="ssh"}"#
        #expect(try setup.sample(dropped) == 0)
        #expect(try setup.sample(accepted) == 0)

        for _ in 0..<5 { #expect(try !connect(), "closed before a grant") }
        #expect(try setup.sample(dropped) == 5)
        #expect(try setup.sample(accepted) == 0)
        #expect((try setup.sample(#"drawbridge_dropped_bytes_total{port="ssh"}"#) ?? 0) >= 5 * 40)

        let source = TestNetwork.clientIPv4.description
        #expect(try setup.agent.cli(["grant", "ssh", "--from", source, "--for", "10m", "--reason", "count"]).succeeded)
        for _ in 0..<3 { #expect(try connect(), "open during the grant") }
        #expect(try setup.sample(accepted) == 3)
        #expect(try setup.sample(dropped) == 5)
        #expect(try setup.sample(#"drawbridge_dropped_packets_total{port="postgres"}"#) == 0)

        let status = try setup.agent.cli(["status"]).output
        #expect(status.contains("ssh 22/tcp: 1 grant; 5 dropped, 3 accepted in the last"), "\(status)")

        // A reload installs the rules again (the kernel's counters restart); the totals carry on from where they were.
        #expect(try setup.agent.cli(["revoke", "--from", "\(source)/32"]).succeeded)
        setup.agent.signal(SIGHUP)
        #expect(
            try eventually(within: .seconds(5)) {
                try setup.agent.auditEvents().contains { $0["event"] as? String == "reload" }
            })
        #expect(try !connect(), "closed after the revocation")
        #expect(try setup.sample(dropped) == 6)
        #expect(try setup.sample(accepted) == 3)
    }

    @Test("every metric the Grafana dashboard queries is in a real scrape")
    func dashboardQueriesExist() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("packaging/grafana/drawbridge-dashboard.json")
        let dashboard = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
        var expressions: [String] = []
        for panel in dashboard["panels"] as! [[String: Any]] {
            for target in panel["targets"] as! [[String: Any]] { expressions.append(target["expr"] as! String) }
        }
        #expect(expressions.count >= 10)
        let setup = try Setup()
        #expect(try setup.agent.cli(["grant", "ssh", "--from", "192.0.2.12", "--for", "5m", "--reason", "d"]).succeeded)
        let scrape = try setup.curl().body
        let served = Set(
            scrape.split(separator: "\n").filter { !$0.hasPrefix("#") }.map {
                String($0.prefix { $0 != "{" && $0 != " " })
            })
        let pattern = try NSRegularExpression(pattern: "drawbridge_[a-z_]+")
        for expression in expressions {
            let range = NSRange(expression.startIndex..., in: expression)
            let names = pattern.matches(in: expression, range: range).map {
                String(expression[Range($0.range, in: expression)!])
            }
            #expect(!names.isEmpty, "\(expression)")
            for name in names { #expect(served.contains(name), "\(name) (in \(expression)) is not served") }
        }
    }

    @Test("only GET /metrics is served: other paths 404, other methods 405")
    func onlyMetrics() throws {
        let setup = try Setup()
        #expect(try setup.curl("/").code == 404)
        #expect(try setup.curl("/metrics/../admin").code == 404)
        #expect(try setup.curl("/metrics", method: "POST").code == 405)
        #expect(try setup.curl("/metrics", method: "DELETE").code == 405)
        #expect(try setup.curl("/metrics?x=1").code == 200)
        // A request head beyond the HTTP parser's limit is refused, and the agent serves on.
        let huge = try run(
            [
                "curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                "X-Big: " + String(repeating: "a", count: 100_000), "http://\(Self.listen)/metrics",
            ], in: setup.network.host, check: false)
        #expect(huge.output != "200", "\(huge.output)")
        #expect(try setup.curl().code == 200)
        #expect(setup.agent.pid != nil, "the agent still runs")
    }

    @Test("40 idle connections hold up neither the agent nor, once they time out, the endpoint")
    func idleClients() throws {
        let setup = try Setup()
        let log = setup.agent.directory + "/idle.log"
        // Opens 40 connections that never send a byte, and reports how many the server closed within 8 s.
        let holder = BackgroundProcess(
            [
                "python3", "-c",
                """
                import socket, time, select
                held = []
                for _ in range(40):
                    s = socket.create_connection(("127.0.0.1", 9447), timeout=2)
                    held.append(s)
                print("held", len(held), flush=True)
                deadline = time.time() + 8
                closed = set()
                while time.time() < deadline and len(closed) < len(held):
                    ready, _, _ = select.select([s for s in held if s not in closed], [], [], 0.2)
                    for s in ready:
                        try:
                            if s.recv(1) == b"":
                                closed.add(s)
                        except OSError:
                            closed.add(s)
                print("closed", len(closed), flush=True)
                """,
            ], in: setup.network.host, logPath: log)
        try holder.start()
        #expect(eventually(within: .seconds(5)) { holder.log.contains("held 40") }, "\(holder.log)")

        // While they are held, the agent answers and grants at once.
        let started = Date()
        let status = try setup.agent.cli(["status"])
        #expect(status.succeeded, "\(status.error) \(setup.agent.log(tail: 40))")
        let granted = try setup.agent.cli(["grant", "ssh", "--from", "192.0.2.11", "--for", "5m", "--reason", "idle"])
        #expect(granted.succeeded, "\(granted.error) \(setup.agent.log(tail: 40))")
        #expect(Date().timeIntervalSince(started) < TestTiming.seconds(2), "status and grant took \(Date().timeIntervalSince(started)) s")

        // The server closes every idle connection (those over the limit at once, the rest at the request deadline).
        #expect(eventually(within: .seconds(10)) { holder.log.contains("closed 40") }, "\(holder.log)")
        holder.stop()
        #expect(setup.agent.pid != nil, "the agent still runs: \(setup.agent.log(tail: 40))")
        #expect(try setup.sample(#"drawbridge_grants_active{port="ssh",origin="local"}"#) == 1)
    }
}
