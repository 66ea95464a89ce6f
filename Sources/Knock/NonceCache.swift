/// The nonces of accepted knocks, remembered for as long as their packets could still pass the timestamp check, so
/// that a captured packet replayed inside that window is refused.
///
/// A pure value: the agent inserts the nonce of each packet that verified, persists ``serialized()`` before it
/// opens the port, and loads it again at start, so a replay right after a restart is still refused.
///
/// - The window should equal the verifier's ``KnockVerifier/maximumSkew``: a packet stamped `t` passes the
///   timestamp check until `t + window`, so its nonce is kept until then and forgotten after.
/// - The cache also knows from when on its memory is complete (``historyStart``). A new cache starts its history
///   at the moment it is made, and refuses packets stamped earlier: if the persisted cache is lost or damaged, the
///   agent starts a new one and cannot be tricked into accepting a packet it may already have accepted. The same
///   rule keeps a cache honest when the window grows between runs.
/// - Memory is bounded by ``capacity`` (default 65 536 entries, about 64 bytes each in memory — 4 MiB — and 24
///   bytes each serialized — 1.5 MiB). At the cap the cache fails closed: new nonces are refused (``Outcome/full``)
///   until old ones age out, because accepting a packet without remembering it would let it be replayed. For scale:
///   the knock rule's rate limit of 200 packets a second and a 60 s skew keep at most 200 × 120 = 24 000 entries.
public struct NonceCache: Hashable, Sendable {
    /// The default bound on entries.
    public static let defaultCapacity = 65_536

    /// What inserting a nonce did.
    public enum Outcome: Hashable, Sendable {
        /// The nonce is new and is now remembered: the packet may be accepted.
        case inserted
        /// The nonce was seen inside the window: the packet is a replay.
        case replayed
        /// The cache holds ``NonceCache/capacity`` live entries; the packet must be refused (fail closed).
        case full
        /// The timestamp is outside the window around now; the verifier should have refused the packet already.
        case outsideWindow
        /// The timestamp is earlier than the cache's history: the nonce may have been accepted before the cache
        /// started remembering, so the packet must be refused.
        case beforeHistory
    }

    /// How long after its timestamp a nonce is kept, in milliseconds.
    public let windowMilliseconds: Int64
    /// The most entries the cache holds.
    public let capacity: Int
    /// The earliest timestamp from which on the cache has seen every accepted nonce.
    public private(set) var historyStart: Int64
    /// Timestamps by nonce.
    private var timestamps: [KnockNonce: Int64] = [:]
    /// The same entries as a binary min-heap on timestamp, so forgetting old entries does not scan the rest.
    private var heap: [Entry] = []

    private struct Entry: Hashable, Sendable {
        var timestamp: Int64
        var nonce: KnockNonce
    }

    /// An empty cache whose history starts at `nowMilliseconds`.
    public init(window: Duration, capacity: Int = defaultCapacity, startingAt nowMilliseconds: Int64) {
        self.windowMilliseconds = KnockVerifier.milliseconds(window)
        self.capacity = max(0, capacity)
        self.historyStart = nowMilliseconds
    }

    /// How many nonces the cache holds (some may have expired since the last insertion or pruning).
    public var count: Int { timestamps.count }

    /// Whether the cache holds `nonce`.
    public func contains(_ nonce: KnockNonce) -> Bool { timestamps[nonce] != nil }

    /// Records the nonce of a packet stamped `timestampMilliseconds`, first forgetting expired entries. Only an
    /// ``Outcome/inserted`` outcome allows accepting the packet.
    public mutating func insert(
        _ nonce: KnockNonce, timestampMilliseconds timestamp: Int64, nowMilliseconds now: Int64
    ) -> Outcome {
        removeExpired(nowMilliseconds: now)
        if timestamps[nonce] != nil { return .replayed }
        let (age, overflow) = now.subtractingReportingOverflow(timestamp)
        if overflow || age > windowMilliseconds || age < -windowMilliseconds { return .outsideWindow }
        if timestamp < historyStart { return .beforeHistory }
        if timestamps.count >= capacity { return .full }
        timestamps[nonce] = timestamp
        push(Entry(timestamp: timestamp, nonce: nonce))
        return .inserted
    }

    /// Forgets nonces whose packets can no longer pass the timestamp check (stamped more than the window before
    /// now), and moves the start of the history up to match.
    public mutating func removeExpired(nowMilliseconds now: Int64) {
        let (oldest, overflow) = now.subtractingReportingOverflow(windowMilliseconds)
        guard !overflow else { return }
        while let first = heap.first, first.timestamp < oldest {
            popFirst()
            timestamps[first.nonce] = nil
        }
        historyStart = max(historyStart, oldest)
    }

