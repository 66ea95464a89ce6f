/// Jittered exponential backoff: how long to wait before the next attempt at something that keeps failing.
///
/// Each failure doubles the base wait (from `initial` up to `maximum`); each wait is the base moved by up to `jitter`
/// of itself either way, so that many hosts that lost etcd at the same moment do not all come back at the same moment.
/// A success calls ``reset()``.
public struct Backoff: Sendable, Equatable {
    public var initial: Duration
    public var maximum: Duration
    public var multiplier: Double
    /// The fraction of a wait that is random: 0.2 means from 80 % to 120 % of the base (never above `maximum`).
    public var jitter: Double
    /// Failures since the last reset.
    public private(set) var failures = 0

    public init(
        initial: Duration = .milliseconds(500), maximum: Duration = .seconds(30), multiplier: Double = 2,
        jitter: Double = 0.2
    ) {
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The wait before the next attempt, counting one more failure.
    public mutating func next<Generator: RandomNumberGenerator>(using generator: inout Generator) -> Duration {
        let base = min(seconds(initial) * pow(multiplier, failures), seconds(maximum))
        failures += 1
        let spread = base * jitter
        // One draw, used as a fraction in [0, 1): no rejection sampling, so any generator (even one that repeats a
        // value) gives an answer, and the extremes are reachable on purpose in tests.
        let fraction = Double(generator.next() >> 11) * 0x1p-53
        let wait = base - spread + 2 * spread * fraction
        return .milliseconds(Int64((min(wait, seconds(maximum)) * 1000).rounded()))
    }

    /// The wait before the next attempt, with the system's random numbers.
    public mutating func next() -> Duration {
        var generator = SystemRandomNumberGenerator()
        return next(using: &generator)
    }

    /// After a success: the next failure waits `initial` again.
    public mutating func reset() {
        failures = 0
    }

    private func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    private func pow(_ base: Double, _ exponent: Int) -> Double {
        // Past 64 doublings every base is far beyond any maximum.
        var result = 1.0
        for _ in 0..<min(exponent, 64) { result *= base }
        return result
    }
}
