import ArgumentParser
import DrawbridgeAgent
import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import NetfilterModel

#if canImport(Glibc)
    import Glibc
#endif

/// `drawbridge-bench agent`: the real drawbridged and drawbridge binaries in a throwaway namespace, against `nft`.
struct AgentBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Time the agent: grants through the CLI against nft, at scale, restarts, concurrency, idle wake-ups.",
        discussion: """
            Runs the release drawbridged and drawbridge found next to this executable (build them with \
            `swift build -c release`), each agent in a fresh anonymous network namespace with its own state \
            directory, and measures, in one run:

              grant at 0      one `drawbridge grant` of a fresh address (and of a fresh /64 prefix) with no grant
                              present, against one `nft add element` process for the same element into an
                              identical table in another namespace; alternating, median of --repeat.
              grant at 100k   the same CLI grant with --grants single-address grants stored (IPv6 documentation
                              addresses, loaded from a snapshot): ratio to the empty agent; and the agent's own CPU
                              per change (from /proc, over --socket-grants requests sent straight to the socket,
                              so no CLI start is counted), its latency, and journal and audit bytes per grant.
              prefixes        the same with --prefixes prefix grants stored.
              restart         time from exec of drawbridged with --grants stored grants until it answers
                              (it answers only when enforcement is complete), and its memory then.
              file of 1M      time from exec with a grants file of --file-grants single addresses until it
                              answers, against the kernel path alone for the same elements (one TableDriver
                              rebuild in a fresh namespace); --file-rounds rounds, the median ratio; memory then.
              concurrency     --clients clients each sending --requests requests (grant, list, revoke mixed) at
                              once; every acknowledgement is checked against the agent's list afterwards.
              idle            context switches of every thread of an idle agent over --idle-seconds.

            Everything runs in namespaces this command creates (nft runs through nsenter); the machine's own network
            is never touched. Needs root, nft and nsenter.
            """)

    @Option(help: "Single-address grants stored for the at-scale grant and restart measurements.")
    var grants = 100_000

    @Option(help: "Prefix grants stored for the prefix measurement.")
    var prefixes = 10_000

    @Option(help: "Entries of the grants file for the file measurement (0 skips it).")
    var fileGrants = 1_000_000

    @Option(name: .customLong("repeat"), help: "CLI grants per measurement (median).")
    var repeats = 20

    @Option(help: "Grants sent straight to the socket for the agent's own time per change.")
    var socketGrants = 300

    @Option(help: "Concurrent clients.")
    var clients = 50

    @Option(help: "Requests per client.")
    var requests = 200

    @Option(help: "Seconds to count the idle agent's wake-ups (0 skips it).")
    var idleSeconds = 60

    @Flag(help: "Print the results as JSON.")
    var json = false

    @Option(
        help: ArgumentHelp(
            "Rounds of the grants-file measurement: each times the agent and the kernel path alone (alternating which goes first); the median ratio is reported, and every round.",
            valueName: "count"))
    var fileRounds = 3

    @Flag(help: "Only the grants-file measurement (--file-grants entries), for working on the start path.")
    var fileOnly = false

    @Option(help: ArgumentHelp("Only prepare a state directory of this many stored grants here, and exit (for profiling).", valueName: "directory"))
    var prepareState: String?

    func run() throws {
        guard geteuid() == 0 else {
            FileHandle.standardError.write(Data("drawbridge-bench agent: must run as root (namespaces)\n".utf8))
            throw ExitCode(1)
        }
        guard let nsenter = locate("nsenter"), let nft = locate("nft") else {
            FileHandle.standardError.write(Data("drawbridge-bench agent: needs nsenter and nft in PATH\n".utf8))
            throw ExitCode(1)
        }
        let binaries = ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "")
            .split(separator: "/").dropLast().joined(separator: "/")
        let agentPath = "/" + binaries + "/drawbridged"
        let cliPath = "/" + binaries + "/drawbridge"
        guard access(agentPath, X_OK) == 0, access(cliPath, X_OK) == 0 else {
            FileHandle.standardError.write(
                Data("drawbridge-bench agent: drawbridged and drawbridge must be next to this executable\n".utf8))
            throw ExitCode(1)
        }
        if let prepareState {
            var book = GrantBook()
            for grant in AgentMeasurements.singleGrants(grants, block: 1) { book.put(grant) }
            try FileManager.default.createDirectory(atPath: prepareState, withIntermediateDirectories: true)
            let bytes = GrantStore.snapshotBytes(book, settings: [:], bootID: SystemClock.bootID(), now: SystemClock.now())
            try Data(bytes).write(to: URL(fileURLWithPath: prepareState + "/snapshot-1"))
            return
        }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("drawbridge-agent-bench-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        chmod(scratch.path, 0o755)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let bench = AgentMeasurements(
            agentPath: agentPath, cliPath: cliPath, nsenter: nsenter, nft: nft, scratch: scratch, options: self)
        if fileOnly {
            var report = AgentReport(kernel: SystemClock.kernelRelease(), cpus: ProcessInfo.processInfo.activeProcessorCount)
            report.file = try bench.fileLoad(max(1, fileGrants))
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(report.file), as: UTF8.self))
            } else {
                print(report.text())
            }
            return
        }
        let report = try bench.run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.text())
        }
    }
}

