import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What one child process did: its exit status, wall clock from spawn to reaped exit, and the CPU time and peak
/// memory the kernel accounted to it (`wait4`).
struct ProcessOutcome {
    var exitStatus: Int32
    var wall: Duration
    var userSeconds: Double
    var systemSeconds: Double
    /// Peak resident set size in KiB (`ru_maxrss`).
    var maxResidentKiB: Int
    var standardOutput: String
    var standardError: String

    var succeeded: Bool { exitStatus == 0 }
}

struct SpawnError: Error, CustomStringConvertible {
    var description: String
}

/// Starts programs with `posix_spawn` and reaps them with `wait4`, so the time measured is the child's life and
/// nothing else (no Foundation `Process` bookkeeping, no shell).
struct Spawner {
    /// Where the children's stdout and stderr go (files, read after exit, so a pipe can never stall a child).
    let scratch: URL

    /// Runs `arguments` (the first is an absolute path) and waits for it.
    func run(_ arguments: [String]) throws -> ProcessOutcome {
        precondition(arguments.first?.hasPrefix("/") == true, "spawn an absolute path")
        let outputPath = scratch.appendingPathComponent("child.stdout").path
        let errorPath = scratch.appendingPathComponent("child.stderr").path

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)

        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }

        var pid: pid_t = 0
        var status: Int32 = 0
        var usage = rusage()
        let clock = ContinuousClock()
        let started = clock.now
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard spawned == 0 else {
            throw SpawnError(description: "could not start \(arguments[0]): \(String(cString: strerror(spawned)))")
        }
        var reaped: pid_t
        repeat { reaped = wait4(pid, &status, 0, &usage) } while reaped < 0 && errno == EINTR
        let wall = clock.now - started
        guard reaped == pid else {
            throw SpawnError(description: "waiting for \(arguments[0]) failed: \(String(cString: strerror(errno)))")
        }

        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift does not import.
        let exitStatus: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return ProcessOutcome(
            exitStatus: exitStatus, wall: wall,
            userSeconds: usage.ru_utime.seconds, systemSeconds: usage.ru_stime.seconds,
            maxResidentKiB: usage.ru_maxrss,
            standardOutput: (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "",
            standardError: (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "")
    }

    /// Starts a long-running program (stdout and stderr to `log`) and returns its pid; the caller ends and reaps it.
    func start(_ arguments: [String], log: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard spawned == 0 else {
            throw SpawnError(description: "could not start \(arguments[0]): \(String(cString: strerror(spawned)))")
        }
        return pid
    }

    /// Runs a program and fails, quoting its stderr, unless it exits 0.
    @discardableResult
    func check(_ arguments: [String], what: String) throws -> ProcessOutcome {
        let outcome = try run(arguments)
        guard outcome.succeeded else {
            let message = (outcome.standardError + outcome.standardOutput)
                .split(separator: "\n").prefix(8).joined(separator: "\n    ")
            throw SpawnError(
                description:
                    "\(what) failed (exit \(outcome.exitStatus)): \(arguments.joined(separator: " ").prefix(300))\n    \(message)"
            )
        }
        return outcome
    }
}

/// Finds a program in PATH (and the sbin directories, which a root shell may lack) before anything is timed.
func locate(_ program: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    let directories = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    for directory in directories where !directory.isEmpty {
        let candidate = directory + "/" + program
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// CPU time of the calling thread: user and system seconds.
func threadCPUTime() -> (user: Double, system: Double) {
    var usage = rusage()
    // RUSAGE_THREAD (1) is declared only under _GNU_SOURCE.
    getrusage(__rusage_who_t(1), &usage)
    return (usage.ru_utime.seconds, usage.ru_stime.seconds)
}

extension timeval {
    var seconds: Double { Double(tv_sec) + Double(tv_usec) / 1_000_000 }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
