/// A public or private SSH key that could not be read, naming the part of the key and what is wrong with it.
///
/// ```
/// SSHKeyError(.modulus, .tooShort(length: 1024, minimum: 2048))   // "RSA modulus: too short: 1024, at least 2048"
/// ```
public struct SSHKeyError: Error, Hashable, Sendable {
    /// The part of a key line, key blob or private key file that is wrong.
    public enum Field: String, Hashable, Sendable {
        /// An authorized_keys line as a whole (empty, a comment, or no key in it).
        case line = "key line"
        /// The options before the key type on an authorized_keys line.
        case options = "key options"
        /// The key type word on a key line (`ssh-ed25519`).
        case keyType = "key type"
        /// The base64 text of a key on a key line.
        case base64 = "key base64"
        /// The key type name inside the wire blob.
        case algorithm = "key algorithm"
        /// The Ed25519 public key bytes.
        case ed25519Key = "Ed25519 public key"
        /// The curve name inside an ECDSA key.
        case curve = "ECDSA curve"
        /// The curve point of an ECDSA key.
        case point = "ECDSA point"
        /// The RSA public exponent.
        case exponent = "RSA exponent"
        /// The RSA modulus.
        case modulus = "RSA modulus"
        /// The FIDO application string of a security key (`ssh:`).
        case application = "security key application"
        /// The wire blob as a whole (trailing bytes).
        case blob = "key blob"
        /// A fingerprint in OpenSSH's `SHA256:` form.
        case fingerprint = "fingerprint"
        /// The `-----BEGIN OPENSSH PRIVATE KEY-----` armor of a private key file.
        case armor = "private key armor"
        /// The `openssh-key-v1` magic at the start of a private key.
        case privateKeyMagic = "private key magic"
        /// The cipher of a private key file; anything but `none` means it is encrypted.
        case cipher = "private key cipher"
        /// The key derivation function of a private key file.
        case kdf = "private key KDF"
        /// The KDF options of a private key file.
        case kdfOptions = "private key KDF options"
        /// The number of keys in a private key file.
        case keyCount = "private key count"
        /// The public key stored in a private key file's header.
        case publicKey = "public key"
        /// The section holding the private key.
        case privateSection = "private key section"
        /// The two check numbers that must be equal in an unencrypted private key.
        case checkNumbers = "private key check numbers"
        /// The private key material (seed, scalar, RSA numbers).
        case privateKey = "private key"
        /// The comment stored with a private key.
        case comment = "key comment"
        /// The padding after the private key.
        case padding = "private key padding"
    }

    /// Which part of the key is wrong.
    public var field: Field
    /// What is wrong with it.
    public var problem: FormatProblem
    /// The 1-based line of a multi-line text (an authorized_keys file) the error is on, when there is one.
    public var line: Int?

    /// An error about `field`, on `line` of a multi-line text if given.
    public init(_ field: Field, _ problem: FormatProblem, line: Int? = nil) {
        self.field = field
        self.problem = problem
        self.line = line
    }
}

extension SSHKeyError: CustomStringConvertible {
    public var description: String {
        let place = line.map { "line \($0): " } ?? ""
        return "\(place)\(field.rawValue): \(problem)"
    }
}

/// An SSHSIG signature (OpenSSH PROTOCOL.sshsig) that could not be read or made, naming the field and the problem.
public struct SSHSignatureError: Error, Hashable, Sendable {
    /// The part of an SSHSIG, or of the SSH signature inside it, that is wrong.
    public enum Field: String, Hashable, Sendable {
        /// The `-----BEGIN SSH SIGNATURE-----` armor and its base64.
        case armor = "armor"
        /// The `SSHSIG` magic.
        case magic = "magic"
        /// The SSHSIG version (1).
        case version = "version"
        /// The signer's public key.
        case publicKey = "public key"
        /// The namespace the signature was made for.
        case namespace = "namespace"
        /// The reserved field, which must be empty.
        case reserved = "reserved"
        /// The hash algorithm applied to the message (`sha256` or `sha512`).
        case hashAlgorithm = "hash algorithm"
        /// The SSH signature blob as a whole.
        case signature = "signature"
        /// The algorithm name inside the signature blob (`ssh-ed25519`, `rsa-sha2-512`).
        case signatureAlgorithm = "signature algorithm"
        /// The signature bytes inside the signature blob.
        case signatureValue = "signature value"
        /// The flags byte of a security-key signature.
        case securityKeyFlags = "security key flags"
        /// The counter of a security-key signature.
        case securityKeyCounter = "security key counter"
        /// The signer: a key or agent that could not sign, or signed wrongly.
        case signer = "signer"
        /// The SSHSIG as a whole (trailing bytes).
        case end = "end"
    }