/// What `drawbridge-bench agent` found.
struct AgentReport: Codable {
    var kernel: String
    var cpus: Int
    var cliStartMilliseconds: Double?
    var nftStartMilliseconds: Double?
    var grantEmpty: Comparison?
    var prefixGrantEmpty: Comparison?
    var atScale: [Scale] = []
    var restart: Restart?
    var file: FileLoad?
    var concurrency: Concurrency?
    var idle: Idle?

    struct Comparison: Codable {
        var cliMilliseconds: Double
        var nftMilliseconds: Double
        /// CLI time / nft time (at most 1 is the goal).
        var ratio: Double
    }

    struct Scale: Codable {
        var present: String
        var cliMilliseconds: Double
        /// CLI time here / CLI time with no grant present (at most 1.5 is the goal).
        var ratioToEmpty: Double
        var agentCPUMillisecondsPerChange: Double
        var socketLatencyMedianMilliseconds: Double
        var journalBytesPerGrant: Double
        var auditBytesPerGrant: Double
        var residentMiB: Double
    }

    struct Restart: Codable {
        var storedGrants: Int
        var secondsUntilEnforced: Double
        var residentMiB: Double
        var residentIdleEmptyMiB: Double
    }

    /// The round with the median ratio, and every round.
    struct FileLoad: Codable {
        var entries: Int
        var fileMiB: Double
        var agentSeconds: Double
        var kernelPathSeconds: Double
        /// agent / kernel path (at most 1.5 is the goal).
        var ratio: Double
        var residentMiB: Double
        var rounds: [Round]

        struct Round: Codable {
            var agentSeconds: Double
            var kernelPathSeconds: Double
            var ratio: Double
            var residentMiB: Double
        }
    }

    struct Concurrency: Codable {
        var clients: Int
        var requestsPerClient: Int
        var acknowledged: Int
        var lost: Int
        var resurrected: Int
        var p50Milliseconds: Double
        var p99Milliseconds: Double
        var maxMilliseconds: Double
        var seconds: Double
    }

    struct Idle: Codable {
        var seconds: Int
        var threads: Int
        var wakeups: Int
        var safetyChecks: Int
    }

