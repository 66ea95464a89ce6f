import Crypto
import CryptoExtras

/// Something that makes SSH signatures with one key: a private key file (``OpenSSHPrivateKey``) or a key held by
/// ssh-agent (``SSHAgentSigner``).
public protocol SSHSigner {
    /// The key whose signatures this signer makes.
    var publicKey: SSHPublicKey { get }

    /// Signs `data` and returns the SSH signature blob: `string algorithm, string signature` (and, for a security
    /// key, `byte flags, uint32 counter`), as RFC 4253 §6.6 and OpenSSH's PROTOCOL.u2f define it. RSA signers use
    /// `rsa-sha2-512`.
    func signatureBlob(for data: [UInt8]) throws -> [UInt8]
}

/// An SSHSIG signature, as `ssh-keygen -Y sign` makes it (OpenSSH PROTOCOL.sshsig):
///
/// ```
/// byte[6] "SSHSIG"    uint32 version (1)    string public key    string namespace
/// string reserved (empty)    string hash algorithm ("sha256" / "sha512")    string signature
/// ```
///
/// The signature covers `"SSHSIG" || string(namespace) || string(reserved) || string(hash algorithm) ||
/// string(H(message))` — not the message itself — so one signature is useless in another namespace.
public struct SSHSignature: Hashable, Sendable {
    /// The namespace of knock packets. A signature made for any other namespace (`git`, `file`) is refused.
    public static let knockNamespace = "drawbridge-knock@v1"

    /// The hash applied to the message before signing.
    public enum HashAlgorithm: String, Hashable, Sendable, CaseIterable {
        case sha256
        case sha512

        func digest(_ message: [UInt8]) -> [UInt8] {
            switch self {
            case .sha256: return Array(SHA256.hash(data: message))
            case .sha512: return Array(SHA512.hash(data: message))
            }
        }
    }

    /// What checking a signature found.
    public enum Check: Hashable, Sendable {
        case valid
        /// The signature was made for another namespace; it was not checked further.
        case wrongNamespace(String)
        /// The signature does not verify with its public key over this message.
        case invalid
        /// A security key signed without its user-presence flag: nobody touched it.
        case userPresenceMissing
    }

    /// The signer's key, as embedded in the signature.
    public let publicKey: SSHPublicKey
    /// The namespace the signature was made for.
    public let namespace: String
    /// The hash applied to the message.
    public let hashAlgorithm: HashAlgorithm
    /// The algorithm of the inner SSH signature: `ssh-ed25519`, `ecdsa-sha2-nistp256`, `rsa-sha2-256`,
    /// `rsa-sha2-512` or `sk-ssh-ed25519@openssh.com`.
    public let signatureAlgorithm: String
    /// The FIDO flags of a security-key signature (bit 0: user present, bit 2: user verified); nil otherwise.
    public let securityKeyFlags: UInt8?
    /// The FIDO signature counter of a security-key signature; nil otherwise.
    public let securityKeyCounter: UInt32?
    /// The signature in binary SSHSIG form, exactly as parsed or made.
    public let binary: [UInt8]
    /// The namespace as bytes: compared byte for byte, since `String` equality treats canonically equivalent
    /// Unicode spellings as equal.
    let namespaceBytes: [UInt8]
    /// The signature value: 64 bytes for Ed25519 and for ECDSA (r and s, 32 bytes each), the modulus length for RSA.
    let signatureValue: [UInt8]

    private static let magic = Array("SSHSIG".utf8)
    private static let armorBegin = "-----BEGIN SSH SIGNATURE-----"
    private static let armorEnd = "-----END SSH SIGNATURE-----"

