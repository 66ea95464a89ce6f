import Glibc
import SystemPackage

/// A failed system call, named: what was called, on what, and the errno in words and by name.
///
/// `write /var/lib/drawbridge/journal-3: No space left on device [ENOSPC]`.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The C function, as a person would search for it: `open`, `fdatasync`, `getsockopt(SO_PEERCRED)`.
    public var call: String
    /// The path, socket or other object the call was about.
    public var subject: String?
    public var errno: Errno

    public init(_ call: String, _ subject: String? = nil, errno: Errno) {
        self.call = call
        self.subject = subject
        self.errno = errno
    }

    /// The error of the last failed call (reads the thread's `errno`).
    public static func last(_ call: String, _ subject: String? = nil) -> SystemError {
        SystemError(call, subject, errno: Errno(rawValue: Glibc.errno))
    }

    public var description: String {
        "\(call)\(subject.map { " \($0)" } ?? ""): \(errno.description) [\(errnoName(errno.rawValue))]"
    }
}

/// Runs a system call until it does not fail with EINTR: the one place that decides what EINTR means (the call was
/// interrupted by a signal before it did anything; run it again).
///
/// - Returns: the call's result when it is not negative.
/// - Throws: ``SystemError`` naming `call` and `subject` for any other failure.
@discardableResult
public func systemCall<Result: BinaryInteger>(
    _ call: String, _ subject: String? = nil, _ body: () -> Result
) throws(SystemError) -> Result {
    while true {
        let result = body()
        if result >= 0 { return result }
        let error = Glibc.errno
        if error == EINTR { continue }
        throw SystemError(call, subject, errno: Errno(rawValue: error))
    }
}

/// The symbolic name of an errno, as a person searching the web would type it.
public func errnoName(_ value: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
        EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EBUSY: "EBUSY", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR",
        EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE", EMFILE: "EMFILE", EFBIG: "EFBIG", ENOSPC: "ENOSPC",
        EROFS: "EROFS", EPIPE: "EPIPE", ERANGE: "ERANGE", ENAMETOOLONG: "ENAMETOOLONG", ELOOP: "ELOOP",
        EDQUOT: "EDQUOT", EMSGSIZE: "EMSGSIZE", ENOBUFS: "ENOBUFS", EOPNOTSUPP: "EOPNOTSUPP",
        EADDRINUSE: "EADDRINUSE", ECONNREFUSED: "ECONNREFUSED", ECONNRESET: "ECONNRESET", ETIMEDOUT: "ETIMEDOUT",
        ECANCELED: "ECANCELED", ENXIO: "ENXIO", ENOTSOCK: "ENOTSOCK", EPROTONOSUPPORT: "EPROTONOSUPPORT",
        ERESTART: "ERESTART", ENOTEMPTY: "ENOTEMPTY", EAFNOSUPPORT: "EAFNOSUPPORT", EOVERFLOW: "EOVERFLOW",
    ]
    return names[value] ?? "errno \(value)"
}