    func text() -> String {
        func ms(_ value: Double) -> String { String(format: "%.2f ms", value) }
        var lines = ["drawbridge-bench agent — kernel \(kernel), \(cpus) CPUs"]
        if let cliStartMilliseconds, let nftStartMilliseconds {
            lines.append(
                "process start alone: drawbridge --version \(ms(cliStartMilliseconds)), nft --version \(ms(nftStartMilliseconds))")
        }
        if let grantEmpty, let prefixGrantEmpty {
            lines.append(
                "one grant, nothing present: drawbridge grant \(ms(grantEmpty.cliMilliseconds)) vs nft add element "
                    + "\(ms(grantEmpty.nftMilliseconds)): ratio \(String(format: "%.2f", grantEmpty.ratio))")
            lines.append(
                "one prefix grant, nothing present: \(ms(prefixGrantEmpty.cliMilliseconds)) vs nft add element "
                    + "\(ms(prefixGrantEmpty.nftMilliseconds)): ratio \(String(format: "%.2f", prefixGrantEmpty.ratio))")
        }
        for scale in atScale {
            lines.append(
                "with \(scale.present): drawbridge grant \(ms(scale.cliMilliseconds)) (\(String(format: "%.2f", scale.ratioToEmpty))x "
                    + "the empty agent); agent CPU per change \(ms(scale.agentCPUMillisecondsPerChange)); socket "
                    + "latency \(ms(scale.socketLatencyMedianMilliseconds)); per grant \(Int(scale.journalBytesPerGrant)) "
                    + "journal + \(Int(scale.auditBytesPerGrant)) audit bytes; RSS \(String(format: "%.1f", scale.residentMiB)) MiB")
        }
        if let restart {
            lines.append(
                "restart with \(restart.storedGrants) stored grants: enforced in \(String(format: "%.2f", restart.secondsUntilEnforced)) s; "
                    + "RSS \(String(format: "%.1f", restart.residentMiB)) MiB (idle, empty: \(String(format: "%.1f", restart.residentIdleEmptyMiB)) MiB)")
        }
        if let file {
            lines.append(
                "grants file of \(file.entries) (\(String(format: "%.0f", file.fileMiB)) MiB): enforced in "
                    + "\(String(format: "%.2f", file.agentSeconds)) s vs kernel path \(String(format: "%.2f", file.kernelPathSeconds)) s: "
                    + "ratio \(String(format: "%.2f", file.ratio)) (the median of \(file.rounds.count) rounds: "
                    + file.rounds.map { String(format: "%.2f", $0.ratio) }.joined(separator: ", ") + "); RSS "
                    + "\(String(format: "%.1f", file.residentMiB)) MiB")
        }
        if let concurrency {
            lines.append(
                "\(concurrency.clients) clients x \(concurrency.requestsPerClient) requests: \(concurrency.acknowledged) "
                    + "acknowledged, \(concurrency.lost) lost, \(concurrency.resurrected) revoked-but-listed; p50 "
                    + "\(ms(concurrency.p50Milliseconds)), p99 \(ms(concurrency.p99Milliseconds)), max "
                    + "\(ms(concurrency.maxMilliseconds)); \(String(format: "%.1f", concurrency.seconds)) s")
        }
        if let idle {
            lines.append(
                "idle for \(idle.seconds) s: \(idle.wakeups) wake-ups over \(idle.threads) threads "
                    + "(\(idle.safetyChecks) safety checks due)")
        }
        return lines.joined(separator: "\n")
    }
}

/// Runs the agent measurements.
final class AgentMeasurements {
    let agentPath: String
    let cliPath: String
    let nsenter: String
    let nft: String
    let scratch: URL
    let options: AgentBench
    let spawner: Spawner
    private let clock = ContinuousClock()
    private var rigCount = 0

    init(agentPath: String, cliPath: String, nsenter: String, nft: String, scratch: URL, options: AgentBench) {
        self.agentPath = agentPath
        self.cliPath = cliPath
        self.nsenter = nsenter
        self.nft = nft
        self.scratch = scratch
        self.options = options
        spawner = Spawner(scratch: scratch)
    }

