import Crypto
import CryptoExtras
import FoundationEssentials
import Knock

// The fixed keys of the knock fuzz target. The verifier the fuzz target drives allows the first four, so the seed
// packets signed with them verify and every signature check (Ed25519, ECDSA P-256, security-key Ed25519, RSA with
// rsa-sha2-512 and rsa-sha2-256) is reached; the fifth signs a seed the verifier must refuse as an unknown key.
//
// THROWAWAY TEST KEYS: their private halves are in this file on purpose, to sign the committed seed corpus
// (`knock-fuzz --write-seeds DIR`). Never allow them anywhere else.

enum FuzzKeys {
    /// The fuzz verifier's clock, and the timestamp of the seed packets that must verify (2023-11-14T22:13:20Z).
    static let clock: Int64 = 1_700_000_000_000
    /// The fuzz verifier's allowed clock skew.
    static let skew: Duration = .seconds(30)
    static let skewMilliseconds: Int64 = 30_000

    static let ed25519 = FuzzSigner(ed25519: try! Curve25519.Signing.PrivateKey(rawRepresentation: seed("ed25519")))
    static let p256 = FuzzSigner(p256: try! P256.Signing.PrivateKey(rawRepresentation: seed("p-256")))
    static let securityKey = FuzzSigner(
        securityKey: try! Curve25519.Signing.PrivateKey(rawRepresentation: seed("sk-ed25519")), flags: 0x01,
        counter: 7)
    static let rsa = FuzzSigner(rsa: try! _RSA.Signing.PrivateKey(derRepresentation: rsaDER))
    /// Not allowed by the fuzz verifier.
    static let unknown = FuzzSigner(
        ed25519: try! Curve25519.Signing.PrivateKey(rawRepresentation: seed("unknown ed25519")))

    /// The keys the fuzz verifier allows.
    static let allowed: [FuzzSigner] = [ed25519, p256, securityKey, rsa]

    static let verifier = KnockVerifier(allowedKeys: allowed.map(\.publicKey), maximumSkew: skew)

    /// The allowed signer holding `key`, if any.
    static func signer(for key: SSHPublicKey) -> FuzzSigner? { allowed.first { $0.publicKeyBlob == key.wireBlob } }

    /// A fixed 32-byte private key seed: SHA-256 of a label.
    static func seed(_ label: String) -> [UInt8] {
        Array(SHA256.hash(data: Array("drawbridge knock-fuzz \(label)".utf8)))
    }

