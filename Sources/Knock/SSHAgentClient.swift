/// A byte stream to ssh-agent, usually a connected Unix socket at `$SSH_AUTH_SOCK`. The OS layer (the CLI)
/// provides it, so this module opens no socket.
public protocol SSHAgentTransport {
    /// Writes all of `bytes`, or throws.
    func write(_ bytes: [UInt8]) throws
    /// Reads exactly `count` bytes, or throws — also when the agent closes the connection first.
    func read(count: Int) throws -> [UInt8]
}

/// Asks ssh-agent for its keys and for signatures: one framed request written, one framed answer read, over a
/// transport the caller owns.
public struct SSHAgentClient {
    /// The connection to the agent.
    public let transport: any SSHAgentTransport

    /// A client that talks over `transport`.
    public init(transport: any SSHAgentTransport) {
        self.transport = transport
    }

    /// The keys the agent holds (SSH_AGENTC_REQUEST_IDENTITIES).
    public func identities() throws(SSHAgentError) -> [SSHAgentIdentity] {
        let operation = "list identities"
        switch try exchange(.requestIdentities, operation: operation) {
        case .identities(let identities): return identities
        case .failure: throw SSHAgentError(.refused, operation: operation)
        case .signature: throw SSHAgentError(.unexpectedMessage(type: 14), operation: operation)
        }
    }

    /// The agent's SSH signature blob over `data` by `key` (SSH_AGENTC_SIGN_REQUEST); RSA keys sign `rsa-sha2-512`.
    public func sign(_ data: [UInt8], with key: SSHPublicKey) throws(SSHAgentError) -> [UInt8] {
        let operation = "sign with \(key)"
        switch try exchange(.sign(data, with: key), operation: operation) {
        case .signature(let blob): return blob
        case .failure: throw SSHAgentError(.refused, operation: operation)
        case .identities: throw SSHAgentError(.unexpectedMessage(type: 12), operation: operation)
        }
    }

    /// Writes one request and reads one answer.
    public func exchange(_ request: SSHAgentRequest, operation: String) throws(SSHAgentError) -> SSHAgentResponse {
        let body: [UInt8]
        do {
            try transport.write(request.framed)
            let length = try SSHAgentResponse.bodyLength(header: try transport.read(count: 4), operation: operation)
            body = try transport.read(count: length)
        } catch let error as SSHAgentError {
            throw error
        } catch {
            throw SSHAgentError(.transport("\(error)"), operation: operation)
        }
        return try SSHAgentResponse(body: body, operation: operation)
    }
}

/// Signs with a key held by ssh-agent: keys on security keys and forwarded agents work without touching key files.
public struct SSHAgentSigner: SSHSigner {
    /// The agent to ask.
    public let client: SSHAgentClient
    /// The agent's key to sign with (one of ``SSHAgentClient/identities()``).
    public let publicKey: SSHPublicKey

    /// A signer that asks `client` to sign with `publicKey`.
    public init(client: SSHAgentClient, publicKey: SSHPublicKey) {
        self.client = client
        self.publicKey = publicKey
    }

    /// Asks the agent to sign; throws ``SSHAgentError``.
    public func signatureBlob(for data: [UInt8]) throws -> [UInt8] {
        try client.sign(data, with: publicKey)
    }
}
