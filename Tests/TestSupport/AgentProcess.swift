import DrawbridgeCore
import Foundation
import Netfilter

#if canImport(Glibc)
    import Glibc
#endif

/// Where the built executables are: next to the test bundle (`.build/<triple>/debug`), or DRAWBRIDGE_BIN_DIR.
public enum BuiltProducts {
    public static var directory: String {
        if let override = ProcessInfo.processInfo.environment["DRAWBRIDGE_BIN_DIR"] { return override }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var directory = (executable as NSString).deletingLastPathComponent
        // swift-testing runs from drawbridgePackageTests.xctest inside the build directory.
        while !directory.isEmpty, directory != "/",
            !FileManager.default.isExecutableFile(atPath: directory + "/drawbridged")
        {
            directory = (directory as NSString).deletingLastPathComponent
        }
        return directory
    }

    public static var agent: String { directory + "/drawbridged" }
    public static var cli: String { directory + "/drawbridge" }
    public static var knock: String { directory + "/drawbridge-knock" }
}

/// A long-running program this test started (in a network namespace if given), its output in a log file; stopped by
/// the pid it was started with, never by name.
public final class BackgroundProcess: @unchecked Sendable {
    public let arguments: [String]
    public let logPath: String
    private let namespace: NetworkNamespace?
    private let environment: [String: String]
    private var process: Process?

    public init(_ arguments: [String], in namespace: NetworkNamespace? = nil, logPath: String, environment: [String: String] = [:]) {
        self.arguments = arguments
        self.namespace = namespace
        self.logPath = logPath
        self.environment = environment
    }

    deinit { stop() }

    public func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = (namespace.map { ["nsenter", "--net=\($0.path)"] } ?? []) + arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let log = FileHandle(forWritingAtPath: logPath)!
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
    }

    public var pid: pid_t? { process.flatMap { $0.isRunning ? $0.processIdentifier : nil } }

    /// SIGKILL by pid, and waits.
    public func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Resident memory in kB of the process (the program nsenter became: nsenter execs it).
    public var residentKilobytes: Int? {
        guard let pid, let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
            return nil
        }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }
}

/// Unix accounts the end-to-end tests log in as. Created if missing (needs root); the same ones .ci/test makes.
public enum TestAccounts {
    /// In group drawbridge and dbtest-admins (ssh and postgres, up to 3h).
    public static let admin = "dbtest-admin"
    /// In group drawbridge and dbtest-devs (ssh only, up to 1h).
    public static let developer = "dbtest-dev"
    /// In group drawbridge only: may reach the socket, has no role.
    public static let outsider = "dbtest-outsider"
    /// Not in group drawbridge: cannot reach the socket at all.
    public static let stranger = "dbtest-stranger"

    public static func ensure() throws {
        for group in ["drawbridge", "dbtest-admins", "dbtest-devs"] {
            try run(["groupadd", "-f", "-r", group])
        }
        let members: [(String, [String])] = [
            (admin, ["drawbridge", "dbtest-admins"]), (developer, ["drawbridge", "dbtest-devs"]),
            (outsider, ["drawbridge"]), (stranger, []),
        ]
        for (user, groups) in members {
            if getpwnam(user) == nil {
                try run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
            }
            if !groups.isEmpty { try run(["usermod", "-a", "-G", groups.joined(separator: ","), user]) }
        }
    }
}

/// A drawbridged started by a test inside a network namespace, with every path in a temporary directory.
public final class AgentProcess: @unchecked Sendable {
    public let namespace: NetworkNamespace
    public let directory: String
    public var policyPath: String { directory + "/policy.yaml" }
    public var socketPath: String { directory + "/drawbridge.sock" }
    public var stateDirectory: String { directory + "/state" }
    public var auditLogPath: String { directory + "/audit.jsonl" }
    public var agentLogPath: String { directory + "/agent.log" }
    private var process: Process?
    /// Extra environment for the agent (a test clock offset file, say).
    public var environment: [String: String] = [:]
    /// A mount namespace to start the agent in (`/proc/PID/ns/mnt` of a holder process), for small file systems.
    public var mountNamespace: String?
    /// The group that may use the socket.
    public var socketGroup = "drawbridge"

