import CDrawbridgeLinux
import DrawbridgeCore
import Glibc
import SystemPackage

/// Files, as the agent needs them: read once from an open descriptor, written whole or not at all.
public enum Files {
    /// Reads a small text file (a /proc value) and trims it.
    public static func readSmallText(_ path: String) throws(SystemError) -> String {
        let descriptor = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(descriptor) }
        let bytes = try readAll(descriptor, path: path, maximumBytes: 64 * 1024)
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: " \n\t")
    }

    /// Reads a file the usual way (the policy, say): whole, up to `maximumBytes`.
    public static func read(_ path: String, maximumBytes: Int) throws(FileProblem) -> [UInt8] {
        try read(path, maximumBytes: maximumBytes, secret: false)
    }

    /// Reads a file that holds a secret (a password): as ``read(_:maximumBytes:)``, and refused when every user of
    /// the host may read it, as ssh refuses such a key.
    public static func readSecret(_ path: String, maximumBytes: Int) throws(FileProblem) -> [UInt8] {
        try read(path, maximumBytes: maximumBytes, secret: true)
    }

    /// Why a file that holds a secret (a TLS private key) must not be used as it is: it is readable by every user of
    /// the host. Nil when it is not (or cannot be examined: reading it will say why).
    public static func secretProblem(_ path: String) -> FileProblem? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return worldReadableProblem(path, info.st_mode)
    }

    private static func worldReadableProblem(_ path: String, _ mode: mode_t) -> FileProblem? {
        guard mode & 0o004 != 0 else { return nil }
        return FileProblem(
            path: path,
            "it holds a secret but every user of this host can read it (mode \(String(mode & 0o777, radix: 8))); "
                + "allow only its owner and group: chmod o-r \(path)")
    }

    private static func read(_ path: String, maximumBytes: Int, secret: Bool) throws(FileProblem) -> [UInt8] {
        let descriptor: Int32
        do {
            descriptor = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
        } catch {
            throw FileProblem(path: path, "cannot open it: \(error.errno.description)")
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            throw FileProblem(path: path, "cannot examine it: \(SystemError.last("fstat").errno.description)")
        }
        if let kind = FileProblem.kindName(info.st_mode), kind != "a regular file" {
            throw FileProblem(path: path, "it is \(kind), not a regular file")
        }
        if secret, let problem = worldReadableProblem(path, info.st_mode) { throw problem }
        return try readChecked(descriptor, path: path, size: Int(info.st_size), maximumBytes: maximumBytes)
    }

    /// Reads a file whose contents grant access, so that only root (or this process's user) can have written it.
    ///
    /// The checks are made on what is actually read, not on a name that could be swapped in between: every directory
    /// on the way is opened without following symbolic links and must belong to root or to us and be writable by
    /// nobody else (a sticky directory such as /tmp is accepted: others cannot replace our entries there); the file
    /// itself is opened once, without following a symbolic link and without blocking (a FIFO is refused, not waited
    /// on), and must be a regular file owned by root or us and writable by nobody else. It is then read from that
    /// same descriptor.
    public static func readTrusted(_ path: String, maximumBytes: Int) throws(FileProblem) -> [UInt8] {
        guard path.hasPrefix("/") else { throw FileProblem(path: path, "the path is not absolute") }
        let ourUID = geteuid()
        let slash = path.lastIndex(of: "/")!
        let directoryPath = slash == path.startIndex ? "/" : String(path[..<slash])
        let name = String(path[path.index(after: slash)...])
        guard !name.isEmpty, name != ".", name != ".." else { throw FileProblem(path: path, "it names no file") }
        // Symbolic links among the directories are resolved once (Debian's /var/run is one); every directory of the
        // resolved path is then checked as it is opened.
        guard let resolved = realpath(directoryPath, nil) else {
            throw FileProblem(path: path, "its directory cannot be reached: \(SystemError.last("realpath").errno.description)")
        }
        let resolvedDirectory = String(cString: resolved)
        free(resolved)
        var directory = open("/", drawbridge_open_path_flag() | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { throw FileProblem(path: path, "cannot open /") }
        defer { close(directory) }
        var walked = ""
        let components = resolvedDirectory.split(separator: "/").map(String.init)
        for index in 0...components.count {
            var info = stat()
            guard fstat(directory, &info) == 0 else { throw FileProblem(path: path, "cannot examine \(walked)/") }
            let owner = info.st_uid
            let writableByOthers = info.st_mode & 0o022 != 0
            let sticky = info.st_mode & 0o1000 != 0
            guard owner == 0 || owner == ourUID else {
                throw FileProblem(
                    path: path, "the directory \(walked.isEmpty ? "/" : walked) belongs to uid \(owner), not root")
            }
            guard !writableByOthers || (sticky && info.st_mode & 0o002 != 0 && owner == 0) else {
                throw FileProblem(
                    path: path,
                    "the directory \(walked.isEmpty ? "/" : walked) is writable by group or others (mode "
                        + "\(String(info.st_mode & 0o7777, radix: 8))), so its entries could be replaced")
            }
            guard index < components.count else { break }
            let next = openat(directory, components[index], drawbridge_open_path_flag() | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard next >= 0 else {
                throw FileProblem(
                    path: path, "cannot open the directory \(walked)/\(components[index]): "
                        + SystemError.last("openat").errno.description)
            }
            close(directory)
            directory = next
            walked += "/" + components[index]
        }
        let descriptor = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard descriptor >= 0 else {
            let error = SystemError.last("openat")
            if error.errno == .tooManySymbolicLinkLevels {
                throw FileProblem(path: path, "it is a symbolic link; name the file itself")
            }
            throw FileProblem(path: path, "cannot open it: \(error.errno.description)", missing: error.errno == .noSuchFileOrDirectory)
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw FileProblem(path: path, "cannot examine it") }
        if let kind = FileProblem.kindName(info.st_mode), kind != "a regular file" {
            throw FileProblem(path: path, "it is \(kind), not a regular file")
        }
        guard info.st_uid == 0 || info.st_uid == ourUID else {
            throw FileProblem(path: path, "it is owned by uid \(info.st_uid), not root")
        }
        guard info.st_mode & 0o022 == 0 else {
            throw FileProblem(
                path: path, "it is writable by group or others (mode \(String(info.st_mode & 0o777, radix: 8)))")
        }
        return try readChecked(descriptor, path: path, size: Int(info.st_size), maximumBytes: maximumBytes)
    }

    private static func readChecked(
        _ descriptor: Int32, path: String, size: Int, maximumBytes: Int
    ) throws(FileProblem) -> [UInt8] {
        guard size <= maximumBytes else {
            throw FileProblem(path: path, "it is \(size) bytes, more than the \(maximumBytes) read")
        }
        // The file was opened non-blocking (to refuse a FIFO at once); a regular file reads the same either way.
        do {
            return try readAll(descriptor, path: path, maximumBytes: maximumBytes, expected: size)
        } catch {
            throw FileProblem(path: path, "cannot read it: \(error.errno.description)")
        }
    }

    /// Reads from a descriptor to its end, refusing more than `maximumBytes`.
    public static func readAll(
        _ descriptor: Int32, path: String, maximumBytes: Int, expected: Int = 0
    ) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: min(max(expected + 1, 4096), maximumBytes + 1))
        var count = 0
        while true {
            if count == bytes.count {
                guard bytes.count <= maximumBytes else {
                    throw SystemError("read", path, errno: .fileTooLarge)
                }
                bytes.append(contentsOf: repeatElement(0, count: min(bytes.count, maximumBytes + 1 - bytes.count)))
            }
            let read = try systemCall("read", path) {
                bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + count, $0.count - count) }
            }
            if read == 0 { break }
            count += read
        }
        guard count <= maximumBytes else { throw SystemError("read", path, errno: .fileTooLarge) }
        bytes.removeSubrange(count...)
        return bytes
    }

    /// Replaces a file atomically: written to a temporary file beside it, flushed, renamed over it, and the directory
    /// flushed, so a crash or power loss leaves the old contents or the new, never a mix.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o640) throws(SystemError) {
        let temporary = path + ".tmp"
        unlink(temporary)
        let descriptor = try systemCall("open", temporary) {
            open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        }
        do throws(SystemError) {
            try writeAll(descriptor, bytes, path: temporary)
            try systemCall("fsync", temporary) { fsync(descriptor) }
            close(descriptor)
        } catch {
            close(descriptor)
            unlink(temporary)
            throw error
        }
        do throws(SystemError) {
            try systemCall("rename", temporary) { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw error
        }
        syncDirectory(of: path)
    }

    /// Flushes a directory entry change (a rename, a new file) to disk.
    public static func syncDirectory(of path: String) {
        let slash = path.lastIndex(of: "/") ?? path.startIndex
        let directory = slash == path.startIndex ? "/" : String(path[..<slash])
        let descriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        fsync(descriptor)
        close(descriptor)
    }

    /// Writes every byte, or throws (a short write is retried until it fails with a real errno).
    public static func writeAll(_ descriptor: Int32, _ bytes: [UInt8], path: String) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let written = try systemCall("write", path) {
                bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            }
            guard written > 0 else { throw SystemError("write", path, errno: .noSpace) }
            offset += written
        }
    }

    /// Creates a directory (and its parents) if missing, with `mode` for the ones it creates.
    public static func createDirectory(_ path: String, mode: mode_t) throws(SystemError) {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && Glibc.errno != EEXIST {
                throw SystemError.last("mkdir", current)
            }
        }
    }

    /// Whether something exists at `path` (without following a final symbolic link).
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// The names in a directory.
    public static func list(_ path: String) throws(SystemError) -> [String] {
        guard let directory = opendir(path) else { throw SystemError.last("opendir", path) }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// Why a file could not be read, in a sentence that names it.
public struct FileProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String
    /// The file does not exist (as opposed to existing and being unusable).
    public var isMissing: Bool

    public init(path: String, _ message: String, missing: Bool = false) {
        self.path = path
        self.message = message
        isMissing = missing
    }

    public var description: String { "\(TextCheck.escaped(path)): \(message)" }

    static func kindName(_ mode: mode_t) -> String? {
        switch mode & S_IFMT {
        case S_IFREG: return "a regular file"
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFSOCK: return "a socket"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFLNK: return "a symbolic link"
        default: return nil
        }
    }
}

