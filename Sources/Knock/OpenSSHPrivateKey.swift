import Crypto
import CryptoExtras

/// An unencrypted private key in OpenSSH's format (`-----BEGIN OPENSSH PRIVATE KEY-----`, PROTOCOL.key), of the
/// kinds `ssh-keygen -t ed25519`, `-t ecdsa` (P-256) and `-t rsa` write, able to sign knocks.
///
/// An encrypted key is refused with an error that says to load it into ssh-agent: this module does not ask for
/// passphrases, and the agent already holds the decrypted key. A security-key (`-sk`) file is refused the same way,
/// since its private part never leaves the token.
public struct OpenSSHPrivateKey: SSHSigner, Sendable {
    /// The public half, as stored in the file and checked against the private half.
    public let publicKey: SSHPublicKey
    /// The comment stored in the file (often `user@host`).
    public let comment: String
    private let secret: Secret

    private enum Secret: Sendable {
        case ed25519(Curve25519.Signing.PrivateKey)
        case ecdsaP256(P256.Signing.PrivateKey)
        case rsa(_RSA.Signing.PrivateKey, modulusBytes: Int)
    }

    private static let armorBegin = "-----BEGIN OPENSSH PRIVATE KEY-----"
    private static let armorEnd = "-----END OPENSSH PRIVATE KEY-----"
    private static let magic = Array("openssh-key-v1\0".utf8)
    private static let toAgent = "load it into ssh-agent (ssh-add KEY) and knock through the agent"

    /// Reads the text of a private key file.
    public init(fileText text: some StringProtocol) throws(SSHKeyError) {
        let lines = text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
            .map { String($0.trimmingSpaces()) }
            .filter { !$0.isEmpty }
        guard let first = lines.first, first == Self.armorBegin else {
            if let first = lines.first, first.hasPrefix("-----BEGIN ") {
                throw SSHKeyError(
                    .armor,
                    .unsupported(
                        "\(first.dropFirst(11).prefix { $0 != "-" }) in PEM format; rewrite it in OpenSSH format "
                            + "(ssh-keygen -p -f KEY) or \(Self.toAgent)"))
            }
            throw SSHKeyError(.armor, .mismatch(expected: Self.armorBegin, found: lines.first ?? "nothing"))
        }
        guard lines.count >= 3, lines.last == Self.armorEnd else {
            throw SSHKeyError(.armor, .invalid("no \(Self.armorEnd) line after the base64"))
        }
        guard let binary = Base64.decode(lines.dropFirst().dropLast().joined()) else {
            throw SSHKeyError(.armor, .invalid("the text between the armor lines is not valid base64"))
        }
        try self.init(binary: binary)
    }

    /// Reads the binary `openssh-key-v1` structure (the base64 between the armor lines, decoded).
    public init(binary: [UInt8]) throws(SSHKeyError) {
        var reader = WireReader(binary)
        let magic = try reader.take(Self.magic.count) { SSHKeyError(.privateKeyMagic, $0) }
        guard magic.elementsEqual(Self.magic) else {
            throw SSHKeyError(.privateKeyMagic, .mismatch(expected: "\"openssh-key-v1\"", found: quoted(magic)))
        }
        let cipher = try reader.string { SSHKeyError(.cipher, $0) }
        guard cipher.elementsEqual("none".utf8) else {
            throw SSHKeyError(
                .cipher, .unsupported("the key is encrypted with a passphrase (\(quoted(cipher))); \(Self.toAgent)"))
        }
        try reader.expectString("none") { SSHKeyError(.kdf, $0) }
        let kdfOptions = try reader.string { SSHKeyError(.kdfOptions, $0) }
        guard kdfOptions.isEmpty else { throw SSHKeyError(.kdfOptions, .invalid("must be empty without a KDF")) }
        let count = try reader.uint32 { SSHKeyError(.keyCount, $0) }
        guard count == 1 else { throw SSHKeyError(.keyCount, .mismatch(expected: "1", found: "\(count)")) }
        let publicBlob = try reader.string { SSHKeyError(.publicKey, $0) }
        let publicKey: SSHPublicKey
        do {
            publicKey = try SSHPublicKey(wireBlob: publicBlob)
        } catch {
            throw SSHKeyError(.publicKey, .key(error))
        }
        let section = try reader.string { SSHKeyError(.privateSection, $0) }
        try reader.expectEnd { SSHKeyError(.privateSection, $0) }

        var secretReader = WireReader(section)
        let check1 = try secretReader.uint32 { SSHKeyError(.checkNumbers, $0) }
        let check2 = try secretReader.uint32 { SSHKeyError(.checkNumbers, $0) }
        guard check1 == check2 else {
            throw SSHKeyError(.checkNumbers, .invalid("they differ: the key is damaged (or was decrypted wrongly)"))
        }
        try secretReader.expectString(publicKey.algorithm.rawValue) { SSHKeyError(.privateKey, $0) }
        let secret: Secret
        let derivedBlob: [UInt8]
        switch publicKey.algorithm {
        case .ed25519:
            (secret, derivedBlob) = try Self.readEd25519(&secretReader)
        case .ecdsaP256:
            (secret, derivedBlob) = try Self.readECDSA(&secretReader)
        case .rsa:
            (secret, derivedBlob) = try Self.readRSA(&secretReader)
        case .securityKeyEd25519:
            throw SSHKeyError(
                .privateKey, .unsupported("a security key's private part stays on the token; \(Self.toAgent)"))
        }
        guard derivedBlob == publicKey.wireBlob else {
            throw SSHKeyError(.publicKey, .invalid("the public key does not belong to the private key in the file"))
        }
        let commentBytes = try secretReader.string { SSHKeyError(.comment, $0) }
        let padding = secretReader.bytes[secretReader.offset..<secretReader.end]  // the slice's own indices
        guard padding.count < 8, padding.enumerated().allSatisfy({ $0.element == UInt8($0.offset + 1) }) else {
            throw SSHKeyError(.padding, .invalid("expected the bytes 1, 2, 3, … up to a multiple of 8"))
        }
        self.publicKey = publicKey
        self.comment = String(decoding: commentBytes, as: UTF8.self)
        self.secret = secret
    }

