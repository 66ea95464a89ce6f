import FoundationEssentials

/// An instant on the monotonic clock (`CLOCK_MONOTONIC`), in nanoseconds since an arbitrary start.
///
/// This is the clock the kernel counts set element timeouts on (jiffies neither jump when the wall clock is set nor
/// run during suspend), so the agent keeps every deadline on it: a grant for ten minutes ends ten minutes later
/// whatever `date -s` or NTP do to the wall clock meanwhile. The core never reads a clock; the agent passes instants in.
public struct MonotonicInstant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) {
        self.nanoseconds = nanoseconds
    }

    public static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    /// The instant `seconds` later (earlier when negative); saturates instead of overflowing.
    public func advanced(by seconds: Double) -> MonotonicInstant {
        let delta = (seconds * 1e9).rounded(.up)
        guard delta.isFinite else { return seconds > 0 ? .distantFuture : MonotonicInstant(nanoseconds: .min) }
        let clamped = Int64(max(min(delta, 9.0e18), -9.0e18))
        let (sum, overflow) = nanoseconds.addingReportingOverflow(clamped)
        if overflow { return clamped > 0 ? .distantFuture : MonotonicInstant(nanoseconds: .min) }
        return MonotonicInstant(nanoseconds: sum)
    }

    /// Seconds from `other` to this instant (negative when this one is earlier).
    public func seconds(since other: MonotonicInstant) -> Double {
        Double(nanoseconds &- other.nanoseconds) / 1e9
    }

    public static let distantFuture = MonotonicInstant(nanoseconds: .max)

    public var description: String { "monotonic \(Double(nanoseconds) / 1e9)s" }
}

/// "Now" on both clocks, read together by the agent and handed to the core.
public struct Instants: Sendable, Equatable {
    /// The wall clock (UTC): what people, files and controllers name expiries in.
    public var wall: Date
    /// The monotonic clock: what deadlines are kept on.
    public var monotonic: MonotonicInstant

    public init(wall: Date, monotonic: MonotonicInstant) {
        self.wall = wall
        self.monotonic = monotonic
    }

    /// The monotonic deadline of a wall-clock instant, as the clocks stand now.
    public func deadline(forWall instant: Date) -> MonotonicInstant {
        monotonic.advanced(by: instant.timeIntervalSince(wall))
    }

    /// The wall-clock instant of a monotonic deadline, as the clocks stand now.
    public func wall(forDeadline deadline: MonotonicInstant) -> Date {
        wall.addingTimeInterval(deadline.seconds(since: monotonic))
    }
}

/// RFC 3339 timestamps, as grants files, controllers and the audit trail write them: `2026-12-01T12:00:00Z`,
/// `2026-12-01T12:00:00.250Z`, `2026-12-01T13:00:00+01:00`.
///
/// Parsing is exact: any number of fraction digits is read without rounding (nanoseconds kept, the rest ignored, so
/// an instant is never moved earlier or later by a second), and a leap second (`23:59:60`) is the first instant of
/// the next minute, as every clock that does not count leap seconds shows it.
public enum Timestamp {
    /// Parses an RFC 3339 date-time with a `Z` or `±hh:mm` offset; nil for anything else.
    public static func parse(_ text: some StringProtocol) -> Date? {
        // A string's bytes are read where they are; other text is copied first.
        if let parsed = text.utf8.withContiguousStorageIfAvailable({ parse(bytes: $0) }) { return parsed }
        return Array(text.utf8).withUnsafeBufferPointer { parse(bytes: $0) }
    }

