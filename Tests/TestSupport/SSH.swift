import DrawbridgeCore
import Foundation
import Netfilter

#if canImport(Glibc)
    import Glibc
#endif

// A harness for end-to-end tests with a real OpenSSH server and client, each inside a test namespace.
//
//     let network = try TestNetwork()
//     let server = try SSHServer(in: network.host)            // sshd on port 22 of the host namespace
//     defer { server.stop() }
//     let ok = try SSHClient.canLogIn(from: network.client, source: TestNetwork.clientIPv4,
//                                     to: TestNetwork.hostIPv4, key: server.clientKeyPath)
//     let session = try SSHSession(from: network.client, source: ..., to: ..., key: server.clientKeyPath)
//     defer { session.close() }
//     session.isAlive(within: .seconds(1))                      // fresh output arrived?
//
// Nothing here touches the machine's own network, ~/.ssh or /etc/ssh: sshd and ssh run inside the namespaces through
// `nsenter --net=`, every key, config and log lives in a temporary directory that `stop()` removes, the client reads
// no configuration file (`-F /dev/null`, which also keeps it from creating ~/.ssh) and records no host key
// (`UserKnownHostsFile=/dev/null`). Every process is ended by the pid this harness started, never by name.

// MARK: - Child processes

/// A child process started with posix_spawn, whose output is collected by background threads (with the time each
/// piece of standard output arrived), which can be waited for with a deadline, and which is ended by its pid.
///
/// Not Foundation's `Process`: on Linux it takes the closing of a socket the child inherits as the sign that the
/// child ended, and then blocks its one manager thread in `waitpid` for that child. sshd and ssh close every inherited
/// descriptor as they start, so a long-lived sshd or ssh session stalls the exit of every other `Process` in the test
/// run (including `run(_:in:)`) until it ends — seen here as ssh runs "hanging" for 28 s. This class reaps its own
/// child with `waitpid(pid, WNOHANG)` instead.
///
/// With a namespace the program runs as `nsenter --net=PATH program …`; nsenter execs the program (it does not fork
/// for a network namespace only), so `pid` is the program's own pid. The child gets descriptors 0–2 only, the
/// default signal mask and dispositions, and its own process group.
public final class TestChildProcess: @unchecked Sendable {
    public enum Input: Sendable {
        /// /dev/null.
        case null
        /// A pipe this object keeps open and never writes to: the child's reads block instead of seeing EOF.
        case openPipe
    }

    private let lock = NSLock()
    private var outputData = Data()
    private var errorData = Data()
    private var outputTimes: [Date] = []
    private var status: Int32?
    private var inputWriter: Int32 = -1
    private let readersDone = DispatchGroup()
    public let arguments: [String]
    public let pid: Int32
    public let startedAt: Date