    /// Parses the binary form. Every byte must belong to the signature, and the inner signature's algorithm must
    /// fit the embedded key.
    public init(binary bytes: some Collection<UInt8>) throws(SSHSignatureError) {
        let binary = Array(bytes)
        var reader = WireReader(binary)
        let magic = try reader.take(Self.magic.count) { SSHSignatureError(.magic, $0) }
        guard magic.elementsEqual(Self.magic) else {
            throw SSHSignatureError(.magic, .mismatch(expected: "\"SSHSIG\"", found: quoted(magic)))
        }
        let version = try reader.uint32 { SSHSignatureError(.version, $0) }
        guard version == 1 else { throw SSHSignatureError(.version, .unsupported("version \(version)")) }
        let keyBlob = try reader.string { SSHSignatureError(.publicKey, $0) }
        let key: SSHPublicKey
        do {
            key = try SSHPublicKey(wireBlob: keyBlob)
        } catch {
            throw SSHSignatureError(.publicKey, .key(error))
        }
        let namespaceBytes = try reader.string { SSHSignatureError(.namespace, $0) }
        let namespace = try validatedText(namespaceBytes) { SSHSignatureError(.namespace, $0) }
        let reserved = try reader.string { SSHSignatureError(.reserved, $0) }
        guard reserved.isEmpty else {
            throw SSHSignatureError(.reserved, .invalid("must be empty, holds \(reserved.count) bytes"))
        }
        let hashName = try reader.string { SSHSignatureError(.hashAlgorithm, $0) }
        guard let hashAlgorithm = HashAlgorithm.allCases.first(where: { $0.rawValue.utf8.elementsEqual(hashName) })
        else {
            throw SSHSignatureError(.hashAlgorithm, .unsupported("\(quoted(hashName)); use sha256 or sha512"))
        }
        let signatureBlob = try reader.string { SSHSignatureError(.signature, $0) }
        try reader.expectEnd { SSHSignatureError(.end, $0) }
        let inner = try InnerSignature(signatureBlob, key: key)

        self.publicKey = key
        self.namespace = namespace
        self.namespaceBytes = Array(namespaceBytes)
        self.hashAlgorithm = hashAlgorithm
        self.signatureAlgorithm = inner.algorithm
        self.signatureValue = inner.value
        self.securityKeyFlags = inner.flags
        self.securityKeyCounter = inner.counter
        self.binary = binary
    }

    /// Parses the armored form that `ssh-keygen -Y sign` writes (`-----BEGIN SSH SIGNATURE-----`, base64 lines,
    /// `-----END SSH SIGNATURE-----`).
    public init(armored text: some StringProtocol) throws(SSHSignatureError) {
        let lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
            .map { String($0.trimmingSpaces()) }
            .filter { !$0.isEmpty }
        guard lines.first == Self.armorBegin else {
            throw SSHSignatureError(.armor, .mismatch(expected: Self.armorBegin, found: lines.first ?? "nothing"))
        }
        guard lines.count >= 3, lines.last == Self.armorEnd else {
            throw SSHSignatureError(.armor, .invalid("no \(Self.armorEnd) line after the base64"))
        }
        guard let binary = Base64.decode(lines.dropFirst().dropLast().joined()) else {
            throw SSHSignatureError(.armor, .invalid("the text between the armor lines is not valid base64"))
        }
        try self.init(binary: binary)
    }

    /// The armored form, wrapped at 70 columns as ssh-keygen wraps it.
    public var armored: String {
        let text = Array(Base64.encode(binary))
        var lines = [Self.armorBegin]
        var start = 0
        while start < text.count {
            lines.append(String(text[start..<min(start + 70, text.count)]))
            start += 70
        }
        lines.append(Self.armorEnd)
        return lines.joined(separator: "\n") + "\n"
    }

    /// The bytes an SSHSIG signature covers for `message`.
    public static func signedData(
        for message: some Collection<UInt8>, namespace: String, hashAlgorithm: HashAlgorithm
    ) -> [UInt8] {
        var writer = WireWriter()
        writer.raw(Self.magic)
        writer.string(namespace)
        writer.string([UInt8]())
        writer.string(hashAlgorithm.rawValue)
        writer.string(hashAlgorithm.digest(Array(message)))
        return writer.bytes
    }

