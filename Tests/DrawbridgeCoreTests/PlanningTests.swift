import DrawbridgeCore
import Foundation
import Testing

struct ElementDiffTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static func key(_ source: String, _ port: UInt16 = 22) -> AccessKey {
        AccessKey(source: try! IPPrefix(parsing: source), service: Service(port: port, transport: .tcp))
    }

    @Test("adds missing, deletes unwanted, refreshes changed expiries, leaves equal ones")
    func classifies() {
        let keep = Self.key("203.0.113.1")
        let add = Self.key("203.0.113.2")
        let delete = Self.key("203.0.113.3")
        let extend = Self.key("198.51.100.0/24")
        let shorten = Self.key("2001:db8::/64")
        let jitter = Self.key("203.0.113.4")
        let desired: [AccessKey: Date] = [
            keep: Self.now + 600, add: Self.now + 60, extend: Self.now + 7200, shorten: Self.now + 30,
            jitter: Self.now + 100,
        ]
        let actual: [AccessKey: Date] = [
            keep: Self.now + 600, delete: Self.now + 60, extend: Self.now + 600, shorten: Self.now + 3600,
            jitter: Self.now + 100.4,
        ]
        let diff = ElementDiff(desired: desired, actual: actual, now: Self.now)
        #expect(diff.additions == [AccessElement(key: add, expiresAt: Self.now + 60)])
        #expect(diff.deletions == [delete])
        #expect(Set(diff.refreshes.map(\.key)) == [extend, shorten])
        #expect(diff.refreshes.first { $0.key == extend }?.expiresAt == Self.now + 7200)
    }

    @Test("desired elements already expired are neither added nor kept")
    func expiredDesired() {
        let gone = Self.key("203.0.113.9")
        let diff = ElementDiff(desired: [gone: Self.now - 1], actual: [gone: Self.now + 5], now: Self.now)
        #expect(diff.additions.isEmpty && diff.refreshes.isEmpty)
        #expect(diff.deletions == [gone])
        #expect(ElementDiff(desired: [gone: Self.now], actual: [:], now: Self.now).isEmpty)
    }

    @Test("equal states give an empty diff")
    func empty() {
        let state = [Self.key("203.0.113.1"): Self.now + 10, Self.key("2001:db8::1", 443): Self.now + 20]
        #expect(ElementDiff(desired: state, actual: state, now: Self.now).isEmpty)
    }
}

struct AccessPlanTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test("a prefix inside a wider, longer-lived one is dropped")
    func coveredIsDropped() throws {
        let wide = ElementDiffTests.key("198.51.100.0/24")
        let inner = ElementDiffTests.key("198.51.100.128/25")
        let plan = AccessPlan.normalize([wide: Self.now + 3600, inner: Self.now + 60])
        #expect(plan == [wide: Self.now + 3600])
    }

    @Test("a wider prefix that ends sooner is split around the inner one")
    func splitsAround() throws {
        let wide = ElementDiffTests.key("198.51.100.0/24")
        let inner = ElementDiffTests.key("198.51.100.64/26")
        let plan = AccessPlan.normalize([wide: Self.now + 60, inner: Self.now + 3600])
        let expected: [AccessKey: Date] = [
            inner: Self.now + 3600,
            ElementDiffTests.key("198.51.100.0/26"): Self.now + 60,
            ElementDiffTests.key("198.51.100.128/25"): Self.now + 60,
        ]
        #expect(plan == expected)
    }

    @Test("single addresses and other services are left alone")
    func singlesUntouched() {
        let host = ElementDiffTests.key("198.51.100.7")
        let wide = ElementDiffTests.key("198.51.100.0/24")
        let otherPort = ElementDiffTests.key("198.51.100.0/25", 5432)
        let input = [host: Self.now + 9000, wide: Self.now + 60, otherPort: Self.now + 30]
        #expect(AccessPlan.normalize(input) == input)
    }

    /// Property: for random overlapping prefixes, the plan's prefixes are disjoint per service, and every address
    /// gets exactly the latest expiry any input prefix gave it.
    @Test("random overlapping grants: disjoint output, every address keeps its longest expiry", arguments: 0..<40)
    func property(seed: UInt64) throws {
        var random = SplitMix(seed: seed)
        var input: [AccessKey: Date] = [:]
        for _ in 0..<Int(random.next() % 8 + 2) {
            let length = Int(random.next() % 9) + 22  // /22 ... /30 inside 198.51.100.0/22-ish space
            let address = IPAddress.v4(0xC633_6400 &+ UInt32(random.next() % 1024))
            let prefix = try IPPrefix(network: address.masked(length), length: length)
            input[AccessKey(source: prefix, service: Service(port: 22, transport: .tcp))] =
                Self.now + Double(random.next() % 5000 + 1)
        }
        let plan = AccessPlan.normalize(input)
        let planned = plan.keys.map(\.source)
        for (index, first) in planned.enumerated() {
            for second in planned[(index + 1)...] {
                #expect(
                    !first.contains(second.network) && !second.contains(first.network), "\(first) overlaps \(second)")
            }
        }
        for offset in stride(from: UInt32(0), to: 1280, by: 1) {
            let address = IPAddress.v4(0xC633_6400 &+ offset &- 128)
            let wanted = input.filter { $0.key.source.contains(address) }.map(\.value).max()
            let got = plan.filter { $0.key.source.contains(address) }.map(\.value).max()
            #expect(
                wanted == got, "\(address): wanted \(String(describing: wanted)), planned \(String(describing: got))")
        }
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension IPAddress {
    func masked(_ length: Int) -> IPAddress {
        guard case .v4(let value) = self else { return self }
        return .v4(length == 0 ? 0 : value & (UInt32.max << UInt32(32 - length)))
    }
}
