import Foundation
import Testing

@testable import Knock

/// The ssh-agent protocol: pure messages, and a real ssh-agent over a Unix socket.
@Suite struct SSHAgentTests {
    @Test func aRealAgentListsAndSignsWithEveryKeyKind() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let agent = try TestAgent(directory: directory)
        defer { agent.stop() }

        var keys: [KeyGenerator.KeyKind: SSHPublicKey] = [:]
        for kind in KeyGenerator.KeyKind.allCases {
            let path = try keygen.generate("id_\(kind)", kind)
            try agent.add(path)
            keys[kind] = try keygen.publicKey(path)
        }
        let outsider = try keygen.publicKey(try keygen.generate("outsider", .ed25519))

        let client = SSHAgentClient(transport: try UnixSocketTransport(path: agent.socketPath))
        let identities = try client.identities()
        #expect(Set(identities.compactMap(\.key)) == Set(keys.values))
        #expect(identities.allSatisfy { $0.comment.hasSuffix("@knock-tests") })

        let verifier = KnockVerifier(allowedKeys: keys.values, maximumSkew: .seconds(30))
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        for (kind, key) in keys.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            let signer = SSHAgentSigner(client: client, publicKey: key)
            let packet = try KnockPacket.sign(sampleRequest(timestamp: now), with: signer)
            #expect(
                packet.signature.signatureAlgorithm == (kind == .rsa ? "rsa-sha2-512" : key.algorithm.rawValue))
            guard case .accepted(let acceptance) = verifier.verify(datagram: packet.bytes, nowMilliseconds: now) else {
                Issue.record("the agent's \(kind) knock was refused")
                continue
            }
            #expect(acceptance.key == key)
            #expect(acceptance.fingerprint == key.fingerprint)

            // The same agent signature as a plain SSHSIG satisfies `ssh-keygen -Y verify`.
            let message = Array("agent-signed \(kind)".utf8)
            let signature = try SSHSignature.sign(message: message, signer: signer)
            let verified = try keygen.verify(message, signature: signature.armored, key: key)
            #expect(verified.succeeded, "\(verified.error)")
        }

        // A key the agent does not hold: SSH_AGENT_FAILURE, reported as a refusal.
        #expect(throws: SSHAgentError(.refused, operation: "sign with \(outsider)")) {
            try client.sign([1, 2, 3], with: outsider)
        }
    }

    @Test func requestsAreFramedAsTheProtocolSays() {
        #expect(SSHAgentRequest.requestIdentities.framed == [0, 0, 0, 1, 11])
        let sign = SSHAgentRequest.sign(keyBlob: [0xAA, 0xBB], data: [0x01], flags: .rsaSHA512).framed
        #expect(sign == [0, 0, 0, 16, 13, 0, 0, 0, 2, 0xAA, 0xBB, 0, 0, 0, 1, 0x01, 0, 0, 0, 4])
        let key = Ed25519TestSigner().publicKey
        #expect(SSHAgentRequest.sign([9], with: key) == .sign(keyBlob: key.wireBlob, data: [9], flags: []))
    }

    @Test func answersAreParsedStrictly() throws {
        let ed25519 = Ed25519TestSigner().publicKey
        var answer = WireWriter()
        answer.byte(12)
        answer.uint32(2)
        answer.string(ed25519.wireBlob)
        answer.string("alice")
        answer.string([0, 0, 0, 7] + Array("ssh-dss".utf8))
        answer.string("old")
        guard case .identities(let identities) = try SSHAgentResponse(body: answer.bytes, operation: "list") else {
            Issue.record("not an identities answer")
            return
        }
        #expect(identities.count == 2)
        #expect(identities[0].key == ed25519 && identities[0].comment == "alice")
        #expect(identities[1].key == nil && identities[1].unusableBecause?.field == .algorithm)

        #expect(try SSHAgentResponse(body: [5], operation: "sign") == .failure)
        #expect(try SSHAgentResponse(body: [28], operation: "sign") == .failure)
        #expect(try SSHAgentResponse(body: [14, 0, 0, 0, 1, 0x42], operation: "sign") == .signature([0x42]))

        let malformed: [[UInt8]] = [
            [],
            [12, 0, 0, 0],
            [12, 0xFF, 0xFF, 0xFF, 0xFF],
            [12, 0, 0, 0, 1, 0, 0, 0, 9],
            [14, 0, 0, 0, 2, 0x42],
            [14, 0, 0, 0, 1, 0x42, 0x00],
            [5, 0],
        ]
        for body in malformed {
            #expect(throws: SSHAgentError.self, "\(body)") { try SSHAgentResponse(body: body, operation: "sign") }
        }
        #expect(throws: SSHAgentError(.unexpectedMessage(type: 13), operation: "sign")) {
            try SSHAgentResponse(body: [13], operation: "sign")
        }
        #expect(throws: SSHAgentError.self) { try SSHAgentResponse.bodyLength(header: [0, 4, 0, 1], operation: "x") }
        #expect(throws: SSHAgentError.self) { try SSHAgentResponse.bodyLength(header: [0, 0, 0, 0], operation: "x") }
        #expect(try SSHAgentResponse.bodyLength(header: [0, 4, 0, 0], operation: "x") == 256 * 1024)
    }

    /// A transport that answers from a script, to drive the client's framing without a socket.
    final class ScriptedTransport: SSHAgentTransport {
        var written: [UInt8] = []
        var replies: [UInt8]

        init(replies: [UInt8]) { self.replies = replies }

        func write(_ bytes: [UInt8]) throws { written += bytes }

        func read(count: Int) throws -> [UInt8] {
            guard replies.count >= count else { throw ToolError("closed") }
            defer { replies.removeFirst(count) }
            return Array(replies.prefix(count))
        }
    }

    @Test func theClientFramesOverAnyTransport() throws {
        let transport = ScriptedTransport(replies: [0, 0, 0, 5, 12, 0, 0, 0, 0])
        let client = SSHAgentClient(transport: transport)
        #expect(try client.identities().isEmpty)
        #expect(transport.written == [0, 0, 0, 1, 11])

        let short = SSHAgentClient(transport: ScriptedTransport(replies: [0, 0, 0, 5, 12]))
        do {
            _ = try short.identities()
            Issue.record("a cut-off answer was accepted")
        } catch {
            guard case .transport = error.code else {
                Issue.record("expected a transport error, got \(error)")
                return
            }
        }
        let refused = SSHAgentClient(transport: ScriptedTransport(replies: [0, 0, 0, 1, 5]))
        #expect(throws: SSHAgentError(.refused, operation: "list identities")) { try refused.identities() }
    }
}
