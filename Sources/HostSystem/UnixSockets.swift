import CDrawbridgeLinux
import DrawbridgeCore
import Glibc
import SystemPackage

/// Unix-domain sockets: the one place that fills socket addresses and reads peer credentials.
public enum UnixSocket {
    /// Fills a socket address for a path (or an abstract name written `@name`) and calls `body` with it.
    public static func withAddress<Result>(
        _ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> Result
    ) throws(SystemError) -> Result {
        var address = sockaddr_un()
        var length: socklen_t = 0
        guard drawbridge_unix_address(path, &address, &length) == 0 else {
            throw SystemError("socket address", path, errno: .fileNameTooLong)
        }
        let pointer = withUnsafePointer(to: &address) { UnsafeRawPointer($0).assumingMemoryBound(to: sockaddr.self) }
        return try withExtendedLifetime(address) { () throws(SystemError) -> Result in try body(pointer, length) }
    }

    /// A new stream socket, close-on-exec.
    public static func stream() throws(SystemError) -> Int32 {
        try systemCall("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
    }

    /// Connects to a socket path; returns the connected descriptor.
    public static func connect(_ path: String) throws(SystemError) -> Int32 {
        let descriptor = try stream()
        do throws(SystemError) {
            _ = try withAddress(path) { (address, length) throws(SystemError) in
                try systemCall("connect", path) { Glibc.connect(descriptor, address, length) }
            }
        } catch {
            close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Creates, binds and listens on a socket file that members of `group` may use (mode 0660; 0600 without a
    /// group).
    ///
    /// The socket is created with mode 0600 (umask) and only opened to the group once its group is set, so it is
    /// never reachable by others; ownership and mode are changed through a descriptor of the socket file itself
    /// (O_PATH, no symbolic link followed), so nothing another user placed in the directory can be changed instead.
    /// The directory must belong to root or to us and be writable by nobody else: then nobody else can swap the
    /// entry between the calls either.
    public static func listen(path: String, group: gid_t?, backlog: Int32 = 256) throws(SystemError) -> Int32 {
        guard path.hasPrefix("/") else {
            throw SystemError("bind", path, errno: .invalidArgument)
        }
        let slash = path.lastIndex(of: "/")!
        let directory = slash == path.startIndex ? "/" : String(path[..<slash])
        var info = stat()
        guard stat(directory, &info) == 0 else { throw SystemError.last("stat", directory) }
        guard info.st_uid == 0 || info.st_uid == geteuid(), info.st_mode & 0o022 == 0 else {
            // Anyone else who can write the directory could swap the socket file between bind and chmod.
            throw SystemError("socket directory", directory + " (must belong to root and be writable by no one else)", errno: .permissionDenied)
        }
        let descriptor = try stream()
        do throws(SystemError) {
            let previous = umask(0o177)
            defer { umask(previous) }
            _ = try withAddress(path) { (address, length) throws(SystemError) in
                try systemCall("bind", path) { bind(descriptor, address, length) }
            }
            let file = try systemCall("open(O_PATH)", path) { open(path, drawbridge_open_path_flag() | O_NOFOLLOW | O_CLOEXEC) }
            defer { close(file) }
            let procPath = "/proc/self/fd/\(file)"
            if let group {
                var info = stat()
                // chown through /proc/self/fd follows the magic link to exactly the inode we opened. An agent that
                // runs as a member of the group (the packaged unit, whose system-call filter refuses chown) finds
                // the socket in its own group already.
                if fstat(file, &info) == 0, info.st_gid != group {
                    try systemCall("chown", path) { chown(procPath, geteuid(), group) }
                }
                try systemCall("chmod", path) { chmod(procPath, 0o660) }
            }
            try systemCall("listen", path) { Glibc.listen(descriptor, backlog) }
        } catch {
            close(descriptor)
            throw error
        }
        return descriptor
    }

    /// The process on the other end of a connected socket, as the kernel knows it.
    ///
    /// Fails closed: when the supplementary groups cannot be read completely, the error is thrown; a caller never
    /// gains a group from an error or a short read.
    public static func peer(of descriptor: Int32) throws(SystemError) -> PeerCredentials {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        guard drawbridge_peer_credentials(descriptor, &pid, &uid, &gid) == 0 else {
            throw SystemError.last("getsockopt(SO_PEERCRED)")
        }
        var groups = [gid_t](repeating: 0, count: 64)
        var count = groups.count
        for _ in 0..<3 {
            count = groups.count
            if drawbridge_peer_groups(descriptor, &groups, &count) == 0 {
                return PeerCredentials(pid: pid, uid: uid, gid: gid, groups: Array(groups.prefix(count)))
            }
            let error = SystemError.last("getsockopt(SO_PEERGROUPS)")
            guard error.errno == .outOfRange, count > groups.count, count <= 65_536 else { throw error }
            groups = [gid_t](repeating: 0, count: count)
        }
        throw SystemError("getsockopt(SO_PEERGROUPS)", errno: .outOfRange)
    }
}

/// Who is on the other end of a Unix socket.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t
    /// Supplementary groups at connect time.
    public var groups: [gid_t]
}

/// A lock that only one process per network namespace can hold: a bound abstract Unix socket, which lives in the
/// namespace and is released by the kernel when the process ends however it ends.
///
/// Two agents in one namespace would fight over the same table; the second must stop before it touches the kernel.
public final class NamespaceLock: @unchecked Sendable {
    private let descriptor: Int32

    /// - Returns: nil when another process in this network namespace holds the lock.
    public init?(name: String) throws(SystemError) {
        let descriptor = try UnixSocket.stream()
        do throws(SystemError) {
            _ = try UnixSocket.withAddress("@" + name) { (address, length) throws(SystemError) in
                try systemCall("bind", "@" + name) { bind(descriptor, address, length) }
            }
        } catch {
            close(descriptor)
            if error.errno == .addressInUse { return nil }
            throw error
        }
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }
}

/// Names of users and groups, from the system's databases.
public enum Accounts {
    /// The name of a user, or `uid N` when it has none.
    public static func userName(_ uid: uid_t) -> String {
        lookup { buffer, size in
            var entry = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let status = getpwuid_r(uid, &entry, buffer, size, &result)
            return (status, result != nil ? entry.pw_name.map { String(cString: $0) } : nil)
        } ?? "uid \(uid)"
    }

    /// The name of a group, or `gid N` when it has none.
    public static func groupName(_ gid: gid_t) -> String {
        lookup { buffer, size in
            var entry = group()
            var result: UnsafeMutablePointer<group>?
            let status = getgrgid_r(gid, &entry, buffer, size, &result)
            return (status, result != nil ? entry.gr_name.map { String(cString: $0) } : nil)
        } ?? "gid \(gid)"
    }

    /// The id of a group by name, or nil when there is none.
    public static func groupID(named name: String) -> gid_t? {
        lookup { buffer, size in
            var entry = group()
            var result: UnsafeMutablePointer<group>?
            let status = getgrnam_r(name, &entry, buffer, size, &result)
            return (status, result != nil ? entry.gr_gid : nil)
        }
    }

    /// The id of a user by name, or nil when there is none.
    public static func userID(named name: String) -> uid_t? {
        lookup { buffer, size in
            var entry = passwd()
            var result: UnsafeMutablePointer<passwd>?
            let status = getpwnam_r(name, &entry, buffer, size, &result)
            return (status, result != nil ? entry.pw_uid : nil)
        }
    }

    /// The name of this process's user.
    public static var currentUser: String { userName(geteuid()) }

    /// Runs a reentrant lookup with a buffer that grows while the lookup says ERANGE (a group with many members
    /// needs more than the usual 4 KiB), instead of reading a large group as unknown.
    private static func lookup<Value>(
        _ body: (UnsafeMutablePointer<CChar>, Int) -> (Int32, Value?)
    ) -> Value? {
        var size = 4096
        while size <= 1 << 24 {
            var buffer = [CChar](repeating: 0, count: size)
            let (status, value) = buffer.withUnsafeMutableBufferPointer { body($0.baseAddress!, size) }
            if status == ERANGE {
                size *= 4
                continue
            }
            return value
        }
        return nil
    }
}
