import CDrawbridgeLinux
import CMnl

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One reply message read from the socket.
package struct NetlinkReply {
    package enum Kind {
        /// NLMSG_ERROR with error 0.
        case acknowledgement
        /// NLMSG_ERROR with an errno.
        case error(errno: Int32, attributeOffset: UInt32?, message: String)
        /// NLMSG_DONE: the end of a dump.
        case done
        /// A data message (a dump's payload).
        case data(UnsafeRawBufferPointer)
    }

    package var sequence: UInt32
    package var flags: UInt16
    package var kind: Kind
}

extension NetlinkReply {
    /// Splits what one read brought into messages and hands each to `handle`: errors and acknowledgements parsed,
    /// NLMSG_DONE and data messages as they are, NLMSG_NOOP skipped. Pure (no socket), so the fuzz target
    /// (Tests/Fuzz/parsers) runs it on any bytes; a message whose length does not fit the buffer ends the walk.
    package static func decode(
        _ buffer: UnsafeRawBufferPointer, operation: String, _ handle: (NetlinkReply) throws(NetfilterError) -> Void
    ) throws(NetfilterError) {
        guard var cursor = buffer.baseAddress else { return }
        var remaining = buffer.count
        while true {
            var length = 0
            var type: UInt16 = 0
            var flags: UInt16 = 0
            var sequence: UInt32 = 0
            let before = remaining
            guard let header = drawbridge_next_message(cursor, &remaining, &length, &type, &flags, &sequence)
            else { break }
            let message = UnsafeRawBufferPointer(start: header, count: length)
            cursor = cursor.advanced(by: before - remaining)
            switch Int32(type) {
            case NLMSG_ERROR:
                var parsed = drawbridge_netlink_error()
                guard drawbridge_parse_netlink_error(header, length, &parsed) == 0 else {
                    throw NetfilterError(.protocolViolation, operation: operation, detail: "malformed error reply")
                }
                let text = withUnsafeBytes(of: parsed.message) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                let kind: NetlinkReply.Kind =
                    parsed.error == 0
                    ? .acknowledgement
                    : .error(
                        errno: parsed.error,
                        attributeOffset: parsed.has_offset != 0 ? parsed.attribute_offset : nil,
                        message: text)
                try handle(NetlinkReply(sequence: parsed.sequence, flags: flags, kind: kind))
            case NLMSG_DONE:
                try handle(NetlinkReply(sequence: sequence, flags: flags, kind: .done))
            case NLMSG_NOOP:
                continue
            default:
                try handle(NetlinkReply(sequence: sequence, flags: flags, kind: .data(message)))
            }
        }
    }
}

/// A NETLINK_NETFILTER socket: every raw socket call of the module is in this type.
final class NetlinkSocket {
    private let socket: OpaquePointer
    let portID: UInt32
    private var sendBufferSize: Int
    private var receiveBufferSize: Int
    /// Large enough for any dump chunk (the kernel sends at most ~32 KiB per skb) and any capped error.
    private var receiveBuffer = [UInt8](repeating: 0, count: 256 * 1024)

