import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem

/// The agent's grants on disk: snapshots and an append-only journal of ``StateRecord`` lines.
///
/// A change costs one record: `snapshot-N` holds the state as it was when `journal-N` was started, and every change
/// after that is a line appended to the newest journal (written at once, flushed to disk by group commit before the
/// request is answered). When the journal has grown past the snapshot, a new journal is started and a new snapshot
/// written in the background; then the old files go. Loading takes the newest complete snapshot and replays every
/// journal from its number on. A crash at any instant leaves either the old files or the new, and a torn last line
/// (the write a crash interrupted, never acknowledged) is recognised by its checksum and cut off.
///
/// Closing access must never wait for space: the journal keeps space reserved past its end (fallocate), and only
/// records that open access count against it — when the reserve cannot be renewed, grants are refused while
/// revocations still fit.
///
/// Grants from files are not stored: their file is their record, read again at start.
public final class GrantStore: @unchecked Sendable {
    public let directory: String
    private let bootID: String
    private var journal: AppendFile?
    private var generation = 0
    /// Bytes in the newest snapshot, to decide when compacting pays.
    private var snapshotBytes: Int64 = 0
    /// Space kept past the journal's end.
    public static let reserveBytes: Int64 = 4 << 20
    /// Below this much reserve, grants are refused (the rest is for closing access).
    public static let grantFloorBytes: Int64 = 1 << 20
    /// Why the store cannot take grants right now, or nil.
    public private(set) var problem: String?

    public init(directory: String, bootID: String) throws(SystemError) {
        self.directory = directory
        self.bootID = bootID
        try Files.createDirectory(directory, mode: 0o750)
    }

    private func path(_ kind: String, _ number: Int) -> String { "\(directory)/\(kind)-\(number)" }

    // MARK: Loading

    /// What was on disk.
    public struct Loaded: Sendable {
        public var book: GrantBook
        public var settings: [String: String]
        /// Grants that had expired while the agent was down.
        public var expired: Int
        /// The first thousand of them.
        public var expiredGrants: [Grant]
        /// Things the operator should know (a damaged file moved aside, a legacy state imported).
        public var notes: [String]
    }

    /// Reads the newest snapshot and replays the journals after it, then opens a new journal for appending.
    public func load(now: Instants) throws(SystemError) -> Loaded {
        var notes: [String] = []
        let names = try Files.list(directory)
        func numbers(_ prefix: String) -> [Int] {
            names.compactMap { $0.hasPrefix(prefix + "-") ? Int($0.dropFirst(prefix.count + 1)) : nil }.sorted()
        }
        let snapshots = numbers("snapshot")
        let journals = numbers("journal")
        var replay = StateReplay(now: now, bootID: bootID)
        var base = 0
        // The newest snapshot that reads completely (a crash while writing one leaves it without its end line).
        for number in snapshots.reversed() {
            var attempt = StateReplay(now: now, bootID: bootID)
            if case .complete(let bytes) = read(path("snapshot", number), into: &attempt, snapshot: true) {
                replay = attempt
                base = number
                snapshotBytes = bytes
                break
            }
            notes.append("snapshot-\(number) is incomplete; an older state is used")
        }
        var damaged = false
        var tornAt: (number: Int, length: Int64)?
        for number in journals where number >= base {
            switch read(path("journal", number), into: &replay, snapshot: false) {
            case .complete:
                break
            case .tornTail(let goodLength):
                tornAt = (number, goodLength)
            case .damaged(let line):
                // A damaged line in the middle could have been a revocation: fail closed and keep no stored grant
                // rather than resurrect one.
                damaged = true
                notes.append(
                    "journal-\(number) is damaged at line \(line); its files were moved aside and no stored grant "
                        + "was restored (grants from files come back from the files)")
            }
        }
        if damaged {
            for name in names where name.hasPrefix("snapshot-") || name.hasPrefix("journal-") {
                rename("\(directory)/\(name)", "\(directory)/damaged-\(Int(now.wall.timeIntervalSince1970))-\(name)")
            }
            replay = StateReplay(now: now, bootID: bootID)
            generation = max(snapshots.last ?? 0, journals.last ?? 0) + 1
            try writeSnapshot(replay.book, settings: [:], number: generation, now: now)
            try openJournal(generation, now: now)
            return Loaded(book: replay.book, settings: [:], expired: 0, expiredGrants: [], notes: notes)
        }
        if snapshots.isEmpty, journals.isEmpty, Files.exists(directory + "/grants.json") {
            switch LegacyState.read(directory + "/grants.json", now: now) {
            case .success(let book):
                for grant in book.values { replay.apply(.put(grant)) }
                notes.append("imported \(book.count) grants from grants.json (state version 1), renamed grants.json.imported")
                try writeSnapshot(replay.book, settings: replay.settings, number: 1, now: now)
                rename(directory + "/grants.json", directory + "/grants.json.imported")
                base = 1
            case .failure(let problem):
                notes.append("grants.json (state version 1) could not be read: \(problem); it is left in place")
            }
        }
        // Go on appending to the newest journal (cut back to its last whole line after a crash mid-write).
        let current = max(base, journals.last ?? 0, 1)
        if let tornAt, tornAt.number == current {
            let file = try AppendFile(path: path("journal", current))
            try file.truncate(to: tornAt.length)
            file.close()
            notes.append("journal-\(current) ended in a torn line (a write interrupted by a crash); it was cut off")
        }
        if !snapshots.contains(current) && current != base && !journals.contains(current) {
            try writeSnapshot(replay.book, settings: replay.settings, number: current, now: now)
        }
        try openJournal(current, now: now)
        removeFiles(before: base)
        return Loaded(
            book: replay.book, settings: replay.settings, expired: replay.expired, expiredGrants: replay.expiredGrants,
            notes: notes)
    }