    /// Checks the signature over `message`: first that it was made for `namespace` (byte for byte), then the
    /// signature with the embedded key, then the user-presence flag of a security key.
    ///
    /// Whether the embedded key is one the caller trusts is the caller's question (``KnockVerifier`` asks it).
    public func check(message: some Collection<UInt8>, namespace: String = SSHSignature.knockNamespace) -> Check {
        guard namespaceBytes.elementsEqual(namespace.utf8) else { return .wrongNamespace(self.namespace) }
        let data = Self.signedData(for: message, namespace: namespace, hashAlgorithm: hashAlgorithm)
        switch publicKey.material {
        case .ed25519(let key):
            return key.isValidSignature(signatureValue, for: data) ? .valid : .invalid
        case .securityKeyEd25519(let key, let application):
            let flags = securityKeyFlags ?? 0
            var signed = Array(SHA256.hash(data: application))
            signed.append(flags)
            var counter = WireWriter()
            counter.uint32(securityKeyCounter ?? 0)
            signed.append(contentsOf: counter.bytes)
            signed.append(contentsOf: SHA256.hash(data: data))
            guard key.isValidSignature(signatureValue, for: signed) else { return .invalid }
            return flags & SecurityKeyFlag.userPresent != 0 ? .valid : .userPresenceMissing
        case .ecdsaP256(let key):
            guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: signatureValue) else {
                return .invalid
            }
            return key.isValidSignature(signature, for: data) ? .valid : .invalid
        case .rsa(let key, _):
            let signature = _RSA.Signing.RSASignature(rawRepresentation: signatureValue)
            switch signatureAlgorithm {
            case "rsa-sha2-256":
                let digest = SHA256.hash(data: data)
                return key.isValidSignature(signature, for: digest, padding: .insecurePKCS1v1_5) ? .valid : .invalid
            case "rsa-sha2-512":
                let digest = SHA512.hash(data: data)
                return key.isValidSignature(signature, for: digest, padding: .insecurePKCS1v1_5) ? .valid : .invalid
            default:
                return .invalid
            }
        }
    }

    /// The size of the largest binary SSHSIG `key` can make for `namespace`: exact for every kind but ECDSA, whose
    /// two numbers may each be a byte or two shorter.
    static func maximumBinarySize(for key: SSHPublicKey, namespace: String = SSHSignature.knockNamespace) -> Int {
        let signatureBlob: Int
        switch key.material {
        case .ed25519: signatureBlob = 4 + 11 + 4 + 64
        case .securityKeyEd25519: signatureBlob = 4 + 26 + 4 + 64 + 1 + 4
        case .ecdsaP256: signatureBlob = 4 + 19 + 4 + 2 * (4 + 33)
        case .rsa(_, let modulusBits): signatureBlob = 4 + 12 + 4 + (modulusBits + 7) / 8
        }
        let hashName = 6  // "sha256" and "sha512" alike
        return magic.count + 4 + (4 + key.wireBlob.count) + (4 + namespace.utf8.count) + 4 + (4 + hashName)
            + (4 + signatureBlob)
    }

    /// Signs `message` for `namespace` with `signer`, and checks the result before returning it: an agent that
    /// signs with another key, or a security key that was not touched, fails here rather than at the receiver.
    public static func sign(
        message: some Collection<UInt8>, namespace: String = SSHSignature.knockNamespace,
        hashAlgorithm: HashAlgorithm = .sha512, signer: some SSHSigner
    ) throws -> SSHSignature {
        let message = Array(message)
        let signatureBlob = try signer.signatureBlob(
            for: signedData(for: message, namespace: namespace, hashAlgorithm: hashAlgorithm))
        var writer = WireWriter()
        writer.raw(Self.magic)
        writer.uint32(1)
        writer.string(signer.publicKey.wireBlob)
        writer.string(namespace)
        writer.string([UInt8]())
        writer.string(hashAlgorithm.rawValue)
        writer.string(signatureBlob)
        let signature = try SSHSignature(binary: writer.bytes)
        switch signature.check(message: message, namespace: namespace) {
        case .valid:
            return signature
        case .userPresenceMissing:
            throw SSHSignatureError(
                .signer, .invalid("the security key signed without user presence; touch the key when it blinks"))
        case .invalid, .wrongNamespace:
            throw SSHSignatureError(
                .signer, .invalid("the signature made by \(signer.publicKey) does not verify with that key"))
        }
    }

    public static func == (lhs: SSHSignature, rhs: SSHSignature) -> Bool { lhs.binary == rhs.binary }
    public func hash(into hasher: inout Hasher) { hasher.combine(binary) }
}