    /// The corresponding C functions are `mnl_socket_open` and `mnl_socket_bind`.
    ///
    /// - Parameter groups: multicast groups to receive, as a bit mask (bit n-1 for group n).
    init(groups: UInt32 = 0) throws(NetfilterError) {
        guard let socket = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NetfilterError(errno: errno, operation: "open netlink socket")
        }
        guard mnl_socket_bind(socket, groups, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let error = errno
            mnl_socket_close(socket)
            throw NetfilterError(errno: error, operation: "bind netlink socket")
        }
        self.socket = socket
        self.portID = mnl_socket_get_portid(socket)
        var one: Int32 = 1
        // Error replies carry only the failing message's header, not the whole (up to 64 KiB) message, and the
        // offset of the bad attribute; without CAP_ACK a large error can overflow the buffer and be lost.
        _ = mnl_socket_setsockopt(socket, Int32(NETLINK_CAP_ACK), &one, socklen_t(MemoryLayout<Int32>.size))
        _ = mnl_socket_setsockopt(socket, Int32(NETLINK_EXT_ACK), &one, socklen_t(MemoryLayout<Int32>.size))
        sendBufferSize = 0
        receiveBufferSize = 0
        sendBufferSize = Self.option(fd, SO_SNDBUF)
        receiveBufferSize = Self.option(fd, SO_RCVBUF)
        // Dumps and failed transactions must not wait forever on a kernel that never answers.
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        mnl_socket_close(socket)
    }

    var fd: Int32 { mnl_socket_get_fd(socket) }

    private static func option(_ fd: Int32, _ name: Int32) -> Int {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, name, &value, &length)
        return Int(value)
    }

    /// Raises a socket buffer with the FORCE variant, which ignores net.core.wmem_max/rmem_max (needs CAP_NET_ADMIN,
    /// which a process programming nftables has anyway). The kernel doubles the value it is given.
    private func raise(_ name: Int32, forced: Int32, to bytes: Int, current: inout Int) {
        guard bytes > current else { return }
        var value = Int32(clamping: bytes)
        if setsockopt(fd, SOL_SOCKET, forced, &value, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }
        current = Self.option(fd, name)
    }

    /// Makes sure a transaction of `bytes` fits the send buffer and `replies` replies fit the receive buffer.
    func reserve(sendBytes bytes: Int, replies: Int) {
        raise(SO_SNDBUF, forced: SO_SNDBUFFORCE, to: bytes + 64 * 1024, current: &sendBufferSize)
        // An ACK skb costs about a kilobyte of receive buffer (its truesize), whatever its payload.
        raise(SO_RCVBUF, forced: SO_RCVBUFFORCE, to: replies * 1024 + 256 * 1024, current: &receiveBufferSize)
    }

    /// Sends scattered buffers as one datagram. The corresponding C function is `sendmsg`.
    func send(_ iovecs: inout [iovec], operation: String) throws(NetfilterError) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let sent = withUnsafeMutablePointer(to: &address) { addressPointer in
            iovecs.withUnsafeMutableBufferPointer { vectors in
                var message = msghdr()
                message.msg_name = UnsafeMutableRawPointer(addressPointer)
                message.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
                message.msg_iov = vectors.baseAddress
                message.msg_iovlen = vectors.count
                return retryingOnInterrupt { sendmsg(fd, &message, 0) }
            }
        }
        guard sent >= 0 else { throw NetfilterError(errno: errno, operation: operation) }
    }

    /// Sends one contiguous message. The corresponding C function is `mnl_socket_sendto`.
    func send(_ bytes: UnsafeRawBufferPointer, operation: String) throws(NetfilterError) {
        let sent = retryingOnInterrupt { mnl_socket_sendto(socket, bytes.baseAddress, bytes.count) }
        guard sent >= 0 else { throw NetfilterError(errno: errno, operation: operation) }
    }

    /// Reads one datagram and hands each netlink message in it to `handle`.
    ///
    /// - Returns: false when `wait` is false and nothing was queued.
    func receive(wait: Bool, operation: String, _ handle: (NetlinkReply) throws(NetfilterError) -> Void)
        throws(NetfilterError) -> Bool
    {
        let count = receiveBuffer.withUnsafeMutableBytes { buffer in
            retryingOnInterrupt { recv(fd, buffer.baseAddress, buffer.count, wait ? 0 : Int32(MSG_DONTWAIT)) }
        }
        if count < 0 {
            let error = errno
            if !wait && (error == EAGAIN || error == EWOULDBLOCK) { return false }
            if error == EAGAIN || error == EWOULDBLOCK {
                throw NetfilterError(
                    .protocolViolation, operation: operation, errno: ETIMEDOUT,
                    detail: "no reply from the kernel within 30 s")
            }
            throw NetfilterError(errno: error, operation: operation)
        }
        let parsed = receiveBuffer.withUnsafeBytes { buffer in
            Result { () throws(NetfilterError) in
                try NetlinkReply.decode(
                    UnsafeRawBufferPointer(rebasing: buffer[0..<count]), operation: operation, handle)
            }
        }
        try parsed.get()
        return true
    }
}

/// Repeats a system call while it fails with EINTR; every other result is the caller's to judge.
func retryingOnInterrupt<Result: BinaryInteger>(_ call: () -> Result) -> Result {
    while true {
        let result = call()
        if result < 0 && errno == EINTR { continue }
        return result
    }
}
