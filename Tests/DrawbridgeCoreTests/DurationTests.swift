import DrawbridgeCore
import Foundation
import Testing

struct DurationTests {
    @Test(
        "durations in the grammar parse to seconds",
        arguments: [
            ("90s", 90.0),
            ("30m", 1_800),
            ("2h", 7_200),
            ("1h30m", 5_400),
            ("1h30m15s", 5_415),
            ("2d", 172_800),
            ("1d12h", 129_600),
            ("7d", 604_800),
            ("1d1h1m1s", 90_061),
            ("1h0m", 3_600),
            ("0h5m", 300),
            ("05m", 300),
            ("1s", 1),
            ("3600s", 3_600),
            ("90m", 5_400),
        ])
    func parses(text: String, seconds: TimeInterval) {
        #expect(GrantDuration.parse(text) == seconds)
    }

    @Test(
        "text outside the grammar is refused",
        arguments: [
            "",  // nothing
            "90",  // a bare number: seconds or minutes?
            "0",
            "-5m",  // no signs
            "+5m",
            "0s",  // zero total
            "0h0m",
            "1.5h",  // no fractions
            "30m1h",  // units out of order
            "1m1d",
            "1h1h",  // a unit twice
            "1s1s",
            "1h 30m",  // no whitespace anywhere
            " 1h",
            "1h ",
            "1H",  // lowercase units only
            "h",  // a unit without a number
            "1hm",
            "1x",  // unknown units
            "1ms",
            "1w",
            "1h30",  // trailing number without a unit
            "٣h",  // non-ASCII digits
            "9999999999999s",  // absurdly long
            "999999999999d",
        ])
    func refuses(text: String) {
        #expect(GrantDuration.parse(text) == nil)
    }

    @Test(
        "formatting gives the shortest text, rounding fractions up",
        arguments: [
            (5_400.0, "1h30m"),
            (90, "1m30s"),
            (7_200, "2h"),
            (45, "45s"),
            (44.2, "45s"),
            (0.3, "1s"),
            (3_661, "1h1m1s"),
            (3_600, "1h"),
            (86_400, "1d"),
            (93_600, "1d2h"),
            (604_800, "7d"),
            (0, "0s"),
            (-5, "0s"),
            (.nan, "0s"),
        ])
    func formats(seconds: TimeInterval, text: String) {
        #expect(GrantDuration.format(seconds) == text)
    }

    @Test("formatting and parsing are inverse for whole seconds")
    func roundTrips() {
        var seconds = 1
        while seconds < 40 * 86_400 {
            let text = GrantDuration.format(TimeInterval(seconds))
            #expect(GrantDuration.parse(text) == TimeInterval(seconds), "\(seconds) -> \(text)")
            seconds = seconds * 3 / 2 + 7
        }
        for seconds in 1...200 {
            #expect(GrantDuration.parse(GrantDuration.format(TimeInterval(seconds))) == TimeInterval(seconds))
        }
    }

    @Test("an infinite duration formats without trapping")
    func infinite() {
        #expect(GrantDuration.format(.infinity) != "0s")
    }
}