    /// - Parameters:
    ///   - errorFile: write standard error to this file instead of collecting it.
    ///   - discardOutput: send standard output to /dev/null.
    public init(
        _ arguments: [String], in namespace: NetworkNamespace? = nil, input: Input = .null, errorFile: String? = nil,
        discardOutput: Bool = false
    ) throws {
        var command = arguments
        if let namespace { command = ["/usr/bin/nsenter", "--net=\(namespace.path)"] + command }
        self.arguments = command

        // Every descriptor made here is close-on-exec; dup2 in the child clears the flag on 0, 1 and 2 only.
        var parentEnds: [Int32] = []  // read ends the reader threads own
        var childEnds: [Int32] = []  // closed in the parent after the spawn
        defer { for descriptor in childEnds { close(descriptor) } }
        func pipeEnds() throws -> (read: Int32, write: Int32) {
            var ends: [Int32] = [-1, -1]
            guard Self.pipeCloseOnExec(&ends) == 0 else { throw POSIXError(errno: errno, "pipe2") }
            return (ends[0], ends[1])
        }
        func openFile(_ path: String, _ flags: Int32) throws -> Int32 {
            let descriptor = open(path, flags | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw POSIXError(errno: errno, "open \(path)") }
            return descriptor
        }
        let stdinEnd: Int32
        var inputWriter: Int32 = -1
        switch input {
        case .null:
            stdinEnd = try openFile("/dev/null", O_RDONLY)
        case .openPipe:
            let ends = try pipeEnds()
            stdinEnd = ends.read
            inputWriter = ends.write
        }
        childEnds.append(stdinEnd)
        var outputReader: Int32 = -1
        let stdoutEnd: Int32
        if discardOutput {
            stdoutEnd = try openFile("/dev/null", O_WRONLY)
        } else {
            let ends = try pipeEnds()
            outputReader = ends.read
            parentEnds.append(ends.read)
            stdoutEnd = ends.write
        }
        childEnds.append(stdoutEnd)
        var errorReader: Int32 = -1
        let stderrEnd: Int32
        if let errorFile {
            stderrEnd = try openFile(errorFile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND)
        } else {
            let ends = try pipeEnds()
            errorReader = ends.read
            parentEnds.append(ends.read)
            stderrEnd = ends.write
        }
        childEnds.append(stderrEnd)

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinEnd, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutEnd, 1)
        posix_spawn_file_actions_adddup2(&actions, stderrEnd, 2)
        Self.closeInheritedDescriptors(&actions)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        startedAt = Date()
        let spawned = posix_spawn(&pid, command[0], &actions, &attributes, argv, environ)
        guard spawned == 0 else {
            for descriptor in parentEnds + [inputWriter] where descriptor >= 0 { close(descriptor) }
            throw POSIXError(errno: spawned, "posix_spawn \(command[0])")
        }
        self.pid = pid
        self.inputWriter = inputWriter
        if outputReader >= 0 { startReader(outputReader, isOutput: true) }
        if errorReader >= 0 { startReader(errorReader, isOutput: false) }
    }

    /// pipe2(O_CLOEXEC), looked up at run time (the Glibc module does not import it); pipe + FD_CLOEXEC otherwise.
    private static func pipeCloseOnExec(_ ends: UnsafeMutablePointer<Int32>) -> Int32 {
        typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pipe2") {
            return unsafeBitCast(symbol, to: Pipe2.self)(ends, O_CLOEXEC)
        }
        guard pipe(ends) == 0 else { return -1 }
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(ends[1], F_SETFD, FD_CLOEXEC)
        return 0
    }

    /// Closes every descriptor from 3 up in the child: posix_spawn_file_actions_addclosefrom_np (glibc 2.34+, found
    /// at run time since the Glibc module does not import it), else each descriptor open now.
    private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np"),
            unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3) == 0
        {
            return
        }
        // glibc ignores a close action for a descriptor that is not open (any more).
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            if let descriptor = Int32(entry), descriptor > 2 {
                posix_spawn_file_actions_addclose(&actions, descriptor)
            }
        }
    }

    private func startReader(_ descriptor: Int32, isOutput: Bool) {
        readersDone.enter()
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                let now = Date()
                lock.withLock {
                    if isOutput {
                        outputData.append(contentsOf: buffer[0..<count])
                        outputTimes.append(now)
                    } else {
                        errorData.append(contentsOf: buffer[0..<count])
                    }
                }
            }
            close(descriptor)
            readersDone.leave()
        }
        thread.start()
    }

    /// Reaps the child if it has ended; returns its raw wait status then.
    private func reap() -> Int32? {
        lock.withLock {
            if let status { return status }
            var raw: Int32 = 0
            let result = waitpid(pid, &raw, WNOHANG)
            if result == pid { status = raw } else if result < 0 && errno == ECHILD { status = -1 }
            return status
        }
    }

    public var isRunning: Bool { reap() == nil }

    /// The exit status, or 128 + signal number when a signal ended it; nil while it runs.
    public var exitStatus: Int32? {
        guard let raw = reap() else { return nil }
        if raw == -1 { return -1 }
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    /// Everything read from standard output so far.
    public var output: String { lock.withLock { String(decoding: outputData, as: UTF8.self) } }
    /// Everything read from standard error so far (empty when it goes to a file).
    public var errorOutput: String { lock.withLock { String(decoding: errorData, as: UTF8.self) } }
    /// When each piece of standard output arrived.
    public var outputArrivals: [Date] { lock.withLock { outputTimes } }
    public var lastOutputAt: Date? { lock.withLock { outputTimes.last } }

    /// Waits until the process has exited (and, when it did, its pipes are drained); returns whether it exited.
    @discardableResult
    public func wait(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while isRunning {
            if ContinuousClock.now >= deadline { return false }
            usleep(5_000)
        }
        // A descendant could still hold a pipe open; do not wait for it forever.
        _ = readersDone.wait(timeout: .now() + 2)
        return true
    }

    /// Sends SIGTERM to the pid this object started, waits up to `grace`, then SIGKILL; reaps it. Idempotent.
    public func terminate(grace: Duration = .seconds(3)) {
        if isRunning {
            kill(pid, SIGTERM)
            if !wait(timeout: grace), isRunning {
                kill(pid, SIGKILL)
                wait(timeout: .seconds(5))
            }
        } else {
            wait(timeout: .seconds(1))
        }
        let writer = lock.withLock {
            defer { inputWriter = -1 }
            return inputWriter
        }
        if writer >= 0 { close(writer) }
    }

    deinit { terminate(grace: .seconds(2)) }
}