    /// Which part of the signature is wrong.
    public var field: Field
    /// What is wrong with it.
    public var problem: FormatProblem

    /// An error about `field`.
    public init(_ field: Field, _ problem: FormatProblem) {
        self.field = field
        self.problem = problem
    }
}

extension SSHSignatureError: CustomStringConvertible {
    public var description: String { "SSH signature \(field.rawValue): \(problem)" }
}

/// A knock packet that could not be decoded or encoded: which field, at which byte offset, and what is wrong.
///
/// ```
/// KnockPacketError(.reason, at: 61, .controlCharacter(offset: 3))   // "knock packet reason at byte 61: control…"
/// ```
public struct KnockPacketError: Error, Hashable, Sendable {
    /// A field of the knock packet; see ``KnockPacket`` for the layout.
    public enum Field: Hashable, Sendable {
        case magic
        case version
        case host
        case portCount
        /// The port at this index (0-based) of the list.
        case port(index: Int)
        case duration
        case clientAddressFamily
        case clientAddress
        case timestamp
        case nonce
        case reason
        case signatureLength
        case signature
        /// The packet as a whole: its total size, or bytes after the signature.
        case packet
    }

    /// Which field is wrong.
    public var field: Field
    /// Where the field starts in the packet; 0 when encoding.
    public var offset: Int
    /// What is wrong with it.
    public var problem: FormatProblem

    /// An error about `field`, which starts at byte `offset` of the packet.
    public init(_ field: Field, at offset: Int = 0, _ problem: FormatProblem) {
        self.field = field
        self.offset = offset
        self.problem = problem
    }
}

extension KnockPacketError.Field: CustomStringConvertible {
    public var description: String {
        switch self {
        case .magic: return "magic"
        case .version: return "version"
        case .host: return "host"
        case .portCount: return "port count"
        case .port(let index): return "port \(index + 1)"
        case .duration: return "duration"
        case .clientAddressFamily: return "client address family"
        case .clientAddress: return "client address"
        case .timestamp: return "timestamp"
        case .nonce: return "nonce"
        case .reason: return "reason"
        case .signatureLength: return "signature length"
        case .signature: return "signature"
        case .packet: return "size"
        }
    }
}

extension KnockPacketError: CustomStringConvertible {
    public var description: String { "knock packet \(field) at byte \(offset): \(problem)" }
}

/// A failed exchange with ssh-agent: a malformed or unexpected answer, a refusal, or a transport failure.
public struct SSHAgentError: Error, Hashable, Sendable {
    /// What went wrong.
    public enum Code: Hashable, Sendable {
        /// The agent answered SSH_AGENT_FAILURE: it refused (no such key, a confirmation was declined, a locked
        /// agent, a security key that was not touched).
        case refused
        /// The agent answered with a message of another type than the request calls for.
        case unexpectedMessage(type: UInt8)
        /// The answer's frame or contents break the protocol; the problem says where.
        case malformed(field: String, FormatProblem)
        /// The transport (the socket) failed; the text comes from it.
        case transport(String)
    }

    /// What went wrong.
    public var code: Code
    /// What was being asked: "list identities", "sign".
    public var operation: String

    /// An error in `operation`.
    public init(_ code: Code, operation: String) {
        self.code = code
        self.operation = operation
    }
}

extension SSHAgentError: CustomStringConvertible {
    public var description: String {
        switch code {
        case .refused:
            return "ssh-agent refused to \(operation) (SSH_AGENT_FAILURE); check the key is loaded (ssh-add -l) and, "
                + "for a security key, that it was touched"
        case .unexpectedMessage(let type):
            return "ssh-agent answered \(operation) with message type \(type), which the protocol does not allow"
        case .malformed(let field, let problem):
            return "ssh-agent's answer to \(operation) is malformed: \(field): \(problem)"
        case .transport(let text):
            return "talking to ssh-agent to \(operation) failed: \(text)"
        }
    }
}
