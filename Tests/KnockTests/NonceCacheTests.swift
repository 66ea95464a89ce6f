import Testing

@testable import Knock

/// The replay cache: a nonce is refused while its packet could still pass, forgotten after, bounded, persistent.
@Suite struct NonceCacheTests {
    static let start: Int64 = 1_700_000_000_000
    static let window = Duration.seconds(60)

    static func nonce(_ value: UInt64) -> KnockNonce { KnockNonce(high: value, low: ~value) }

    @Test func aNonceIsRefusedInsideTheWindowAndForgottenAfter() {
        var cache = NonceCache(window: Self.window, startingAt: Self.start)
        let stamp = Self.start + 1_000
        #expect(cache.insert(Self.nonce(1), timestampMilliseconds: stamp, nowMilliseconds: stamp) == .inserted)
        #expect(cache.insert(Self.nonce(1), timestampMilliseconds: stamp, nowMilliseconds: stamp + 5) == .replayed)
        // Another timestamp with the same nonce is still a replay.
        #expect(cache.insert(Self.nonce(1), timestampMilliseconds: stamp + 9, nowMilliseconds: stamp + 9) == .replayed)
        #expect(cache.insert(Self.nonce(2), timestampMilliseconds: stamp, nowMilliseconds: stamp + 5) == .inserted)
        #expect(cache.count == 2)

        // At stamp + 60 s the packet still passes a 60 s skew check: the nonce must still be known.
        cache.removeExpired(nowMilliseconds: stamp + 60_000)
        #expect(cache.contains(Self.nonce(1)))
        // One millisecond later the packet is stale everywhere; the nonce is forgotten.
        cache.removeExpired(nowMilliseconds: stamp + 60_001)
        #expect(!cache.contains(Self.nonce(1)))
        #expect(cache.count == 0)
        #expect(cache.historyStart == stamp + 1)
    }

