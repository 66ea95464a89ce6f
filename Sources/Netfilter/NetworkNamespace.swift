import CDrawbridgeLinux

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A network namespace held open by a file descriptor.
///
/// Tests, benchmarks and demos program nftables only inside namespaces like this one, never in the machine's own.
/// A namespace made by `createAnonymous()` has no name in /run/netns: it disappears when the descriptor is closed and
/// no process lives in it, so even a crashed test leaves nothing behind.
public final class NetworkNamespace: @unchecked Sendable {
    /// The open descriptor of the namespace (`/proc/thread-self/ns/net` at creation).
    public let descriptor: Int32

    private init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    deinit {
        close(descriptor)
    }

    /// A path other programs can open to enter this namespace, valid while this object lives:
    /// `nsenter --net=PATH command` or `ip link set dev X netns PATH`.
    public var path: String { "/proc/\(getpid())/fd/\(descriptor)" }

    /// Creates a new, empty network namespace (only `lo`, down) without entering it.
    ///
    /// The unshare happens on a short-lived thread of its own, so no thread of this process ever changes namespace
    /// permanently. Needs CAP_SYS_ADMIN.
    public static func createAnonymous() throws(NetfilterError) -> NetworkNamespace {
        final class Outcome: @unchecked Sendable {
            var descriptor: Int32 = -1
            var errno: Int32 = 0
        }
        let outcome = Outcome()
        var thread = pthread_t()
        let context = Unmanaged.passRetained(outcome).toOpaque()
        let started = pthread_create(
            &thread, nil,
            { raw in
                let outcome = Unmanaged<Outcome>.fromOpaque(raw!).takeRetainedValue()
                // This thread ends right after, so it never has to switch back.
                if drawbridge_unshare_net() != 0 {
                    outcome.errno = Glibc.errno
                    return nil
                }
                outcome.descriptor = Glibc.open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
                if outcome.descriptor < 0 { outcome.errno = Glibc.errno }
                return nil
            }, context)
        guard started == 0 else {
            Unmanaged<Outcome>.fromOpaque(context).release()
            throw NetfilterError(errno: started, operation: "create a thread for a new network namespace")
        }
        pthread_join(thread, nil)
        guard outcome.descriptor >= 0 else {
            throw NetfilterError(errno: outcome.errno, operation: "create a network namespace (unshare CLONE_NEWNET)")
        }
        return NetworkNamespace(descriptor: outcome.descriptor)
    }

    /// Opens a named namespace (`/run/netns/NAME`, as made by `ip netns add NAME`) or any namespace file path.
    public static func open(_ nameOrPath: String) throws(NetfilterError) -> NetworkNamespace {
        let path = nameOrPath.contains("/") ? nameOrPath : "/run/netns/\(nameOrPath)"
        let descriptor = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw NetfilterError(errno: Glibc.errno, operation: "open network namespace", detail: path)
        }
        return NetworkNamespace(descriptor: descriptor)
    }

    /// Runs `body` on the current thread while it is inside this namespace, then switches back.
    ///
    /// Sockets created in `body` stay in this namespace for their whole life. `body` must be synchronous: an `await`
    /// inside could resume on another thread and leave this one in the wrong namespace.
    public func perform<Result>(_ body: () throws -> Result) throws -> Result {
        let original = Glibc.open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else {
            throw NetfilterError(errno: Glibc.errno, operation: "open this thread's network namespace")
        }
        defer { close(original) }
        guard drawbridge_setns_net(descriptor) == 0 else {
            throw NetfilterError(errno: Glibc.errno, operation: "enter network namespace (setns)")
        }
        defer {
            // A thread left in a test namespace would make later work land in the wrong place; never continue.
            if drawbridge_setns_net(original) != 0 {
                fatalError("could not return to the original network namespace: errno \(Glibc.errno)")
            }
        }
        return try body()
    }
}