// MARK: - Processes that are not our children

/// A process identified by pid and start time (so a reused pid is never signalled).
struct ProcessIdentity: Hashable {
    var pid: Int32
    var startTime: UInt64

    /// Reads `/proc/PID/stat`: the parent pid, state and start time.
    static func stat(_ pid: Int32) -> (parent: Int32, state: Character, startTime: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // After the command name: state(3) ppid(4) … starttime(22).
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let parent = Int32(fields[1]), let start = UInt64(fields[19]),
            let state = fields[0].first
        else { return nil }
        return (parent, state, start)
    }

    /// Whether this process still exists and has not exited (a zombie has).
    var isLive: Bool {
        guard let now = Self.stat(pid), now.startTime == startTime else { return false }
        return now.state != "Z" && now.state != "X"
    }

    /// Whether this process is gone from the process table (exited and reaped).
    var isReaped: Bool { Self.stat(pid).map { $0.startTime != startTime } ?? true }

    /// Polls until the process has been reaped (by its parent) or `timeout` passes.
    func waitUntilReaped(within timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !isReaped {
            if ContinuousClock.now >= deadline { return false }
            usleep(2_000)
        }
        return true
    }

    /// Every live descendant of `root`, deepest first.
    static func descendants(of root: Int32) -> [ProcessIdentity] {
        var children: [Int32: [(Int32, UInt64)]] = [:]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry), let info = stat(pid), info.state != "Z" else { continue }
            children[info.parent, default: []].append((pid, info.startTime))
        }
        var result: [ProcessIdentity] = []
        func visit(_ pid: Int32) {
            for (child, start) in children[pid] ?? [] {
                visit(child)
                result.append(ProcessIdentity(pid: child, startTime: start))
            }
        }
        visit(root)
        return result
    }
}

// MARK: - Server

/// An OpenSSH server (`/usr/sbin/sshd -D -e -f CONFIG`) running inside a network namespace.
///
/// The initializer makes a temporary directory with a host key, a client key pair, `authorized_keys` (holding the
/// client key) and `sshd_config`; starts sshd inside `namespace` as a child process, listening on `0.0.0.0` and
/// `::` at `port`; and returns once sshd has logged that it listens on both and accepts connections on the
/// namespace's own loopback (127.0.0.1 and ::1, which drawbridge never judges). Log in as root with `clientKeyPath`.
/// It creates /run/sshd (mode 0755), sshd's privilege separation directory, if it is missing.
///
/// `stop()` (also run by deinit) ends sshd and every process it forked for connections (found through /proc by
/// parent pid, signalled by pid), then removes the directory. Call it before the test ends; a lingering sshd would
/// keep its namespace alive.
public final class SSHServer: @unchecked Sendable {
    public let namespace: NetworkNamespace
    public let port: UInt16
    /// The temporary directory holding every file of this server.
    public let directory: String
    public let configPath: String
    public let hostKeyPath: String
    /// The private key the client logs in with (its public half is the only authorized key).
    public let clientKeyPath: String
    public let authorizedKeysPath: String
    /// sshd's standard error (`-e`, LogLevel VERBOSE).
    public let logPath: String
    private let lock = NSLock()
    private var process: TestChildProcess?
    private var stopped = false

    public var pid: Int32? { lock.withLock { process?.pid } }

    public init(in namespace: NetworkNamespace, port: UInt16 = 22, startTimeout: Duration = .seconds(10)) throws {
        self.namespace = namespace
        self.port = port
        var template = Array("/tmp/drawbridge-ssh.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(errno: errno, "mkdtemp")
        }
        directory = String(cString: made)
        configPath = directory + "/sshd_config"
        hostKeyPath = directory + "/ssh_host_ed25519_key"
        clientKeyPath = directory + "/client_ed25519"
        authorizedKeysPath = directory + "/authorized_keys"
        logPath = directory + "/sshd.log"
        do {
            try start(startTimeout: startTimeout)
        } catch {
            stop()
            throw error
        }
    }

