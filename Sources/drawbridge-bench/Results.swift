import Foundation

/// One bulk load by one tool into a fresh namespace.
struct LoadSample: Codable {
    /// Wall clock: for drawbridge `GrantEnforcer.apply` (encode, one sendmsg, every ACK read); for nft the process
    /// from spawn to reaped exit.
    var seconds: Double
    /// CPU time: drawbridge's thread (system time includes the kernel's work inside sendmsg), or the nft process's.
    var userSeconds: Double
    var systemSeconds: Double
    /// nft only: peak resident memory of the nft process.
    var maxResidentMiB: Double?
    /// drawbridge only: netlink messages in the transaction and bytes sent.
    var messages: Int?
    var bytes: Int?
    /// The elements read back after the load (always N, or the run fails).
    var verifiedElements: Int
    /// Spread (max - min) of the absolute expiries of 256 elements sampled evenly over the load (first and last
    /// included), read by one point query (GETSETELEM) so the reading adds nothing; resolution one jiffy.
    var expirySkewMilliseconds: Double
    /// drawbridge only: how much later (+) or earlier (-) than the instant it asked for the sampled elements actually
    /// expire, earliest and latest (the timeout is computed once at encode time; the kernel adds it to the jiffy at
    /// which it processes each message).
    var expiryOffsetMinMilliseconds: Double?
    var expiryOffsetMaxMilliseconds: Double?
    /// drawbridge only: elements a reconcile right after the load would rewrite (ElementDiff of the same desired
    /// state against the verifying read, default 1 s tolerance): expiries that drifted past the tolerance.
    var reconcileRefreshes: Int?
    /// The same spread over all N elements as the verifying dump reports it: inflated (or, where dump order follows
    /// insertion order, deflated) by up to the dump's own duration, `readSeconds`.
    var dumpSpreadMilliseconds: Double
    var readSeconds: Double
    /// Verifying reads that came back short before a complete one (an rhash table still resizing after the load).
    var shortReads: Int
    /// CPU used by everything else on the machine during the timed step, in CPUs (0.5 = half of one CPU busy on
    /// average); from /proc/stat minus this step's own CPU time, 10 ms resolution.
    var backgroundCPUs: Double
}

struct BulkResult: Codable {
    var drawbridge: [LoadSample]
    var nft: [LoadSample]
    var drawbridgeMedianSeconds: Double
    var nftMedianSeconds: Double
    /// nft time / drawbridge time.
    var ratio: Double
    /// drawbridge's planning before the timed apply: `ElementDiff` over N desired elements.
    var diffSeconds: Double
    var nftFileBytes: Int
}

struct ChangeResult: Codable {
    /// Elements in the set before the first change (each change adds one more).
    var elementsPresent: Int
    var drawbridgeMilliseconds: [Double]
    var nftMilliseconds: [Double]
    var drawbridgeMedianMilliseconds: Double
    var nftMedianMilliseconds: Double
    var ratio: Double
}

struct KindResult: Codable {
    var kind: SetKind
    var set: String
    var setType: String
    var backend: String
    var bulk: BulkResult
    var change: ChangeResult
}

struct ProcessStart: Codable {
    /// Median wall clock of `nsenter --net=NS true`: the floor under every nft measurement.
    var nsenterTrueMilliseconds: Double
    /// Median wall clock of `nsenter --net=NS nft --version`: starting nft (dynamic linking) without netlink work.
    var nftVersionMilliseconds: Double
}