    @Test func timestampsOutsideTheWindowOrBeforeTheHistoryAreRefused() {
        var cache = NonceCache(window: Self.window, startingAt: Self.start)
        let now = Self.start + 120_000
        #expect(
            cache.insert(Self.nonce(1), timestampMilliseconds: now - 60_001, nowMilliseconds: now) == .outsideWindow)
        #expect(
            cache.insert(Self.nonce(2), timestampMilliseconds: now + 60_001, nowMilliseconds: now) == .outsideWindow)
        #expect(cache.insert(Self.nonce(3), timestampMilliseconds: now + 60_000, nowMilliseconds: now) == .inserted)
        #expect(cache.insert(Self.nonce(4), timestampMilliseconds: now - 60_000, nowMilliseconds: now) == .inserted)

        // A new cache knows nothing from before it started: a packet stamped earlier might have been accepted by the
        // cache that was lost.
        var fresh = NonceCache(window: Self.window, startingAt: now)
        #expect(fresh.insert(Self.nonce(5), timestampMilliseconds: now - 1, nowMilliseconds: now) == .beforeHistory)
        #expect(fresh.insert(Self.nonce(5), timestampMilliseconds: now, nowMilliseconds: now) == .inserted)
        #expect(
            fresh.insert(Self.nonce(6), timestampMilliseconds: Int64.min, nowMilliseconds: Int64.max) == .outsideWindow)
        #expect(
            fresh.insert(Self.nonce(7), timestampMilliseconds: Int64.max, nowMilliseconds: Int64.min) == .outsideWindow)
    }

    @Test func atTheCapNewNoncesAreRefusedUntilOldOnesExpire() {
        var cache = NonceCache(window: Self.window, capacity: 100, startingAt: Self.start)
        for index in 0..<100 {
            let stamp = Self.start + Int64(index)
            #expect(
                cache.insert(Self.nonce(UInt64(index)), timestampMilliseconds: stamp, nowMilliseconds: stamp)
                    == .inserted)
        }
        let late = Self.start + 1_000
        #expect(cache.insert(Self.nonce(1000), timestampMilliseconds: late, nowMilliseconds: late) == .full)
        #expect(cache.insert(Self.nonce(5), timestampMilliseconds: late, nowMilliseconds: late) == .replayed)
        #expect(cache.count == 100)
        // Once the first 10 entries age out, 10 new ones fit, and no more.
        let later = Self.start + 60_010
        for index in 0..<10 {
            #expect(
                cache.insert(Self.nonce(UInt64(2000 + index)), timestampMilliseconds: later, nowMilliseconds: later)
                    == .inserted)
        }
        #expect(cache.insert(Self.nonce(3000), timestampMilliseconds: later, nowMilliseconds: later) == .full)
        #expect(cache.count == 100)
        #expect(NonceCache(window: Self.window, capacity: 0, startingAt: 0).capacity == 0)
    }

    @Test func expiryMatchesAModelUnderRandomTraffic() {
        var generator = SeededGenerator(seed: 42)
        var cache = NonceCache(window: .seconds(10), capacity: 10_000, startingAt: 0)
        var model: [KnockNonce: Int64] = [:]
        var now: Int64 = 0
        for _ in 0..<20_000 {
            now += Int64.random(in: 0...50, using: &generator)
            let stamp = now + Int64.random(in: -12_000...12_000, using: &generator)
            let nonce = Self.nonce(UInt64.random(in: 0..<5_000, using: &generator))
            model = model.filter { $0.value >= now - 10_000 }
            let expected: NonceCache.Outcome
            if model[nonce] != nil {
                expected = .replayed
            } else if abs(now - stamp) > 10_000 {
                expected = .outsideWindow
            } else if stamp < 0 {
                expected = .beforeHistory
            } else {
                expected = .inserted
                model[nonce] = stamp
            }
            let outcome = cache.insert(nonce, timestampMilliseconds: stamp, nowMilliseconds: now)
            if outcome != expected {
                Issue.record("at \(now), \(nonce) stamped \(stamp): \(outcome), expected \(expected)")
                return
            }
            #expect(cache.count == model.count)
        }
    }

    @Test func serializationRoundTripsAndSurvivesARestart() throws {
        var cache = NonceCache(window: Self.window, startingAt: Self.start)
        var generator = SeededGenerator(seed: 7)
        for index in 0..<500 {
            let stamp = Self.start + Int64(index) * 10
            _ = cache.insert(KnockNonce.random(using: &generator), timestampMilliseconds: stamp, nowMilliseconds: stamp)
        }
        let replayed = Self.nonce(99)
        let stamp = Self.start + 5_000
        #expect(cache.insert(replayed, timestampMilliseconds: stamp, nowMilliseconds: stamp) == .inserted)
        let bytes = cache.serialized()
        #expect(bytes.count == 4 + 1 + 8 + 4 + 501 * 24)
        var restored = try NonceCache(serialized: bytes, window: Self.window)
        #expect(restored == cache)
        #expect(restored.serialized() == bytes)
        // The captured packet, replayed right after the restart, is still refused.
        #expect(restored.insert(replayed, timestampMilliseconds: stamp, nowMilliseconds: stamp + 2_000) == .replayed)
    }

    @Test func damagedSerializationsAreRefused() throws {
        var cache = NonceCache(window: Self.window, startingAt: Self.start)
        for index in 0..<3 {
            _ = cache.insert(Self.nonce(UInt64(index)), timestampMilliseconds: Self.start, nowMilliseconds: Self.start)
        }
        let bytes = cache.serialized()
        for length in 0..<bytes.count {
            #expect(throws: NonceCacheError.self) {
                try NonceCache(serialized: bytes.prefix(length), window: Self.window)
            }
        }
        #expect(throws: NonceCacheError(.end, .trailingBytes(count: 1))) {
            try NonceCache(serialized: bytes + [0], window: Self.window)
        }
        #expect(throws: NonceCacheError(.count, .tooLong(length: 3, limit: 2))) {
            try NonceCache(serialized: bytes, window: Self.window, capacity: 2)
        }
        var duplicate = bytes
        duplicate.replaceSubrange((17 + 24)..<(17 + 40), with: bytes[17..<(17 + 16)])
        #expect(throws: NonceCacheError(.entry(index: 1), .invalid("the nonce is listed twice"))) {
            try NonceCache(serialized: duplicate, window: Self.window)
        }
        var magic = bytes
        magic[0] = 0
        #expect(throws: NonceCacheError.self) { try NonceCache(serialized: magic, window: Self.window) }
        var count = bytes
        count[16] = 0xFF
        #expect(throws: NonceCacheError.self) { try NonceCache(serialized: count, window: Self.window) }
    }
}
