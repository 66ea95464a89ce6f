#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A failure talking to nf_tables, named by what went wrong, what was being done and to which object — never a bare
/// errno number.
///
/// ```
/// NetfilterError(.setFull, operation: "add elements", table: "drawbridge", set: "grants4")
/// ```
public struct NetfilterError: Error, Equatable, Sendable {
    /// The kind of failure, for code that needs to react to it.
    public enum Code: Equatable, Sendable {
        /// The process lacks CAP_NET_ADMIN in the network namespace (EPERM).
        case permissionDenied
        /// The set holds as many elements as its size allows (the kernel says ENFILE).
        case setFull
        /// The table does not exist.
        case tableMissing
        /// The table exists but the set (or chain) does not.
        case objectMissing
        /// An element to delete is not in the set (it may just have expired).
        case elementAbsent
        /// An object or element exists already, or a new one overlaps an existing interval.
        case alreadyExists
        /// The transaction is larger than the socket can carry, even after raising its buffer.
        case messageTooLarge
        /// Another writer changed the ruleset since the state this transaction was built from was read (ERESTART).
        case generationChanged
        /// The kernel's replies overflowed the receive buffer (ENOBUFS): the transaction may or may not have been
        /// committed, so the caller must read the state again before deciding anything.
        case outcomeUnknown
        /// The object is in use (EBUSY), for example a set that a rule still refers to.
        case busy
        /// The kernel rejected an attribute (EINVAL, ERANGE, EOPNOTSUPP); a bug or an unsupported kernel feature.
        case invalidRequest
        /// The kernel did not answer as the protocol says it must.
        case protocolViolation
        /// Any other errno.
        case other
    }

    public var code: Code
    /// What was being done, in words: "add elements", "create set", "dump elements".
    public var operation: String
    public var table: String?
    /// The set or chain the operation was about.
    public var object: String?
    /// The errno behind the failure, when there was one.
    public var errno: Int32?
    /// Extra detail: the kernel's extended-ACK message, or how many elements the failing message held.
    public var detail: String?

    public init(
        _ code: Code,
        operation: String,
        table: String? = nil,
        set object: String? = nil,
        errno: Int32? = nil,
        detail: String? = nil
    ) {
        self.code = code
        self.operation = operation
        self.table = table
        self.object = object
        self.errno = errno
        self.detail = detail
    }

    /// Builds the error for an errno returned by the kernel or a socket call.
    init(errno: Int32, operation: String, table: String? = nil, object: String? = nil, detail: String? = nil) {
        let code: Code
        switch errno {
        case EPERM, EACCES: code = .permissionDenied
        case ENFILE: code = .setFull
        case ENOENT: code = .objectMissing
        case EEXIST, ENOTEMPTY: code = .alreadyExists
        case EMSGSIZE: code = .messageTooLarge
        case ERESTART: code = .generationChanged
        case ENOBUFS: code = .outcomeUnknown
        case EBUSY: code = .busy
        case EINVAL, ERANGE, EOPNOTSUPP, EAFNOSUPPORT, EOVERFLOW: code = .invalidRequest
        default: code = .other
        }
        self.init(code, operation: operation, table: table, set: object, errno: errno, detail: detail)
    }
}

extension NetfilterError: CustomStringConvertible {
    public var description: String {
        var subject = operation
        if let table {
            subject += " in table inet \(table)"
            if let object { subject += ", \(object)" }
        } else if let object {
            subject += " \(object)"
        }
        var text = "\(subject): \(explanation)"
        if let errno { text += " [\(errnoName(errno))]" }
        if let detail, !detail.isEmpty { text += " (\(detail))" }
        return text
    }

    private var explanation: String {
        switch code {
        case .permissionDenied:
            return "permission denied; programming nftables needs CAP_NET_ADMIN (run as root, or grant the capability "
                + "as the drawbridge systemd unit does)"
        case .setFull:
            return "the set is full; revoke grants or raise the set's size"
        case .tableMissing:
            return "the table does not exist; start drawbridged (or run its install step) to create it"
        case .objectMissing:
            return "it does not exist in the kernel; the table may have been flushed by another tool — drawbridged "
                + "repairs this on its next reconcile"
        case .elementAbsent:
            return "the element is not in the set (it may have expired a moment ago)"
        case .alreadyExists:
            return "it exists already, or overlaps an existing element or a different definition of the same object"
        case .messageTooLarge:
            return "the transaction is too large for one netlink message; split the change"
        case .generationChanged:
            return "another program changed the ruleset while this change was prepared; read the state again and retry"
        case .outcomeUnknown:
            return "the kernel's replies overflowed the socket, so whether the change was applied is unknown; read "
                + "the state again before retrying"
        case .busy:
            return "the object is in use by a rule"
        case .invalidRequest:
            return "the kernel rejected the request as invalid; this kernel may lack a feature drawbridge needs"
        case .protocolViolation:
            return "the kernel's reply did not follow the netlink protocol"
        case .other:
            return errno.map { String(cString: strerror($0)) } ?? "failed"
        }
    }
}

/// The symbolic name of an errno, as a person searching the web would type it.
func errnoName(_ value: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", ENOMEM: "ENOMEM", EACCES: "EACCES",
        EBUSY: "EBUSY", EEXIST: "EEXIST", EINVAL: "EINVAL", ENFILE: "ENFILE", ENOSPC: "ENOSPC", ERANGE: "ERANGE",
        EAGAIN: "EAGAIN", EMSGSIZE: "EMSGSIZE", ENOBUFS: "ENOBUFS", EOPNOTSUPP: "EOPNOTSUPP", ERESTART: "ERESTART",
        ENOTEMPTY: "ENOTEMPTY", EAFNOSUPPORT: "EAFNOSUPPORT", EOVERFLOW: "EOVERFLOW",
        EPROTONOSUPPORT: "EPROTONOSUPPORT",
        ETIMEDOUT: "ETIMEDOUT",
    ]
    return names[value] ?? "errno \(value)"
}
