import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter

#if canImport(Glibc)
    import Glibc
#endif

/// Whether kernel tests can run, and whether they must.
///
/// CI sets DRAWBRIDGE_REQUIRE_KERNEL_TESTS=1: the tests then run even where they cannot succeed, so a missing
/// privilege fails CI instead of skipping quietly.
public enum KernelTestGate {
    public static var isPrivileged: Bool { geteuid() == 0 }
    public static var isRequired: Bool { ProcessInfo.processInfo.environment["DRAWBRIDGE_REQUIRE_KERNEL_TESTS"] == "1" }
    public static var enabled: Bool { isPrivileged || isRequired }
    public static let reason =
        "needs root to create network namespaces (set DRAWBRIDGE_REQUIRE_KERNEL_TESTS=1 to fail instead of skip)"
}

/// A command's exit status and output.
public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String
    public var error: String

    public var succeeded: Bool { status == 0 }
}

public struct CommandFailed: Error, CustomStringConvertible {
    public var command: [String]
    public var result: CommandResult
    public init(command: [String], result: CommandResult) {
        self.command = command
        self.result = result
    }
    public var description: String {
        "`\(command.joined(separator: " "))` exited \(result.status): \(result.error)\(result.output)"
    }
}

/// Tests write to pipes and sockets of processes that may have gone (a client the agent refused, a hung-up peer):
/// that must be an error to look at, not SIGPIPE ending the whole test run.
public func ignoreBrokenPipes() {
    signal(SIGPIPE, SIG_IGN)
}

/// Runs a program, optionally inside a network namespace (through `nsenter --net=`), and waits for it.
@discardableResult
public func run(_ arguments: [String], in namespace: NetworkNamespace? = nil, input: String? = nil, check: Bool = true)
    throws -> CommandResult
{
    ignoreBrokenPipes()
    var command = arguments
    if let namespace { command = ["nsenter", "--net=\(namespace.path)"] + command }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = command
    let output = Pipe()
    let error = Pipe()
    let inputPipe = Pipe()
    process.standardOutput = output
    process.standardError = error
    process.standardInput = inputPipe
    try process.run()
    if let input { inputPipe.fileHandleForWriting.write(Data(input.utf8)) }
    try inputPipe.fileHandleForWriting.close()
    // Read both pipes before waiting so a chatty program cannot block on a full pipe.
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = error.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let result = CommandResult(
        status: process.terminationStatus, output: String(decoding: outputData, as: UTF8.self),
        error: String(decoding: errorData, as: UTF8.self))
    if check && !result.succeeded { throw CommandFailed(command: command, result: result) }
    return result
}

/// Two network namespaces joined by a veth pair, each side with documentation addresses:
///
/// | | host (`dbh0`) | client (`dbc0`) |
/// |---|---|---|
/// | IPv4 | 192.0.2.1/24, 198.51.100.1/24 | 192.0.2.2, .3, .20, .21/24; 198.51.100.5, .6, .7, .20/24 |
/// | IPv6 | 2001:db8::1/64, 2001:db8:1::1/64 | 2001:db8::2, ::3/64, 2001:db8:1::5/64, 2001:db8:1:0:8000::5/64 |
///
/// Nothing is created in the machine's own namespace: the veth pair is made inside the host namespace with its peer
/// placed straight into the client namespace. Both namespaces vanish with this object.
public final class TestNetwork: @unchecked Sendable {
    public let host: NetworkNamespace
    public let client: NetworkNamespace

    public static let hostIPv4 = IPAddress("192.0.2.1")!
    public static let clientIPv4 = IPAddress("192.0.2.2")!
    public static let hostIPv6 = IPAddress("2001:db8::1")!
    public static let clientIPv6 = IPAddress("2001:db8::2")!

    public init() throws {
        host = try NetworkNamespace.createAnonymous()
        client = try NetworkNamespace.createAnonymous()
        try run(["ip", "link", "set", "lo", "up"], in: host)
        try run(["ip", "link", "set", "lo", "up"], in: client)
        try run(["ip", "link", "add", "dbh0", "type", "veth", "peer", "name", "dbc0", "netns", client.path], in: host)
        let hostAddresses = ["192.0.2.1/24", "198.51.100.1/24", "2001:db8::1/64", "2001:db8:1::1/64"]
        let clientAddresses = [
            "192.0.2.2/24", "192.0.2.3/24", "192.0.2.20/24", "192.0.2.21/24", "198.51.100.5/24", "198.51.100.6/24",
            "198.51.100.7/24", "198.51.100.20/24", "2001:db8::2/64", "2001:db8::3/64", "2001:db8:1::5/64",
            "2001:db8:1:0:8000::5/64",
        ]
        for address in hostAddresses {
            // nodad: IPv6 addresses are usable at once instead of after duplicate address detection.
            try run(["ip", "addr", "add", address, "dev", "dbh0"] + (address.contains(":") ? ["nodad"] : []), in: host)
        }
        for address in clientAddresses {
            try run(
                ["ip", "addr", "add", address, "dev", "dbc0"] + (address.contains(":") ? ["nodad"] : []), in: client)
        }
        try run(["ip", "link", "set", "dbh0", "up"], in: host)
        try run(["ip", "link", "set", "dbc0", "up"], in: client)
    }
}

