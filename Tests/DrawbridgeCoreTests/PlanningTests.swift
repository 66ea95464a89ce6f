import DrawbridgeCore
import FoundationEssentials
import Testing

/// Shared builders for book and planner tests.
enum Plans {
    static let ssh = Service(port: 22, transport: .tcp)
    static let start = MonotonicInstant(nanoseconds: 1_000_000_000_000)

    static func key(_ source: String, _ port: UInt16 = 22) -> AccessKey {
        AccessKey(source: try! IPPrefix(parsing: source), service: Service(port: port, transport: .tcp))
    }

    static func at(_ seconds: Double) -> MonotonicInstant { start.advanced(by: seconds) }

    static func grant(
        _ id: String, _ source: String, ports: [UInt16] = [22], until seconds: Double, uid: UInt32? = 0,
        user: String = "root", origin: GrantOrigin = .local
    ) -> Grant {
        let wall = Date(timeIntervalSince1970: 1_800_000_000)
        return Grant(
            id: id, source: try! IPPrefix(parsing: source),
            ports: ports.map { GrantedPort(name: "p\($0)", service: Service(port: $0, transport: .tcp)) },
            createdAt: wall, expiresAt: wall.addingTimeInterval(seconds), deadline: at(seconds), requestedBy: user,
            uid: uid, reason: "", origin: origin)
    }

    /// Applies targets to a simulated kernel view, as the table driver does.
    static func apply(_ targets: [ElementTarget], to view: inout [AccessKey: MonotonicInstant]) {
        for target in targets { view[target.key] = target.deadline }
    }
}

struct PlannerTests {
    func plan(_ grants: [Grant], now: MonotonicInstant = Plans.start) -> [AccessKey: MonotonicInstant] {
        var book = GrantBook()
        for grant in grants { book.put(grant) }
        var planner = AccessPlanner()
        planner.reset(book: book, now: now)
        return planner.elements(book: book, now: now)
    }

    @Test("a prefix inside a wider, longer-lived one is dropped")
    func coveredIsDropped() {
        let plan = plan([Plans.grant("a", "198.51.100.0/24", until: 3600), Plans.grant("b", "198.51.100.128/25", until: 60)])
        #expect(plan == [Plans.key("198.51.100.0/24"): Plans.at(3600)])
    }

