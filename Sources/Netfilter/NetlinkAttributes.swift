/// A read-only view of one nfnetlink message: its type and the top-level attributes after the `nfgenmsg` header.
///
/// Enough to tell which table a notification or a dumped object belongs to and to read the few fields that
/// libnftnl does not parse for every message type (the generation's process id), without trusting any length in
/// the message: every attribute is bounds-checked, a malformed one ends the walk.
package struct NetfilterMessage {
    /// The nf_tables message type (NFT_MSG_*), without the subsystem.
    package let type: UInt16
    /// The subsystem (NFNL_SUBSYS_NFTABLES is 10).
    package let subsystem: UInt16
    /// The address family from `nfgenmsg`.
    package let family: UInt8
    /// The low 16 bits of the ruleset generation from `nfgenmsg` (res_id).
    package let resourceID: UInt16
    /// `nlmsg_pid`: in a notification, the netlink port of the socket whose request caused it.
    package let portID: UInt32
    private let attributes: [UInt16: ArraySlice<UInt8>]

    /// Parses a message from its bytes (header included); nil when it is too short to be one.
    package init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 20 else { return nil }
        let length = Int(bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        guard length >= 20, length <= bytes.count else { return nil }
        let rawType = bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        type = rawType & 0xff
        subsystem = rawType >> 8
        portID = bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
        family = bytes[16]
        resourceID = UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 18, as: UInt16.self))
        var attributes: [UInt16: ArraySlice<UInt8>] = [:]
        let all = Array(bytes[0..<length])
        var offset = 20
        while offset + 4 <= length {
            let attributeLength = Int(UInt16(all[offset]) | UInt16(all[offset + 1]) << 8)
            let attributeType = (UInt16(all[offset + 2]) | UInt16(all[offset + 3]) << 8) & 0x3fff
            guard attributeLength >= 4, offset + attributeLength <= length else { break }
            attributes[attributeType] = all[(offset + 4)..<(offset + attributeLength)]
            offset += (attributeLength + 3) & ~3
        }
        self.attributes = attributes
    }

    /// A NUL-terminated string attribute.
    package func string(_ attribute: UInt16) -> String? {
        guard let bytes = attributes[attribute] else { return nil }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// A big-endian 32-bit attribute.
    package func bigEndianUInt32(_ attribute: UInt16) -> UInt32? {
        guard let bytes = attributes[attribute], bytes.count >= 4 else { return nil }
        return bytes.prefix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The table a message is about: attribute 1 is the table name for tables, chains, rules, sets, set elements,
    /// objects and flowtables alike (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
    /// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
    package var table: String? { type == 15 ? nil : string(1) }
}

/// Zeroes the padding after every attribute of one message, nested attributes included.
///
/// libmnl before 1.0.5 (Debian 12 ships 1.0.4) leaves the up to 3 bytes that align an attribute as they were in the
/// buffer: whatever an earlier batch left in a reused heap page. The kernel ignores them, but stale memory should not
/// leave the process, and a batch's bytes must depend on its transaction alone (the golden tests compare them).
///
/// - Parameters:
///   - message: the whole message, header included, `nlmsg_len` bytes.
///   - headerLength: the bytes before the first attribute (`nlmsghdr` and `nfgenmsg`: 20).
func zeroAttributePadding(_ message: UnsafeMutableRawBufferPointer, headerLength: Int) {
    var offset = headerLength
    while offset + 4 <= message.count {
        let length = Int(message.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
        let type = message.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self)
        guard length >= 4, offset + length <= message.count else { return }
        // NLA_F_NESTED: libmnl marks every nest it starts.
        if type & 0x8000 != 0 {
            zeroAttributePadding(
                UnsafeMutableRawBufferPointer(rebasing: message[offset..<offset + length]), headerLength: 4)
        }
        let aligned = min((length + 3) & ~3, message.count - offset)
        for index in offset + length..<offset + aligned { message[index] = 0 }
        offset += aligned
    }
}
