import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A private mount namespace held open by a sleeping process, for small file systems the tests can fill: mounts
/// made in it are seen only by processes started in it, and vanish with it. The holder is ended by its pid.
public final class MountHolder: @unchecked Sendable {
    private let process: Process

    public init() throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        process.arguments = ["--mount", "--propagation", "private", "sleep", "900"]
        try process.run()
        // Wait until the process is inside its own namespace (its mount namespace differs from ours).
        let own = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")
        for _ in 0..<200 {
            if let theirs = try? FileManager.default.destinationOfSymbolicLink(atPath: namespace), theirs != own,
                (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/comm", encoding: .utf8))?
                    .hasPrefix("sleep") == true
            {
                return
            }
            usleep(10_000)
        }
        throw POSIXError(errno: ETIMEDOUT, "unshare --mount did not start")
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// `/proc/PID/ns/mnt` of the holder.
    public var namespace: String { "/proc/\(process.processIdentifier)/ns/mnt" }

    /// Mounts a tmpfs of `size` (like `4m`) at `directory` inside the namespace.
    public func mountTmpfs(_ directory: String, size: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try TestSupport.run(["nsenter", "--mount=\(namespace)", "mount", "-t", "tmpfs", "-o", "size=\(size),mode=0750", "tmpfs", directory])
    }

    /// Fills the file system holding `directory` until it is full.
    public func fill(_ directory: String) throws {
        _ = try TestSupport.run(
            ["nsenter", "--mount=\(namespace)", "dd", "if=/dev/zero", "of=\(directory)/filler", "bs=4096"], check: false)
    }

    /// Frees the space `fill` took.
    public func unfill(_ directory: String) throws {
        try TestSupport.run(["nsenter", "--mount=\(namespace)", "rm", "-f", "\(directory)/filler"])
    }

    /// Runs a command inside the namespace.
    @discardableResult
    public func run(inside arguments: [String]) throws -> CommandResult {
        try TestSupport.run(["nsenter", "--mount=\(namespace)"] + arguments)
    }
}

/// Connections to a socket held open as some user, saying nothing (or a byte now and then).
///
/// One process (perl, which every Debian system has) opens them all at once and reports when they are connected:
/// a process per connection took longer to start under emulation than the agent lets a request take, so the first
/// were cut off before the last were open. It is ended by its pid.
public final class SocketHolders: @unchecked Sendable {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let errors = Pipe()

    static let script = #"""
        use Socket;
        my ($path, $count) = @ARGV;
        $SIG{PIPE} = 'IGNORE';
        $| = 1;
        my @held;
        for (1 .. $count) {
            socket(my $socket, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
            connect($socket, pack_sockaddr_un($path)) or die "connect $path: $!";
            push @held, $socket;
        }
        print "ready\n";
        while (<STDIN>) {
            syswrite($_, "{") for @held;
            print "sent\n";
        }
        """#

    /// Connects `count` times to `socket` as `user` (with the user's groups); returns when all are connected.
    public init(socket: String, user: String, count: Int) throws {
        ignoreBrokenPipes()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = [
            "--reuid=\(user)", "--regid=\(user)", "--init-groups", "perl", "-e", Self.script, socket, String(count),
        ]
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        try expect("ready")
    }

    /// Sends one byte on every connection still open (a client trickling its request); returns once it is sent.
    public func trickle() {
        try? input.fileHandleForWriting.write(contentsOf: Data("\n".utf8))
        try? expect("sent")
    }

    /// Reads the holder's next line and fails unless it is `word` (the holder died or could not connect).
    private func expect(_ word: String) throws {
        var line = Data()
        while line.last != 0x0a {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty {
                // Its output ended: it exited, so its error output is complete.
                let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                throw POSIXError(errno: EPIPE, "the connection holder ended before \"\(word)\": \(said)")
            }
            line.append(chunk)
        }
        guard String(decoding: line, as: UTF8.self) == word + "\n" else {
            throw POSIXError(errno: EPROTO, "the connection holder said \(String(decoding: line, as: UTF8.self))")
        }
    }

    public func release() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { release() }
}