    @Test("a wider prefix that ends sooner is split around the inner one")
    func splitsAround() {
        let plan = plan([Plans.grant("a", "198.51.100.0/24", until: 60), Plans.grant("b", "198.51.100.64/26", until: 3600)])
        #expect(
            plan == [
                Plans.key("198.51.100.64/26"): Plans.at(3600), Plans.key("198.51.100.0/26"): Plans.at(60),
                Plans.key("198.51.100.128/25"): Plans.at(60),
            ])
    }

    @Test("single addresses and other services are left alone; a key takes the latest deadline of its grants")
    func singles() {
        let plan = plan([
            Plans.grant("a", "198.51.100.7", until: 9000), Plans.grant("b", "198.51.100.0/24", until: 60),
            Plans.grant("c", "198.51.100.0/25", ports: [5432], until: 30),
            Plans.grant("d", "198.51.100.7", until: 100, uid: 1000, user: "alice"),
        ])
        #expect(
            plan == [
                Plans.key("198.51.100.7"): Plans.at(9000), Plans.key("198.51.100.0/24"): Plans.at(60),
                Plans.key("198.51.100.0/25", 5432): Plans.at(30),
            ])
    }

    @Test("expired grants give no elements")
    func expired() {
        #expect(plan([Plans.grant("a", "203.0.113.0/24", until: 10)], now: Plans.at(10)).isEmpty)
    }

    /// Property: any sequence of grants, extensions, revocations and expiries, applied one change at a time, leaves
    /// the kernel (as the targets describe it) exactly where a plan from scratch would put it; that plan's prefixes
    /// are disjoint per service; every address gets the latest deadline a live grant gives it and no more.
    @Test("random changes, planned incrementally, equal a plan from scratch", arguments: 0..<60)
    func incrementalEqualsFull(seed: UInt64) throws {
        var random = SplitMix(seed: seed)
        var book = GrantBook()
        var planner = AccessPlanner()
        var kernel: [AccessKey: MonotonicInstant] = [:]
        var now = Plans.start
        var ids: [String] = []
        for step in 0..<60 {
            let choice = random.next() % 10
            if choice < 5 || ids.isEmpty {
                let family = random.next() % 4 == 0
                let source: String
                if family {
                    let length = Int(random.next() % 12) + 52
                    let address = IPAddress.v6(high: 0x2001_0db8_0000_0000 | (random.next() % 4096) << 8, low: 0)
                    source = IPPrefix(address: address).description.replacingSuffix(length: length)
                } else {
                    let length = Int(random.next() % 10) + 22
                    let address = IPAddress.v4(0xC633_6400 &+ UInt32(random.next() % 1024))
                    source = "\(IPPrefix(address: address.masked(length)).network)/\(length)"
                }
                let id = "g\(step)"
                ids.append(id)
                let changed = book.put(
                    Plans.grant(
                        id, source, ports: random.next() % 5 == 0 ? [22, 5432] : [22],
                        until: now.seconds(since: Plans.start) + Double(random.next() % 500 + 1))
                ).changed
                Plans.apply(planner.update(changed, book: book, now: now), to: &kernel)
            } else if choice < 7 {
                let id = ids.remove(at: Int(random.next() % UInt64(ids.count)))
                Plans.apply(planner.update(book.remove(id: id).changed, book: book, now: now), to: &kernel)
            } else if choice < 8, let id = ids.randomElement(using: &random), var grant = book[id] {
                grant.deadline = grant.deadline.advanced(by: Double(random.next() % 300) - 100)
                Plans.apply(planner.update(book.put(grant).changed, book: book, now: now), to: &kernel)
            } else {
                now = now.advanced(by: Double(random.next() % 120))
                let expired = book.removeExpired(now: now)
                ids.removeAll { id in expired.contains { $0.grant.id == id } }
                Plans.apply(planner.update(expired.flatMap(\.changed), book: book, now: now), to: &kernel)
            }
            let live = kernel.filter { $0.value > now }
            var fresh = AccessPlanner()
            fresh.reset(book: book, now: now)
            let expected = fresh.elements(book: book, now: now)
            #expect(live == expected, "step \(step): incremental \(live.count) elements, from scratch \(expected.count)")
            try Self.checkInvariants(expected, book: book, now: now)
        }
    }

    static func checkInvariants(_ plan: [AccessKey: MonotonicInstant], book: GrantBook, now: MonotonicInstant) throws {
        let prefixes = plan.keys.filter { !$0.source.isSingleAddress }
        for (index, first) in prefixes.enumerated() {
            for second in prefixes[(index + 1)...] where first.service == second.service {
                #expect(
                    !first.source.contains(second.source.network) && !second.source.contains(first.source.network),
                    "\(first) overlaps \(second)")
            }
        }
        // Probe addresses: every address's latest live deadline is what the plan gives it.
        let grants = book.values.filter { $0.deadline > now }
        for offset in stride(from: UInt32(0), to: 1280, by: 7) {
            let address = IPAddress.v4(0xC633_6400 &+ offset &- 128)
            for service in [Service(port: 22, transport: .tcp), Service(port: 5432, transport: .tcp)] {
                let wanted = grants.filter {
                    !$0.source.isSingleAddress && $0.source.contains(address) && $0.ports.contains { $0.service == service }
                }.map(\.deadline).max()
                let got = plan.filter {
                    !$0.key.source.isSingleAddress && $0.key.service == service && $0.key.source.contains(address)
                }.map(\.value).max()
                #expect(wanted == got, "\(address) \(service): wanted \(String(describing: wanted)), got \(String(describing: got))")
            }
        }
    }
}

