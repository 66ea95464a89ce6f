import CDrawbridgeLinux
import DrawbridgeCore
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The local API socket: a Unix stream socket, mode 0660 and group `drawbridge`, one request per connection.
///
/// Each connection is served on a thread of its own with a read deadline and a size limit, so a slow, silent or
/// hostile client cannot hold the agent; the caller is identified by the socket's peer credentials only.
public final class LocalAPIServer: @unchecked Sendable {
    public typealias Handler = @Sendable (LocalAPI.Request, Caller) async -> LocalAPI.Response

    private let path: String
    private let group: String?
    private let handler: Handler
    private let logger: Logger
    private var descriptor: Int32 = -1
    /// Connections served at once; each holds a thread for at most the 5-second deadline.
    private let connections = DispatchSemaphore(value: 64)
    private var acceptThread: Thread?

    public init(path: String, group: String?, logger: Logger, handler: @escaping Handler) {
        self.path = path
        self.group = group
        self.logger = logger
        self.handler = handler
    }

    /// Creates, binds and starts serving the socket.
    public func start() throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try removeStaleSocket()

        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else {
            throw AgentError("cannot create the API socket: \(String(cString: strerror(errno)))")
        }
        var (address, length) = try Self.address(path)
        // Created 0600 (umask), then opened to the group only once its owner is right: never world-accessible.
        let previous = umask(0o177)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) }
        }
        umask(previous)
        guard bound == 0 else {
            throw AgentError("cannot bind the API socket \(path): \(String(cString: strerror(errno)))")
        }
        if let group {
            if let gid = UnixIdentity.groupID(named: group) {
                guard chown(path, 0, gid) == 0 || geteuid() != 0 else {
                    throw AgentError("cannot give \(path) to group \(group): \(String(cString: strerror(errno)))")
                }
                chmod(path, 0o660)
            } else {
                logger.warning(
                    "socket group does not exist; only root can use the socket",
                    metadata: ["api.socket": "\(path)", "api.group": "\(group)"])
            }
        }
        guard listen(descriptor, 64) == 0 else {
            throw AgentError("cannot listen on \(path): \(String(cString: strerror(errno)))")
        }

        let listening = descriptor
        let thread = Thread { [self] in acceptLoop(listening) }
        thread.name = "drawbridge-api"
        thread.start()
        acceptThread = thread
        logger.info("local API listening", metadata: ["api.socket": "\(path)"])
    }

    /// Stops accepting; requests in progress finish on their own threads.
    public func stop() {
        guard descriptor >= 0 else { return }
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
        descriptor = -1
        unlink(path)
    }

    private func removeStaleSocket() throws {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw AgentError("\(path) exists and is not a socket; refusing to replace it")
        }
        // A socket someone still answers on belongs to a running agent.
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(probe) }
        var (address, length) = try Self.address(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, length) }
        }
        if connected == 0 { throw AgentError("another drawbridged is already serving \(path)") }
        unlink(path)
    }

    /// The socket address of `path`, and its length. The corresponding C function is `drawbridge_unix_address`.
    static func address(_ path: String) throws -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        var length: socklen_t = 0
        guard drawbridge_unix_address(path, &address, &length) == 0 else {
            throw AgentError("socket path too long (at most 107 bytes): \(path)")
        }
        return (address, length)
    }

    private func acceptLoop(_ listening: Int32) {
        while true {
            let connection = accept(listening, nil, nil)
            if connection < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // closed by stop()
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            guard connections.wait(timeout: .now()) == .success else {
                respond(connection, .failure(.init(code: .internal, message: "the agent is busy; try again")))
                close(connection)
                continue
            }
            let thread = Thread { [self] in
                serve(connection)
                Self.finish(connection)
                connections.signal()
            }
            thread.start()
        }
    }

    /// Closes after the answer: stops writing, then discards what the client is still sending (bounded by the read
    /// deadline and 1 MiB) so that a client whose request was refused unread still receives the answer.
    private static func finish(_ connection: Int32) {
        shutdown(connection, Int32(SHUT_WR))
        var discard = [UInt8](repeating: 0, count: 16384)
        var total = 0
        while total < 1 << 20 {
            let count = read(connection, &discard, discard.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            total += count
        }
        close(connection)
    }

    private func serve(_ connection: Int32) {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let caller: Caller
        do {
            caller = try UnixIdentity.caller(of: connection)
        } catch {
            respond(connection, .failure(.init(code: .internal, message: "\(error)")))
            return
        }
        let request: LocalAPI.Request
        switch readRequest(connection) {
        case .failure(let failure):
            logger.warning(
                "bad API request", metadata: ["api.peer.uid": "\(caller.uid)", "api.error": "\(failure.message)"])
            respond(connection, .failure(failure))
            return
        case .success(let value):
            request = value
        }
        let handler = self.handler
        respond(connection, blockingCall { await handler(request, caller) })
    }

    /// Reads one line of at most 64 KiB within the deadline and decodes it.
    private func readRequest(_ connection: Int32) -> Result<LocalAPI.Request, LocalAPI.Failure> {
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !data.contains(0x0a) {
            let count = read(connection, &chunk, chunk.count)
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                let reason = errno == EAGAIN ? "no complete request within 5 seconds" : String(cString: strerror(errno))
                return .failure(.init(code: .badRequest, message: reason))
            }
            data.append(contentsOf: chunk[0..<count])
            if data.count > LocalAPI.maximumRequestBytes {
                return .failure(
                    .init(code: .badRequest, message: "request larger than \(LocalAPI.maximumRequestBytes) bytes"))
            }
        }
        if let newline = data.firstIndex(of: 0x0a) { data = data[..<newline] }
        guard !data.isEmpty else { return .failure(.init(code: .badRequest, message: "empty request")) }
        do {
            return .success(try LocalAPI.decoder().decode(LocalAPI.Request.self, from: data))
        } catch {
            return .failure(
                .init(
                    code: .badRequest, message: "request is not a valid drawbridge API message: \(Self.describe(error))"
                ))
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let context):
            let place = context.codingPath.map(\.stringValue).joined(separator: ".")
            return place.isEmpty ? "not JSON" : "bad value at \(place)"
        default: return "\(error)"
        }
    }

    private func respond(_ connection: Int32, _ response: LocalAPI.Response) {
        guard var data = try? LocalAPI.encoder().encode(response) else { return }
        data.append(0x0a)
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(connection, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += written
            }
        }
    }
}