    private enum ReadOutcome {
        case complete(Int64)
        /// The last line is incomplete; the bytes before it are good.
        case tornTail(Int64)
        case damaged(line: Int)
    }

    private func read(_ path: String, into replay: inout StateReplay, snapshot: Bool) -> ReadOutcome {
        guard let bytes = try? Files.read(path, maximumBytes: 1 << 31) else { return .damaged(line: 0) }
        return bytes.withUnsafeBufferPointer { buffer -> ReadOutcome in
            if snapshot { replay.reserveCapacity(buffer.reduce(0) { $1 == 0x0a ? $0 + 1 : $0 }) }
            let header = Array(Self.snapshotHeader.utf8)
            var lineNumber = 0
            var ended = false
            var start = buffer.startIndex
            while start < buffer.endIndex {
                guard let newline = buffer[start...].firstIndex(of: 0x0a) else {
                    // The last line has no newline: a write a crash cut short, never acknowledged.
                    return snapshot ? .damaged(line: lineNumber + 1) : .tornTail(Int64(start))
                }
                lineNumber += 1
                let lineStart = start
                let line = UnsafeBufferPointer(rebasing: buffer[start..<newline])
                start = newline + 1
                if snapshot, lineNumber == 1 {
                    guard line.elementsEqual(header) else { return .damaged(line: 1) }
                    continue
                }
                if snapshot, line.starts(with: [0x45, 0x4e, 0x44, 0x20]) {  // "END "
                    ended = true
                    continue
                }
                switch StateRecord.decode(line) {
                case .success(let record):
                    replay.apply(record)
                case .failure:
                    // Only the very last line may be torn.
                    if !snapshot, start == buffer.endIndex { return .tornTail(Int64(lineStart)) }
                    return .damaged(line: lineNumber)
                }
            }
            if snapshot && !ended { return .damaged(line: lineNumber) }
            return .complete(Int64(buffer.count))
        }
    }

    static let snapshotHeader = "drawbridge-state 2"

    private func writeSnapshot(
        _ book: GrantBook, settings: [String: String], number: Int, now: Instants
    ) throws(SystemError) {
        let bytes = Self.snapshotBytes(book, settings: settings, bootID: bootID, now: now)
        try Files.writeAtomically(path("snapshot", number), bytes, mode: 0o640)
        snapshotBytes = Int64(bytes.count)
    }

