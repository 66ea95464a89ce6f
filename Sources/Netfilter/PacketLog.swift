import CMnl
import CDrawbridgeLinux
import DrawbridgeCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One UDP datagram the table handed to an NFLOG group: who sent it, where to, and its payload.
public struct LoggedDatagram: Sendable, Equatable {
    /// The packet's source address as this host sees it (after any NAT in front of it).
    public var source: IPAddress
    public var destination: IPAddress
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// The UDP payload.
    public var payload: [UInt8]
}

/// Why a logged packet could not be read as a UDP datagram (a truncated header, an IPv6 extension header, a
/// fragment). The table only logs UDP to the knock port, so these are rare and never acted on.
public struct UnreadablePacket: Sendable, Equatable {
    public var source: IPAddress?
    public var problem: String
}

/// A subscription to one nfnetlink_log group in copy-packet mode: how drawbridge-knock receives the packets the
/// table's knock rule logs, with no socket open on the knock port. One process per group and network namespace
/// (the kernel refuses a second binding with EBUSY).
public final class PacketLog {
    private let socket: NetlinkSocket
    public let group: UInt16
    private var sequence: UInt32 = 1

    // From linux/netfilter/nfnetlink_log.h and nfnetlink.h.
    private static let subsystemULOG: UInt16 = 4
    private static let messagePacket: UInt16 = 0
    private static let messageConfig: UInt16 = 1
    private static let attributeConfigCommand: UInt16 = 1
    private static let attributeConfigMode: UInt16 = 2
    private static let attributePacketHeader: UInt16 = 1
    private static let attributePayload: UInt16 = 9
    private static let commandBind: UInt8 = 1
    private static let copyPacket: UInt8 = 2

    /// Binds to `group` in the calling thread's network namespace, or inside `namespace`. Needs CAP_NET_ADMIN; once
    /// bound, reading needs no capability, so the caller may drop them.
    public init(group: UInt16, namespace: NetworkNamespace? = nil) throws(NetfilterError) {
        self.group = group
        if let namespace {
            do {
                socket = try namespace.perform { try NetlinkSocket(groups: 0) }
            } catch let error as NetfilterError {
                throw error
            } catch {
                throw NetfilterError(.other, operation: "open the packet log socket", detail: "\(error)")
            }
        } else {
            socket = try NetlinkSocket(groups: 0)
        }
        // Room for a burst of logged packets (each a few hundred bytes) while one is being verified.
        socket.reserve(sendBytes: 0, replies: 1024)
        try configure(attribute: Self.attributeConfigCommand, [Self.commandBind], operation: "bind NFLOG group \(group)")
        // copy_range (be32) = 0xffff, copy_mode = packet, pad.
        try configure(
            attribute: Self.attributeConfigMode, [0, 0, 0xff, 0xff, Self.copyPacket, 0],
            operation: "set NFLOG group \(group) to copy packets")
    }

    /// The descriptor, for callers that poll it.
    public var fd: Int32 { socket.fd }

    private func configure(attribute: UInt16, _ payload: [UInt8], operation: String) throws(NetfilterError) {
        var message: [UInt8] = []
        let attributeLength = 4 + payload.count
        let padded = (attributeLength + 3) & ~3
        let total = 16 + 4 + padded
        func append32(_ value: UInt32) { withUnsafeBytes(of: value) { message += $0 } }
        func append16(_ value: UInt16) { withUnsafeBytes(of: value) { message += $0 } }
        sequence &+= 1
        append32(UInt32(total))
        append16(Self.subsystemULOG << 8 | Self.messageConfig)
        append16(UInt16(NLM_F_REQUEST | NLM_F_ACK))
        append32(sequence)
        append32(0)
        // nfgenmsg: family AF_UNSPEC, version 0, res_id = the group in network order.
        message += [0, 0, UInt8(group >> 8), UInt8(group & 0xff)]
        append16(UInt16(attributeLength))
        append16(attribute)
        message += payload
        message += [UInt8](repeating: 0, count: padded - attributeLength)
        let sent = message.withUnsafeBytes { bytes in
            Result { () throws(NetfilterError) in try socket.send(bytes, operation: operation) }
        }
        try sent.get()
        var failure: NetfilterError?
        var acknowledged = false
        while !acknowledged, failure == nil {
            _ = try socket.receive(wait: true, operation: operation) { reply in
                guard reply.sequence == sequence else { return }
                switch reply.kind {
                case .acknowledgement: acknowledged = true
                case .error(let errno, _, let text):
                    var error = NetfilterError(errno: errno, operation: operation)
                    if errno == EBUSY {
                        error.detail = "another process is bound to NFLOG group \(group) in this network namespace"
                    } else if !text.isEmpty {
                        error.detail = text
                    }
                    failure = error
                default: break
                }
            }
        }
        if let failure { throw failure }
    }