    func log(_ line: String) {
        FileHandle.standardError.write(Data("[drawbridge-bench agent] \(line)\n".utf8))
    }

    static let policy = """
        ports:
          ssh: { port: 22, protocol: tcp, max_duration: 3h, allowed_sources: ["2001:db8::/32", "192.0.2.0/24"] }
        always_allow: []
        on_expiry: keep-sessions
        roles: []

        """

    func run() throws -> AgentReport {
        let kernelRelease = SystemClock.kernelRelease()
        let cliStart = median(try (0..<10).map { _ in try spawner.check([cliPath, "--version"], what: "drawbridge --version").wall.seconds * 1000 })
        let nftArena = try Arena.make()
        let nftStart = median(
            try (0..<10).map { _ in
                try spawner.check([nsenter, "--net=\(nftArena.namespace.path)", nft, "--version"], what: "nft --version")
                    .wall.seconds * 1000
            })

        // Nothing present.
        log("grants with nothing present, against nft add element")
        let empty = try Rig(self, policy: Self.policy)
        try empty.start()
        let idleEmpty = empty.residentMiB()
        let (grantEmpty, prefixEmpty) = try compareWithNft(empty, nftArena: nftArena)
        try empty.stop()

        var report = AgentReport(
            kernel: kernelRelease, cpus: ProcessInfo.processInfo.activeProcessorCount, cliStartMilliseconds: cliStart,
            nftStartMilliseconds: nftStart, grantEmpty: grantEmpty, prefixGrantEmpty: prefixEmpty)

        // Many single addresses stored: restart, then grants.
        log("\(options.grants) stored single-address grants: restart, grants")
        let singles = try Rig(self, policy: Self.policy)
        try singles.store(grants: Self.singleGrants(options.grants, block: 1))
        let restartSeconds = try singles.start()
        report.restart = AgentReport.Restart(
            storedGrants: options.grants, secondsUntilEnforced: restartSeconds, residentMiB: singles.residentMiB(),
            residentIdleEmptyMiB: idleEmpty)
        report.atScale.append(
            try scale(singles, present: "\(options.grants) single-address grants", empty: grantEmpty, prefix: false))
        if options.idleSeconds > 0 {
            log("idle for \(options.idleSeconds) s")
            report.idle = try idle(singles)
        }
        try singles.stop()

        log("\(options.prefixes) stored prefix grants")
        let ranges = try Rig(self, policy: Self.policy)
        try ranges.store(grants: Self.prefixGrants(options.prefixes))
        try ranges.start()
        report.atScale.append(
            try scale(ranges, present: "\(options.prefixes) prefix grants", empty: prefixEmpty, prefix: true))
        try ranges.stop()

        if options.fileGrants > 0 {
            log("a grants file of \(options.fileGrants) entries")
            report.file = try fileLoad(options.fileGrants)
        }

        log("\(options.clients) concurrent clients")
        let busy = try Rig(self, policy: Self.policy)
        try busy.start()
        report.concurrency = try concurrency(busy)
        try busy.stop()
        return report
    }

    // MARK: Parts

    private func compareWithNft(_ rig: Rig, nftArena: Arena) throws -> (AgentReport.Comparison, AgentReport.Comparison) {
        var results: [AgentReport.Comparison] = []
        for prefix in [false, true] {
            var cliTimes: [Double] = []
            var nftTimes: [Double] = []
            for index in 0..<(options.repeats + 2) {
                let source = prefix ? "2001:db8:fe:\(String(index, radix: 16))::/64" : "2001:db8:ff::\(String(index + 1, radix: 16))"
                let cli = try spawner.check(
                    [cliPath, "grant", "ssh", "--from", source, "--for", "1h", "--socket", rig.socket], what: "drawbridge grant")
                let set = prefix ? "ranges6" : "grants6"
                let element = "\(source) . tcp . 22 timeout 1h"
                let nftRun = try spawner.check(
                    [nsenter, "--net=\(nftArena.namespace.path)", nft, "add element inet drawbridge \(set) { \(element) }"],
                    what: "nft add element")
                if index >= 2 {  // the first two warm caches
                    cliTimes.append(cli.wall.seconds * 1000)
                    nftTimes.append(nftRun.wall.seconds * 1000)
                }
            }
            let cli = median(cliTimes)
            let nftMedian = median(nftTimes)
            results.append(AgentReport.Comparison(cliMilliseconds: cli, nftMilliseconds: nftMedian, ratio: cli / nftMedian))
        }
        return (results[0], results[1])
    }