struct GrantBookTests {
    @Test("asking again extends one's own grant; another user's request is a grant of its own")
    func extending() {
        var book = GrantBook()
        let alice = Plans.grant("a", "203.0.113.7", until: 600, uid: 1000, user: "alice")
        book.put(alice)
        var again = alice
        again.id = "other"
        again.deadline = Plans.at(900)
        #expect(book.extendable(like: again, now: Plans.start)?.id == "a")
        var bob = again
        bob.uid = 1001
        bob.requestedBy = "bob"
        #expect(book.extendable(like: bob, now: Plans.start) == nil)
        book.put(bob)
        #expect(book.deadline(for: Plans.key("203.0.113.7"), now: Plans.start) == Plans.at(900))
        book.remove(id: "other")
        #expect(book.deadline(for: Plans.key("203.0.113.7"), now: Plans.start) == Plans.at(600))
        #expect(book.grants(for: Plans.key("203.0.113.7")).map(\.id) == ["a"])
    }

    @Test("the counts of grants per port and kind of origin follow every put, replacement, removal and expiry")
    func portCounts() {
        var book = GrantBook()
        func walked() -> [GrantBook.PortCount: Int] {
            var counts: [GrantBook.PortCount: Int] = [:]
            for grant in book.values {
                for port in grant.ports { counts[GrantBook.PortCount(port: port.name, origin: grant.origin.kind), default: 0] += 1 }
            }
            return counts
        }
        var generator = SystemRandomNumberGenerator()
        let origins: [GrantOrigin] = [.local, .file("/a"), .file("/b"), .etcd("/k"), .knock("SHA256:x")]
        for step in 0..<2000 {
            let id = "g\(Int.random(in: 0..<60, using: &generator))"
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: book.remove(id: id)
            case 1: _ = book.removeExpired(now: Plans.at(Double(step / 20)))
            default:
                let ports = Array(Set((0..<Int.random(in: 1...3, using: &generator)).map { _ in UInt16.random(in: 22...25, using: &generator) }))
                book.put(
                    Plans.grant(
                        id, "203.0.113.\(Int.random(in: 1...9, using: &generator))", ports: ports.sorted(),
                        until: Double(step / 20 + Int.random(in: 1...30, using: &generator)),
                        origin: origins.randomElement(using: &generator)!))
            }
            #expect(book.portCounts == walked(), "step \(step)")
            if book.portCounts != walked() { return }
        }
        #expect(!book.portCounts.isEmpty)
    }

    @Test("expiry returns grants soonest first and skips replaced deadlines")
    func expiry() {
        var book = GrantBook()
        book.put(Plans.grant("late", "203.0.113.1", until: 30))
        book.put(Plans.grant("early", "203.0.113.2", until: 10))
        var extended = Plans.grant("moved", "203.0.113.3", until: 5)
        book.put(extended)
        extended.deadline = Plans.at(50)
        book.put(extended)
        #expect(book.nextDeadline() == Plans.at(10))
        #expect(book.removeExpired(now: Plans.at(40)).map(\.grant.id) == ["early", "late"])
        #expect(book.nextDeadline() == Plans.at(50))
        #expect(book.count == 1)
    }

    @Test("origins are indexed")
    func origins() {
        var book = GrantBook()
        book.put(Plans.grant("f1", "203.0.113.1", until: 30, origin: .file("/etc/g.json")))
        book.put(Plans.grant("l1", "203.0.113.2", until: 30))
        #expect(book.ids(from: .file("/etc/g.json")) == ["f1"])
        book.remove(id: "f1")
        #expect(book.ids(from: .file("/etc/g.json")).isEmpty)
        #expect(book.origins.isEmpty, "local grants are not indexed by origin")
    }
}

struct SplitMix: RandomNumberGenerator {
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

extension String {
    /// `2001:db8:…` as a /length prefix with the host bits cleared (test helper for IPv6).
    func replacingSuffix(length: Int) -> String {
        let prefix = try! IPPrefix(parsing: self)
        guard case .v6(let high, _) = prefix.network else { return self }
        let masked = length >= 64 ? high : high & (UInt64.max << UInt64(64 - length))
        return "\(IPAddress.v6(high: masked, low: 0))/\(length)"
    }
}
