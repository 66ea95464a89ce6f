import CDrawbridgeLinux
import Glibc
import Synchronization
import SystemPackage

/// Waits for the agent's kernel event sources — nf_tables notifications, inotify, clock steps — on one thread that
/// sleeps in `epoll_wait` until one of them has something: no polling, no timeouts, no wake-ups when idle.
///
/// Each source registers a handler that runs on that thread when its descriptor is readable; handlers read what is
/// there without blocking and pass it on (usually into an `AsyncStream`), so the rest of the agent sees async
/// sequences.
public final class EventWatch: @unchecked Sendable {
    private let epoll: Int32
    private let wake: Int32
    private let handlers = Mutex<[Int32: @Sendable (Int32) -> Void]>([:])
    private var thread: pthread_t?
    private let stopped = Atomic<Bool>(false)

    public init() throws(SystemError) {
        epoll = try systemCall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        wake = try systemCall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK)) }
        try add(wake)
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        let started = pthread_create(
            &handle, nil,
            { raw in
                let watch = Unmanaged<EventWatch>.fromOpaque(raw!).takeRetainedValue()
                watch.loop()
                return nil
            }, box.toOpaque())
        guard started == 0 else {
            box.release()
            throw SystemError("pthread_create", errno: .init(rawValue: started))
        }
        thread = handle
    }

    deinit {
        close(epoll)
        close(wake)
    }

    private func add(_ descriptor: Int32) throws(SystemError) {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = descriptor
        try systemCall("epoll_ctl(ADD)") { epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) }
    }

    /// Calls `handler` (on the watch thread) whenever `descriptor` is readable. The descriptor should be
    /// non-blocking; the handler must read until it would block, or it is called again at once.
    public func watch(_ descriptor: Int32, _ handler: @escaping @Sendable (Int32) -> Void) throws(SystemError) {
        handlers.withLock { $0[descriptor] = handler }
        do {
            try add(descriptor)
        } catch {
            handlers.withLock { _ = $0.removeValue(forKey: descriptor) }
            throw error
        }
    }

    /// Stops calling the handler of `descriptor` (before the descriptor is closed).
    public func unwatch(_ descriptor: Int32) {
        epoll_ctl(epoll, EPOLL_CTL_DEL, descriptor, nil)
        handlers.withLock { _ = $0.removeValue(forKey: descriptor) }
    }

    /// Ends the thread and waits for it.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        if let thread { pthread_join(thread, nil) }
    }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 16)
        while !stopped.load(ordering: .acquiring) {
            let count = events.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, 16, -1) }
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            for index in 0..<Int(count) {
                let descriptor = events[index].data.fd
                if descriptor == wake { return }
                let handler = handlers.withLock { $0[descriptor] }
                handler?(descriptor)
            }
        }
    }
}

/// Changes in watched directories (inotify), as an async sequence of "something changed" signals.
///
/// Directories are watched rather than files: editors and configuration management replace a file by renaming a
/// new one over it, which a watch on the old file would never report.
public final class DirectoryWatch: @unchecked Sendable {
    public let changes: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let descriptor: Int32
    private let watch: EventWatch
    private let watched = Mutex<[String: Int32]>([:])

    public init(on watch: EventWatch) throws(SystemError) {
        self.watch = watch
        descriptor = try systemCall("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC) | Int32(IN_NONBLOCK)) }
        (changes, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let descriptor = self.descriptor
        let continuation = self.continuation
        do {
            try watch.watch(descriptor) { fd in
                var buffer = [UInt8](repeating: 0, count: 8192)
                var any = false
                while read(fd, &buffer, buffer.count) > 0 { any = true }
                if any { continuation.yield() }
            }
        } catch {
            close(descriptor)
            throw error
        }
    }

    deinit {
        watch.unwatch(descriptor)
        close(descriptor)
        continuation.finish()
    }

    /// Watches exactly these directories from now on.
    ///
    /// - Returns: the directories that could not be watched, with why.
    @discardableResult
    public func set(_ directories: Set<String>) -> [String: SystemError] {
        var failures: [String: SystemError] = [:]
        watched.withLock { watched in
            for (directory, handle) in watched where !directories.contains(directory) {
                inotify_rm_watch(descriptor, handle)
                watched[directory] = nil
            }
            for directory in directories where watched[directory] == nil {
                let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB)
                let handle = inotify_add_watch(descriptor, directory, mask)
                if handle >= 0 {
                    watched[directory] = handle
                } else {
                    failures[directory] = SystemError.last("inotify_add_watch", directory)
                }
            }
        }
        return failures
    }
}

/// Steps of the wall clock (`date -s`, an NTP step, a VM resumed), as an async sequence, from a timerfd armed with
/// TFD_TIMER_CANCEL_ON_SET: the kernel cancels it whenever the realtime clock is set, and that is the signal.
public final class ClockStepWatch: @unchecked Sendable {
    public let steps: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let descriptor: Int32
    private let watch: EventWatch

    public init(on watch: EventWatch) throws(SystemError) {
        self.watch = watch
        descriptor = try systemCall("timerfd_create") {
            timerfd_create(CLOCK_REALTIME, Int32(TFD_CLOEXEC) | Int32(TFD_NONBLOCK))
        }
        (steps, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        do throws(SystemError) {
            try systemCall("timerfd_settime") { drawbridge_arm_clock_step_timer(descriptor) }
            let continuation = self.continuation
            try watch.watch(descriptor) { fd in
                var expirations: UInt64 = 0
                if read(fd, &expirations, 8) < 0, errno == ECANCELED {
                    continuation.yield()
                }
                drawbridge_arm_clock_step_timer(fd)
            }
        } catch {
            close(descriptor)
            throw error
        }
    }

    deinit {
        watch.unwatch(descriptor)
        close(descriptor)
        continuation.finish()
    }
}
