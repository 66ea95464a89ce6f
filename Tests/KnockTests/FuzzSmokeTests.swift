import Foundation
import Testing

@testable import Knock

/// A smoke check for the fuzzer to come: hundreds of thousands of random and mutated inputs through every parser
/// that sees untrusted bytes. None may trap, and no mutation of a genuine packet may verify.
@Suite struct FuzzSmokeTests {
    /// Enough to reach every field of every key kind many times; about half a minute in a debug build (whose
    /// cost is mostly the debug build itself, and Swift Testing's backtrace for every thrown error).
    static let iterations = 200_000

    @Test func mutatedAndRandomPacketsNeverTrapNorVerify() throws {
        let now: Int64 = 1_700_000_000_000
        let signers: [any SSHSigner] = [Ed25519TestSigner(), P256TestSigner(), SecurityKeyTestSigner()]
        let originals = try signers.map {
            try KnockPacket.sign(
                sampleRequest(timestamp: now, address: KnockAddress(bytes: [203, 0, 113, 9])), with: $0
            ).bytes
        }
        // Verifying a signature costs far more than decoding, so most iterations use a verifier that knows no key
        // (everything up to the key lookup still runs); one in sixteen knows the keys and checks signatures.
        let knowing = KnockVerifier(allowedKeys: signers.map(\.publicKey), maximumSkew: .seconds(30))
        let ignorant = KnockVerifier(allowedKeys: [], maximumSkew: .seconds(30))

        var generator = SeededGenerator(seed: 0x4B4E_4F43_4B21)
        var outcomes: [String: Int] = [:]
        let started = ContinuousClock.now
        for iteration in 0..<Self.iterations {
            let original = originals[iteration % originals.count]
            let input = Self.mutate(original, corpus: originals, using: &generator)
            let verifier = iteration % 16 == 0 ? knowing : ignorant
            let verdict = verifier.verify(datagram: input, nowMilliseconds: now)
            switch verdict {
            case .accepted:
                if input != original, !originals.contains(input) {
                    Issue.record("iteration \(iteration): a mutated packet verified: \(input)")
                }
                outcomes["accepted", default: 0] += 1
            case .refused(let refusal):
                outcomes[Self.label(refusal), default: 0] += 1
            }

            // The other parsers that read untrusted bytes, on a share of the inputs.
            if iteration % 8 == 0 {
                _ = try? SSHSignature(binary: input)
                _ = try? SSHPublicKey(wireBlob: input)
                _ = try? SSHAgentResponse(body: input, operation: "fuzz")
                _ = try? NonceCache(serialized: input, window: .seconds(30))
            }
            if iteration % 64 == 0 {
                _ = try? OpenSSHPrivateKey(binary: input)
                _ = try? AuthorizedKey(line: String(decoding: input, as: UTF8.self))
                _ = try? SSHSignature(armored: String(decoding: input, as: UTF8.self))
            }
        }
        let elapsed = ContinuousClock.now - started
        print("fuzz smoke: \(Self.iterations) inputs in \(elapsed): \(outcomes.sorted { $0.key < $1.key })")
    }

    static func label(_ refusal: KnockRefusal) -> String {
        switch refusal {
        case .malformed(let error): return "malformed \(error.field)"
        case .wrongNamespace: return "wrong namespace"
        case .unknownKey: return "unknown key"
        case .badSignature: return "bad signature"
        case .userPresenceMissing: return "no user presence"
        case .staleTimestamp: return "stale"
        case .futureTimestamp: return "future"
        }
    }

    /// Random bytes, eight at a time: a byte at a time is slow in a debug build.
    static func randomBytes(count: Int, using generator: inout SeededGenerator) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count + 8)
        while bytes.count < count { withUnsafeBytes(of: generator.next()) { bytes += $0 } }
        return Array(bytes.prefix(count))
    }

    /// One random change, or a few, or entirely random bytes.
    static func mutate(_ original: [UInt8], corpus: [[UInt8]], using generator: inout SeededGenerator) -> [UInt8] {
        var bytes = original
        let rounds = Int.random(in: 1...4, using: &generator)
        for _ in 0..<rounds {
            switch Int.random(in: 0..<10, using: &generator) {
            case 0:
                // Entirely random bytes of a random length.
                bytes = randomBytes(count: Int.random(in: 0...1300, using: &generator), using: &generator)
            case 1:
                bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &generator)))
            case 2 where !bytes.isEmpty:
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] ^=
                    1 << UInt8.random(in: 0..<8, using: &generator)
            case 3 where !bytes.isEmpty:
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = [0x00, 0x01, 0x7F, 0x80, 0xFF]
                    .randomElement(using: &generator)!
            case 4:
                bytes.insert(
                    UInt8.random(in: 0...255, using: &generator), at: Int.random(in: 0...bytes.count, using: &generator)
                )
            case 5 where !bytes.isEmpty:
                bytes.remove(at: Int.random(in: 0..<bytes.count, using: &generator))
            case 6 where bytes.count >= 4:
                // A length-looking word set to an extreme.
                let index = Int.random(in: 0...(bytes.count - 4), using: &generator)
                let word: [UInt8] = [
                    [0xFF, 0xFF, 0xFF, 0xFF], [0x7F, 0xFF, 0xFF, 0xFF], [0, 0, 0, 0], [0, 0, 4, 0xD0],
                ]
                .randomElement(using: &generator)!
                bytes.replaceSubrange(index..<(index + 4), with: word)
            case 7:
                // Splice a piece of another packet in.
                let other = corpus.randomElement(using: &generator)!
                let start = Int.random(in: 0..<other.count, using: &generator)
                let piece = other[start..<min(other.count, start + Int.random(in: 1...64, using: &generator))]
                bytes.insert(contentsOf: piece, at: Int.random(in: 0...bytes.count, using: &generator))
            case 8:
                bytes += randomBytes(count: Int.random(in: 1...8, using: &generator), using: &generator)
            default:
                // Duplicate a chunk in place.
                guard !bytes.isEmpty else { continue }
                let start = Int.random(in: 0..<bytes.count, using: &generator)
                let chunk = bytes[start..<min(bytes.count, start + Int.random(in: 1...32, using: &generator))]
                bytes.insert(contentsOf: Array(chunk), at: start)
            }
        }
        return bytes
    }
}
