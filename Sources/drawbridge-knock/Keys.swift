import ArgumentParser
import DrawbridgeCore
import Glibc
import HostSystem
import Knock

struct KeyProblem: Error {
    let message: String
    let exitCode: ExitCode

    init(_ message: String, _ exitCode: ExitCode = ExitStatus.noKey) {
        self.message = message
        self.exitCode = exitCode
    }
}

/// Which key signs a knock.
enum KeySelection {
    static func signer(keyPath: String?) throws(KeyProblem) -> any SSHSigner {
        let agentPath = getenv("SSH_AUTH_SOCK").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        if let keyPath {
            let text: String
            do {
                text = String(decoding: try Files.read(keyPath, maximumBytes: 64 * 1024), as: UTF8.self)
            } catch {
                throw KeyProblem("cannot read key \(keyPath): \(error.message)", ExitStatus.invalidData)
            }
            if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
                do {
                    return try OpenSSHPrivateKey(fileText: text)
                } catch {
                    throw KeyProblem(
                        "cannot use \(keyPath): \(error) (an encrypted key must be added to ssh-agent with ssh-add "
                            + "and named by its .pub file)", ExitStatus.invalidData)
                }
            }
            let wanted: SSHPublicKey
            do {
                wanted = try AuthorizedKey(line: text.split(whereSeparator: \.isNewline).first ?? "").key
            } catch {
                throw KeyProblem(
                    "\(keyPath) is neither an OpenSSH private key nor a public key line: \(error)",
                    ExitStatus.invalidData)
            }
            guard let agentPath else {
                throw KeyProblem("\(keyPath) is a public key, and no ssh-agent is running (SSH_AUTH_SOCK is not set)")
            }
            let (client, identities) = try agentKeys(agentPath)
            guard identities.contains(where: { $0.key == wanted }) else {
                throw KeyProblem("ssh-agent holds no key \(wanted.fingerprint) (\(keyPath)); add it with ssh-add")
            }
            return SSHAgentSigner(client: client, publicKey: wanted)
        }
        guard let agentPath else {
            throw KeyProblem(
                "no key to sign with: start ssh-agent and add a key (ssh-add), or name a key file with --key")
        }
        let (client, identities) = try agentKeys(agentPath)
        guard let usable = identities.first(where: { $0.key != nil })?.key else {
            throw KeyProblem(
                identities.isEmpty
                    ? "ssh-agent holds no key; add one with ssh-add"
                    : "ssh-agent holds no Ed25519, ECDSA P-256 or RSA key (2048 bits or more)")
        }
        return SSHAgentSigner(client: client, publicKey: usable)
    }

    /// A client for the ssh-agent at `path`, and the keys it holds.
    static func agentKeys(_ path: String) throws(KeyProblem) -> (SSHAgentClient, [SSHAgentIdentity]) {
        let client = SSHAgentClient(transport: UnixAgentTransport(path: path))
        do {
            return (client, try client.identities())
        } catch {
            throw KeyProblem("cannot ask ssh-agent at \(path) for its keys: \(error)")
        }
    }
}

/// A connection to ssh-agent's Unix socket, opened for each exchange's first write.
final class UnixAgentTransport: SSHAgentTransport {
    let path: String
    private var descriptor: Int32 = -1

    init(path: String) { self.path = path }

    deinit { if descriptor >= 0 { close(descriptor) } }

    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    func write(_ bytes: [UInt8]) throws {
        if descriptor < 0 {
            do {
                descriptor = try UnixSocket.connect(path)
            } catch {
                throw Problem(description: "cannot connect to ssh-agent at \(path): \(error)")
            }
            var timeout = timeval(tv_sec: 60, tv_usec: 0)
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        do {
            try Files.writeAll(descriptor, bytes, path: path)
        } catch {
            throw Problem(description: "cannot write to ssh-agent: \(error)")
        }
    }

    func read(count: Int) throws -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let got = result.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + filled, count - filled) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else {
                throw Problem(description: got == 0 ? "ssh-agent closed the connection" : String(cString: strerror(errno)))
            }
            filled += got
        }
        return result
    }
}
