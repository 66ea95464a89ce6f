import CDrawbridgeLinux
import DrawbridgeCore
import FoundationEssentials
import Glibc

/// Memory the process no longer uses, returned to the system after a large load (a restart with many grants, a
/// big grants file), so the agent's resident size reflects what it holds rather than what it once parsed.
public func releaseFreeMemory() {
    drawbridge_release_free_memory()
}

/// Keeps large blocks (128 KiB and up: the grant book's arrays and tables, netlink batches, a grants file's text)
/// out of malloc's heaps, so that freeing one gives its memory back to the system.
///
/// glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), after which the next large
/// blocks come from the heap and stay resident once freed: measured with 100,000 stored grants, the agent held
/// 78 MB of anonymous memory of which 39 MB was in use; with the threshold fixed, 39 MB. Call once, at start.
public func mapLargeBlocks() {
    drawbridge_map_large_blocks()
}

/// Heap bytes in use (allocated and not freed), for `drawbridge status` and the benchmarks.
public func heapInUse() -> Int {
    Int(drawbridge_heap_in_use())
}

/// The machine's clocks.
public enum SystemClock {
    /// The monotonic clock (`CLOCK_MONOTONIC`), the one the kernel's element timeouts run on.
    public static func monotonic() -> MonotonicInstant {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return MonotonicInstant(nanoseconds: Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec))
    }

    /// The wall clock (`CLOCK_REALTIME`).
    public static func wall() -> Date {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Date(timeIntervalSince1970: Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9 + testOffset())
    }

    /// Tests cannot step the machine's clock (other programs live by it), so a test can shift this process's view
    /// of the wall clock instead: DRAWBRIDGE_TEST_CLOCK_OFFSET_FILE names a file holding seconds to add. Never set
    /// outside tests.
    private static let testOffsetPath: String? = getenv("DRAWBRIDGE_TEST_CLOCK_OFFSET_FILE").map { String(cString: $0) }

    private static func testOffset() -> Double {
        guard let testOffsetPath, let text = try? Files.readSmallText(testOffsetPath) else { return 0 }
        return Double(text) ?? 0
    }

    /// Both clocks, read back to back.
    public static func now() -> Instants {
        Instants(wall: wall(), monotonic: monotonic())
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`): monotonic instants are comparable only within one boot.
    public static func bootID() -> String {
        (try? Files.readSmallText("/proc/sys/kernel/random/boot_id")) ?? "unknown-boot"
    }

    /// The running kernel's release (`uname -r`).
    public static func kernelRelease() -> String {
        (try? Files.readSmallText("/proc/sys/kernel/osrelease")) ?? "unknown"
    }

    /// The machine's host name (`uname -n`), without a domain part: the name a host has in etcd keys unless its
    /// policy names another.
    public static func hostName() -> String {
        let name = (try? Files.readSmallText("/proc/sys/kernel/hostname")) ?? "localhost"
        return String(name.prefix { $0 != "." })
    }
}
