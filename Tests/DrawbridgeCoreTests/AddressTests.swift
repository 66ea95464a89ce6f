import DrawbridgeCore
import Testing

struct AddressTests {
    @Test(
        "prefixes parse to their canonical form",
        arguments: [
            ("203.0.113.7", "203.0.113.7", 32),
            ("198.51.100.0/24", "198.51.100.0/24", 24),
            (" 192.0.2.0/25 ", "192.0.2.0/25", 25),
            ("0.0.0.0/0", "0.0.0.0/0", 0),
            ("2001:db8::1", "2001:db8::1", 128),
            ("2001:DB8:0:0::/64", "2001:db8::/64", 64),
            ("::/0", "::/0", 0),
            ("::ffff:192.0.2.1", "::ffff:192.0.2.1", 128),
            ("2001:db8::/128", "2001:db8::", 128),
        ])
    func parses(text: String, canonical: String, length: Int) throws {
        let prefix = try IPPrefix(parsing: text)
        #expect(prefix.description == canonical)
        #expect(prefix.length == length)
        #expect(try IPPrefix(parsing: prefix.description) == prefix)
    }

    @Test(
        "bad prefixes are refused with a reason",
        arguments: [
            ("", "is not an IPv4 or IPv6 address"),
            ("203.0.113", "is not an IPv4 or IPv6 address"),
            ("203.0.113.256", "is not an IPv4 or IPv6 address"),
            ("010.0.0.1x", "is not an IPv4 or IPv6 address"),
            ("203.0.113.7/33", "out of range for IPv4 (0-32)"),
            ("2001:db8::/129", "out of range for IPv6 (0-128)"),
            ("203.0.113.7/24", "has host bits set; did you mean 203.0.113.0/24?"),
            ("2001:db8::1/64", "did you mean 2001:db8::/64?"),
            ("203.0.113.0/", "is not an IPv4 or IPv6 address"),
            ("203.0.113.0/+8", "is not an IPv4 or IPv6 address"),
            ("example.org", "is not an IPv4 or IPv6 address"),
            ("2001:db8:::1", "is not an IPv4 or IPv6 address"),
        ])
    func refuses(text: String, reason: String) {
        #expect {
            _ = try IPPrefix(parsing: text)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test("containment and last address")
    func containment() throws {
        let net = try IPPrefix(parsing: "198.51.100.0/24")
        #expect(net.lastAddress == IPAddress("198.51.100.255"))
        #expect(net.contains(IPAddress("198.51.100.77")!))
        #expect(!net.contains(IPAddress("198.51.101.0")!))
        #expect(!net.contains(IPAddress("2001:db8::1")!))
        #expect(net.contains(try IPPrefix(parsing: "198.51.100.128/25")))
        #expect(!(try IPPrefix(parsing: "198.51.100.128/25")).contains(net))
        let six = try IPPrefix(parsing: "2001:db8:1::/65")
        #expect(six.lastAddress == IPAddress("2001:db8:1:0:7fff:ffff:ffff:ffff"))
        #expect(try IPPrefix(parsing: "::/0").lastAddress == IPAddress("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        #expect(try IPPrefix(parsing: "0.0.0.0/0").lastAddress == IPAddress("255.255.255.255"))
    }

    @Test("services parse from NUMBER/PROTO")
    func services() {
        #expect(Service(parsing: "22/tcp") == Service(port: 22, transport: .tcp))
        #expect(Service(parsing: "53/UDP") == Service(port: 53, transport: .udp))
        #expect(Service(parsing: "5432") == Service(port: 5432, transport: .tcp))
        for bad in ["0/tcp", "65536/tcp", "22/icmp", "ssh", "22/tcp/x", "-1", ""] {
            #expect(Service(parsing: bad) == nil, "\(bad) must not parse")
        }
    }
}
