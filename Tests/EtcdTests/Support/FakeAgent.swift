import DrawbridgeCore
import Foundation
import Netfilter
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's side of the local socket, played by the test: accepts one request per connection, reads it with the
/// agent's own decoder (`LocalAPI.decode`, so a request the real agent would refuse fails here too), records it, and
/// answers like the agent: applied, refused or removed per key.
///
/// It also keeps the etcd state the requests add up to (a complete snapshot replaces it, a change set edits it), so
/// a test can compare what the agent would hold with what etcd holds.
final class FakeAgent: @unchecked Sendable {
    enum Mode {
        /// Answers like the agent.
        case answering
        /// Answers every request with an error (the agent could not journal, say).
        case failing
    }

    let path: String
    private let condition = NSCondition()
    private var listener: Int32 = -1
    private var thread: Thread?
    private var mode = Mode.answering
    private(set) var commands: [LocalAPI.Command] = []
    private(set) var problems: [String] = []
    /// key → value text, or `problem: …` for an unusable value.
    private(set) var state: [String: String] = [:]

    /// A key whose value contains this is refused, as a host's policy would refuse a port it does not manage.
    static let refusedMarker = "telnet"
    static let refusal = "port telnet is not managed on this host"

    init(path: String) throws {
        self.path = path
        try start()
    }

    deinit { stop() }

    /// Listens (again) on the path.
    func start() throws {
        unlink(path)
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(errno: errno, "socket") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in path.utf8.enumerated() { buffer[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, listen(descriptor, 64) == 0 else {
            let error = errno
            close(descriptor)
            throw POSIXError(errno: error, "bind/listen \(path)")
        }
        condition.lock()
        listener = descriptor
        condition.unlock()
        let thread = Thread { [weak self] in self?.serve(descriptor) }
        self.thread = thread
        thread.start()
    }

    /// Stops listening and removes the socket file: the agent is gone.
    func stop() {
        condition.lock()
        let descriptor = listener
        listener = -1
        condition.unlock()
        guard descriptor >= 0 else { return }
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
        unlink(path)
    }

    func setMode(_ mode: Mode) {
        condition.lock()
        self.mode = mode
        condition.unlock()
    }

    /// The etcd-sync requests so far.
    var updates: [EtcdUpdate] {
        condition.lock()
        defer { condition.unlock() }
        return commands.compactMap { if case .etcdSync(let update) = $0 { update } else { nil } }
    }

    var connectionReports: [EtcdConnectionReport] {
        condition.lock()
        defer { condition.unlock() }
        return commands.compactMap { if case .etcdConnection(let report) = $0 { report } else { nil } }
    }

    var currentState: [String: String] {
        condition.lock()
        defer { condition.unlock() }
        return state
    }

    var decodeProblems: [String] {
        condition.lock()
        defer { condition.unlock() }
        return problems
    }

    /// Waits until `predicate` holds for the updates received so far; returns whether it did.
    func waitForUpdates(timeout: TimeInterval = 20, _ predicate: ([EtcdUpdate]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if predicate(updates) { return true }
            usleep(20_000)
        }
        return predicate(updates)
    }

    func waitFor(timeout: TimeInterval = 20, _ predicate: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if predicate() { return true }
            usleep(20_000)
        }
        return predicate()
    }

    private func serve(_ descriptor: Int32) {
        while true {
            let connection = accept(descriptor, nil, nil)
            if connection < 0 {
                if errno == EINTR { continue }
                return
            }
            handle(connection)
            close(connection)
        }
    }

    private func handle(_ connection: Int32) {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !bytes.contains(0x0a) {
            let count = read(connection, &buffer, buffer.count)
            if count <= 0 { return }
            bytes += buffer[..<count]
        }
        let line = Array(bytes[..<bytes.firstIndex(of: 0x0a)!])
        let response: LocalAPI.Response
        condition.lock()
        switch LocalAPI.decode(line) {
        case .failure(let failure):
            problems.append(failure.message)
            response = .failure(failure)
        case .success(let command):
            commands.append(command)
            response = mode == .failing ? .failure(.init(code: .storage, message: "the journal is full")) : answer(command)
        }
        condition.unlock()
        var data = (try? LocalAPI.encoder().encode(response)) ?? Data()
        data.append(0x0a)
        _ = data.withUnsafeBytes { write(connection, $0.baseAddress!, $0.count) }
    }

    /// The agent's answer; called with the lock held.
    private func answer(_ command: LocalAPI.Command) -> LocalAPI.Response {
        guard case .etcdSync(let update) = command else { return LocalAPI.Response(ok: true) }
        if update.complete { state = [:] }
        var results: [LocalAPI.EtcdResult] = []
        for change in update.changes {
            let id = "e-test-" + (change.key.split(separator: "/").last.map(String.init) ?? "")
            switch change {
            case .put(let key, let value):
                let text = String(decoding: value, as: UTF8.self)
                state[key] = text
                if text.contains(Self.refusedMarker) {
                    results.append(.init(key: key, state: .refused, detail: Self.refusal))
                } else {
                    results.append(.init(key: key, state: .applied, id: id))
                }
            case .delete(let key):
                state[key] = nil
                results.append(.init(key: key, state: .removed, id: id))
            case .unusable(let key, let problem):
                state[key] = "problem: " + problem
                results.append(.init(key: key, state: .refused, detail: problem))
            }
        }
        return LocalAPI.Response(ok: true, etcd: LocalAPI.EtcdReport(revision: update.revision, results: results))
    }
}

/// `drawbridge-etcd sync` started by a test inside the etcd namespace (its gRPC sockets must be there; the agent's
/// socket is a file, reachable from any namespace), stopped by its pid.
final class SyncProcess: @unchecked Sendable {
    let process = Process()
    let logPath: String

    static var executable: String { BuiltProducts.directory + "/drawbridge-etcd" }

    /// Runs in `namespace` (etcd's own when nil: the sync reaches it over `lo`).
    init(
        etcd: EtcdServer, policy: String, socket: String, namespace: NetworkNamespace? = nil, arguments: [String] = []
    ) throws {
        logPath = etcd.directory + "/sync-\(UUID().uuidString.prefix(8)).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        process.arguments =
            [
                "--net=\((namespace ?? etcd.namespace).path)", Self.executable, "sync", "--config", policy, "--socket", socket,
                "--log-level", "debug",
            ] + arguments
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// SIGTERM, and the exit status once it exited (nil when it did not within 15 s; then it is killed).
    func terminate() -> Int32? {
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(15)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        guard !process.isRunning else {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    func pause() { kill(process.processIdentifier, SIGSTOP) }
    func resume() { kill(process.processIdentifier, SIGCONT) }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    var logTail: String { log.split(separator: "\n").suffix(30).joined(separator: "\n") }
}