/// A file opened for appending records, each written whole or not at all.
///
/// Space for later appends can be reserved (fallocate with KEEP_SIZE): writes into reserved blocks need no new
/// allocation, so the journal can still record revocations when the file system is full.
public final class AppendFile: @unchecked Sendable {
    public let path: String
    public private(set) var descriptor: Int32
    /// The file's length: where the next append goes.
    public private(set) var size: Int64
    /// Bytes reserved past `size`.
    public private(set) var reserved: Int64 = 0

    public init(path: String, mode: mode_t = 0o640) throws(SystemError) {
        self.path = path
        descriptor = try systemCall("open", path) {
            open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode)
        }
        let end = lseek(descriptor, 0, SEEK_END)
        size = Int64(max(0, end))
    }

    deinit { if descriptor >= 0 { Glibc.close(descriptor) } }

    /// Appends `bytes` whole. On any failure the file is cut back to where it was, so a reader never finds half a
    /// record, and the error says why.
    public func append(_ bytes: [UInt8]) throws(SystemError) {
        do throws(SystemError) {
            try Files.writeAll(descriptor, bytes, path: path)
            size += Int64(bytes.count)
            reserved = max(0, reserved - Int64(bytes.count))
        } catch {
            _ = ftruncate(descriptor, off_t(size))
            throw error
        }
    }

    /// Reserves room so that the next `bytes` of appends cannot fail for lack of space.
    ///
    /// - Returns: false when the file system does not support reserving (the appends then simply may fail later).
    @discardableResult
    public func reserve(_ bytes: Int64) throws(SystemError) -> Bool {
        guard bytes > reserved else { return true }
        if drawbridge_reserve_space(descriptor, off_t(size), off_t(bytes)) != 0 {
            let error = SystemError.last("fallocate", path)
            if error.errno == .notSupported || error.errno == .notSupportedOnSocket || error.errno == .invalidArgument { return false }
            throw error
        }
        reserved = bytes
        return true
    }

    /// Flushes appended data to disk (fdatasync).
    public func sync() throws(SystemError) {
        try systemCall("fdatasync", path) { fdatasync(descriptor) }
    }

    /// Cuts the file back to `length` (a torn last record after a crash).
    public func truncate(to length: Int64) throws(SystemError) {
        try systemCall("ftruncate", path) { ftruncate(descriptor, off_t(length)) }
        size = length
    }

    public func close() {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }
}

/// An exclusive lock on a file (flock), held until released or the process ends.
public final class FileLock: @unchecked Sendable {
    private let descriptor: Int32

    /// Takes the lock without waiting.
    ///
    /// - Returns: nil when another process holds it.
    public init?(path: String) throws(SystemError) {
        let descriptor = try systemCall("open", path) {
            open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        if flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            let error = SystemError.last("flock", path)
            Glibc.close(descriptor)
            if error.errno == .wouldBlock { return nil }
            throw error
        }
        self.descriptor = descriptor
    }

    deinit { Glibc.close(descriptor) }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let characters = Set(set)
        guard let first = firstIndex(where: { !characters.contains($0) }) else { return "" }
        let last = lastIndex(where: { !characters.contains($0) })!
        return String(self[first...last])
    }
}

/// Text for people on standard error.
public enum StandardError {
    public static func write(_ text: String) { writeWhole(2, text) }
}

/// Text to standard output in one go, without `print` (whose generic path a short-lived command pays for on first use).
public enum StandardOutput {
    public static func write(_ text: String) { writeWhole(1, text) }
}

private func writeWhole(_ descriptor: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 && errno == EINTR { continue }
        if written <= 0 { return }
        offset += written
    }
}
