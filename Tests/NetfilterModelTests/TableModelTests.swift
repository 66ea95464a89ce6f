import DrawbridgeCore
import FoundationEssentials
import NetfilterModel
import Testing

/// Key layouts, text rendering and timeouts: the table model alone, without libnftnl, a clock or a kernel.
struct TableModelTests {
    /// An arbitrary fixed instant: the model reads no clock, so tests hand it one.
    static let now = Instants(
        wall: Date(timeIntervalSince1970: 1_800_000_000), monotonic: .init(nanoseconds: 5_000_000_000_000))

    @Test(
        "grant elements round-trip through their kernel key layout",
        arguments: [
            "203.0.113.7", "198.51.100.0/24", "0.0.0.0/0", "2001:db8::7", "2001:db8:1::/65", "::/0",
        ])
    func roundTrip(source: String) throws {
        for service in [Service(port: 22, transport: .tcp), Service(port: 65535, transport: .udp)] {
            let key = AccessKey(source: try IPPrefix(parsing: source), service: service)
            let element = DrawbridgeTable.element(for: key)
            let listed = ListedElement(
                key: element.key, keyEnd: element.keyEnd, isIntervalEnd: false, readAt: Self.now)
            #expect(DrawbridgeTable.accessKey(from: listed) == key)
        }
    }

    @Test("the key layout is what nft sends: network order, fields padded to 4 bytes")
    func layout() throws {
        let key = AccessKey(source: try IPPrefix(parsing: "10.0.0.0/24"), service: Service(port: 22, transport: .tcp))
        let element = DrawbridgeTable.element(for: key)
        #expect(element.key == [0x0a, 0, 0, 0, 6, 0, 0, 0, 0, 0x16, 0, 0])
        #expect(element.keyEnd == [0x0a, 0, 0, 0xff, 6, 0, 0, 0, 0, 0x16, 0, 0])
        let single = DrawbridgeTable.element(
            for: AccessKey(source: try IPPrefix(parsing: "192.168.1.5"), service: Service(port: 1000, transport: .udp)))
        #expect(single.key == [0xc0, 0xa8, 1, 5, 17, 0, 0, 0, 0x03, 0xe8, 0, 0])
        #expect(single.keyEnd == nil)
        #expect(DrawbridgeTable.grantSet(for: key) == DrawbridgeTable.ranges4)
    }

    @Test("elements that drawbridge could not have written are not mistaken for grants")
    func foreign() {
        let sctp = ListedElement(
            key: [192, 0, 2, 1, 132, 0, 0, 0, 0, 22, 0, 0], keyEnd: nil, isIntervalEnd: false, readAt: Self.now)
        #expect(DrawbridgeTable.accessKey(from: sctp) == nil)
        // 192.0.2.1 - 192.0.2.6 is a range but not a CIDR prefix.
        let range = ListedElement(
            key: [192, 0, 2, 1, 6, 0, 0, 0, 0, 22, 0, 0], keyEnd: [192, 0, 2, 6, 6, 0, 0, 0, 0, 22, 0, 0],
            isIntervalEnd: false, readAt: Self.now)
        #expect(DrawbridgeTable.accessKey(from: range) == nil)
        let short = ListedElement(key: [1, 2, 3], keyEnd: nil, isIntervalEnd: false, readAt: Self.now)
        #expect(DrawbridgeTable.accessKey(from: short) == nil)
    }

    @Test("cut-sessions drops the established-connections rule and nothing else")
    func sessionModes() {
        let keep = DrawbridgeTable.ruleset(mode: .keepSessions)
        let cut = DrawbridgeTable.ruleset(mode: .cutSessions)
        #expect(keep.contains("ct state established,related accept"))
        #expect(!cut.contains("ct state"))
        #expect(keep.replacing("\t\tct state established,related accept\n", with: "") == cut)
    }

    @Test(
        "a deadline N ms from now is sent as exactly N ms; past or imminent expiries as 1 ms, never 0",
        arguments: [
            (nanoseconds: Int64(600_000) * 1_000_000, milliseconds: UInt64(600_000)),
            (1_500_000_000, 1500),
            (300_001_000_000, 300_001),
            (1_000_001, 2),  // a nanosecond past a whole millisecond rounds up: never shorter than asked
            (1_000_000, 1),
            (1, 1),
            (0, 1),
            (-10_000_000_000, 1),
        ])
    func deadlineTimeouts(nanoseconds: Int64, milliseconds: UInt64) {
        let expiry = ElementExpiry.deadline(MonotonicInstant(nanoseconds: Self.now.monotonic.nanoseconds + nanoseconds))
        #expect(expiry.timeoutMilliseconds(now: Self.now) == milliseconds)
    }

    @Test("wall-clock expiries count from the wall clock of the instant given; no expiry sends no timeout")
    func wallTimeouts() {
        #expect(ElementExpiry.at(Self.now.wall.addingTimeInterval(90)).timeoutMilliseconds(now: Self.now) == 90_000)
        #expect(ElementExpiry.at(Self.now.wall.addingTimeInterval(-5)).timeoutMilliseconds(now: Self.now) == 1)
        #expect(ElementExpiry.never.timeoutMilliseconds(now: Self.now) == nil)
        // A deadline at the end of time does not overflow into a short timeout.
        let forever = ElementExpiry.deadline(.distantFuture).timeoutMilliseconds(now: Self.now)
        #expect(forever.map { $0 > 1_000_000_000 } == true)
        let ancient = ElementExpiry.deadline(MonotonicInstant(nanoseconds: .min)).timeoutMilliseconds(now: Self.now)
        #expect(ancient == 1)
    }
}
