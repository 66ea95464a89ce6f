import ArgumentParser
import Foundation
import Netfilter

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `drawbridge-bench`: the kernel layer (default) or the whole agent, each against `nft`.
struct DrawbridgeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drawbridge-bench",
        abstract: "Benchmarks against the nft tool, in throwaway network namespaces.",
        subcommands: [KernelBench.self, AgentBench.self], defaultSubcommand: KernelBench.self)
}

struct KernelBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernel",
        abstract: "Time drawbridge's nftables grant-set loads against the nft tool, in throwaway network namespaces.",
        discussion: """
            Measured for each set kind, in one process run:

              bulk apply  N elements into an empty set.
                          drawbridge: one GrantEnforcer.apply of an ElementDiff
                          (one transaction: encode, one sendmsg, every ACK read);
                          the diff is computed before the clock starts.
                          nft: `nft -f FILE` (written beforehand), timed from
                          spawn to exit.
              1 element   one more element while N are present, repeated
                          --repeat times with different elements (median).
                          drawbridge: one GrantEnforcer.apply on its open
                          connection. nft: one `nft add element ...` process.

            Set kinds (documentation addresses only, every element timeout 1h):
              hash        single addresses into grants4 (ipv4_addr . inet_proto
                          . inet_service, flags timeout: rhash), the 256
                          addresses of 192.0.2.0/24 x ports 1, 2, ...
              interval    prefixes into ranges4 (same type, flags
                          interval,timeout: pipapo), the 64 /30 prefixes of
                          198.51.100.0/24 x ports 1, 2, ...
              The 1-element changes come from 203.0.113.0/24.

            Isolation: every bulk load runs in a fresh anonymous network
            namespace (NetworkNamespace.createAnonymous) in which the drawbridge
            table was installed by GrantEnforcer.install, for both tools; nft
            runs as `nsenter --net=<namespace> nft ...`. The machine's own
            network namespace is never touched; the namespaces vanish when the
            command exits.

            Checks: after every load the set is read back and must hold exactly
            the expected elements, so a broken load cannot look fast.

            Expiry skew: the kernel starts each element's clock when it
            processes that element's message, so in a big transaction the first
            elements expire earlier than the last. Printed as the spread (max -
            min) of the absolute expiries of 256 elements sampled across the
            batch, read with one point query right after the load. For
            drawbridge also: how far from the requested instant the elements
            expire, and how many a reconcile right after the load would
            rewrite because of that drift (ElementDiff, 1 s tolerance).

            Times are wall clock (ContinuousClock); CPU split and nft's peak
            memory are printed too. Needs root (namespaces need CAP_SYS_ADMIN),
            nft and nsenter. At the default N the run takes about a minute.
            """)

    @Option(help: "Elements per bulk load (N).")
    var elements = 100_000

    @Option(name: .customLong("repeat"), help: "1-element changes per kind and tool; the median is reported.")
    var changes = 20

    @Option(help: "Bulk loads per kind and tool, each in a fresh namespace; the median is reported.")
    var runs = 3

    @Option(help: "Set kinds to measure, comma-separated: hash, interval.")
    var kinds = "hash,interval"

    @Flag(help: "Print the results as JSON on stdout (progress still goes to stderr).")
    var json = false

    @Flag(name: .shortAndLong, help: "No progress lines on stderr.")
    var quiet = false

    var selectedKinds: [SetKind] {
        get throws {
            var selected: [SetKind] = []
            for name in kinds.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) {
                guard let kind = SetKind(rawValue: name) else {
                    throw ValidationError("unknown set kind '\(name)' in --kinds (use hash, interval)")
                }
                if !selected.contains(kind) { selected.append(kind) }
            }
            guard !selected.isEmpty else { throw ValidationError("--kinds names no set kind (use hash, interval)") }
            return selected
        }
    }

    func validate() throws {
        let selected = try selectedKinds
        guard elements >= 1 else { throw ValidationError("--elements must be at least 1") }
        for kind in selected where elements > kind.maxElements {
            throw ValidationError(
                "--elements \(elements) is more than the \(kind.maxElements) \(kind.rawValue) elements the documentation ranges allow"
            )
        }
        guard (1...1000).contains(changes) else { throw ValidationError("--repeat must be between 1 and 1000") }
        guard (1...20).contains(runs) else { throw ValidationError("--runs must be between 1 and 20") }
    }

    func run() throws {
        guard geteuid() == 0 else {
            FileHandle.standardError.write(
                Data(
                    "drawbridge-bench: must run as root: it creates network namespaces (CAP_SYS_ADMIN) and programs nftables in them (CAP_NET_ADMIN)\n"
                        .utf8))
            throw ExitCode(1)
        }
        guard let nsenter = locate("nsenter"), let nft = locate("nft") else {
            FileHandle.standardError.write(
                Data("drawbridge-bench: needs nsenter (util-linux) and nft (nftables) in PATH\n".utf8))
            throw ExitCode(1)
        }
        let selected = try selectedKinds
        let started = ContinuousClock.now
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("drawbridge-bench-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }

        let quiet = self.quiet
        let bench = Bench(
            elements: elements, changes: changes, runs: runs, nsenter: nsenter, nft: nft, scratch: scratch,
            log: { line in
                if !quiet { FileHandle.standardError.write(Data("[drawbridge-bench] \(line)\n".utf8)) }
            })
        do {
            let kernel = ((try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)) ?? "unknown")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let (version, start) = try bench.processStart()
            var results: [KindResult] = []
            for kind in selected {
                results.append(try bench.measure(kind))
            }
            let report = BenchReport(
                kernel: kernel, nftVersion: version, cpus: ProcessInfo.processInfo.activeProcessorCount,
                elements: elements, changes: changes, runs: runs, timeoutSeconds: Workload.timeoutSeconds,
                tableInstalledBy: "GrantEnforcer.install (the same table for both tools)",
                isolation: "one fresh anonymous network namespace per bulk load; nft via nsenter --net",
                processStart: start, kinds: results, maxBackgroundLoad: bench.maxBackgroundLoad,
                totalSeconds: (ContinuousClock.now - started).seconds)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(report.text())
            }
        } catch let error as ExitCode {
            throw error
        } catch {
            FileHandle.standardError.write(Data("drawbridge-bench: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