    // MARK: - Serialization

    /// `DBNC`.
    static let magic: [UInt8] = [0x44, 0x42, 0x4E, 0x43]
    static let version: UInt8 = 1

    /// The cache as bytes: `DBNC`, version 1, int64 history start, uint32 count, then per entry the 16-byte nonce
    /// and its int64 timestamp, oldest first. All integers big-endian.
    public func serialized() -> [UInt8] {
        var writer = WireWriter()
        writer.raw(Self.magic)
        writer.byte(Self.version)
        writer.uint64(UInt64(bitPattern: historyStart))
        writer.uint32(UInt32(truncatingIfNeeded: timestamps.count))
        let entries = timestamps.map { Entry(timestamp: $0.value, nonce: $0.key) }
            .sorted { ($0.timestamp, $0.nonce.high, $0.nonce.low) < ($1.timestamp, $1.nonce.high, $1.nonce.low) }
        for entry in entries {
            writer.raw(entry.nonce.bytes)
            writer.uint64(UInt64(bitPattern: entry.timestamp))
        }
        return writer.bytes
    }

    /// Reads what ``serialized()`` wrote. Throws for anything else, including more entries than `capacity` or a
    /// nonce listed twice; an agent that cannot read its cache should start a new one (whose history begins now).
    public init(
        serialized bytes: some Collection<UInt8>, window: Duration, capacity: Int = defaultCapacity
    ) throws(NonceCacheError) {
        var reader = WireReader(Array(bytes))
        let magic = try reader.take(4) { NonceCacheError(.magic, $0) }
        guard magic.elementsEqual(Self.magic) else {
            throw NonceCacheError(.magic, .mismatch(expected: "\"DBNC\"", found: quoted(magic)))
        }
        let version = try reader.byte { NonceCacheError(.version, $0) }
        guard version == Self.version else { throw NonceCacheError(.version, .unsupported("version \(version)")) }
        let start = Int64(bitPattern: try reader.uint64 { NonceCacheError(.historyStart, $0) })
        let count = Int(try reader.uint32 { NonceCacheError(.count, $0) })
        guard count <= max(0, capacity) else {
            throw NonceCacheError(.count, .tooLong(length: count, limit: max(0, capacity)))
        }
        guard count <= reader.remaining / 24 else {
            throw NonceCacheError(.count, .truncated(needed: count * 24, available: reader.remaining))
        }
        self.init(window: window, capacity: capacity, startingAt: start)
        for index in 0..<count {
            let nonceBytes = try reader.take(KnockNonce.byteCount) { NonceCacheError(.entry(index: index), $0) }
            let timestamp = Int64(bitPattern: try reader.uint64 { NonceCacheError(.entry(index: index), $0) })
            guard let nonce = KnockNonce(bytes: nonceBytes), timestamps[nonce] == nil else {
                throw NonceCacheError(.entry(index: index), .invalid("the nonce is listed twice"))
            }
            timestamps[nonce] = timestamp
            push(Entry(timestamp: timestamp, nonce: nonce))
        }
        try reader.expectEnd { NonceCacheError(.end, $0) }
    }

    public static func == (lhs: NonceCache, rhs: NonceCache) -> Bool {
        lhs.windowMilliseconds == rhs.windowMilliseconds && lhs.capacity == rhs.capacity
            && lhs.historyStart == rhs.historyStart && lhs.timestamps == rhs.timestamps
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(windowMilliseconds)
        hasher.combine(capacity)
        hasher.combine(historyStart)
        hasher.combine(timestamps)
    }

    // MARK: - Heap

    private mutating func push(_ entry: Entry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].timestamp < heap[parent].timestamp else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popFirst() {
        guard !heap.isEmpty else { return }
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].timestamp < heap[smallest].timestamp { smallest = left }
            if right < heap.count, heap[right].timestamp < heap[smallest].timestamp { smallest = right }
            guard smallest != parent else { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

/// A serialized ``NonceCache`` that could not be read.
public struct NonceCacheError: Error, Hashable, Sendable {
    /// A field of the serialized cache.
    public enum Field: Hashable, Sendable {
        case magic
        case version
        case historyStart
        case count
        /// The entry at this index (0-based).
        case entry(index: Int)
        case end
    }

    /// Which field is wrong.
    public var field: Field
    /// What is wrong with it.
    public var problem: FormatProblem

    /// An error about `field`.
    public init(_ field: Field, _ problem: FormatProblem) {
        self.field = field
        self.problem = problem
    }
}

extension NonceCacheError: CustomStringConvertible {
    public var description: String { "nonce cache \(field): \(problem)" }
}
