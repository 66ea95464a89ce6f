import EtcdProbeProtocol
import Foundation
import Netfilter
import TestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// The Etcd client, running in `etcd-probe` inside the etcd namespace, called from a test.
///
/// Why a child process: etcd listens only inside the test's network namespace, so the client's sockets must be made
/// there. `NetworkNamespace.perform` switches only the calling thread, and the client's sockets are made on threads
/// it does not choose (NIO's `ClientBootstrap.connect` creates the socket on the thread of whichever concurrency task
/// connects). A process started with `nsenter --net=` has every thread in the namespace, and leaves the test process
/// and the machine's own namespace untouched. The probe speaks EtcdProbeProtocol on its standard input and output;
/// these methods mirror EtcdClient's and throw the probe's `ProbeFailure` (the EtcdError's code and description).
final class EtcdProbe: @unchecked Sendable {
    private let process: Process
    private let input: FileHandle
    private let condition = NSCondition()
    private var replies: [ProbeReply] = []
    private var closed = false
    private var nextID = 1
    private let encoder = JSONEncoder()

    static var executable: String { BuiltProducts.directory + "/etcd-probe" }

    init(namespace: NetworkNamespace, arguments: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        process.arguments = ["--net=\(namespace.path)", Self.executable] + arguments
        let inputPipe = Pipe()
        let outputPipe = Pipe()
        process.standardInput = inputPipe
        process.standardOutput = outputPipe
        process.standardError = FileHandle.standardError
        try process.run()
        input = inputPipe.fileHandleForWriting
        let reader = Thread { [condition] in
            let handle = outputPipe.fileHandleForReading
            var buffer = Data()
            let decoder = JSONDecoder()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                buffer.append(chunk)
                while let newline = buffer.firstIndex(of: 0x0A) {
                    let line = buffer[buffer.startIndex..<newline]
                    buffer = Data(buffer[(newline + 1)...])
                    if let reply = try? decoder.decode(ProbeReply.self, from: line) {
                        condition.lock()
                        self.replies.append(reply)
                        condition.broadcast()
                        condition.unlock()
                    }
                }
            }
            condition.lock()
            self.closed = true
            condition.broadcast()
            condition.unlock()
        }
        reader.start()
        let first = try next(for: 0, timeout: 15)
        if case .failure(_, let failure) = first { throw failure }
    }

    deinit {
        try? input.close()
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
    }

    /// The next reply about request `id`, in the order the probe sent them.
    func next(for id: Int, timeout: TimeInterval = 15) throws -> ProbeReply {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let index = replies.firstIndex(where: { $0.id == id }) { return replies.remove(at: index) }
            if closed { throw ProbeGone("etcd-probe exited while a reply to request \(id) was awaited") }
            if !condition.wait(until: deadline) {
                throw ProbeGone("no reply to request \(id) within \(timeout) s")
            }
        }
    }

    /// Sends a command and returns its request number without waiting.
    func send(_ command: ProbeCommand) throws -> Int {
        condition.lock()
        let id = nextID
        nextID += 1
        condition.unlock()
        var line = try encoder.encode(ProbeRequest(id: id, command: command))
        line.append(0x0A)
        try input.write(contentsOf: line)
        return id
    }

    /// Sends a command and waits for its reply; a failure reply is thrown.
    func call(_ command: ProbeCommand, timeout: TimeInterval = 15) throws -> ProbeReply {
        let id = try send(command)
        let reply = try next(for: id, timeout: timeout)
        if case .failure(_, let failure) = reply { throw failure }
        return reply
    }

    func range(_ prefix: String, revision: Int64? = nil) throws -> (revision: Int64, keyValues: [ProbeKeyValue]) {
        guard case .range(_, let revision, let keyValues) = try call(.range(prefix: prefix, revision: revision)) else {
            throw ProbeGone("unexpected reply to range")
        }
        return (revision, keyValues)
    }

    @discardableResult
    func put(_ key: String, _ value: String, lease: Int64? = nil) throws -> Int64 {
        guard case .revision(_, let revision) = try call(.put(key: key, value: value, lease: lease)) else {
            throw ProbeGone("unexpected reply to put")
        }
        return revision
    }

    @discardableResult
    func delete(_ key: String) throws -> Int64 {
        guard case .deleted(_, let revision, _) = try call(.delete(key: key)) else {
            throw ProbeGone("unexpected reply to delete")
        }
        return revision
    }

    func grantLease(ttlSeconds: Int64) throws -> (lease: Int64, ttlSeconds: Int64) {
        guard case .lease(_, let lease, let ttl) = try call(.grantLease(ttlSeconds: ttlSeconds)) else {
            throw ProbeGone("unexpected reply to grantLease")
        }
        return (lease, ttl)
    }

    func revokeLease(_ lease: Int64) throws {
        _ = try call(.revokeLease(lease: lease))
    }

    /// Starts a watch; read its responses with `nextWatchResponse(_:)`.
    func watch(_ fromRevisions: [String: Int64]) throws -> Int {
        let id = try send(.watch(fromRevisions: fromRevisions))
        guard case .done = try next(for: id) else { throw ProbeGone("watch did not start") }
        return id
    }

    /// The watch's next response; its failure is thrown, and a stop shows as nil.
    func nextWatchResponse(_ watch: Int, timeout: TimeInterval = 15) throws -> ProbeWatchResponse? {
        switch try next(for: watch, timeout: timeout) {
        case .watchResponse(_, let response): return response
        case .failure(_, let failure): throw failure
        case .stopped: return nil
        default: throw ProbeGone("unexpected reply to watch \(watch)")
        }
    }

    /// Collects the watch's events, skipping created and progress responses, until `count` arrived.
    func watchEvents(_ watch: Int, count: Int, timeout: TimeInterval = 15) throws -> [ProbeEvent] {
        var events: [ProbeEvent] = []
        while events.count < count {
            guard let response = try nextWatchResponse(watch, timeout: timeout) else { break }
            events += response.events
        }
        return events
    }

    /// Stops a watch or keep-alive and waits until it ended.
    func stop(_ request: Int) throws {
        _ = try call(.stop(request: request))
        while true {
            switch try next(for: request) {
            case .stopped, .failure: return
            default: continue
            }
        }
    }
}

struct ProbeGone: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
