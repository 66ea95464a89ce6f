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

/// Processes that hold connections to a socket open as some user, saying nothing (or a byte now and then).
public final class SocketHolders: @unchecked Sendable {
    private var processes: [Process] = []
    private var inputs: [Pipe] = []

    /// Starts `count` `nc -U` clients as `user`; each keeps its connection until this object goes or `release`.
    public init(socket: String, user: String, count: Int) throws {
        ignoreBrokenPipes()
        for _ in 0..<count {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = [
                "--reuid=\(user)", "--regid=\(user)", "--init-groups", "nc", "-U", socket,
            ]
            let input = Pipe()
            process.standardInput = input
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            processes.append(process)
            inputs.append(input)
        }
    }

    /// Sends one byte on every connection (a client trickling its request).
    public func trickle() {
        for input in inputs { try? input.fileHandleForWriting.write(contentsOf: Data("{".utf8)) }
    }

    /// How many of the clients are still connected.
    public var running: Int { processes.filter(\.isRunning).count }

    public func release() {
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        processes = []
        inputs = []
    }

    deinit { release() }
}
