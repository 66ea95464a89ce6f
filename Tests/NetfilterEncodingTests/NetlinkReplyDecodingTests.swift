import Testing

@testable import Netfilter

/// Replies as one read from a netlink socket, through the splitter and error parser every request reads with.
/// Regression tests for what the parser fuzz target (Tests/Fuzz/parsers, target netlink) found.
@Suite("netlink reply decoding")
struct NetlinkReplyDecodingTests {
    /// An NLMSG_ERROR of 36 bytes (nlmsghdr, then nlmsgerr: the error and the request's header) with this error.
    static func errorReply(_ error: Int32) -> [UInt8] {
        func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
            withUnsafeBytes(of: value.littleEndian, Array.init)
        }
        let header = littleEndian(UInt32(36)) + littleEndian(UInt16(2)) + littleEndian(UInt16(0))
            + littleEndian(UInt32(7)) + littleEndian(UInt32(0))
        let request = littleEndian(UInt32(20)) + littleEndian(UInt16(10 << 8 | 12)) + littleEndian(UInt16(5))
            + littleEndian(UInt32(7)) + littleEndian(UInt32(0))
        return header + littleEndian(error) + request
    }

    static func decode(_ bytes: [UInt8]) throws(NetfilterError) -> [NetlinkReply.Kind] {
        var kinds: [NetlinkReply.Kind] = []
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(NetfilterError) in
                try NetlinkReply.decode(buffer, operation: "read reply") { reply in kinds.append(reply.kind) }
            }
        }
        try result.get()
        return kinds
    }

    @Test("an error reply carries the errno as a positive number")
    func errorReply() throws {
        let kinds = try Self.decode(Self.errorReply(-2))
        guard kinds.count == 1, case .error(let errno, nil, "") = kinds[0] else {
            Issue.record("decoded as \(kinds)")
            return
        }
        #expect(errno == 2)
    }

    /// Found by the fuzzer: an error of INT_MIN was negated (undefined in C) and came out as errno -2147483648.
    @Test("an error reply with error INT_MIN is a malformed reply, not a negative errno")
    func errorReplyIntMin() {
        #expect(throws: NetfilterError(.protocolViolation, operation: "read reply", detail: "malformed error reply")) {
            try Self.decode(Self.errorReply(Int32.min))
        }
    }
}