    /// Writes the policy; does not start the agent.
    public init(namespace: NetworkNamespace, policy: String) throws {
        self.namespace = namespace
        let template = NSTemporaryDirectory() + "drawbridge-e2e-XXXXXX"
        var buffer = Array(template.utf8CString)
        guard let made = mkdtemp(&buffer) else { throw POSIXError(errno: errno, "mkdtemp") }
        directory = String(cString: made)
        // Test users must reach the socket inside; the socket's own mode and group decide the rest.
        chmod(directory, 0o755)
        try writePolicy(policy)
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    public func writePolicy(_ text: String) throws {
        try text.write(toFile: policyPath, atomically: true, encoding: .utf8)
    }

    /// Starts the agent and waits until its socket answers (or it exits).
    @discardableResult
    public func start(extraArguments: [String] = []) throws -> AgentProcess {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        process.arguments =
            (mountNamespace.map { ["--mount=\($0)"] } ?? []) + [
                "--net=\(namespace.path)", BuiltProducts.agent, "--config", policyPath, "--socket", socketPath,
                "--socket-group", socketGroup, "--state-dir", stateDirectory, "--audit-log", auditLogPath,
                "--log-level", "info",
            ] + extraArguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        _ = FileManager.default.createFile(atPath: agentLogPath, contents: nil)
        let log = FileHandle(forWritingAtPath: agentLogPath)!
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if !process.isRunning {
                throw AgentFailed(
                    message: "drawbridged exited with \(process.terminationStatus): \(self.log(tail: 20))")
            }
            if (try? cli(["status"]))?.succeeded == true { return self }
            usleep(50_000)
        }
        throw AgentFailed(message: "drawbridged did not answer within 15 s: \(self.log(tail: 20))")
    }

    public var pid: pid_t? { process.flatMap { $0.isRunning ? $0.processIdentifier : nil } }

    /// Sends a signal to the agent (by the pid this object started).
    public func signal(_ signal: Int32) {
        if let pid { kill(pid, signal) }
    }

    /// `kill -9`, and waits for it to be gone.
    public func kill9() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM, and waits; returns the exit status.
    @discardableResult
    public func terminate() -> Int32? {
        guard let process, process.isRunning else { return process?.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Runs `drawbridge ARGS --socket PATH`, as root or as `user` (with that user's groups).
    @discardableResult
    public func cli(_ arguments: [String], as user: String? = nil) throws -> CommandResult {
        var command = [BuiltProducts.cli] + arguments
        if !["check", "rules"].contains(arguments.first ?? ""), !arguments.contains("--socket") {
            command += ["--socket", socketPath]
        }
        if let user {
            command = ["setpriv", "--reuid=\(user)", "--regid=\(user)", "--init-groups", "--reset-env"] + command
        }
        return try run(command, check: false)
    }

    /// The audit trail so far, one decoded object per line.
    public func auditEvents() throws -> [[String: Any]] {
        let text: String
        if let mountNamespace {
            guard let output = try? run(["nsenter", "--mount=\(mountNamespace)", "cat", auditLogPath]).output else {
                return []
            }
            text = output
        } else {
            guard let contents = try? String(contentsOfFile: auditLogPath, encoding: .utf8) else { return [] }
            text = contents
        }
        return try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }

    /// The state directory's snapshots and journals, byte for byte, to prove a bad request changed nothing.
    public func storedState() -> Data? {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: stateDirectory) else { return nil }
        var data = Data()
        for name in names.sorted() where name.hasPrefix("snapshot-") || name.hasPrefix("journal-") {
            data.append(Data(name.utf8))
            data.append(FileManager.default.contents(atPath: stateDirectory + "/" + name) ?? Data())
        }
        return data
    }

    public func log(tail lines: Int) -> String {
        let text = (try? String(contentsOfFile: agentLogPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    public struct AgentFailed: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }
}

/// The drawbridge table as `nft -j` lists it, with the parts that change by themselves (expiry countdowns,
/// handles, counters) removed: two snapshots are equal when nothing was changed.
public func kernelSnapshot(_ namespace: NetworkNamespace) throws -> String {
    let listing = try run(["nft", "-j", "list", "table", "inet", "drawbridge"], in: namespace).output
    let json = try JSONSerialization.jsonObject(with: Data(listing.utf8)) as! [String: Any]
    func strip(_ value: Any) -> Any {
        if var dictionary = value as? [String: Any] {
            for key in ["handle", "expires", "packets", "bytes", "metainfo"] { dictionary.removeValue(forKey: key) }
            for (key, inner) in dictionary { dictionary[key] = strip(inner) }
            return dictionary
        }
        if let array = value as? [Any] { return array.map(strip) }
        return value
    }
    let data = try JSONSerialization.data(withJSONObject: strip(json), options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}