    /// What one read brought.
    public enum Delivery: Sendable, Equatable {
        case datagram(LoggedDatagram)
        case unreadable(UnreadablePacket)
        /// The socket overflowed: the kernel dropped logged packets (a flood); what was lost is gone.
        case overflow
    }

    /// Waits up to the socket's timeout (30 s) for logged packets and returns what one read brought; empty when
    /// nothing came.
    public func receive() throws(NetfilterError) -> [Delivery] {
        var deliveries: [Delivery] = []
        do {
            _ = try socket.receive(wait: true, operation: "read NFLOG group \(group)") { reply in
                guard case .data(let bytes) = reply.kind else { return }
                if let delivery = Self.parse(message: bytes) { deliveries.append(delivery) }
            }
        } catch {
            if error.errno == ENOBUFS { return [.overflow] }
            if error.errno == ETIMEDOUT || error.errno == EAGAIN { return [] }
            throw error
        }
        return deliveries
    }

    /// Reads one NFULNL_MSG_PACKET message (header included); nil for any other message.
    package static func parse(message bytes: UnsafeRawBufferPointer) -> Delivery? {
        guard bytes.count >= 20 else { return nil }
        let length = Int(bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let type = bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        guard length >= 20, length <= bytes.count, type == subsystemULOG << 8 | messagePacket else { return nil }
        var offset = 20
        var payload: ArraySlice<UInt8>?
        let all = Array(bytes[0..<length])
        while offset + 4 <= length {
            let attributeLength = Int(UInt16(all[offset]) | UInt16(all[offset + 1]) << 8)
            let attributeType = (UInt16(all[offset + 2]) | UInt16(all[offset + 3]) << 8) & 0x3fff
            guard attributeLength >= 4, offset + attributeLength <= length else { break }
            if attributeType == attributePayload { payload = all[(offset + 4)..<(offset + attributeLength)] }
            offset += (attributeLength + 3) & ~3
        }
        guard let payload else { return .unreadable(UnreadablePacket(source: nil, problem: "no packet payload")) }
        return parse(packet: Array(payload))
    }

    /// Reads an IPv4 or IPv6 packet carrying UDP.
    public static func parse(packet: [UInt8]) -> Delivery {
        guard let first = packet.first else { return .unreadable(UnreadablePacket(source: nil, problem: "empty packet")) }
        let source: IPAddress
        let destination: IPAddress
        let transportOffset: Int
        switch first >> 4 {
        case 4:
            guard packet.count >= 20 else {
                return .unreadable(UnreadablePacket(source: nil, problem: "IPv4 header truncated"))
            }
            source = IPAddress(bytes: packet[12..<16])!
            destination = IPAddress(bytes: packet[16..<20])!
            let headerLength = Int(first & 0x0f) * 4
            let fragment = UInt16(packet[6]) << 8 | UInt16(packet[7])
            guard headerLength >= 20, packet.count >= headerLength else {
                return .unreadable(UnreadablePacket(source: source, problem: "IPv4 header length \(headerLength)"))
            }
            guard fragment & 0x3fff == 0 else {
                return .unreadable(UnreadablePacket(source: source, problem: "IPv4 fragment"))
            }
            guard packet[9] == 17 else {
                return .unreadable(UnreadablePacket(source: source, problem: "IPv4 protocol \(packet[9]) is not UDP"))
            }
            transportOffset = headerLength
        case 6:
            guard packet.count >= 40 else {
                return .unreadable(UnreadablePacket(source: nil, problem: "IPv6 header truncated"))
            }
            source = IPAddress(bytes: packet[8..<24])!
            destination = IPAddress(bytes: packet[24..<40])!
            guard packet[6] == 17 else {
                return .unreadable(
                    UnreadablePacket(source: source, problem: "IPv6 next header \(packet[6]) is not UDP"))
            }
            transportOffset = 40
        default:
            return .unreadable(UnreadablePacket(source: nil, problem: "IP version \(first >> 4)"))
        }
        guard packet.count >= transportOffset + 8 else {
            return .unreadable(UnreadablePacket(source: source, problem: "UDP header truncated"))
        }
        let sourcePort = UInt16(packet[transportOffset]) << 8 | UInt16(packet[transportOffset + 1])
        let destinationPort = UInt16(packet[transportOffset + 2]) << 8 | UInt16(packet[transportOffset + 3])
        let udpLength = Int(UInt16(packet[transportOffset + 4]) << 8 | UInt16(packet[transportOffset + 5]))
        guard udpLength >= 8, transportOffset + udpLength <= packet.count else {
            return .unreadable(UnreadablePacket(source: source, problem: "UDP length \(udpLength) does not fit"))
        }
        return .datagram(
            LoggedDatagram(
                source: source, destination: destination, sourcePort: sourcePort, destinationPort: destinationPort,
                payload: Array(packet[(transportOffset + 8)..<(transportOffset + udpLength)])))
    }
}