    private static func readEd25519(_ reader: inout WireReader) throws(SSHKeyError) -> (Secret, [UInt8]) {
        let publicBytes = try reader.string { SSHKeyError(.privateKey, $0) }
        let secretBytes = try reader.string { SSHKeyError(.privateKey, $0) }
        // OpenSSH stores the 32-byte seed followed by the 32-byte public key.
        guard publicBytes.count == 32, secretBytes.count == 64, secretBytes.suffix(32).elementsEqual(publicBytes)
        else {
            throw SSHKeyError(.privateKey, .invalid("not a 32-byte Ed25519 public key and 64-byte seed and key"))
        }
        let key: Curve25519.Signing.PrivateKey
        do {
            key = try Curve25519.Signing.PrivateKey(rawRepresentation: secretBytes.prefix(32))
        } catch {
            throw SSHKeyError(.privateKey, .invalid("swift-crypto refused the Ed25519 seed (\(error))"))
        }
        var writer = WireWriter()
        writer.string("ssh-ed25519")
        writer.string(key.publicKey.rawRepresentation)
        return (.ed25519(key), writer.bytes)
    }

    private static func readECDSA(_ reader: inout WireReader) throws(SSHKeyError) -> (Secret, [UInt8]) {
        try reader.expectString("nistp256") { SSHKeyError(.curve, $0) }
        _ = try reader.string { SSHKeyError(.point, $0) }
        let scalar = try reader.positiveMPInt { SSHKeyError(.privateKey, $0) }
        guard scalar.count <= 32 else {
            throw SSHKeyError(.privateKey, .invalid("a P-256 private scalar is longer than 32 bytes"))
        }
        let key: P256.Signing.PrivateKey
        do {
            key = try P256.Signing.PrivateKey(
                rawRepresentation: [UInt8](repeating: 0, count: 32 - scalar.count) + scalar)
        } catch {
            throw SSHKeyError(.privateKey, .invalid("swift-crypto refused the P-256 scalar (\(error))"))
        }
        var writer = WireWriter()
        writer.string("ecdsa-sha2-nistp256")
        writer.string("nistp256")
        writer.string(key.publicKey.x963Representation)
        return (.ecdsaP256(key), writer.bytes)
    }

    private static func readRSA(_ reader: inout WireReader) throws(SSHKeyError) -> (Secret, [UInt8]) {
        let n = try reader.positiveMPInt { SSHKeyError(.modulus, $0) }
        let e = try reader.positiveMPInt { SSHKeyError(.exponent, $0) }
        let d = try reader.positiveMPInt { SSHKeyError(.privateKey, $0) }
        _ = try reader.positiveMPInt { SSHKeyError(.privateKey, $0) }  // iqmp: swift-crypto derives its own.
        let p = try reader.positiveMPInt { SSHKeyError(.privateKey, $0) }
        let q = try reader.positiveMPInt { SSHKeyError(.privateKey, $0) }
        let key: _RSA.Signing.PrivateKey
        do {
            key = try _RSA.Signing.PrivateKey(n: Array(n), e: Array(e), d: Array(d), p: Array(p), q: Array(q))
        } catch {
            throw SSHKeyError(.privateKey, .invalid("swift-crypto refused the RSA key (\(error))"))
        }
        var writer = WireWriter()
        writer.string("ssh-rsa")
        writer.mpint(e)
        writer.mpint(n)
        return (.rsa(key, modulusBytes: n.count), writer.bytes)
    }

    /// Signs as OpenSSH does: Ed25519, ECDSA P-256 with SHA-256, RSA as `rsa-sha2-512`.
    public func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        var writer = WireWriter()
        switch secret {
        case .ed25519(let key):
            writer.string("ssh-ed25519")
            writer.string(Array(try key.signature(for: data)))
        case .ecdsaP256(let key):
            let raw = Array(try key.signature(for: data).rawRepresentation)
            var numbers = WireWriter()
            numbers.mpint(raw.prefix(32))
            numbers.mpint(raw.suffix(32))
            writer.string("ecdsa-sha2-nistp256")
            writer.string(numbers.bytes)
        case .rsa(let key, let modulusBytes):
            let signature = try key.signature(for: SHA512.hash(data: data), padding: .insecurePKCS1v1_5)
            let raw = Array(signature.rawRepresentation)
            // The value is as long as the modulus, zero-padded on the left as OpenSSH pads it.
            writer.string("rsa-sha2-512")
            writer.string([UInt8](repeating: 0, count: max(0, modulusBytes - raw.count)) + raw)
        }
        return writer.bytes
    }
}
