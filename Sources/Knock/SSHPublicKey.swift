import Crypto
import CryptoExtras

/// An SSH public key of a kind a knock may be signed with, parsed from its wire blob (RFC 4253 §6.6 and OpenSSH's
/// PROTOCOL.u2f) and ready to verify signatures.
///
/// Two keys are equal when their wire blobs are equal; the comment of a key line is not part of the key (see
/// ``AuthorizedKey``).
public struct SSHPublicKey: Hashable, Sendable {
    /// The key types a knock may be signed with.
    public enum Algorithm: String, Hashable, Sendable, CaseIterable {
        case ed25519 = "ssh-ed25519"
        case ecdsaP256 = "ecdsa-sha2-nistp256"
        /// RSA keys; signatures must be `rsa-sha2-256` or `rsa-sha2-512` (SHA-1 `ssh-rsa` signatures are refused).
        case rsa = "ssh-rsa"
        /// An Ed25519 key on a FIDO security key (`ssh-keygen -t ed25519-sk`).
        case securityKeyEd25519 = "sk-ssh-ed25519@openssh.com"
    }

    /// RSA keys shorter than this are refused: 2048 bits is the floor of current guidance and of swift-crypto.
    public static let minimumRSABits = 2048
    /// RSA keys longer than this are refused, as OpenSSH refuses them (its SSHBUF_MAX_BIGNUM).
    public static let maximumRSABits = 16384

    /// The key's type.
    public let algorithm: Algorithm
    /// The key in SSH wire encoding: what a key line carries in base64, what ssh-agent lists, what SSHSIG embeds.
    public let wireBlob: [UInt8]
    let material: Material

    enum Material: Sendable {
        case ed25519(Curve25519.Signing.PublicKey)
        case ecdsaP256(P256.Signing.PublicKey)
        case rsa(_RSA.Signing.PublicKey, modulusBits: Int)
        case securityKeyEd25519(Curve25519.Signing.PublicKey, application: [UInt8])
    }

    /// Parses a key from its SSH wire blob; every byte must belong to the key.
    public init(wireBlob: some Collection<UInt8>) throws(SSHKeyError) {
        let blob = Array(wireBlob)
        var reader = WireReader(blob)
        let name = try reader.string { SSHKeyError(.algorithm, $0) }
        guard let algorithm = Algorithm(wireName: name) else {
            throw SSHKeyError(.algorithm, .unsupported("key type \(quoted(name))"))
        }
        let material: Material
        switch algorithm {
        case .ed25519:
            material = .ed25519(try Self.ed25519Key(&reader))
        case .securityKeyEd25519:
            let key = try Self.ed25519Key(&reader)
            let application = try reader.string { SSHKeyError(.application, $0) }
            _ = try validatedText(application) { SSHKeyError(.application, $0) }
            material = .securityKeyEd25519(key, application: Array(application))
        case .ecdsaP256:
            try reader.expectString("nistp256") { SSHKeyError(.curve, $0) }
            let point = try reader.string { SSHKeyError(.point, $0) }
            guard point.count == 65, point.first == 0x04 else {
                throw SSHKeyError(.point, .invalid("not an uncompressed P-256 point (65 bytes starting 0x04)"))
            }
            do {
                material = .ecdsaP256(try P256.Signing.PublicKey(x963Representation: point))
            } catch {
                throw SSHKeyError(.point, .invalid("not a point on P-256"))
            }
        case .rsa:
            let exponent = try reader.positiveMPInt { SSHKeyError(.exponent, $0) }
            let modulus = try reader.positiveMPInt { SSHKeyError(.modulus, $0) }
            let bits = Self.bitLength(modulus)
            guard bits >= Self.minimumRSABits else {
                throw SSHKeyError(.modulus, .tooShort(length: bits, minimum: Self.minimumRSABits))
            }
            guard bits <= Self.maximumRSABits else {
                throw SSHKeyError(.modulus, .tooLong(length: bits, limit: Self.maximumRSABits))
            }
            guard let last = exponent.last, last & 1 == 1, exponent.count > 1 || last >= 3 else {
                throw SSHKeyError(.exponent, .invalid("an RSA exponent must be odd and at least 3"))
            }
            do {
                let key = try _RSA.Signing.PublicKey(n: Array(modulus), e: Array(exponent))
                material = .rsa(key, modulusBits: bits)
            } catch {
                throw SSHKeyError(.modulus, .invalid("swift-crypto refused the RSA key (\(error))"))
            }
        }
        try reader.expectEnd { SSHKeyError(.blob, $0) }
        self.algorithm = algorithm
        self.wireBlob = blob
        self.material = material
    }