    /// A snapshot's contents: the header, a boot record, every stored grant, tombstone and setting, and an end line.
    public static func snapshotBytes(_ book: GrantBook, settings: [String: String], bootID: String, now: Instants) -> [UInt8] {
        var text = snapshotHeader + "\n"
        text += StateRecord.boot(id: bootID, wall: now.wall, monotonic: now.monotonic).encoded() + "\n"
        var count = 0
        for grant in book.values where GrantStore.isStored(grant) {
            text += StateRecord.put(grant).encoded() + "\n"
            count += 1
        }
        for id in book.revokedFileGrants.sorted() { text += StateRecord.tombstone(id: id).encoded() + "\n" }
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) {
            text += StateRecord.setting(key: key, value: value).encoded() + "\n"
        }
        text += "END \(count)\n"
        return Array(text.utf8)
    }

    /// Whether a grant is kept in the store (file grants are not: their file is their record).
    public static func isStored(_ grant: Grant) -> Bool {
        if case .file = grant.origin { return false }
        return true
    }

    private func openJournal(_ number: Int, now: Instants) throws(SystemError) {
        let file = try AppendFile(path: path("journal", number), mode: 0o640)
        try file.append(Array((StateRecord.boot(id: bootID, wall: now.wall, monotonic: now.monotonic).encoded() + "\n").utf8))
        try file.sync()
        Files.syncDirectory(of: file.path)
        renewReserve(file)
        // The previous journal is not closed here: a flush of it may still be running on the disk thread; it closes
        // when the last reference goes.
        journal = file
        generation = number
    }

    private func renewReserve(_ file: AppendFile) {
        do {
            try file.reserve(Self.reserveBytes)
            problem = nil
        } catch {
            if file.reserved < Self.grantFloorBytes {
                problem = "cannot reserve space for the journal: \(error); grants are refused, revocations still apply"
            }
        }
    }

    private func removeFiles(before number: Int) {
        guard let names = try? Files.list(directory) else { return }
        for name in names {
            for prefix in ["snapshot-", "journal-"] where name.hasPrefix(prefix) {
                if let value = Int(name.dropFirst(prefix.count)), value < number { unlink("\(directory)/\(name)") }
            }
        }
    }

    // MARK: Appending

    /// Where the journal stands: appends up to here are written (not necessarily on disk yet).
    public var position: JournalPosition { JournalPosition(generation: generation, offset: journal?.size ?? 0) }

    /// Appends records that open access (or keep it open). The journal's reserve for closing records must still be
    /// whole after them: when the space to keep it cannot be had, the grant is refused and the reserve stays for
    /// revocations.
    public func appendOpening(_ records: [StateRecord]) throws(StoreError) {
        guard let journal else { throw StoreError("the state journal is not open") }
        let bytes = Self.lines(records)
        do {
            try journal.reserve(Self.reserveBytes + Int64(bytes.count))
            problem = nil
        } catch {
            problem = "no space to store grants (\(error)); grants are refused, revocations still apply"
            throw StoreError("cannot store the grant: \(error)")
        }
        do {
            try journal.append(bytes)
        } catch {
            throw StoreError("cannot write \(journal.path): \(error)")
        }
    }

    /// Appends records that close access: they use the reserved space, so a full file system does not stop them.
    public func appendClosing(_ records: [StateRecord]) throws(StoreError) {
        guard let journal else { throw StoreError("the state journal is not open") }
        do {
            try journal.append(Self.lines(records))
        } catch {
            throw StoreError("cannot write \(journal.path): \(error)")
        }
    }

    private static func lines(_ records: [StateRecord]) -> [UInt8] {
        var text = ""
        for record in records { text += record.encoded() + "\n" }
        return Array(text.utf8)
    }

    /// The journal to flush and the position a flush of it makes durable: flush it off the agent's executor.
    public func syncTarget() -> (file: AppendFile?, reaches: JournalPosition) {
        (journal, position)
    }

    /// Flushes the journal now (at stop).
    public func sync() throws(SystemError) {
        try journal?.sync()
    }

    // MARK: Compaction

    /// Whether the journal has grown enough that writing a new snapshot pays.
    public var wantsCompaction: Bool {
        (journal?.size ?? 0) > max(Self.reserveBytes, snapshotBytes * 2)
    }

    /// Starts a new journal (so appends continue while the snapshot is written) and returns the work that writes
    /// the snapshot of `book` and removes the old files; run it off the agent's executor.
    public func beginCompaction(
        book: GrantBook, settings: [String: String], now: Instants
    ) throws(SystemError) -> (work: @Sendable () throws(SystemError) -> Void, durable: JournalPosition) {
        // Everything in the current journal goes to disk first: the new journal's flushes do not cover it.
        try journal?.sync()
        let durable = position
        let next = generation + 1
        try openJournal(next, now: now)
        let path = self.path("snapshot", next)
        let bytes = Self.snapshotBytes(book, settings: settings, bootID: bootID, now: now)
        let work: @Sendable () throws(SystemError) -> Void = { [self] () throws(SystemError) in
            try Files.writeAtomically(path, bytes, mode: 0o640)
            snapshotBytes = Int64(bytes.count)
            removeFiles(before: next)
        }
        return (work, durable)
    }
}

/// A place in the journal.
public struct JournalPosition: Sendable, Comparable {
    public var generation: Int
    public var offset: Int64
    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.generation, lhs.offset) < (rhs.generation, rhs.offset) }
}

/// Why the store could not take a change.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The state file of drawbridge 0.1 (`grants.json`, version 1), read once to carry its grants over.
enum LegacyState {
    static func read(_ path: String, now: Instants) -> Result<GrantBook, StoreError> {
        let bytes: [UInt8]
        do {
            bytes = try Files.read(path, maximumBytes: 1 << 30)
        } catch {
            return .failure(StoreError(error.description))
        }
        struct Document: Decodable {
            var version: Int
            var book: Book
            struct Book: Decodable { var grants: [Grant] }
        }
        do {
            let document = try LocalAPI.decoder().decode(Document.self, from: Data(bytes))
            guard document.version == 1 else { return .failure(StoreError("version \(document.version)")) }
            var book = GrantBook()
            for var grant in document.book.grants {
                let given = max(0, grant.expiresAt.timeIntervalSince(grant.createdAt))
                grant.deadline = now.monotonic.advanced(by: min(grant.expiresAt.timeIntervalSince(now.wall), given))
                if grant.deadline > now.monotonic { book.put(grant) }
            }
            return .success(book)
        } catch {
            return .failure(StoreError("\(error)"))
        }
    }
}