struct BenchReport: Codable {
    var kernel: String
    var nftVersion: String
    var cpus: Int
    var elements: Int
    var changes: Int
    var runs: Int
    var timeoutSeconds: Int
    var tableInstalledBy: String
    var isolation: String
    var processStart: ProcessStart
    var kinds: [KindResult]
    /// Highest CPU use by anything else seen just before a timed step (0-1, over all CPUs): above ~0.2 the machine
    /// was busy and the numbers are noisy.
    var maxBackgroundLoad: Double
    var totalSeconds: Double
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

// MARK: Text output

extension BenchReport {
    func text() -> String {
        var lines: [String] = []
        lines.append("drawbridge-bench: nftables grant-set loads, drawbridge (libnftnl, one transaction) vs nft")
        lines.append("kernel \(kernel), \(nftVersion), \(cpus) CPUs")
        lines.append(
            "N = \(elements) elements, every one with timeout \(timeoutSeconds)s; bulk: median of \(runs) run\(runs == 1 ? "" : "s") per tool; "
                + "1-element change: median of \(changes)")
        lines.append("each bulk load in a fresh anonymous network namespace, table installed by \(tableInstalledBy)")
        lines.append("")

        var rows: [[String]] = [["kind", "operation", "drawbridge", "nft", "nft / drawbridge"]]
        for result in kinds {
            rows.append([
                "\(result.kind.rawValue)", "bulk apply of \(elements)",
                formatSeconds(result.bulk.drawbridgeMedianSeconds), formatSeconds(result.bulk.nftMedianSeconds),
                formatRatio(result.bulk.ratio),
            ])
            rows.append([
                "\(result.kind.rawValue)", "1 element, \(result.change.elementsPresent) present",
                formatMilliseconds(result.change.drawbridgeMedianMilliseconds),
                formatMilliseconds(result.change.nftMedianMilliseconds), formatRatio(result.change.ratio),
            ])
        }
        lines += table(rows, rightAligned: [2, 3, 4])
        lines.append("")

        for result in kinds {
            let bulk = result.bulk
            let change = result.change
            let drawbridge = bulk.drawbridge.last!
            lines.append(
                "\(result.kind.rawValue): set \(result.set) { type \(result.setType) } (\(result.backend) backend)")
            lines.append(
                "  bulk, drawbridge   \(drawbridge.messages ?? 0) messages, \(formatBytes(drawbridge.bytes ?? 0)) in one sendmsg; "
                    + "thread CPU user \(formatSeconds(medianOf(bulk.drawbridge, \.userSeconds))), "
                    + "sys \(formatSeconds(medianOf(bulk.drawbridge, \.systemSeconds))) (the kernel's work)")
            lines.append(
                "  bulk, nft -f       \(formatBytes(bulk.nftFileBytes)) file; process CPU user \(formatSeconds(medianOf(bulk.nft, \.userSeconds))), "
                    + "sys \(formatSeconds(medianOf(bulk.nft, \.systemSeconds))); "
                    + "peak RSS \(String(format: "%.0f", medianOf(bulk.nft, \.maxResidentMiBOrZero))) MiB")
            lines.append(
                "  bulk runs (s)      drawbridge \(bulk.drawbridge.map(formatRun).joined(separator: ", ")); "
                    + "nft \(bulk.nft.map(formatRun).joined(separator: ", "))")
            lines.append(
                "  expiry skew        drawbridge \(String(format: "%.0f", medianOf(bulk.drawbridge, \.expirySkewMilliseconds))) ms, "
                    + "nft \(String(format: "%.0f", medianOf(bulk.nft, \.expirySkewMilliseconds))) ms "
                    + "(first to last element of the bulk load)")
            if let first = drawbridge.expiryOffsetMinMilliseconds, let last = drawbridge.expiryOffsetMaxMilliseconds {
                lines.append(
                    "  vs. asked for      drawbridge's elements expire \(formatOffset(first)) to \(formatOffset(last)) from the "
                        + "instant requested; a reconcile right after")
                lines.append(
                    "                     the load would rewrite \(drawbridge.reconcileRefreshes ?? 0) of \(drawbridge.verifiedElements) "
                        + "(ElementDiff, 1 s tolerance)")
            }
            lines.append(
                "  1 element (ms)     drawbridge min \(formatPlain(change.drawbridgeMilliseconds.min()!)) "
                    + "max \(formatPlain(change.drawbridgeMilliseconds.max()!)); "
                    + "nft min \(formatPlain(change.nftMilliseconds.min()!)) max \(formatPlain(change.nftMilliseconds.max()!))"
            )
            let loads = bulk.drawbridge + bulk.nft
            let short = loads.filter { $0.shortReads > 0 }.count
            if short > 0 {
                lines.append(
                    "  note: after \(short) of \(loads.count) loads the first verifying dump came back short (some elements twice,"
                )
                lines.append(
                    "        others missing, no NLM_F_DUMP_INTR: the rhash table was still resizing) and was read again"
                )
            }
        }
        lines.append("")
        let readSeconds = kinds.flatMap { $0.bulk.drawbridge + $0.bulk.nft }.map(\.readSeconds).max() ?? 0
        lines.append(
            "expiry skew: the kernel starts each element's clock when it processes the element's message, so the first")
        lines.append(
            "  elements of a big transaction expire earlier. Spread (max - min) of the absolute expiries of \(min(elements, 256)) elements"
        )
        lines.append(
            "  sampled across the load, read by one point query (a full dump takes up to \(formatSeconds(readSeconds)) and smears it)."
        )
        lines.append(
            "process start alone: nsenter --net=NS true \(formatMilliseconds(processStart.nsenterTrueMilliseconds)), "
                + "nsenter --net=NS nft --version \(formatMilliseconds(processStart.nftVersionMilliseconds)) "
                + "(medians; inside every nft time)")
        let diffs = kinds.map { "\($0.kind.rawValue) \(formatSeconds($0.bulk.diffSeconds))" }.joined(separator: ", ")
        lines.append("not timed above: drawbridge's ElementDiff of the N desired elements (\(diffs))")
        if kinds.contains(where: { ($0.bulk.drawbridge + $0.bulk.nft).contains(where: \.disturbed) }) {
            lines.append("* during this run other work kept more than half a CPU busy (of \(cpus))")
        }
        if maxBackgroundLoad > 0.2 {
            lines.append(
                "warning: the machine was not idle: before timed steps up to \(Int(maxBackgroundLoad * 100))% of its CPU time went to "
                    + "other work; numbers may be noisy")
        }
        lines.append("all loads verified by reading the set back; total run \(String(format: "%.1f", totalSeconds)) s")
        return lines.joined(separator: "\n")
    }
}

private func medianOf(_ samples: [LoadSample], _ value: KeyPath<LoadSample, Double>) -> Double {
    median(samples.map { $0[keyPath: value] })
}

private func table(_ rows: [[String]], rightAligned: Set<Int>) -> [String] {
    let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max()! }
    return rows.enumerated().flatMap { index, row -> [String] in
        let line = row.enumerated().map { column, cell in
            let padding = String(repeating: " ", count: widths[column] - cell.count)
            return rightAligned.contains(column) ? padding + cell : cell + padding
        }.joined(separator: "   ")
        if index == 0 {
            return [line, String(repeating: "-", count: line.count)]
        }
        return [line]
    }
}

