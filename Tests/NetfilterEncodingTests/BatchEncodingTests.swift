import CMnl  // iovec, as the encoder hands its buffers out
import DrawbridgeCore
import Foundation
import NetfilterModel
import Testing

@testable import Netfilter

/// The netlink bytes drawbridge sends, compared with recorded golden files, as google/nftables records and compares
/// its messages. No root, no namespace, no kernel: these run everywhere and pin the encoding between kernel runs
/// (the kernel tests in NetfilterTests prove that the kernel accepts it and `nft` lists it as rules/drawbridge.nft).
///
/// Each case is one file in Golden/ with a line per netlink message of the batch: the message type, its flags, its
/// sequence number, the `nfgenmsg` header and every top-level attribute in hex (nested ones inside their parent).
/// Sequence numbers start from a fixed number and timeouts count from a fixed instant, so the bytes never change
/// unless the encoding does.
///
/// After an intended change of the encoding, regenerate the files and read the diff before committing it:
///
///     DRAWBRIDGE_UPDATE_GOLDEN=1 swift test --filter NetfilterEncodingTests
struct BatchEncodingTests {
    static let goldenDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Golden")
    static let updating = ProcessInfo.processInfo.environment["DRAWBRIDGE_UPDATE_GOLDEN"] == "1"

    /// The instant every timeout counts from, and the first sequence number (BATCH_BEGIN's).
    static let now = Instants(
        wall: Date(timeIntervalSince1970: 1_800_000_000), monotonic: MonotonicInstant(nanoseconds: 7_000_000_000_000))
    static let firstSequence: UInt32 = 1000

    /// The deadline `milliseconds` after `now`: the element's timeout on the wire is exactly this.
    static func deadline(in milliseconds: Int64) -> MonotonicInstant {
        MonotonicInstant(nanoseconds: now.monotonic.nanoseconds + milliseconds * 1_000_000)
    }

    static func key(_ source: String, _ port: UInt16, _ transport: TransportProtocol = .tcp) -> AccessKey {
        AccessKey(source: try! IPPrefix(parsing: source), service: Service(port: port, transport: transport))
    }

    static let layout = TableLayout(
        mode: .keepSessions,
        managedServices: [
            Service(port: 22, transport: .tcp), Service(port: 5432, transport: .tcp),
            Service(port: 53, transport: .udp),
        ],
        alwaysAllowed: ["192.0.2.10", "198.51.100.0/24", "2001:db8::/32"].map { try! IPPrefix(parsing: $0) })

    /// Two grants in each grant set, with timeouts from 1 ms to a day.
    static let grants: [AccessKey: MonotonicInstant] = [
        key("203.0.113.7", 22): deadline(in: 600_000),
        key("203.0.113.8", 5432): deadline(in: 1_500),
        key("203.0.113.0/25", 53, .udp): deadline(in: 90_000),
        key("10.20.0.0/16", 22): deadline(in: 3_600_000),
        key("2001:db8::7", 22): deadline(in: 600_000),
        key("2001:db8::8", 53, .udp): deadline(in: 1),
        key("2001:db8:1::/48", 5432): deadline(in: 120_000),
        key("2001:db8:2:3::/64", 22): deadline(in: 86_400_000),
    ]