    private static func parse(bytes utf8: UnsafeBufferPointer<UInt8>) -> Date? {
        guard utf8.count >= 20, utf8.count <= 64 else { return nil }
        func number(_ start: Int, _ count: Int) -> Int? {
            guard start + count <= utf8.count else { return nil }
            var value = 0
            for byte in utf8[start..<start + count] {
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
            }
            return value
        }
        func expect(_ index: Int, _ character: Unicode.Scalar) -> Bool {
            guard index < utf8.count else { return false }
            let byte = utf8[index]
            // RFC 3339 allows a lowercase t and z.
            return byte == UInt8(ascii: character)
                || ((character == "T" || character == "Z") && byte == UInt8(ascii: character) | 0x20)
        }
        guard let year = number(0, 4), expect(4, "-"), let month = number(5, 2), expect(7, "-"),
            let day = number(8, 2), expect(10, "T"), let hour = number(11, 2), expect(13, ":"),
            let minute = number(14, 2), expect(16, ":"), let second = number(17, 2)
        else { return nil }
        guard (1...12).contains(month), day >= 1, day <= daysInMonth(year: year, month: month), hour <= 23,
            minute <= 59, second <= 60
        else { return nil }
        var index = 19
        var nanoseconds = 0
        if expect(index, ".") {
            index += 1
            var digits = 0
            while index < utf8.count, utf8[index] >= 0x30, utf8[index] <= 0x39 {
                if digits < 9 { nanoseconds = nanoseconds * 10 + Int(utf8[index] - 0x30) }
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            for _ in digits..<max(digits, 9) { nanoseconds *= 10 }
        }
        var offsetSeconds = 0
        if expect(index, "Z") {
            index += 1
        } else if expect(index, "+") || expect(index, "-") {
            let sign = utf8[index] == UInt8(ascii: "-") ? -1 : 1
            guard let offsetHours = number(index + 1, 2), expect(index + 3, ":"),
                let offsetMinutes = number(index + 4, 2), offsetHours <= 23, offsetMinutes <= 59
            else { return nil }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
            index += 6
        } else {
            return nil
        }
        guard index == utf8.count else { return nil }
        let days = daysSinceEpoch(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
        // Only instants `format` writes back as RFC 3339: from 0000-01-01T00:00:00Z to the last millisecond of 9999
        // in UTC. An offset, a leap second or a fraction that rounds up could otherwise move one into year -1 or 10000
        // (`9999-12-31T23:59:60Z`), which `format` would write as text nothing reads.
        guard seconds >= Self.firstSecond,
            seconds < Self.endSecond - 1 || (seconds == Self.endSecond - 1 && nanoseconds < 999_500_000)
        else { return nil }
        return Date(timeIntervalSince1970: Double(seconds) + Double(nanoseconds) / 1e9)
    }

    /// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z, in seconds since 1970.
    static let firstSecond = daysSinceEpoch(year: 0, month: 1, day: 1) * 86_400
    static let endSecond = daysSinceEpoch(year: 10_000, month: 1, day: 1) * 86_400

    /// `2026-12-01T12:00:00Z`, with milliseconds when the instant has a fraction (`…:00.250Z`); never rounded up past
    /// the instant by more than a millisecond's rounding.
    public static func format(_ date: Date) -> String {
        let total = date.timeIntervalSince1970
        guard total.isFinite, abs(total) < 1e13 else { return "invalid-date" }
        var milliseconds = Int64((total * 1000).rounded(.toNearestOrEven))
        var seconds = milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000
        milliseconds -= seconds * 1000
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        seconds -= days * 86_400
        let (year, month, day) = civil(daysSinceEpoch: Int(days))
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        var text = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T"
        text += "\(pad(Int(seconds / 3600), 2)):\(pad(Int(seconds / 60 % 60), 2)):\(pad(Int(seconds % 60), 2))"
        if milliseconds != 0 { text += ".\(pad(Int(milliseconds), 3))" }
        return text + "Z"
    }

    static func isLeapYear(_ year: Int) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: return isLeapYear(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let adjustedYear = month <= 2 ? year - 1 : year
        let era = (adjustedYear >= 0 ? adjustedYear : adjustedYear - 399) / 400
        let yearOfEra = adjustedYear - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The date of a day count from 1970-01-01 (Howard Hinnant's civil_from_days).
    static func civil(daysSinceEpoch days: Int) -> (year: Int, month: Int, day: Int) {
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
