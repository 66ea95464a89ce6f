import Foundation
import Netfilter
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// A single-member etcd (Debian's etcd-server 3.4) started by a test in a network namespace of its own.
///
/// The namespace has only `lo`, with 192.0.2.10/32 (a documentation address) added to it (the kernel here has no
/// dummy interfaces, and a second device would add nothing); etcd listens for clients there and for peers on
/// 127.0.0.1, both inside the namespace. Nothing touches the machine's own network.
/// etcd runs under `nsenter --net=` (which execs it, so the pid is etcd's) and is stopped by that pid only; its data
/// directory is in a temporary directory removed with this object.
final class EtcdServer: @unchecked Sendable {
    static let address = "192.0.2.10"
    static let port = 2379

    let namespace: NetworkNamespace
    let directory: String
    let tls: TestCertificates?
    let extraArguments: [String]
    private var process: Process?

    var endpoint: String { "\(tls == nil ? "http" : "https")://\(Self.address):\(Self.port)" }
    var logPath: String { directory + "/etcd.log" }

    /// Starts etcd, with TLS and client certificate authentication when `tls` is set, and `extraArguments` (for
    /// example a shorter `--experimental-watch-progress-notify-interval` or `--auth-token-ttl`).
    init(tls: Bool = false, extraArguments: [String] = []) throws {
        namespace = try NetworkNamespace.createAnonymous()
        let template = NSTemporaryDirectory() + "drawbridge-etcd-XXXXXX"
        var buffer = Array(template.utf8CString)
        guard let made = mkdtemp(&buffer) else { throw POSIXError(errno: errno, "mkdtemp") }
        directory = String(cString: made)
        self.extraArguments = extraArguments
        self.tls = tls ? try TestCertificates(directory: directory + "/pki", serverAddress: Self.address) : nil
        try run(["ip", "link", "set", "lo", "up"], in: namespace)
        try run(["ip", "addr", "add", "\(Self.address)/32", "dev", "lo"], in: namespace)
        try start()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts etcd on its data directory (new or kept from before) and waits until it answers.
    func start() throws {
        var arguments = [
            "--net=\(namespace.path)", "/usr/bin/etcd", "--name", "test", "--data-dir", directory + "/data",
            "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "test=http://127.0.0.1:2380", "--logger", "zap", "--log-outputs", "stderr",
            "--log-level", "warn",
        ]
        if let tls {
            arguments += [
                "--cert-file", tls.serverCertificate, "--key-file", tls.serverKey, "--trusted-ca-file", tls.authority,
                "--client-cert-auth",
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
        self.process = process
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            guard process.isRunning else {
                throw EtcdServerFailed("etcd exited with \(process.terminationStatus): \(logTail())")
            }
            if let health = try? etcdctl(["endpoint", "health"], check: false), health.succeeded { return }
            usleep(100_000)
        }
        throw EtcdServerFailed("etcd did not become healthy within 20 s: \(logTail())")
    }

    /// SIGTERM to the etcd this object started, and waits for it to exit.
    func stop() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    /// SIGKILL to the etcd this object started, and waits.
    func kill() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func restart() throws {
        stop()
        try start()
    }

    /// Runs etcdctl inside the namespace, as root (certificate CN root, or user root with its password once
    /// authentication is on).
    @discardableResult
    func etcdctl(_ arguments: [String], check: Bool = true) throws -> CommandResult {
        var command = ["etcdctl", "--endpoints", endpoint, "--dial-timeout", "2s", "--command-timeout", "5s"]
        if let tls {
            let root = try tls.client("root")
            command += ["--cacert", tls.authority, "--cert", root.certificate, "--key", root.key]
        } else if authenticationEnabled {
            command += ["--user", "root:\(Self.rootPassword)"]
        }
        return try run(command + arguments, in: namespace, check: check)
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
