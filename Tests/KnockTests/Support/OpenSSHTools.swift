import Foundation
import Knock

#if canImport(Glibc)
    import Glibc
#endif

// OpenSSH's own tools as the reference implementation: keys made by ssh-keygen, signatures checked by
// `ssh-keygen -Y`, a real ssh-agent. Everything lives in a temporary directory that the test removes; every process
// is started here with posix_spawn and ended by the pid it returned.

/// A temporary directory, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/knock-tests.XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw ToolError("mkdtemp failed: errno \(errno)")
        }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: file(name), atomically: false, encoding: .utf8)
    }

    func write(_ name: String, bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: file(name)))
    }

    func read(_ name: String) throws -> String {
        try String(contentsOfFile: file(name), encoding: .utf8)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

struct ToolError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The result of a finished command.
struct CommandResult {
    var status: Int32
    var output: String
    var error: String
    var succeeded: Bool { status == 0 }
}

enum Command {
    /// Runs a program to completion, with standard input from `inputFile` (or /dev/null), and returns its exit
    /// status and output. `environment` is added to a minimal environment (PATH only).
    static func run(
        _ arguments: [String], inputFile: String? = nil, environment: [String: String] = [:], in directory: String
    ) throws -> CommandResult {
        let outputPath = directory + "/.stdout-\(UUID().uuidString)"
        let errorPath = directory + "/.stderr-\(UUID().uuidString)"
        defer {
            unlink(outputPath)
            unlink(errorPath)
        }
        let pid = try spawn(
            arguments, inputFile: inputFile ?? "/dev/null", outputFile: outputPath, errorFile: errorPath,
            environment: environment)
        let status = wait(for: pid)
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let error = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
        return CommandResult(status: status, output: output, error: error)
    }

    /// Starts a program and returns its pid; the caller ends it with `stop(pid:)`.
    static func spawn(
        _ arguments: [String], inputFile: String = "/dev/null", outputFile: String = "/dev/null",
        errorFile: String = "/dev/null", environment: [String: String] = [:]
    ) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, inputFile, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A process group of its own, and default signal handling, whatever the test runner set.
        var defaults = sigset_t()
        sigfillset(&defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        var environmentLines = ["PATH=/usr/bin:/bin:/usr/sbin:/sbin"]
        environmentLines += environment.map { "\($0.key)=\($0.value)" }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environmentLines.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, arguments[0], &actions, &attributes, argv, envp)
        guard result == 0 else { throw ToolError("posix_spawnp \(arguments[0]) failed: \(result)") }
        return pid
    }

    /// Waits for a child this test started and returns its exit status (128 + signal when killed).
    static func wait(for pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        if status & 0x7F == 0 { return (status >> 8) & 0xFF }
        return 128 + (status & 0x7F)
    }

    /// Ends a child this test started, by its pid, and reaps it.
    static func stop(pid: pid_t) {
        kill(pid, SIGTERM)
        _ = wait(for: pid)
    }
}

/// ssh-keygen in a temporary directory.
struct KeyGenerator {
    let directory: TemporaryDirectory

    enum KeyKind: String, CaseIterable, CustomStringConvertible, Sendable {
        case ed25519
        case ecdsa
        case rsa

        var arguments: [String] {
            switch self {
            case .ed25519: return ["-t", "ed25519"]
            case .ecdsa: return ["-t", "ecdsa", "-b", "256"]
            case .rsa: return ["-t", "rsa", "-b", "3072"]
            }
        }

        var description: String { rawValue }
    }

    /// Makes an unencrypted key pair at `name` and `name.pub`, and returns the paths.
    @discardableResult
    func generate(_ name: String, _ arguments: [String], passphrase: String = "") throws -> String {
        let path = directory.file(name)
        let result = try Command.run(
            ["ssh-keygen", "-q"] + arguments + ["-N", passphrase, "-C", "\(name)@knock-tests", "-f", path],
            in: directory.path)
        guard result.succeeded else { throw ToolError("ssh-keygen \(arguments) failed: \(result.error)") }
        return path
    }

    func generate(_ name: String, _ kind: KeyKind) throws -> String {
        try generate(name, kind.arguments)
    }

    func publicKey(_ path: String) throws -> SSHPublicKey {
        try AuthorizedKey(line: try String(contentsOfFile: path + ".pub", encoding: .utf8)).key
    }

