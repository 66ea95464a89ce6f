import Foundation
import Testing

@testable import Knock

/// Verifying knocks: who signed, for which namespace, and when.
@Suite struct KnockVerifierTests {
    static let now: Int64 = 1_700_000_000_000
    static let skew = Duration.seconds(30)

    static func signers() -> [(String, any SSHSigner)] {
        [
            ("ssh-ed25519", Ed25519TestSigner()), ("ecdsa-sha2-nistp256", P256TestSigner()),
            ("sk", SecurityKeyTestSigner()),
        ]
    }

    @Test func aGenuinePacketIsAcceptedWithItsKeyAndFields() throws {
        for (name, signer) in Self.signers() {
            let other = Ed25519TestSigner().publicKey
            let verifier = KnockVerifier(allowedKeys: [other, signer.publicKey], maximumSkew: Self.skew)
            let packet = try KnockPacket.sign(sampleRequest(timestamp: Self.now), with: signer)
            let verdict = verifier.verify(datagram: packet.bytes, nowMilliseconds: Self.now)
            guard case .accepted(let acceptance) = verdict else {
                Issue.record("\(name): \(verdict)")
                continue
            }
            #expect(acceptance.key == signer.publicKey)
            #expect(acceptance.fingerprint == signer.publicKey.fingerprint)
            #expect(acceptance.request == sampleRequest(timestamp: Self.now))

            let byFingerprint = KnockVerifier(
                allowedFingerprints: [signer.publicKey.fingerprint], maximumSkew: Self.skew)
            #expect(byFingerprint.verify(packet, nowMilliseconds: Self.now) == verdict)
        }
    }