    private func start(startTimeout: Duration) throws {
        // sshd's privilege separation directory; Debian creates it in the service unit, which is not running here.
        if mkdir("/run/sshd", 0o755) != 0 && errno != EEXIST { throw POSIXError(errno: errno, "mkdir /run/sshd") }
        try run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "drawbridge-test-host", "-f", hostKeyPath])
        try run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "drawbridge-test-client", "-f", clientKeyPath])
        try FileManager.default.copyItem(atPath: clientKeyPath + ".pub", toPath: authorizedKeysPath)
        let config = """
            # Written by the drawbridge test harness; lives only in \(directory).
            Port \(port)
            ListenAddress 0.0.0.0
            ListenAddress ::
            HostKey \(hostKeyPath)
            PidFile none
            StrictModes no
            PermitRootLogin prohibit-password
            PubkeyAuthentication yes
            AuthorizedKeysFile \(authorizedKeysPath)
            AuthorizedPrincipalsFile none
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            HostbasedAuthentication no
            UsePAM no
            UseDNS no
            PrintMotd no
            PrintLastLog no
            PermitUserRC no
            PermitUserEnvironment no
            X11Forwarding no
            AllowTcpForwarding no
            AllowAgentForwarding no
            LoginGraceTime 20
            MaxStartups 100
            MaxSessions 20
            LogLevel VERBOSE

            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        // Check the configuration first: a mistake shows as a clear error instead of a server that never listens.
        try run(["/usr/sbin/sshd", "-t", "-f", configPath])

        let process = try TestChildProcess(
            ["/usr/sbin/sshd", "-D", "-e", "-f", configPath], in: namespace, errorFile: logPath, discardOutput: true)
        lock.withLock { self.process = process }

        // Ready when sshd itself says it listens on both addresses (a connection alone could reach another server
        // on the same port) and a connection over the namespace's loopback goes through.
        let listening = try eventually(within: startTimeout) {
            guard process.isRunning else { return true }
            let log = self.log
            guard log.contains("Server listening on 0.0.0.0 port \(port)."),
                log.contains("Server listening on :: port \(port).")
            else { return false }
            return try canConnect(from: namespace, to: IPAddress("127.0.0.1")!, port: port)
                && canConnect(from: namespace, to: IPAddress("::1")!, port: port)
        }
        guard process.isRunning, listening else {
            throw HarnessError(
                "sshd did not start listening on port \(port) (exit status \(process.exitStatus.map(String.init) ?? "none, still running")):\n\(log)"
            )
        }
    }

    /// What sshd has logged so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Ends sshd and the processes it forked (per-connection sshd processes and the sessions' shells), each by pid:
    /// SIGTERM, then SIGKILL for anything still there after a grace period. Removes the temporary directory.
    /// Idempotent.
    public func stop() {
        let process: TestChildProcess? = lock.withLock {
            if stopped { return nil }
            stopped = true
            return self.process
        }
        if let process {
            // Collect the tree before signalling: once sshd is gone its children are reparented and can no longer
            // be told apart from other processes. Deepest first, each waited for, so that every process is reaped
            // by its own parent (still alive) rather than left to init.
            for member in ProcessIdentity.descendants(of: process.pid) where member.isLive {
                kill(member.pid, SIGTERM)
                if !member.waitUntilReaped(within: .seconds(2)), member.isLive {
                    kill(member.pid, SIGKILL)
                    _ = member.waitUntilReaped(within: .seconds(2))
                }
            }
            process.terminate(grace: .seconds(3))
        }
        if FileManager.default.fileExists(atPath: directory) { try? FileManager.default.removeItem(atPath: directory) }
    }

    deinit { stop() }
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

// MARK: - Client

/// The outcome of one `ssh` run.
public struct SSHResult: Sendable, CustomStringConvertible {
    /// ssh's exit status: the remote command's, or 255 for an ssh error; 128 + signal when the harness killed it.
    public var status: Int32
    public var output: String
    public var error: String
    public var startedAt: Date
    /// From spawning ssh to its exit.
    public var elapsed: Duration
    /// The harness ended ssh after its overall deadline.
    public var killed: Bool

    public var succeeded: Bool { status == 0 }
    /// The TCP handshake timed out (`ssh: connect to host … port …: Connection timed out`): what a drop by the
    /// firewall looks like. A closed port would say "Connection refused"; a slow server, "Connection timed out
    /// during banner exchange", which this does not count.
    public var connectTimedOut: Bool {
        status == 255 && error.contains("connect to host") && error.contains(": Connection timed out")
    }
    public var finishedAt: Date { startedAt.addingTimeInterval(elapsed.harnessSeconds) }

    public var description: String {
        "ssh exited \(status) after \(Int(elapsed.harnessSeconds * 1000)) ms\(killed ? " (killed)" : ""); stdout: \(output.debugDescription) stderr: \(error.debugDescription)"
    }
}

/// Runs the real OpenSSH client inside a namespace.
public enum SSHClient {
    /// ssh's ConnectTimeout, which also bounds the banner exchange: 2 s natively, stretched by TestTiming where
    /// emulated CPUs make a busy sshd answer late (an attempt then failed "during banner exchange" on an open port).
    public static let connectTimeout = Int(TestTiming.seconds(2))

    /// The options every run uses: no configuration file (so ssh neither reads nor creates ~/.ssh), no agent, no
    /// known-hosts file, no prompt, exactly one connection attempt, source address bound with `-b`.
    static func arguments(
        source: IPAddress, destination: IPAddress, port: UInt16, key: String, connectTimeout: Int,
        logLevel: String = "ERROR", extra: [String] = []
    ) -> [String] {
        // Bare IPv6 is fine for -b and for the host when the port goes in -p.
        [
            "/usr/bin/ssh", "-F", "/dev/null", "-T", "-i", key, "-p", String(port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no",
            "-o", "LogLevel=\(logLevel)", "-o", "ConnectTimeout=\(connectTimeout)", "-o", "ConnectionAttempts=1",
            "-b", source.description,
        ] + extra + ["root@\(destination)"]
    }

    /// Runs `command` on the server as root and waits for ssh to end. A dropped connection shows as status 255 with
    /// `connectTimedOut` after `connectTimeout` seconds; ssh is killed (by pid) if it runs past `deadline`
    /// (default: `connectTimeout` + 20 s).
    public static func run(
        _ command: String, from namespace: NetworkNamespace, source: IPAddress, to destination: IPAddress,
        port: UInt16 = 22, key: String, connectTimeout: Int = SSHClient.connectTimeout, deadline: Duration? = nil
    ) throws -> SSHResult {
        let arguments =
            arguments(source: source, destination: destination, port: port, key: key, connectTimeout: connectTimeout)
            + [command]
        let clock = ContinuousClock()
        let started = clock.now
        let child = try TestChildProcess(arguments, in: namespace)
        var killed = false
        if !child.wait(timeout: deadline ?? .seconds(connectTimeout + 20)) {
            killed = true
            child.terminate(grace: .seconds(1))
        }
        let elapsed = clock.now - started
        return SSHResult(
            status: child.exitStatus ?? -1, output: child.output, error: child.errorOutput, startedAt: child.startedAt,
            elapsed: elapsed, killed: killed)
    }

    /// The marker `canLogIn` echoes.
    public static let loginMarker = "drawbridge-ok"

    /// Logs in and runs `echo drawbridge-ok`; true when ssh succeeded and the marker came back.
    public static func canLogIn(
        from namespace: NetworkNamespace, source: IPAddress, to destination: IPAddress, port: UInt16 = 22,
        key: String, connectTimeout: Int = SSHClient.connectTimeout
    ) throws -> Bool {
        try logIn(
            from: namespace, source: source, to: destination, port: port, key: key, connectTimeout: connectTimeout
        )
        .loggedIn
    }

    /// `canLogIn` with the whole result, for timing and diagnostics.
    public static func logIn(
        from namespace: NetworkNamespace, source: IPAddress, to destination: IPAddress, port: UInt16 = 22,
        key: String, connectTimeout: Int = SSHClient.connectTimeout
    ) throws -> SSHResult {
        try run(
            "echo \(loginMarker)", from: namespace, source: source, to: destination, port: port, key: key,
            connectTimeout: connectTimeout)
    }

    /// Login attempts that overlap: one starts at each of `starts` (on its own thread), whatever the others are
    /// doing, so that the moment a port closes can be bracketed more finely than one login's duration allows.
    /// Returns the results in the order of `starts`; an attempt that could not be spawned counts as status -1.
    public static func logInAttempts(
        at starts: [Date], from namespace: NetworkNamespace, source: IPAddress, to destination: IPAddress,
        port: UInt16 = 22, key: String, connectTimeout: Int = SSHClient.connectTimeout
    ) -> [SSHResult] {
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var values: [SSHResult?]
            init(_ count: Int) { values = Array(repeating: nil, count: count) }
        }
        let results = Results(starts.count)
        let group = DispatchGroup()
        for (index, start) in starts.enumerated() {
            group.enter()
            Thread {
                let delay = start.timeIntervalSinceNow
                if delay > 0 { usleep(UInt32(delay * 1_000_000)) }
                let result: SSHResult
                do {
                    result = try logIn(
                        from: namespace, source: source, to: destination, port: port, key: key,
                        connectTimeout: connectTimeout)
                } catch {
                    result = SSHResult(
                        status: -1, output: "", error: "\(error)", startedAt: Date(), elapsed: .zero, killed: false)
                }
                results.lock.withLock { results.values[index] = result }
                group.leave()
            }.start()
        }
        group.wait()
        return results.values.map { $0! }
    }
}

extension SSHResult {
    /// ssh succeeded and printed the `canLogIn` marker.
    public var loggedIn: Bool { succeeded && output.contains(SSHClient.loginMarker) }
}

// MARK: - Session

/// An SSH session that stays open: ssh runs a remote loop that prints `tick` every `tickInterval` (200 ms), with
/// `ServerAliveInterval=1` and `ServerAliveCountMax=2`. When the host drops the session's packets, output stops
/// within about half a second (sshd's TCP gets no ACKs and stops sending new data at its retransmission timeout) and
/// ssh gives up about 3 s later ("Timeout, server … not responding.", exit status 255).
///
/// `isAlive(within:)` tells whether fresh output arrives; `close()` (also run by deinit) ends ssh by its pid. The
/// remote shell and sshd's session processes are ended by `SSHServer.stop()`.
public final class SSHSession: @unchecked Sendable {
    public let process: TestChildProcess
    public let tickInterval: Duration

    public init(
        from namespace: NetworkNamespace, source: IPAddress, to destination: IPAddress, port: UInt16 = 22,
        key: String, connectTimeout: Int = SSHClient.connectTimeout, tickInterval: Duration = .milliseconds(200)
    ) throws {
        self.tickInterval = tickInterval
        let seconds = String(format: "%.3f", tickInterval.harnessSeconds)
        let arguments =
            SSHClient.arguments(
                source: source, destination: destination, port: port, key: key, connectTimeout: connectTimeout,
                logLevel: "INFO", extra: ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"])
            // `read -t` on the never-written stdin is the pause: a builtin, so the loop forks nothing (a `sleep`
            // would outlive the shell when the session is killed). After an EOF it falls back to sleep.
            + ["while :; do echo tick; read -t \(seconds) || [ $? -gt 128 ] || sleep \(seconds); done"]
        process = try TestChildProcess(arguments, in: namespace, input: .openPipe)
    }

    public var pid: Int32 { process.pid }
    /// Whether ssh still runs.
    public var isRunning: Bool { process.isRunning }
    /// ssh's exit status once it has ended.
    public var exitStatus: Int32? { process.exitStatus }
    /// ssh's diagnostics (LogLevel=INFO), e.g. "Timeout, server … not responding."
    public var errorOutput: String { process.errorOutput }
    /// When each piece of output arrived.
    public var outputArrivals: [Date] { process.outputArrivals }
    public var lastOutputAt: Date? { process.lastOutputAt }
    public var tickCount: Int { process.output.split(separator: "\n").count }

    /// Waits for the first tick (the login completed and the loop runs). False if ssh ended or nothing came.
    public func waitUntilOpen(within timeout: Duration = .seconds(10)) -> Bool {
        eventually(within: timeout) { process.lastOutputAt != nil || !process.isRunning }
            && process.lastOutputAt != nil
    }

    /// Whether new output arrives between now and `within` from now.
    public func isAlive(within timeout: Duration) -> Bool {
        let before = process.outputArrivals.count
        return eventually(within: timeout) { process.outputArrivals.count > before }
    }

    /// Ends ssh (SIGTERM by pid, SIGKILL after a grace period). Idempotent.
    public func close() { process.terminate(grace: .seconds(2)) }

    deinit { close() }
}

extension Duration {
    /// This duration in seconds, as a Double.
    var harnessSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