    private static func ed25519Key(_ reader: inout WireReader) throws(SSHKeyError) -> Curve25519.Signing.PublicKey {
        let bytes = try reader.string { SSHKeyError(.ed25519Key, $0) }
        guard bytes.count == 32 else {
            throw SSHKeyError(.ed25519Key, .mismatch(expected: "32 bytes", found: "\(bytes.count) bytes"))
        }
        do {
            return try Curve25519.Signing.PublicKey(rawRepresentation: bytes)
        } catch {
            throw SSHKeyError(.ed25519Key, .invalid("swift-crypto refused the key (\(error))"))
        }
    }

    /// The number of significant bits in a big-endian magnitude without leading zero bytes.
    static func bitLength(_ magnitude: ArraySlice<UInt8>) -> Int {
        guard let first = magnitude.first else { return 0 }
        return (magnitude.count - 1) * 8 + (8 - first.leadingZeroBitCount)
    }

    /// The key's size in bits: the modulus for RSA, 256 for the elliptic curves.
    public var bits: Int {
        switch material {
        case .rsa(_, let modulusBits):
            return modulusBits
        case .ed25519, .ecdsaP256, .securityKeyEd25519:
            return 256
        }
    }

    /// The FIDO application of a security key (`ssh:` for keys made by ssh-keygen), nil for other keys.
    public var securityKeyApplication: String? {
        guard case .securityKeyEd25519(_, let application) = material else { return nil }
        return String(decoding: application, as: UTF8.self)
    }

    /// The fingerprint OpenSSH prints for this key (`ssh-keygen -lf`).
    public var fingerprint: SSHFingerprint { SSHFingerprint(of: self) }

    /// The key as a key line without comment: `ssh-ed25519 AAAA…`.
    public var openSSHText: String { "\(algorithm.rawValue) \(Base64.encode(wireBlob))" }

    public static func == (lhs: SSHPublicKey, rhs: SSHPublicKey) -> Bool { lhs.wireBlob == rhs.wireBlob }
    public func hash(into hasher: inout Hasher) { hasher.combine(wireBlob) }
}

extension SSHPublicKey.Algorithm {
    init?(wireName: some Collection<UInt8>) {
        guard let match = Self.allCases.first(where: { $0.rawValue.utf8.elementsEqual(wireName) }) else { return nil }
        self = match
    }
}

extension SSHPublicKey: CustomStringConvertible {
    /// `ssh-ed25519 SHA256:…`, as a log line should name a key.
    public var description: String { "\(algorithm.rawValue) \(fingerprint)" }
}

/// A key's fingerprint in OpenSSH's form: `SHA256:` and the unpadded base64 of the SHA-256 of its wire blob.
public struct SSHFingerprint: Hashable, Sendable {
    /// The 32-byte SHA-256 digest of the key's wire blob.
    public let digest: [UInt8]

    /// The fingerprint of a key.
    public init(of key: SSHPublicKey) {
        self.digest = Array(SHA256.hash(data: key.wireBlob))
    }

    /// Parses `SHA256:` followed by 43 characters of unpadded base64, as `ssh-keygen -l` prints it.
    public init(parsing text: some StringProtocol) throws(SSHKeyError) {
        let prefix = "SHA256:"
        guard text.hasPrefix(prefix) else {
            throw SSHKeyError(.fingerprint, .mismatch(expected: "SHA256:…", found: quoted(Array(text.utf8))))
        }
        guard let digest = Base64.decode(text.dropFirst(prefix.count), padding: false), digest.count == 32 else {
            throw SSHKeyError(.fingerprint, .invalid("not 43 characters of unpadded base64 after SHA256:"))
        }
        self.digest = digest
    }
}

extension SSHFingerprint: CustomStringConvertible {
    public var description: String { "SHA256:" + Base64.encode(digest, padding: false) }
}