    /// A 2048-bit RSA key (PKCS#1 DER, made once with `openssl genpkey -algorithm RSA`).
    static let rsaDER: [UInt8] = {
        let text = """
            MIIEowIBAAKCAQEAykUi+l8Bk6mTH4sB0lSbuacNNbfAWexP/924RBYHO6OjTGdsmPQKVDwsXlI0tulkRP3K+74iELId7OPm
            MsTdNgzC8MO2SQpCEsy4k/OtxCbLECC34doCBBwoRnYAoyZYDSanv6cDODnQaXB72CttpE/VW1MBwjppEuQ4uUOgoZKipkf9
            8w7gjkds5bAZCGYpV1RYajr09nTDkUV+efxeUq1zwHIOk7H4WCbkxLa7p5qHuRCoTi6mNniD7TRwQ/CSlb5j/ru47BplqcBP
            LakmZxMUeQ5Q0mr/RHUFaibE5eAlNEtTCBsPaNb6lHk4eC5ZQPCCWacg+fZNpNSYAC1wNQIDAQABAoIBAE0u9Jn1hvSB0NJI
            iPlpr8K4LCJDa/LkaeKJCLdycHAhkT6meJolBYv/Ki8Tz2m8xbZN4hcOBpG4ZhLvI/hbhs4JMJoPFI/qiiwCUqyiX7xp0TLm
            SUS1m+9Vj0jT3opjJ1ZdWcWYRXI/HXgepCNo7v20OQYQNquW/mFnFP4dAD6muBfgKRRGpeeX7tcKJCuBAEriC56LZ4orMsGs
            l9jkqNn0EItuh5FIkKpioIKw6IuKKcs71zmqgQCyuDjO3bvCUTC4vwpePuXJNwkOIUVosRhhdapOKN22Z0goUuwRO00TppJE
            T1o00hny0j4eYfRRfY+Rrn25Gf5iYHhG1lawIkECgYEA59bMWXtyk1sbvLz9/nwoGyJqv+R3Fu4ThyiU6TqErRqXXKw+1XhX
            LZSxDh/sU5UbYtSKReczqRMb3ro/Ja5vne6lYM7Ak+Lr1Cfec6rqfUMS8QePqe3aMjAtd1YnhrEFm+zASmzUUccAiduw3EAA
            OzVWg21w4YRfeUtV1OOxh3sCgYEA31l4rztW6kpJbn2cCppGc6Iihv2/38cAJDNNOvHeNJdHSGJWFEGt+ed1uhcZkJBr7SZP
            U5riJc57WJedbynlD6WFmyaCVp9Kxbt7jF12hw/UGX7i24LKuxPKzJma7ffFiLo/LvKyOSP/lwnZ4n9kecFp3LJ7H5ugA2lO
            yVxLgA8CgYB7xkzxVRv1mgWz/T6pmEWdPwG5E1OVVWPtm/fskMZ22KSI4JjnRUld122zuc1lTk0BtbFg4q/NC5usjMjb6EZF
            Dj0S8y8ThWocqXB1VoG8gIvjTQMhWRBODTSo6sFNgsMY3QxIb9PnGRSrhTPmUvEMq0xV/J7wd8i1LEhV0X5dcwKBgGK8fumY
            Zff1FzlNNipJwVNlHbZnfudCZgGa3E1ulzjQl6acMkmKL4sGk7jMdXS/I7cW9IKVOdxUx5qGjAaUkrq0Bbhs8bmxebCoDRok
            Rz219aG/wjIgQ9coDMMeNKt2mVC0ZTIwADHahCcVJ8lFX/mjU1VJYby7Y6WebEIAFzBpAoGBANlMUE2zKrmsGd45sEu8llf2
            o6FTVQVDvdcQ0eXoMGxc2iIZ1aXKj/legsReUXu9gVxrQYMq99DIVpUq3T3um4y20BqZyDSXyFtMl6kVo/U4AuWEBk1Gra/B
            uDONIQ7jbSjd9JGh/HS90ckkmkXQaXcIy/Hkh3gIj6niiyU/GnTh
            """
        return Array(Data(base64Encoded: text.filter { !$0.isWhitespace })!)
    }()
}

/// Signs as OpenSSH and ssh-agent do, with one of the fixed keys.
///
/// The keys are kept in optionals of plain structs, never in an enum with payloads, and the public key as its wire
/// blob rather than as an `SSHPublicKey`: Swift stores an enum's case in the spare bits of the class references in
/// its payload, where LeakSanitizer does not recognise them as pointers, so the static keys would be reported as
/// leaked when the fuzzer exits.
struct FuzzSigner: SSHSigner, Sendable {
    enum Kind: Sendable {
        case ed25519
        case p256
        /// `sk-ssh-ed25519@openssh.com`, as a FIDO token signs (OpenSSH PROTOCOL.u2f).
        case securityKey
        case rsa
    }

    let kind: Kind
    private var curve25519: Curve25519.Signing.PrivateKey?
    private var p256: P256.Signing.PrivateKey?
    private var rsa: _RSA.Signing.PrivateKey?
    /// The security key's FIDO flags and counter.
    private(set) var flags: UInt8 = 0
    private(set) var counter: UInt32 = 0
    /// `rsa-sha2-256` rather than OpenSSH's `rsa-sha2-512`.
    private(set) var rsaSHA256 = false
    private var modulusBytes = 0
    /// The public key's wire blob.
    let publicKeyBlob: [UInt8]

    var publicKey: SSHPublicKey { try! SSHPublicKey(wireBlob: publicKeyBlob) }

    static let application = Array("ssh:".utf8)

    init(ed25519 key: Curve25519.Signing.PrivateKey) {
        var blob = WireBytes()
        blob.string("ssh-ed25519")
        blob.string(Array(key.publicKey.rawRepresentation))
        kind = .ed25519
        curve25519 = key
        publicKeyBlob = blob.bytes
    }

    init(p256 key: P256.Signing.PrivateKey) {
        var blob = WireBytes()
        blob.string("ecdsa-sha2-nistp256")
        blob.string("nistp256")
        blob.string(Array(key.publicKey.x963Representation))
        kind = .p256
        p256 = key
        publicKeyBlob = blob.bytes
    }

