import FoundationEssentials

/// The text form of a grant's length, as people write it in a policy and on the command line: `90s`, `30m`, `2h`,
/// `1h30m`, `1d12h`.
///
/// The grammar is deliberately small, so that a typo is refused rather than read as something else:
/// - one or more `NUMBER UNIT` parts, with units `d` (day, 24 hours), `h`, `m`, `s`, lowercase;
/// - units in descending order, each at most once (`30m1h` and `1h1h` are refused);
/// - no bare numbers (is `90` seconds or minutes?), no signs, no fractions, no whitespace, no zero total.
///
/// Days are accepted because a policy's longest grant is a week, and `7d` reads better than `168h`.
public enum GrantDuration {
    /// The units in the order they must appear, with their length in seconds.
    private static let units: [(symbol: Character, seconds: Int)] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)]

    /// The longest duration `parse` accepts (about 31 years): far beyond any grant, small enough that the number of
    /// seconds is exact as a `TimeInterval` and as a millisecond count.
    private static let largest: TimeInterval = 1_000_000_000

    /// Parses `90s`, `30m`, `2h`, `1h30m`, `1h30m15s` or `2d` into seconds.
    ///
    /// Returns nil for anything outside the grammar described on ``GrantDuration``, including a total of zero.
    public static func parse(_ text: String) -> TimeInterval? {
        var total = 0
        var digits = ""
        var nextUnit = 0  // index into `units` of the largest unit still allowed; past the end after seconds
        var sawPart = false
        for character in text {
            if character.isASCII, character.isNumber {
                digits.append(character)
                guard digits.count <= 12 else { return nil }
                continue
            }
            guard !digits.isEmpty,
                let offset = units[nextUnit...].firstIndex(where: { $0.symbol == character }),
                let value = Int(digits)
            else { return nil }
            total += value * units[offset].seconds
            guard total <= Int(largest) else { return nil }
            nextUnit = offset + 1
            digits = ""
            sawPart = true
        }
        // Trailing digits without a unit ("1h30") or nothing at all ("") are refused.
        guard sawPart, digits.isEmpty, total > 0 else { return nil }
        return TimeInterval(total)
    }

    /// True for text in the duration grammar whose total is zero (`0s`, `0h0m`), which `parse` refuses; lets an
    /// error message say "zero" instead of "not a duration".
    static func isZero(_ text: String) -> Bool {
        !text.isEmpty && text.last?.isASCIIDigit == false && parse(String(text.map { $0 == "0" ? "1" : $0 })) != nil
            && text.allSatisfy { $0 == "0" || !$0.isASCIIDigit }
    }

    /// The shortest text that `parse` reads back as the same number of whole seconds: 5400 is `1h30m`, 90 is
    /// `1m30s`, 7200 is `2h`, 45 is `45s`, 93600 is `1d2h`.
    ///
    /// A fraction of a second is rounded up, so a remaining time is never shown shorter than it is; zero, negative
    /// and not-a-number durations are shown as `0s`.
    public static func format(_ seconds: TimeInterval) -> String {
        guard seconds > 0 else { return "0s" }
        var remaining = seconds.isFinite ? Int(min(seconds.rounded(.up), largest * 1_000)) : Int(largest * 1_000)
        var text = ""
        for unit in units where remaining >= unit.seconds {
            text += "\(remaining / unit.seconds)\(unit.symbol)"
            remaining %= unit.seconds
        }
        return text
    }
}