    func privateKey(_ path: String) throws -> OpenSSHPrivateKey {
        try OpenSSHPrivateKey(fileText: try String(contentsOfFile: path, encoding: .utf8))
    }

    /// `ssh-keygen -Y sign` over `message`; returns the armored signature.
    func sign(_ message: [UInt8], key path: String, namespace: String = SSHSignature.knockNamespace) throws -> String {
        let messagePath = directory.file("message-\(UUID().uuidString)")
        try Data(message).write(to: URL(fileURLWithPath: messagePath))
        let result = try Command.run(
            ["ssh-keygen", "-Y", "sign", "-f", path, "-n", namespace, messagePath], in: directory.path)
        guard result.succeeded else { throw ToolError("ssh-keygen -Y sign failed: \(result.error)") }
        return try String(contentsOfFile: messagePath + ".sig", encoding: .utf8)
    }

    /// `ssh-keygen -Y check-novalidate`: whether OpenSSH finds `signature` a valid signature over `message`.
    func checkNoValidate(_ message: [UInt8], signature: String, namespace: String = SSHSignature.knockNamespace)
        throws -> CommandResult
    {
        let name = UUID().uuidString
        try directory.write("message-\(name)", bytes: message)
        try directory.write("message-\(name).sig", signature)
        return try Command.run(
            ["ssh-keygen", "-Y", "check-novalidate", "-n", namespace, "-s", directory.file("message-\(name).sig")],
            inputFile: directory.file("message-\(name)"), in: directory.path)
    }

    /// `ssh-keygen -Y verify` with an allowed_signers file naming `key` as `principal`.
    func verify(_ message: [UInt8], signature: String, key: SSHPublicKey, principal: String = "knocker@example")
        throws -> CommandResult
    {
        let name = UUID().uuidString
        try directory.write("message-\(name)", bytes: message)
        try directory.write("message-\(name).sig", signature)
        try directory.write(
            "allowed-\(name)", "\(principal) namespaces=\"\(SSHSignature.knockNamespace)\" \(key.openSSHText)\n")
        return try Command.run(
            [
                "ssh-keygen", "-Y", "verify", "-f", directory.file("allowed-\(name)"), "-I", principal, "-n",
                SSHSignature.knockNamespace, "-s", directory.file("message-\(name).sig"),
            ],
            inputFile: directory.file("message-\(name)"), in: directory.path)
    }
}

/// A connected Unix stream socket: the test's transport to ssh-agent, as the CLI's OS layer will provide one.
final class UnixSocketTransport: SSHAgentTransport {
    private let descriptor: Int32

    init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw ToolError("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(descriptor)
            throw ToolError("socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: pathBytes)
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw ToolError("connect \(path): errno \(code)")
        }
    }

    deinit { close(descriptor) }

    func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let result = bytes[sent...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if result < 0 {
                if errno == EINTR { continue }
                throw ToolError("write: errno \(errno)")
            }
            sent += result
        }
    }

    func read(count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let result = bytes[received...].withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if result < 0 {
                if errno == EINTR { continue }
                throw ToolError("read: errno \(errno)")
            }
            if result == 0 { throw ToolError("the agent closed the connection after \(received) of \(count) bytes") }
            received += result
        }
        return bytes
    }
}

/// A real ssh-agent, started by the test in the foreground (`-D`) on a socket in a temporary directory and ended
/// by its pid.
final class TestAgent {
    let socketPath: String
    let pid: pid_t
    private let directory: TemporaryDirectory

    init(directory: TemporaryDirectory) throws {
        self.directory = directory
        socketPath = directory.file("agent.sock")
        pid = try Command.spawn(
            ["ssh-agent", "-D", "-a", socketPath], outputFile: directory.file("agent.out"),
            errorFile: directory.file("agent.err"))
        // The socket appears once the agent listens.
        for _ in 0..<200 where access(socketPath, F_OK) != 0 { usleep(10_000) }
        guard access(socketPath, F_OK) == 0 else {
            Command.stop(pid: pid)
            throw ToolError("ssh-agent did not create its socket: \((try? directory.read("agent.err")) ?? "")")
        }
    }

    /// `ssh-add` with this agent's socket.
    func add(_ keyPath: String) throws {
        let result = try Command.run(
            ["ssh-add", "-q", keyPath], environment: ["SSH_AUTH_SOCK": socketPath], in: directory.path)
        guard result.succeeded else { throw ToolError("ssh-add failed: \(result.error)") }
    }

    func stop() { Command.stop(pid: pid) }
}