/// FIDO authenticator data flags (WebAuthn §6.1), as a security-key signature carries them.
enum SecurityKeyFlag {
    static let userPresent: UInt8 = 0x01
    static let userVerified: UInt8 = 0x04
}

/// The SSH signature blob inside an SSHSIG, parsed for the key it claims to be from.
struct InnerSignature {
    var algorithm: String
    var value: [UInt8]
    var flags: UInt8?
    var counter: UInt32?

    init(_ blob: ArraySlice<UInt8>, key: SSHPublicKey) throws(SSHSignatureError) {
        var reader = WireReader(blob)
        let name = try reader.string { SSHSignatureError(.signatureAlgorithm, $0) }
        let allowed: [String]
        switch key.algorithm {
        case .ed25519: allowed = ["ssh-ed25519"]
        case .securityKeyEd25519: allowed = ["sk-ssh-ed25519@openssh.com"]
        case .ecdsaP256: allowed = ["ecdsa-sha2-nistp256"]
        case .rsa: allowed = ["rsa-sha2-512", "rsa-sha2-256"]
        }
        guard let algorithm = allowed.first(where: { $0.utf8.elementsEqual(name) }) else {
            if key.algorithm == .rsa, name.elementsEqual("ssh-rsa".utf8) {
                throw SSHSignatureError(
                    .signatureAlgorithm, .unsupported("\"ssh-rsa\" signatures use SHA-1; sign with rsa-sha2-512"))
            }
            throw SSHSignatureError(
                .signatureAlgorithm,
                .mismatch(
                    expected: allowed.joined(separator: " or ") + " for a \(key.algorithm.rawValue) key",
                    found: quoted(name)))
        }
        self.algorithm = algorithm
        let value = try reader.string { SSHSignatureError(.signatureValue, $0) }
        switch key.material {
        case .ed25519, .securityKeyEd25519:
            guard value.count == 64 else {
                throw SSHSignatureError(.signatureValue, .mismatch(expected: "64 bytes", found: "\(value.count)"))
            }
            self.value = Array(value)
        case .ecdsaP256:
            var numbers = WireReader(value)
            let r = try numbers.positiveMPInt { SSHSignatureError(.signatureValue, $0) }
            let s = try numbers.positiveMPInt { SSHSignatureError(.signatureValue, $0) }
            try numbers.expectEnd { SSHSignatureError(.signatureValue, $0) }
            guard r.count <= 32, s.count <= 32 else {
                throw SSHSignatureError(.signatureValue, .invalid("an ECDSA P-256 number is longer than 32 bytes"))
            }
            self.value =
                [UInt8](repeating: 0, count: 32 - r.count) + r + [UInt8](repeating: 0, count: 32 - s.count) + s
        case .rsa(_, let modulusBits):
            let modulusBytes = (modulusBits + 7) / 8
            guard value.count == modulusBytes else {
                throw SSHSignatureError(
                    .signatureValue,
                    .mismatch(expected: "\(modulusBytes) bytes (the modulus length)", found: "\(value.count)"))
            }
            self.value = Array(value)
        }
        if key.algorithm == .securityKeyEd25519 {
            self.flags = try reader.byte { SSHSignatureError(.securityKeyFlags, $0) }
            self.counter = try reader.uint32 { SSHSignatureError(.securityKeyCounter, $0) }
        }
        try reader.expectEnd { SSHSignatureError(.signature, $0) }
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces and tabs.
    func trimmingSpaces() -> SubSequence {
        let start = firstIndex { $0 != " " && $0 != "\t" } ?? endIndex
        let end = lastIndex { $0 != " " && $0 != "\t" }.map { index(after: $0) } ?? start
        return self[start..<Swift.max(start, end)]
    }
}
