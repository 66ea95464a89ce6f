/// The part of the ssh-agent protocol (draft-ietf-sshm-ssh-agent, OpenSSH PROTOCOL.agent) a knock needs: list the
/// keys, sign with one. Pure message builders and parsers; ``SSHAgentClient`` moves them over a transport.
///
/// Every message is framed as `uint32 length, byte type, contents`.
public enum SSHAgentMessageType: UInt8, Hashable, Sendable {
    /// SSH_AGENT_FAILURE: the agent refused or did not understand.
    case failure = 5
    /// SSH_AGENTC_REQUEST_IDENTITIES: list the keys.
    case requestIdentities = 11
    /// SSH_AGENT_IDENTITIES_ANSWER: `uint32 count`, then per key `string key blob, string comment`.
    case identitiesAnswer = 12
    /// SSH_AGENTC_SIGN_REQUEST: `string key blob, string data, uint32 flags`.
    case signRequest = 13
    /// SSH_AGENT_SIGN_RESPONSE: `string signature blob`.
    case signResponse = 14
    /// SSH2_AGENT_EXTENSION_FAILURE, which OpenSSH treats as a failure too.
    case extensionFailure = 28
    /// SSH_COM_AGENT2_FAILURE, an old failure code OpenSSH still treats as one.
    case legacyFailure = 102
}

/// Flags of a sign request: which hash an RSA key signs with. Other keys take no flags.
public struct SSHAgentSignFlags: OptionSet, Hashable, Sendable {
    /// The flags word as sent.
    public let rawValue: UInt32
    /// Flags from the word as sent.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// SSH_AGENT_RSA_SHA2_256: sign as `rsa-sha2-256`.
    public static let rsaSHA256 = SSHAgentSignFlags(rawValue: 0x02)
    /// SSH_AGENT_RSA_SHA2_512: sign as `rsa-sha2-512`.
    public static let rsaSHA512 = SSHAgentSignFlags(rawValue: 0x04)
}

/// A key the agent holds.
public struct SSHAgentIdentity: Hashable, Sendable {
    /// The key's wire blob, as the agent sent it; a sign request names the key by it.
    public let keyBlob: [UInt8]
    /// The comment the key was added with (often its file name).
    public let comment: String
    /// The parsed key, or nil when a knock cannot use it (a certificate, DSA, ECDSA on another curve, short RSA).
    public let key: SSHPublicKey?
    /// Why ``key`` is nil.
    public let unusableBecause: SSHKeyError?

    /// An identity as the agent listed it; the blob is parsed here.
    public init(keyBlob: [UInt8], comment: String) {
        self.keyBlob = keyBlob
        self.comment = comment
        do {
            self.key = try SSHPublicKey(wireBlob: keyBlob)
            self.unusableBecause = nil
        } catch {
            self.key = nil
            self.unusableBecause = error
        }
    }
}

/// A request to the agent.
public enum SSHAgentRequest: Hashable, Sendable {
    case requestIdentities
    case sign(keyBlob: [UInt8], data: [UInt8], flags: SSHAgentSignFlags)

    /// The request as it goes on the wire: length, type, contents.
    public var framed: [UInt8] {
        var body = WireWriter()
        switch self {
        case .requestIdentities:
            body.byte(SSHAgentMessageType.requestIdentities.rawValue)
        case .sign(let keyBlob, let data, let flags):
            body.byte(SSHAgentMessageType.signRequest.rawValue)
            body.string(keyBlob)
            body.string(data)
            body.uint32(flags.rawValue)
        }
        var frame = WireWriter()
        frame.string(body.bytes)
        return frame.bytes
    }

    /// The request for a signature by `key` over `data`, with `rsa-sha2-512` for an RSA key.
    public static func sign(_ data: [UInt8], with key: SSHPublicKey) -> SSHAgentRequest {
        .sign(keyBlob: key.wireBlob, data: data, flags: key.algorithm == .rsa ? .rsaSHA512 : [])
    }
}

/// An answer from the agent.
public enum SSHAgentResponse: Hashable, Sendable {
    case identities([SSHAgentIdentity])
    /// The SSH signature blob (`string algorithm, string signature`, …).
    case signature([UInt8])
    case failure

    /// OpenSSH's limit on one agent message (AGENT_MAX_LEN): a longer frame is refused before it is read.
    public static let maximumLength = 256 * 1024

    /// The length of the message body announced by a 4-byte frame header.
    public static func bodyLength(header: [UInt8], operation: String) throws(SSHAgentError) -> Int {
        var reader = WireReader(header)
        let length = try reader.uint32 { SSHAgentError(.malformed(field: "frame length", $0), operation: operation) }
        guard length >= 1 else {
            throw SSHAgentError(
                .malformed(field: "frame length", .tooShort(length: 0, minimum: 1)), operation: operation)
        }
        guard length <= maximumLength else {
            throw SSHAgentError(
                .malformed(field: "frame length", .tooLong(length: Int(length), limit: maximumLength)),
                operation: operation)
        }
        return Int(length)
    }

    /// Parses one message body (the bytes after the frame's length): its type and contents.
    public init(body: some Collection<UInt8>, operation: String) throws(SSHAgentError) {
        var reader = WireReader(Array(body))
        func malformed(_ field: String) -> (FormatProblem) -> SSHAgentError {
            { SSHAgentError(.malformed(field: field, $0), operation: operation) }
        }
        let type = try reader.byte(malformed("message type"))
        switch SSHAgentMessageType(rawValue: type) {
        case .failure, .extensionFailure, .legacyFailure:
            self = .failure
        case .identitiesAnswer:
            let count = try reader.uint32(malformed("key count"))
            var identities: [SSHAgentIdentity] = []
            // Each key takes at least 8 bytes, so a count larger than that is a lie; checked before reserving.
            guard Int(count) <= reader.remaining / 8 else {
                throw SSHAgentError(
                    .malformed(field: "key count", .invalid("\(count) keys cannot fit in \(reader.remaining) bytes")),
                    operation: operation)
            }
            for index in 0..<Int(count) {
                let blob = try reader.string(malformed("key \(index + 1) blob"))
                let comment = try reader.string(malformed("key \(index + 1) comment"))
                identities.append(
                    SSHAgentIdentity(keyBlob: Array(blob), comment: String(decoding: comment, as: UTF8.self)))
            }
            self = .identities(identities)
        case .signResponse:
            self = .signature(Array(try reader.string(malformed("signature"))))
        case .requestIdentities, .signRequest, nil:
            throw SSHAgentError(.unexpectedMessage(type: type), operation: operation)
        }
        try reader.expectEnd(malformed("message"))
    }
}