/// A TCP listener inside a namespace that accepts and closes every connection.
public final class TCPListener: @unchecked Sendable {
    private let descriptor: Int32
    private let thread: Thread
    public let port: UInt16

    /// Listens on every address of both families (`[::]:port`, dual-stack).
    public init(in namespace: NetworkNamespace, port: UInt16) throws {
        let descriptor = try namespace.perform {
            socket(AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        guard descriptor >= 0 else { throw POSIXError(errno: errno, "socket") }
        var zero: Int32 = 0
        var one: Int32 = 1
        setsockopt(descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
        guard bound == 0, listen(descriptor, 128) == 0 else {
            let error = errno
            close(descriptor)
            throw POSIXError(errno: error, "bind/listen on port \(port)")
        }
        self.descriptor = descriptor
        self.port = port
        thread = Thread {
            while true {
                let connection = accept(descriptor, nil, nil)
                if connection < 0 {
                    if errno == EINTR { continue }
                    return
                }
                close(connection)
            }
        }
        thread.start()
    }

    deinit {
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
    }
}

public struct POSIXError: Error, CustomStringConvertible {
    public var errno: Int32
    public var context: String
    public init(errno: Int32, _ context: String) {
        self.errno = errno
        self.context = context
    }
    public var description: String { "\(context): \(String(cString: strerror(errno)))" }
}

/// Tries a TCP connection from inside `namespace` and reports whether the handshake completed within `timeout`.
/// A dropped SYN shows as a timeout, a refused one (no listener) as an immediate failure.
public func canConnect(
    from namespace: NetworkNamespace, to address: IPAddress, port: UInt16, source: IPAddress? = nil,
    timeout: Duration = .milliseconds(700)
) throws -> Bool {
    let family = address.family == .ipv4 ? AF_INET : AF_INET6
    let descriptor = try namespace.perform {
        socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    guard descriptor >= 0 else { throw POSIXError(errno: errno, "socket") }
    defer { close(descriptor) }
    if let source {
        let bound = InternetSocket.with(source, port: 0) { bind(descriptor, $0, $1) }
        guard bound == 0 else { throw POSIXError(errno: errno, "bind to \(source)") }
    }
    let started = InternetSocket.with(address, port: port) { connect(descriptor, $0, $1) }
    if started == 0 { return true }
    guard errno == EINPROGRESS else { return false }
    var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
    let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
    guard poll(&poller, 1, milliseconds) == 1 else { return false }
    var error: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length)
    return error == 0
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes (stretched by TestTiming, so under emulation the
/// same test waits longer for the same event); returns whether it held.
public func eventually(within timeout: Duration, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + TestTiming.duration(timeout)
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        usleep(20_000)
    }
    return try condition()
}

/// The kernel the tests run on: several behaviours of nf_tables changed between the kernels users run (Debian 12's
/// 6.1, the 6.12 backport, current ones), and a test asserts the behaviour of the kernel it finds.
public enum RunningKernel {
    /// `uname -r`, e.g. `6.1.0-50-amd64`.
    public static let release = SystemClock.kernelRelease()

    /// Major and minor version from the release (`6.1.0-50-amd64` → (6, 1)).
    public static let version: (major: Int, minor: Int) = {
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return parts.count == 2 ? (parts[0], parts[1]) : (0, 0)
    }()

    /// Whether the running kernel is `major.minor` or later.
    public static func atLeast(_ major: Int, _ minor: Int) -> Bool {
        version >= (major, minor)
    }
}

/// How much slower than a native machine this run is: 1 natively; `.ci/test-kernels` sets
/// `DRAWBRIDGE_TEST_TIME_SCALE` inside guests that qemu emulates, where starting ssh or a login's key exchange takes
/// several times longer. Tests that time a sequence of logins around an expiry stretch the time they give processes
/// by it (never the precision they demand of the kernel: an attempt that starts after an expiry must be dropped).
public enum TestTiming {
    public static let scale: Double = {
        guard let text = ProcessInfo.processInfo.environment["DRAWBRIDGE_TEST_TIME_SCALE"], let value = Double(text),
            value >= 1, value <= 100
        else { return 1 }
        return value
    }()

    /// `seconds`, stretched by the scale.
    public static func seconds(_ seconds: Double) -> TimeInterval { seconds * scale }

    /// `duration`, stretched by the scale.
    public static func duration(_ duration: Duration) -> Duration { duration * scale }
}
