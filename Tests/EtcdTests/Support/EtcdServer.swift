import Foundation
import Netfilter
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// An etcd cluster (Debian's etcd-server 3.4; one member unless asked for more) started by a test in a network
/// namespace of its own.
///
/// The namespace has only `lo`, with member N's documentation address 192.0.2.(10+N)/32 added to it (the kernel
/// here has no dummy interfaces, and a second device would add nothing); each member listens there for clients
/// (port 2379) and peers (2380). Nothing touches the machine's own network. Each member runs under
/// `nsenter --net=` (which execs it, so the pid is etcd's) and is stopped by that pid only; data directories are in
/// a temporary directory removed with this object.
final class EtcdServer: @unchecked Sendable {
    static let address = "192.0.2.10"
    static let port = 2379

    let namespace: NetworkNamespace
    let directory: String
    let tls: TestCertificates?
    let members: Int
    let extraArguments: [String]
    private var processes: [Int: Process] = [:]

    /// The first member's client URL.
    var endpoint: String { endpoint(member: 0) }
    var logPath: String { directory + "/etcd.log" }

    static func address(member: Int) -> String { "192.0.2.\(10 + member)" }

    func endpoint(member: Int) -> String {
        "\(tls == nil ? "http" : "https")://\(Self.address(member: member)):\(Self.port)"
    }