    @Test func aKeyThatIsNotAllowedIsUnknown() throws {
        let signer = Ed25519TestSigner()
        let verifier = KnockVerifier(allowedKeys: [Ed25519TestSigner().publicKey], maximumSkew: Self.skew)
        let packet = try KnockPacket.sign(sampleRequest(timestamp: Self.now), with: signer)
        #expect(
            verifier.verify(packet, nowMilliseconds: Self.now) == .refused(.unknownKey(signer.publicKey.fingerprint)))
        #expect(
            KnockVerifier(allowedKeys: [], maximumSkew: Self.skew).verify(packet, nowMilliseconds: Self.now)
                == .refused(.unknownKey(signer.publicKey.fingerprint)))
    }

    /// An attacker who holds key B puts allowed key A into the SSHSIG: the signature does not verify with A.
    @Test func anotherKeysSignatureUnderAnAllowedKeyIsBad() throws {
        for (name, victim) in Self.signers() {
            let attacker: any SSHSigner =
                switch victim.publicKey.algorithm {
                case .ecdsaP256: P256TestSigner()
                case .securityKeyEd25519: SecurityKeyTestSigner()
                default: Ed25519TestSigner()
                }
            let verifier = KnockVerifier(allowedKeys: [victim.publicKey], maximumSkew: Self.skew)
            let body = try KnockPacket.encodeBody(sampleRequest(timestamp: Self.now))
            let impostor = ImpostorSigner(claimed: victim.publicKey, actual: attacker)
            let data = SSHSignature.signedData(
                for: body, namespace: SSHSignature.knockNamespace, hashAlgorithm: .sha512)
            let signature = rawSSHSIG(key: victim.publicKey, signatureBlob: try impostor.signatureBlob(for: data))
            let verdict = verifier.verify(
                datagram: assemblePacket(body: body, signature: signature), nowMilliseconds: Self.now)
            #expect(verdict == .refused(.badSignature(victim.publicKey.fingerprint)), "\(name)")
            // And SSHSignature.sign notices before anything is sent.
            #expect(throws: SSHSignatureError.self) {
                try SSHSignature.sign(message: body, signer: impostor)
            }
        }
        // A key of another type under the allowed key is refused as malformed: its algorithm does not fit.
        let victim = Ed25519TestSigner()
        let body = try KnockPacket.encodeBody(sampleRequest(timestamp: Self.now))
        let data = SSHSignature.signedData(for: body, namespace: SSHSignature.knockNamespace, hashAlgorithm: .sha512)
        let mixed = rawSSHSIG(key: victim.publicKey, signatureBlob: try P256TestSigner().signatureBlob(for: data))
        let verdict = KnockVerifier(allowedKeys: [victim.publicKey], maximumSkew: Self.skew)
            .verify(datagram: assemblePacket(body: body, signature: mixed), nowMilliseconds: Self.now)
        guard case .refused(.malformed(let error)) = verdict else {
            Issue.record("\(verdict)")
            return
        }
        #expect(error.field == .signature)
    }

    @Test func aSignatureForAnotherNamespaceIsRefused() throws {
        let signer = Ed25519TestSigner()
        let verifier = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: Self.skew)
        let body = try KnockPacket.encodeBody(sampleRequest(timestamp: Self.now))
        for namespace in ["git", "file", "drawbridge-knock@v2", "drawbridge-knock@v1 ", "Drawbridge-knock@v1"] {
            let signature = try SSHSignature.sign(message: body, namespace: namespace, signer: signer)
            let verdict = verifier.verify(
                datagram: assemblePacket(body: body, signature: signature.binary), nowMilliseconds: Self.now)
            #expect(verdict == .refused(.wrongNamespace(namespace)))
        }
        // A namespace that only looks the same: "é" composed and decomposed are equal Swift strings, not equal bytes.
        let lookalike = "drawbridge-knock@v1".replacingOccurrences(of: "o", with: "o\u{301}")
        #expect(lookalike != SSHSignature.knockNamespace)
        let signature = try SSHSignature.sign(message: body, namespace: lookalike, signer: signer)
        let verdict = verifier.verify(
            datagram: assemblePacket(body: body, signature: signature.binary), nowMilliseconds: Self.now)
        #expect(verdict == .refused(.wrongNamespace(lookalike)))
    }

    @Test func everyFlippedByteIsRefused() throws {
        for (name, signer) in Self.signers() {
            let verifier = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: Self.skew)
            let packet = try KnockPacket.sign(sampleRequest(timestamp: Self.now), with: signer)
            for index in packet.bytes.indices {
                for mask: UInt8 in [0x01, 0x80, 0xFF] {
                    var bytes = packet.bytes
                    bytes[index] ^= mask
                    if case .accepted = verifier.verify(datagram: bytes, nowMilliseconds: Self.now) {
                        Issue.record("\(name): flipping byte \(index) with \(mask) still verified")
                    }
                }
            }
        }
    }

    @Test func aTouchlessSecurityKeySignatureIsRefused() throws {
        var signer = SecurityKeyTestSigner()
        signer.flags = 0x04  // user verified, but not present
        let verifier = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: Self.skew)
        let body = try KnockPacket.encodeBody(sampleRequest(timestamp: Self.now))
        let data = SSHSignature.signedData(for: body, namespace: SSHSignature.knockNamespace, hashAlgorithm: .sha512)
        let signature = rawSSHSIG(key: signer.publicKey, signatureBlob: try signer.signatureBlob(for: data))
        #expect(
            verifier.verify(datagram: assemblePacket(body: body, signature: signature), nowMilliseconds: Self.now)
                == .refused(.userPresenceMissing(signer.publicKey.fingerprint)))
    }

    struct SkewCase: Sendable, CustomTestStringConvertible {
        var offset: Int64
        var accepted: Bool
        var testDescription: String { "timestamp \(offset >= 0 ? "+" : "")\(offset) ms" }
    }

    static let skewCases = [
        SkewCase(offset: 0, accepted: true),
        SkewCase(offset: -30_000, accepted: true),
        SkewCase(offset: -30_001, accepted: false),
        SkewCase(offset: 30_000, accepted: true),
        SkewCase(offset: 30_001, accepted: false),
        SkewCase(offset: -3_600_000, accepted: false),
        SkewCase(offset: 3_600_000, accepted: false),
    ]

    @Test(arguments: skewCases)
    func timestampsJustInsideAndOutsideTheSkew(_ testCase: SkewCase) throws {
        let signer = Ed25519TestSigner()
        let verifier = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: Self.skew)
        let packet = try KnockPacket.sign(sampleRequest(timestamp: Self.now + testCase.offset), with: signer)
        let verdict = verifier.verify(packet, nowMilliseconds: Self.now)
        if testCase.accepted {
            guard case .accepted = verdict else {
                Issue.record("\(verdict)")
                return
            }
        } else if testCase.offset < 0 {
            #expect(verdict == .refused(.staleTimestamp(ageMilliseconds: -testCase.offset)))
        } else {
            #expect(verdict == .refused(.futureTimestamp(aheadMilliseconds: testCase.offset)))
        }
    }

    @Test func extremeClocksDoNotTrap() throws {
        let signer = Ed25519TestSigner()
        let verifier = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: .seconds(Int64.max))
        for timestamp in [0, Int64.max] {
            let packet = try KnockPacket.sign(sampleRequest(timestamp: timestamp), with: signer)
            for now in [Int64.min, -1, 0, Int64.max] {
                _ = verifier.verify(packet, nowMilliseconds: now)
                _ = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: .zero).verify(
                    packet, nowMilliseconds: now)
                _ = KnockVerifier(allowedKeys: [signer.publicKey], maximumSkew: .seconds(-5)).verify(
                    packet, nowMilliseconds: now)
            }
        }
        #expect(KnockVerifier.milliseconds(.seconds(Int64.max)) == Int64.max)
        #expect(KnockVerifier.milliseconds(.milliseconds(1500)) == 1500)
        #expect(KnockVerifier.milliseconds(.seconds(-1)) == 0)
    }
}
