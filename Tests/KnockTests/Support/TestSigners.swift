import Crypto

@testable import Knock

// Signers with keys made in-process, for the many tests that need a signature but not OpenSSH's tools.

struct Ed25519TestSigner: SSHSigner {
    let privateKey = Curve25519.Signing.PrivateKey()

    var publicKey: SSHPublicKey {
        var writer = WireWriter()
        writer.string("ssh-ed25519")
        writer.string(privateKey.publicKey.rawRepresentation)
        return try! SSHPublicKey(wireBlob: writer.bytes)
    }

    func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        var writer = WireWriter()
        writer.string("ssh-ed25519")
        writer.string(Array(try privateKey.signature(for: data)))
        return writer.bytes
    }
}

struct P256TestSigner: SSHSigner {
    let privateKey = P256.Signing.PrivateKey()

    var publicKey: SSHPublicKey {
        var writer = WireWriter()
        writer.string("ecdsa-sha2-nistp256")
        writer.string("nistp256")
        writer.string(privateKey.publicKey.x963Representation)
        return try! SSHPublicKey(wireBlob: writer.bytes)
    }

    func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        let raw = Array(try privateKey.signature(for: data).rawRepresentation)
        var numbers = WireWriter()
        numbers.mpint(raw.prefix(32))
        numbers.mpint(raw.suffix(32))
        var writer = WireWriter()
        writer.string("ecdsa-sha2-nistp256")
        writer.string(numbers.bytes)
        return writer.bytes
    }
}

/// A software stand-in for a FIDO security key holding an `sk-ssh-ed25519@openssh.com` key, signing as OpenSSH's
/// PROTOCOL.u2f says a token does: Ed25519 over `SHA256(application) || flags || counter || SHA256(data)`, and the
/// blob `string type, string signature, byte flags, uint32 counter`. No real token was available to test with.
struct SecurityKeyTestSigner: SSHSigner {
    let privateKey = Curve25519.Signing.PrivateKey()
    var application = "ssh:"
    /// 0x01 is user presence; a signer without it stands for a token nobody touched.
    var flags: UInt8 = 0x01
    var counter: UInt32 = 7

    var publicKey: SSHPublicKey {
        var writer = WireWriter()
        writer.string("sk-ssh-ed25519@openssh.com")
        writer.string(privateKey.publicKey.rawRepresentation)
        writer.string(application)
        return try! SSHPublicKey(wireBlob: writer.bytes)
    }

    func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        var signed = Array(SHA256.hash(data: Array(application.utf8)))
        signed.append(flags)
        var counterBytes = WireWriter()
        counterBytes.uint32(counter)
        signed += counterBytes.bytes
        signed += Array(SHA256.hash(data: data))
        var writer = WireWriter()
        writer.string("sk-ssh-ed25519@openssh.com")
        writer.string(Array(try privateKey.signature(for: signed)))
        writer.byte(flags)
        writer.uint32(counter)
        return writer.bytes
    }
}

/// Signs with one key but claims another: what an attacker who swaps the public key inside an SSHSIG produces.
struct ImpostorSigner: SSHSigner {
    let claimed: SSHPublicKey
    let actual: any SSHSigner

    var publicKey: SSHPublicKey { claimed }
    func signatureBlob(for data: [UInt8]) throws -> [UInt8] { try actual.signatureBlob(for: data) }
}

/// Counts the signatures asked of a signer.
struct CountingSigner: SSHSigner {
    final class Counter: @unchecked Sendable { var value = 0 }
    let wrapped: any SSHSigner
    let calls = Counter()

    init(_ wrapped: any SSHSigner) { self.wrapped = wrapped }

    var publicKey: SSHPublicKey { wrapped.publicKey }
    func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        calls.value += 1
        return try wrapped.signatureBlob(for: data)
    }
}

/// A deterministic random generator (SplitMix64), so a failing random case can be replayed from its seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}

/// Builds an SSHSIG by hand, bypassing ``SSHSignature/sign``'s checks, to make signatures the verifier must refuse.
func rawSSHSIG(
    key: SSHPublicKey, namespace: String = SSHSignature.knockNamespace, reserved: [UInt8] = [],
    hashAlgorithm: String = "sha512", signatureBlob: [UInt8]
) -> [UInt8] {
    var writer = WireWriter()
    writer.raw(Array("SSHSIG".utf8))
    writer.uint32(1)
    writer.string(key.wireBlob)
    writer.string(namespace)
    writer.string(reserved)
    writer.string(hashAlgorithm)
    writer.string(signatureBlob)
    return writer.bytes
}

/// A knock packet from a body and an SSHSIG, bypassing the encoder.
func assemblePacket(body: [UInt8], signature: [UInt8]) -> [UInt8] {
    var writer = WireWriter()
    writer.raw(body)
    writer.uint16(UInt16(truncatingIfNeeded: signature.count))
    writer.raw(signature)
    return writer.bytes
}

/// A request with ordinary values.
func sampleRequest(
    timestamp: Int64 = 1_700_000_000_000, reason: String? = "deploy hotfix", address: KnockAddress? = nil
) -> KnockRequest {
    KnockRequest(
        host: "gate.example.org", ports: [.named("ssh"), .number(8443, .tcp)], durationSeconds: 3600,
        clientAddress: address, timestampMilliseconds: timestamp,
        nonce: KnockNonce(high: 0x0123_4567_89AB_CDEF, low: 0xFEDC_BA98_7654_3210), reason: reason)
}
