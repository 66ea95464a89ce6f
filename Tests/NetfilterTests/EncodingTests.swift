import DrawbridgeCore
import Foundation
import Netfilter
import Testing

/// Key layouts and text rendering, without a kernel.
struct EncodingTests {
    @Test(
        "grant elements round-trip through their kernel key layout",
        arguments: [
            "203.0.113.7", "198.51.100.0/24", "0.0.0.0/0", "2001:db8::7", "2001:db8:1::/65", "::/0",
        ])
    func roundTrip(source: String) throws {
        for service in [Service(port: 22, transport: .tcp), Service(port: 65535, transport: .udp)] {
            let key = AccessKey(source: try IPPrefix(parsing: source), service: service)
            let element = DrawbridgeTable.element(for: key)
            let listed = ListedElement(key: element.key, keyEnd: element.keyEnd, isIntervalEnd: false)
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
        let sctp = ListedElement(key: [192, 0, 2, 1, 132, 0, 0, 0, 0, 22, 0, 0], keyEnd: nil, isIntervalEnd: false)
        #expect(DrawbridgeTable.accessKey(from: sctp) == nil)
        // 192.0.2.1 - 192.0.2.6 is a range but not a CIDR prefix.
        let range = ListedElement(
            key: [192, 0, 2, 1, 6, 0, 0, 0, 0, 22, 0, 0], keyEnd: [192, 0, 2, 6, 6, 0, 0, 0, 0, 22, 0, 0],
            isIntervalEnd: false)
        #expect(DrawbridgeTable.accessKey(from: range) == nil)
        #expect(
            DrawbridgeTable.accessKey(from: ListedElement(key: [1, 2, 3], keyEnd: nil, isIntervalEnd: false)) == nil)
    }

    @Test("cut-sessions drops the established-connections rule and nothing else")
    func sessionModes() {
        let keep = DrawbridgeTable.ruleset(mode: .keepSessions)
        let cut = DrawbridgeTable.ruleset(mode: .cutSessions)
        #expect(keep.contains("ct state established,related accept"))
        #expect(!cut.contains("ct state"))
        #expect(keep.replacingOccurrences(of: "\t\tct state established,related accept\n", with: "") == cut)
    }
}
