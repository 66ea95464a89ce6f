import DrawbridgeCore
import FoundationEssentials
import Glibc
import SystemPackage

/// The client end of the agent's local API: one connection per request, one JSON line out, one JSON line back.
///
/// Both `drawbridge` and `drawbridge-etcd sync` talk to the agent through here, so both say the same thing when the
/// agent is not running or the socket is closed to them.
public enum AgentSocket {
    /// One request and its answer, with the process id of the agent that answered (from the socket's peer
    /// credentials): a different id than last time means the agent restarted in between.
    public struct Exchange: Sendable {
        /// The answer line, without its newline.
        public var answer: [UInt8]
        /// The answering agent's process id, when the kernel gave it.
        public var agentProcess: pid_t?
    }

    /// Why a request did not get an answer.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public enum Kind: Sendable, Equatable {
            /// No socket file, or nothing listens on it.
            case notRunning
            /// The socket exists but this user may not connect to it.
            case permissionDenied
            /// The path cannot be a socket address (longer than 107 bytes).
            case pathTooLong
            /// Connecting or sending failed for another reason.
            case unreachable
            /// Connected, but no (complete) answer came back.
            case noAnswer
        }

        public var kind: Kind
        /// One sentence for a person, naming the socket and what to do.
        public var message: String

        public init(_ kind: Kind, _ message: String) {
            self.kind = kind
            self.message = message
        }

        public var description: String { message }
    }

    /// Sends `request` (encoded with ``LocalAPI/encoder()``, one line) to the agent at `path` and returns its answer.
    ///
    /// Blocks the calling thread for up to `timeoutSeconds` each for sending and for the answer.
    public static func exchange(
        _ request: some Encodable, path: String, timeoutSeconds: Int = 30, maximumAnswerBytes: Int = 1 << 30
    ) throws(Failure) -> Exchange {
        var line: [UInt8]
        do {
            line = Array(try LocalAPI.encoder().encode(request))
        } catch {
            throw Failure(.unreachable, "cannot encode the request: \(error)")
        }
        line.append(0x0a)
        return try exchange(line: line, path: path, timeoutSeconds: timeoutSeconds, maximumAnswerBytes: maximumAnswerBytes)
    }

    /// Sends one request line, already encoded and ending in a newline, and returns the answer.
    public static func exchange(
        line: [UInt8], path: String, timeoutSeconds: Int = 30, maximumAnswerBytes: Int = 1 << 30
    ) throws(Failure) -> Exchange {
        let descriptor: Int32
        do {
            descriptor = try UnixSocket.connect(path)
        } catch {
            throw failure(connecting: path, error)
        }
        defer { close(descriptor) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let agentProcess = try? UnixSocket.peer(of: descriptor).pid
        do {
            try Files.writeAll(descriptor, line, path: path)
        } catch {
            // The agent answers before it reads everything when it refuses a connection (busy): read that answer.
            if error.errno != .brokenPipe && error.errno != .connectionReset {
                throw Failure(.unreachable, "cannot send to the agent: \(error)")
            }
        }
        let answer: [UInt8]
        do {
            answer = try Files.readAll(descriptor, path: path, maximumBytes: maximumAnswerBytes)
        } catch {
            let reason =
                error.errno == .resourceTemporarilyUnavailable ? "no answer within \(timeoutSeconds) seconds" : "\(error)"
            throw Failure(.noAnswer, "the agent did not answer: \(reason)")
        }
        var reply = answer[...]
        if let newline = reply.firstIndex(of: 0x0a) { reply = reply[..<newline] }
        guard !reply.isEmpty else { throw Failure(.noAnswer, "the agent closed the connection without an answer") }
        return Exchange(answer: Array(reply), agentProcess: agentProcess)
    }

    static func failure(connecting path: String, _ error: SystemError) -> Failure {
        switch error.errno {
        case .noSuchFileOrDirectory:
            Failure(.notRunning, "the agent is not running: no socket at \(path) (start it: systemctl start drawbridge)")
        case .connectionRefused:
            Failure(.notRunning, "the agent is not running: nothing answers at \(path) (systemctl status drawbridge)")
        case .permissionDenied, .notPermitted:
            Failure(.permissionDenied, "permission denied on \(path): \(permissionHint(path))")
        case .fileNameTooLong:
            Failure(.pathTooLong, "socket path too long (at most 107 bytes): \(path)")
        default:
            Failure(.unreachable, "cannot reach the agent at \(path): \(error)")
        }
    }

    /// Who may use the socket, from the socket file itself (its group, whatever it is named).
    static func permissionHint(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { return "ask an administrator for access to it" }
        let group = Accounts.groupName(info.st_gid)
        return "members of group \(group) may use it (sudo adduser \(Accounts.currentUser) \(group), then log in again)"
    }
}

/// The name of this machine (`gethostname`), as `drawbridge-etcd sync` and the agent name it in etcd keys when the
/// policy's `etcd.host` is not set.
public func machineHostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