    init(securityKey key: Curve25519.Signing.PrivateKey, flags: UInt8, counter: UInt32) {
        var blob = WireBytes()
        blob.string("sk-ssh-ed25519@openssh.com")
        blob.string(Array(key.publicKey.rawRepresentation))
        blob.string(Self.application)
        kind = .securityKey
        curve25519 = key
        self.flags = flags
        self.counter = counter
        publicKeyBlob = blob.bytes
    }

    init(rsa key: _RSA.Signing.PrivateKey) {
        let primitives = try! key.publicKey.getKeyPrimitives()
        let modulus = Array(Array(primitives.modulus).drop { $0 == 0 })
        var blob = WireBytes()
        blob.string("ssh-rsa")
        blob.mpint(Array(primitives.publicExponent))
        blob.mpint(modulus)
        kind = .rsa
        rsa = key
        modulusBytes = modulus.count
        publicKeyBlob = blob.bytes
    }

    /// The same security key signing with other flags and counter.
    func with(flags: UInt8, counter: UInt32) -> FuzzSigner {
        var signer = self
        signer.flags = flags
        signer.counter = counter
        return signer
    }

    /// The same RSA key signing `rsa-sha2-256` or `rsa-sha2-512`.
    func with(rsaAlgorithm algorithm: String) -> FuzzSigner {
        var signer = self
        signer.rsaSHA256 = algorithm == "rsa-sha2-256"
        return signer
    }

    /// Whether signing the same data twice gives the same signature (all but ECDSA).
    var isDeterministic: Bool { kind != .p256 }

    func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        var writer = WireBytes()
        switch kind {
        case .ed25519:
            writer.string("ssh-ed25519")
            writer.string(Array(try curve25519!.signature(for: data)))
        case .p256:
            let raw = Array(try p256!.signature(for: data).rawRepresentation)
            var numbers = WireBytes()
            numbers.mpint(Array(raw.prefix(32)))
            numbers.mpint(Array(raw.suffix(32)))
            writer.string("ecdsa-sha2-nistp256")
            writer.string(numbers.bytes)
        case .securityKey:
            // PROTOCOL.u2f: Ed25519 over SHA256(application) || flags || counter || SHA256(data).
            var signed = Array(SHA256.hash(data: Self.application))
            signed.append(flags)
            var counterBytes = WireBytes()
            counterBytes.uint32(counter)
            signed += counterBytes.bytes
            signed += Array(SHA256.hash(data: data))
            writer.string("sk-ssh-ed25519@openssh.com")
            writer.string(Array(try curve25519!.signature(for: signed)))
            writer.byte(flags)
            writer.uint32(counter)
        case .rsa:
            let signature =
                rsaSHA256
                ? try rsa!.signature(for: SHA256.hash(data: data), padding: .insecurePKCS1v1_5)
                : try rsa!.signature(for: SHA512.hash(data: data), padding: .insecurePKCS1v1_5)
            let raw = Array(signature.rawRepresentation)
            writer.string(rsaSHA256 ? "rsa-sha2-256" : "rsa-sha2-512")
            writer.string([UInt8](repeating: 0, count: max(0, modulusBytes - raw.count)) + raw)
        }
        return writer.bytes
    }
}

/// The SSH wire encoding (RFC 4251 §5), for building keys, signatures and seeds; Knock's own writer is internal.
struct WireBytes {
    var bytes: [UInt8] = []

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    mutating func uint16(_ value: UInt16) {
        bytes += [UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
    }

    mutating func uint32(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    mutating func uint64(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    mutating func raw(_ data: some Sequence<UInt8>) { bytes += data }

    mutating func string(_ data: [UInt8]) {
        uint32(UInt32(data.count))
        bytes += data
    }

    mutating func string(_ text: String) { string(Array(text.utf8)) }

    /// A positive `mpint` from an unsigned big-endian magnitude.
    mutating func mpint(_ magnitude: [UInt8]) {
        let trimmed = Array(magnitude.drop { $0 == 0 })
        if let first = trimmed.first, first & 0x80 != 0 {
            string([0] + trimmed)
        } else {
            string(trimmed)
        }
    }
}