    /// The batch for `transaction`, split into its netlink messages.
    static func messages(of transaction: Transaction, generation: UInt32? = nil, small: Bool = false) -> [[UInt8]] {
        let encoder = BatchEncoder(firstSequence: firstSequence, generation: generation, now: now, small: small)
        for change in transaction.changes { encoder.encode(change) }
        let (iovecs, total) = encoder.finish()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(total)
        // The buffers belong to the encoder: copy them while it lives.
        withExtendedLifetime(encoder) {
            for iovec in iovecs {
                bytes += UnsafeRawBufferPointer(start: iovec.iov_base, count: iovec.iov_len)
            }
        }
        var messages: [[UInt8]] = []
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(little(bytes, offset, 4))
            precondition(length >= 16 && offset + length <= bytes.count, "a netlink message runs past the batch")
            messages.append(Array(bytes[offset..<offset + length]))
            offset += (length + 3) & ~3
        }
        precondition(offset == bytes.count, "bytes after the last message")
        return messages
    }

    /// A little-endian (host order on every machine drawbridge runs on) number of `count` bytes at `offset`.
    static func little(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> UInt32 {
        (0..<count).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    static let messageNames: [UInt32: String] = [
        0x10: "BATCH_BEGIN", 0x11: "BATCH_END",
        0xa00: "NEWTABLE", 0xa02: "DELTABLE", 0xa03: "NEWCHAIN", 0xa06: "NEWRULE", 0xa08: "DELRULE",
        0xa09: "NEWSET", 0xa0b: "DELSET", 0xa0c: "NEWSETELEM", 0xa0e: "DELSETELEM", 0xa1e: "DESTROYSETELEM",
    ]

    /// One line per message: `TYPE flags=0x… seq=N nfgenmsg=… ATTRIBUTE ATTRIBUTE …`.
    static func dump(_ messages: [[UInt8]]) -> [String] {
        messages.map { message in
            let type = little(message, 4, 2)
            let hex = { (slice: ArraySlice<UInt8>) in slice.map { String($0, radix: 16).leftPadded(to: 2) }.joined() }
            var fields = [
                messageNames[type] ?? "0x" + String(type, radix: 16),
                "flags=0x" + String(little(message, 6, 2), radix: 16).leftPadded(to: 4),
                "seq=\(little(message, 8, 4))",
                "nfgenmsg=" + hex(message[16..<min(20, message.count)]),
            ]
            fields += attributes(message, from: 20).map { hex($0.bytes) }
            return fields.joined(separator: " ")
        }
    }

    /// The attributes from `start` to the end of `bytes` (or of `end`): each its type (flags cleared) and its whole
    /// bytes, header included; a malformed one becomes the rest of the bytes, with type 0xffff.
    static func attributes(
        _ bytes: [UInt8], from start: Int, to end: Int? = nil
    ) -> [(type: UInt16, bytes: ArraySlice<UInt8>)] {
        let end = end ?? bytes.count
        var result: [(UInt16, ArraySlice<UInt8>)] = []
        var offset = start
        while offset + 4 <= end {
            let length = Int(little(bytes, offset, 2))
            guard length >= 4, offset + length <= end else {
                result.append((0xffff, bytes[offset..<end]))
                break
            }
            result.append((UInt16(little(bytes, offset + 2, 2)) & 0x3fff, bytes[offset..<offset + length]))
            offset += (length + 3) & ~3
        }
        return result
    }

    /// Compares the dump of `transaction` with Golden/`name`.hex, or writes the file when regenerating.
    static func expectGolden(
        _ name: String, _ transaction: Transaction, generation: UInt32? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let actual = dump(messages(of: transaction, generation: generation))
        let file = goldenDirectory.appendingPathComponent(name + ".hex")
        if updating {
            try FileManager.default.createDirectory(at: goldenDirectory, withIntermediateDirectories: true)
            try (actual.joined(separator: "\n") + "\n").write(to: file, atomically: true, encoding: .utf8)
            return
        }
        guard let text = try? String(contentsOf: file, encoding: .utf8) else {
            Issue.record(
                "no golden file \(file.path); run with DRAWBRIDGE_UPDATE_GOLDEN=1 to record one",
                sourceLocation: sourceLocation)
            return
        }
        let expected = text.split(separator: "\n").map(String.init)
        #expect(
            actual.count == expected.count, "\(name): \(actual.count) messages, golden has \(expected.count)",
            sourceLocation: sourceLocation)
        for (index, (got, wanted)) in zip(actual, expected).enumerated() where got != wanted {
            Issue.record(
                "\(name).hex line \(index + 1) differs:\n  golden:  \(wanted)\n  encoded: \(got)",
                sourceLocation: sourceLocation)
        }
    }

    @Test("the whole table with its grants, replacing whatever holds its name, with a generation check")
    func replacement() throws {
        try Self.expectGolden(
            "replacement", DrawbridgeTable.replacement(Self.layout, elements: Self.grants), generation: 7)
    }

    @Test("a reload: rules and fixed sets rewritten, grants kept (cut-sessions, no break-glass prefixes)")
    func installation() throws {
        let layout = TableLayout(
            mode: .cutSessions, managedServices: [Service(port: 22, transport: .tcp)], alwaysAllowed: [])
        try Self.expectGolden("installation-cut-sessions", DrawbridgeTable.installation(layout))
    }

    @Test(
        "grant elements: delete, destroy, then add with timeouts, in each grant set",
        arguments: DrawbridgeTable.grantSets.map(\.name))
    func elements(set name: String) throws {
        let set = DrawbridgeTable.grantSets.first { $0.name == name }!
        let keys = Self.grants.keys.filter { DrawbridgeTable.grantSet(for: $0) == set }.sorted()
        #expect(keys.count == 2)
        let table = DrawbridgeTable.name
        let transaction = Transaction([
            .deleteElements(table: table, set: set, [DrawbridgeTable.element(for: keys[0])]),
            .destroyElements(table: table, set: set, [DrawbridgeTable.element(for: keys[1])]),
            .addElements(
                table: table, set: set,
                keys.map { DrawbridgeTable.element(for: $0, deadline: Self.grants[$0]!) }),
        ])
        try Self.expectGolden("elements-\(name)", transaction)
    }

    @Test("flushing every grant set")
    func flush() throws {
        try Self.expectGolden(
            "flush-grants",
            Transaction(DrawbridgeTable.grantSets.map { .flushSet(table: DrawbridgeTable.name, set: $0.name) }))
    }

    @Test("sequence numbers count up from the one given, one per message, BATCH_BEGIN and BATCH_END included")
    func sequences() {
        let messages = Self.messages(of: DrawbridgeTable.replacement(Self.layout, elements: Self.grants))
        let sequences = messages.map { Self.little($0, 8, 4) }
        #expect(sequences == Array(Self.firstSequence..<Self.firstSequence + UInt32(messages.count)))
    }

    @Test("a small batch's buffer gives the same messages as 2 MiB pages for every transaction it is used for")
    func smallBuffers() {
        // The largest elements: IPv6 prefixes, with a key end and a timeout each.
        for set in [DrawbridgeTable.grants6, DrawbridgeTable.ranges6] {
            for count in [1, 2, 100, 256] {
                let elements = (0..<count).map { index in
                    DrawbridgeTable.element(
                        for: Self.key(
                            set == DrawbridgeTable.ranges6
                                ? "2001:db8:\(String(index, radix: 16))::/64" : "2001:db8::\(String(index, radix: 16))",
                            22),
                        deadline: Self.deadline(in: 86_400_000))
                }
                let transaction = Transaction([.addElements(table: DrawbridgeTable.name, set: set, elements)])
                #expect(BatchEncoder.fitsSmallBuffer(transaction))
                let small = Self.messages(of: transaction, small: true)
                #expect(small.count >= 3, "\(count) elements in \(set.name)")
                #expect(small == Self.messages(of: transaction), "\(count) elements in \(set.name)")
                #expect(small.allSatisfy { $0.count < 32 * 1024 })
            }
        }
        let flush = Transaction(DrawbridgeTable.grantSets.map { .flushSet(table: DrawbridgeTable.name, set: $0.name) })
        #expect(BatchEncoder.fitsSmallBuffer(flush))
        #expect(Self.messages(of: flush, small: true) == Self.messages(of: flush))
        // A whole table is not small (more than 64 changes), so it keeps 2 MiB pages.
        #expect(!BatchEncoder.fitsSmallBuffer(DrawbridgeTable.replacement(Self.layout, elements: Self.grants)))
        // Beyond the rule, a message can outgrow the 32 KiB page, and libnftnl would lose it: the rule must hold.
        let many = (0..<257).map { index in
            DrawbridgeTable.element(for: Self.key("2001:db8::\(String(index, radix: 16))", 22))
        }
        #expect(
            !BatchEncoder.fitsSmallBuffer(
                Transaction([.addElements(table: DrawbridgeTable.name, set: DrawbridgeTable.grants6, many)])))
    }

    @Test("a long element list is split into messages whose element nest fits its 16-bit length, none lost")
    func splitting() {
        let set = DrawbridgeTable.grants6
        let elements = (0..<6000).map { index in
            DrawbridgeTable.element(
                for: Self.key("2001:db8::\(String(index, radix: 16))", 22), deadline: Self.deadline(in: 60_000))
        }
        let messages = Self.messages(
            of: Transaction([.addElements(table: DrawbridgeTable.name, set: set, elements)]))
        let elementMessages = messages.dropFirst().dropLast()
        #expect(elementMessages.count > 1)
        // NFTA_SET_ELEM_LIST_ELEMENTS (3) nests one NFTA_LIST_ELEM per element; a nest over 65,535 bytes would wrap
        // its length and the kernel would read garbage.
        let lists = elementMessages.flatMap { message in
            Self.attributes(message, from: 20).filter { $0.type == 3 }.map { (message, $0.bytes) }
        }
        #expect(lists.count == elementMessages.count)
        #expect(lists.allSatisfy { $0.1.count <= 65_535 && Int(Self.little($0.0, $0.1.startIndex, 2)) == $0.1.count })
        let counts = lists.map { message, list in
            Self.attributes(message, from: list.startIndex + 4, to: list.endIndex).count
        }
        #expect(counts.reduce(0, +) == elements.count)
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