    /// Starts etcd, with TLS and client certificate authentication when `tls` is set, and `extraArguments` (for
    /// example a shorter `--experimental-watch-progress-notify-interval` or `--auth-token-ttl`).
    init(tls: Bool = false, members: Int = 1, extraArguments: [String] = []) throws {
        namespace = try NetworkNamespace.createAnonymous()
        let template = NSTemporaryDirectory() + "drawbridge-etcd-XXXXXX"
        var buffer = Array(template.utf8CString)
        guard let made = mkdtemp(&buffer) else { throw POSIXError(errno: errno, "mkdtemp") }
        directory = String(cString: made)
        self.members = members
        self.extraArguments = extraArguments
        let addresses = (0..<members).map(Self.address(member:))
        self.tls = tls ? try TestCertificates(directory: directory + "/pki", serverAddresses: addresses) : nil
        try run(["ip", "link", "set", "lo", "up"], in: namespace)
        for address in addresses { try run(["ip", "addr", "add", "\(address)/32", "dev", "lo"], in: namespace) }
        try start()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts every member that is not running, on its data directory (new or kept from before), and waits until
    /// each answers.
    func start() throws {
        let cluster = (0..<members).map { "m\($0)=http://\(Self.address(member: $0)):2380" }.joined(separator: ",")
        for member in 0..<members where processes[member]?.isRunning != true {
            let peer = "http://\(Self.address(member: member)):2380"
            var arguments = [
                "--net=\(namespace.path)", "/usr/bin/etcd", "--name", "m\(member)", "--data-dir",
                directory + "/data-\(member)", "--listen-client-urls", endpoint(member: member),
                "--advertise-client-urls", endpoint(member: member), "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster, "--logger", "zap",
                "--log-outputs", "stderr", "--log-level", "warn",
            ]
            if let tls {
                arguments += [
                    "--cert-file", tls.serverCertificate, "--key-file", tls.serverKey, "--trusted-ca-file",
                    tls.authority, "--client-cert-auth",
                ]
            }
            arguments += extraArguments
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            process.arguments = arguments
            if !FileManager.default.fileExists(atPath: logPath) {
                _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            }
            let log = FileHandle(forWritingAtPath: logPath)!
            log.seekToEndOfFile()
            process.standardOutput = log
            process.standardError = log
            process.standardInput = FileHandle.nullDevice
            try process.run()
            processes[member] = process
        }
        let deadline = Date().addingTimeInterval(20)
        var waiting = Array(0..<members)
        while Date() < deadline {
            for (member, process) in processes where !process.isRunning {
                throw EtcdServerFailed("etcd m\(member) exited with \(process.terminationStatus): \(logTail())")
            }
            waiting.removeAll { member in
                let health = try? etcdctl(["endpoint", "health"], member: member, check: false)
                return health?.succeeded == true
            }
            if waiting.isEmpty { return }
            usleep(100_000)
        }
        throw EtcdServerFailed("etcd did not become healthy within 20 s: \(logTail())")
    }

    /// SIGTERM to the members this object started (or only to `member`), and waits for them to exit.
    func stop(member: Int? = nil) {
        for (index, process) in processes where member == nil || member == index {
            guard process.isRunning else { continue }
            Glibc.kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
    }

    /// SIGKILL to the members this object started, and waits.
    func kill() {
        for process in processes.values where process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    func restart() throws {
        stop()
        try start()
    }

    /// Runs etcdctl inside the namespace, as root (certificate CN root, or user root with its password once
    /// authentication is on).
    @discardableResult
    func etcdctl(_ arguments: [String], member: Int = 0, check: Bool = true, input: String? = nil) throws
        -> CommandResult
    {
        try run(etcdctlCommand(member: member) + arguments, in: namespace, input: input, check: check)
    }

    /// Writes `value` at `key` byte for byte (etcdctl reads a value it is not given from its standard input), for
    /// values a String cannot carry.
    @discardableResult
    func put(_ key: String, bytes value: [UInt8]) throws -> CommandResult {
        let file = directory + "/value-\(UUID().uuidString)"
        try Data(value).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        return try run(["sh", "-c", "exec \"$@\" < \"$0\"", file] + etcdctlCommand() + ["put", key], in: namespace)
    }

    private func etcdctlCommand(member: Int = 0) throws -> [String] {
        var command = [
            "etcdctl", "--endpoints", endpoint(member: member), "--dial-timeout", "2s", "--command-timeout", "5s",
        ]
        if let tls {
            let root = try tls.client("root")
            command += ["--cacert", tls.authority, "--cert", root.certificate, "--key", root.key]
        } else if authenticationEnabled {
            command += ["--user", "root:\(Self.rootPassword)"]
        }
        return command
    }

    static let rootPassword = "root-password"
    private(set) var authenticationEnabled = false

    /// Adds root, turns authentication on, and creates each role with read (or read and write) on its prefixes and
    /// each user with its roles. A user without a password authenticates by client certificate only.
    func enableAuthentication(roles: [Role], users: [User]) throws {
        try etcdctl(["user", "add", "root", "--new-user-password=\(Self.rootPassword)"])
        try etcdctl(["user", "grant-role", "root", "root"], check: false)  // 3.4 may have done it already
        for role in roles {
            try etcdctl(["role", "add", role.name])
            for (permission, prefix) in role.permissions {
                try etcdctl(["role", "grant-permission", role.name, "--prefix=true", permission, prefix])
            }
        }
        for user in users {
            if let password = user.password {
                try etcdctl(["user", "add", user.name, "--new-user-password=\(password)"])
            } else {
                try etcdctl(["user", "add", user.name, "--no-password"])
            }
            for role in user.roles { try etcdctl(["user", "grant-role", user.name, role]) }
        }
        try etcdctl(["auth", "enable"])
        authenticationEnabled = true
    }

    struct Role {
        var name: String
        /// ("read" or "readwrite", prefix)
        var permissions: [(String, String)]
    }

    struct User {
        var name: String
        var password: String?
        var roles: [String]
    }

    /// Starts an etcd-probe in the namespace with these client settings.
    /// Starts an etcd-probe in the namespace with these client settings; `trustTestAuthority: false` leaves the
    /// client with the system's trust roots only.
    func probe(
        user: String? = nil, password: String? = nil, certificateUser: String? = nil, endpoint: String? = nil,
        trustTestAuthority: Bool = true
    ) throws -> EtcdProbe {
        var arguments = ["--endpoint", endpoint ?? self.endpoint]
        if let tls {
            if trustTestAuthority { arguments += ["--ca", tls.authority] }
            if let certificateUser {
                let client = try tls.client(certificateUser)
                arguments += ["--cert", client.certificate, "--key", client.key]
            }
        }
        if let user { arguments += ["--user", user, "--password", password ?? ""] }
        return try EtcdProbe(namespace: namespace, arguments: arguments)
    }

    /// What etcd logged (warnings and errors) since the first start.
    func log() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    func logTail() -> String {
        log().split(separator: "\n").suffix(15).joined(separator: "\n")
    }
}

struct EtcdServerFailed: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