    private func scale(
        _ rig: Rig, present: String, empty: AgentReport.Comparison, prefix: Bool
    ) throws -> AgentReport.Scale {
        var cliTimes: [Double] = []
        for index in 0..<(options.repeats + 2) {
            let source = prefix ? "2001:db8:fd:\(String(index, radix: 16))::/64" : "2001:db8:fc::\(String(index + 1, radix: 16))"
            let run = try spawner.check(
                [cliPath, "grant", "ssh", "--from", source, "--for", "1h", "--socket", rig.socket], what: "drawbridge grant")
            if index >= 2 { cliTimes.append(run.wall.seconds * 1000) }
        }
        // The agent's own work per change: requests straight to the socket, CPU from /proc.
        let journalBefore = rig.journalBytes()
        let auditBefore = rig.auditBytes()
        let cpuBefore = rig.cpuSeconds()
        var latencies: [Double] = []
        for index in 0..<options.socketGrants {
            let source = prefix ? "2001:db8:fb:\(String(index, radix: 16))::/64" : "2001:db8:fa::\(String(index + 1, radix: 16))"
            let started = clock.now
            let answer = try rig.request(
                #"{"command":"grant","ports":["ssh"],"source":"\#(source)","duration_seconds":3600}"#)
            latencies.append((clock.now - started).seconds * 1000)
            guard answer.contains("\"ok\":true") else { throw SpawnError(description: "grant refused: \(answer)") }
        }
        let cpu = (rig.cpuSeconds() - cpuBefore) * 1000 / Double(options.socketGrants)
        let cli = median(cliTimes)
        return AgentReport.Scale(
            present: present, cliMilliseconds: cli, ratioToEmpty: cli / empty.cliMilliseconds,
            agentCPUMillisecondsPerChange: cpu, socketLatencyMedianMilliseconds: median(latencies),
            journalBytesPerGrant: Double(rig.journalBytes() - journalBefore) / Double(options.socketGrants),
            auditBytesPerGrant: Double(rig.auditBytes() - auditBefore) / Double(options.socketGrants),
            residentMiB: rig.residentMiB())
    }

    private func idle(_ rig: Rig) throws -> AgentReport.Idle {
        usleep(3_000_000)
        let before = rig.contextSwitches()
        usleep(UInt32(options.idleSeconds) * 1_000_000)
        let after = rig.contextSwitches()
        // A thread that began in between counts from zero; one that ended counts what it did before it ended only
        // as far as the first reading saw (its last switches are lost with it, so this is a lower bound then).
        let wakeups = after.reduce(0) { total, thread in total + thread.value - (before[thread.key] ?? 0) }
        return AgentReport.Idle(
            seconds: options.idleSeconds, threads: after.count, wakeups: wakeups,
            safetyChecks: options.idleSeconds / 60)
    }

    func fileLoad(_ count: Int) throws -> AgentReport.FileLoad {
        let expiry = Timestamp.format(Date().addingTimeInterval(7200))
        var text = "{\"grants\":[\n"
        text.reserveCapacity(count * 90)
        var elements: [AccessKey: MonotonicInstant] = [:]
        elements.reserveCapacity(count)
        let deadline = SystemClock.monotonic().advanced(by: 7200)
        let ssh = Service(port: 22, transport: .tcp)
        for index in 0..<count {
            let address = IPAddress.v6(high: 0x2001_0db8_0004_0000, low: UInt64(index + 1))
            if index > 0 { text += ",\n" }
            text += #"{"source":"\#(address)","ports":["ssh"],"expires_at":"\#(expiry)"}"#
            elements[AccessKey(source: IPPrefix(address: address), service: ssh)] = deadline
        }
        text += "\n]}\n"
        let bytes = Data(text.utf8)
        text = ""

        // The kernel path alone for the same elements: one rebuild in a fresh namespace.
        func kernelPath() throws -> Double {
            let arena = try Arena.make()
            let started = clock.now
            try arena.enforcer.rebuild(
                TableLayout(mode: .keepSessions, managedServices: [ssh], alwaysAllowed: []), elements: elements)
            return (clock.now - started).seconds
        }
        func agent(_ round: Int) throws -> (seconds: Double, resident: Double) {
            let name = "rig-file-\(round)"
            let rig = try Rig(
                self, policy: Self.policy + "grant_files: [\"\(scratch.path)/\(name)/grants.json\"]\n", name: name)
            try bytes.write(to: URL(fileURLWithPath: rig.directory + "/grants.json"))
            let seconds = try rig.start()
            let resident = rig.residentMiB()
            try rig.stop()
            return (seconds, resident)
        }
        // Rounds alternate which goes first, and each waits for the kernel to finish freeing the previous
        // namespace's million elements (a worker does that after the namespace is gone).
        var rounds: [AgentReport.FileLoad.Round] = []
        for round in 0..<max(1, options.fileRounds) {
            var agentRun = (seconds: 0.0, resident: 0.0)
            var kernelSeconds = 0.0
            if round % 2 == 0 {
                agentRun = try agent(round)
                sleep(3)
                kernelSeconds = try kernelPath()
            } else {
                kernelSeconds = try kernelPath()
                sleep(3)
                agentRun = try agent(round)
            }
            sleep(3)
            rounds.append(
                .init(
                    agentSeconds: agentRun.seconds, kernelPathSeconds: kernelSeconds,
                    ratio: agentRun.seconds / kernelSeconds, residentMiB: agentRun.resident))
            log(
                "grants file round \(round + 1): agent \(String(format: "%.2f", agentRun.seconds)) s, kernel path "
                    + "\(String(format: "%.2f", kernelSeconds)) s")
        }
        let middle = rounds.sorted { $0.ratio < $1.ratio }[rounds.count / 2]
        return AgentReport.FileLoad(
            entries: count, fileMiB: Double(bytes.count) / 1_048_576, agentSeconds: middle.agentSeconds,
            kernelPathSeconds: middle.kernelPathSeconds, ratio: middle.ratio, residentMiB: middle.residentMiB,
            rounds: rounds)
    }

    private func concurrency(_ rig: Rig) throws -> AgentReport.Concurrency {
        final class Ledger: @unchecked Sendable {
            let lock = NSLock()
            var granted: [String: String] = [:]  // id -> source
            var revoked: Set<String> = []
            var latencies: [Double] = []
            var failures: [String] = []
        }
        let ledger = Ledger()
        let clients = options.clients
        let requests = options.requests
        let started = clock.now
        let socket = rig.socket
        DispatchQueue.concurrentPerform(iterations: clients) { client in
            var own: [String] = []
            for index in 0..<requests {
                let kind = index % 4
                let body: String
                if kind == 3, let id = own.popLast() {
                    body = #"{"command":"revoke","id":"\#(id)"}"#
                } else if kind == 2 {
                    body = #"{"command":"list"}"#
                } else {
                    let source = "2001:db8:c:\(String(client, radix: 16))::\(String(index + 1, radix: 16))"
                    body = #"{"command":"grant","ports":["ssh"],"source":"\#(source)","duration_seconds":3600}"#
                }
                let clock = ContinuousClock()
                let began = clock.now
                let answer = (try? Rig.request(socket: socket, body)) ?? ""
                let elapsed = (clock.now - began).seconds * 1000
                ledger.lock.lock()
                ledger.latencies.append(elapsed)
                if !answer.contains("\"ok\":true") {
                    ledger.failures.append(String(answer.prefix(200)))
                } else if body.contains("\"grant\""), let id = answer.firstMatch(of: /"id":"(g-[a-z0-9]+)"/)?.1 {
                    ledger.granted[String(id)] = body
                    own.append(String(id))
                } else if body.contains("\"revoke\""), let id = body.firstMatch(of: /"id":"(g-[a-z0-9]+)"/)?.1 {
                    ledger.revoked.insert(String(id))
                }
                ledger.lock.unlock()
            }
        }
        let seconds = (clock.now - started).seconds
        let listed = try rig.request(#"{"command":"list"}"#)
        let ids = Set(listed.matches(of: /"id":"(g-[a-z0-9]+)"/).map { String($0.1) })
        let shouldExist = Set(ledger.granted.keys).subtracting(ledger.revoked)
        let lost = shouldExist.subtracting(ids).count + ledger.failures.count
        let resurrected = ledger.revoked.intersection(ids).count
        let sorted = ledger.latencies.sorted()
        if !ledger.failures.isEmpty { log("failed requests: \(ledger.failures.prefix(3))") }
        return AgentReport.Concurrency(
            clients: clients, requestsPerClient: requests, acknowledged: ledger.latencies.count - ledger.failures.count,
            lost: lost, resurrected: resurrected, p50Milliseconds: sorted[sorted.count / 2],
            p99Milliseconds: sorted[min(sorted.count - 1, sorted.count * 99 / 100)],
            maxMilliseconds: sorted.last ?? 0, seconds: seconds)
    }

    // MARK: Stored grants

    static func singleGrants(_ count: Int, block: UInt64) -> [Grant] {
        let now = SystemClock.now()
        return (0..<count).map { index in
            let address = IPAddress.v6(high: 0x2001_0db8_0000_0000 | block << 16, low: UInt64(index + 1))
            return storedGrant(index, IPPrefix(address: address), now: now)
        }
    }

    static func prefixGrants(_ count: Int) -> [Grant] {
        let now = SystemClock.now()
        return (0..<count).map { index in
            let network = IPAddress.v6(high: 0x2001_0db8_0002_0000 | UInt64(index), low: 0)
            return storedGrant(index, try! IPPrefix(network: network, length: 64), now: now)
        }
    }

    static func storedGrant(_ index: Int, _ source: IPPrefix, now: Instants) -> Grant {
        let seconds = 3600 + Double(index % 3600)
        return Grant(
            id: "g-bench\(index)", source: source, ports: [GrantedPort(name: "ssh", service: Service(port: 22, transport: .tcp))],
            createdAt: now.wall, expiresAt: now.wall.addingTimeInterval(seconds),
            deadline: now.monotonic.advanced(by: seconds), requestedBy: "root", uid: 0, reason: "benchmark",
            origin: .local)
    }

    // MARK: One agent

    final class Rig {
        let owner: AgentMeasurements
        let namespace: NetworkNamespace
        let directory: String
        var pid: pid_t = 0
        var socket: String { directory + "/drawbridge.sock" }
        var state: String { directory + "/state" }
        var audit: String { directory + "/audit.jsonl" }

        init(_ owner: AgentMeasurements, policy: String, name: String? = nil) throws {
            self.owner = owner
            owner.rigCount += 1
            directory = owner.scratch.path + "/" + (name ?? "rig-\(owner.rigCount)")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            chmod(directory, 0o755)
            try Data(policy.utf8).write(to: URL(fileURLWithPath: directory + "/policy.yaml"))
            namespace = try NetworkNamespace.createAnonymous()
        }

        deinit {
            if pid > 0 {
                kill(pid, SIGKILL)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }

        /// Writes a snapshot of these grants as the agent's stored state.
        func store(grants: [Grant]) throws {
            var book = GrantBook()
            for grant in grants { book.put(grant) }
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let bytes = GrantStore.snapshotBytes(book, settings: [:], bootID: SystemClock.bootID(), now: SystemClock.now())
            try Data(bytes).write(to: URL(fileURLWithPath: state + "/snapshot-1"))
        }

        /// Starts the agent; returns the seconds until it answered (enforcement is complete by then).
        @discardableResult
        func start() throws -> Double {
            let clock = ContinuousClock()
            let started = clock.now
            pid = try owner.spawner.start([
                owner.nsenter, "--net=\(namespace.path)", owner.agentPath, "--config", directory + "/policy.yaml",
                "--socket", socket, "--socket-group", "", "--state-dir", state, "--audit-log", audit,
                "--log-level", "warning",
            ], log: directory + "/agent.log")
            while clock.now - started < .seconds(600) {
                if (try? request(#"{"command":"status"}"#))?.contains("\"ok\":true") == true {
                    return (clock.now - started).seconds
                }
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid {
                    pid = 0
                    throw SpawnError(description: "drawbridged exited: \((try? String(contentsOfFile: directory + "/agent.log", encoding: .utf8)) ?? "")")
                }
                usleep(2_000)
            }
            throw SpawnError(description: "drawbridged did not answer within 600 s")
        }

        func stop() throws {
            guard pid > 0 else { return }
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            pid = 0
        }

        func request(_ body: String) throws -> String { try Self.request(socket: socket, body) }

        static func request(socket: String, _ body: String) throws -> String {
            let descriptor = try UnixSocket.connect(socket)
            defer { close(descriptor) }
            try Files.writeAll(descriptor, Array((body + "\n").utf8), path: socket)
            return String(decoding: try Files.readAll(descriptor, path: socket, maximumBytes: 1 << 30), as: UTF8.self)
        }

        /// The agent's pid inside nsenter: nsenter execs it, so it is the same pid.
        private var procPath: String { "/proc/\(pid)" }

        func cpuSeconds() -> Double {
            guard let text = try? String(contentsOfFile: procPath + "/stat", encoding: .utf8),
                let close = text.lastIndex(of: ")")
            else { return 0 }
            let fields = text[text.index(after: close)...].split(separator: " ")
            let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
            return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
        }

        func residentMiB() -> Double {
            guard let text = try? String(contentsOfFile: procPath + "/status", encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
            else { return 0 }
            return (Double(line.split(separator: " ")[1]) ?? 0) / 1024
        }

        /// Context switches so far, per thread (voluntary + involuntary): compare two readings thread by thread,
        /// since threads that end in between take their counts with them.
        func contextSwitches() -> [String: Int] {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: procPath + "/task")) ?? []
            var counts: [String: Int] = [:]
            for task in tasks {
                guard let text = try? String(contentsOfFile: "\(procPath)/task/\(task)/status", encoding: .utf8) else {
                    continue
                }
                var total = 0
                for line in text.split(separator: "\n")
                where line.hasPrefix("voluntary_ctxt_switches:") || line.hasPrefix("nonvoluntary_ctxt_switches:") {
                    total += Int(line.split(separator: "\t").last ?? "0") ?? 0
                }
                counts[task] = total
            }
            return counts
        }

        func journalBytes() -> Int {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
            return names.filter { $0.hasPrefix("journal-") || $0.hasPrefix("snapshot-") }.reduce(0) { total, name in
                total + ((try? FileManager.default.attributesOfItem(atPath: state + "/" + name)[.size] as? Int) ?? 0)
            }
        }

        func auditBytes() -> Int {
            (try? FileManager.default.attributesOfItem(atPath: audit)[.size] as? Int) ?? 0
        }
    }
}