func formatNumber(_ seconds: Double) -> String { String(format: "%.3f", seconds) }

func formatPlain(_ milliseconds: Double) -> String {
    String(format: milliseconds >= 10 ? "%.1f" : (milliseconds >= 1 ? "%.2f" : "%.3f"), milliseconds)
}

extension LoadSample {
    var maxResidentMiBOrZero: Double { maxResidentMiB ?? 0 }
    var disturbed: Bool { backgroundCPUs > 0.5 }
}

private func formatOffset(_ milliseconds: Double) -> String {
    String(format: "%+.0f ms", milliseconds)
}

private func formatRun(_ sample: LoadSample) -> String {
    formatNumber(sample.seconds) + (sample.disturbed ? "*" : "")
}

func formatSeconds(_ seconds: Double) -> String {
    seconds >= 1 ? String(format: "%.2f s", seconds) : String(format: "%.3f s", seconds)
}

func formatMilliseconds(_ milliseconds: Double) -> String {
    if milliseconds >= 100 { return String(format: "%.0f ms", milliseconds) }
    if milliseconds >= 1 { return String(format: "%.2f ms", milliseconds) }
    return String(format: "%.3f ms", milliseconds)
}

func formatRatio(_ ratio: Double) -> String {
    if ratio >= 1 { return String(format: ratio >= 10 ? "%.0fx faster" : "%.1fx faster", ratio) }
    return String(format: "%.2fx (nft faster)", ratio)
}

func formatBytes(_ bytes: Int) -> String {
    bytes >= 1 << 20
        ? String(format: "%.1f MiB", Double(bytes) / 1_048_576) : String(format: "%.0f KiB", Double(bytes) / 1024)
}
