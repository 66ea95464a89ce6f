import DrawbridgeCore
import Glibc

/// IPv4 and IPv6 socket addresses: the one place that fills `sockaddr_in` and `sockaddr_in6` and reads them back.
public enum InternetSocket {
    /// `sockaddr_in` or `sockaddr_in6` bytes for an address and port.
    public static func address(_ address: IPAddress, port: UInt16) -> [UInt8] {
        let bytes = address.bytes
        switch address {
        case .v4:
            var value = sockaddr_in()
            value.sin_family = sa_family_t(AF_INET)
            value.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &value.sin_addr) { for index in 0..<4 { $0[index] = bytes[index] } }
            return withUnsafeBytes(of: value) { Array($0) }
        case .v6:
            var value = sockaddr_in6()
            value.sin6_family = sa_family_t(AF_INET6)
            value.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &value.sin6_addr) { for index in 0..<16 { $0[index] = bytes[index] } }
            return withUnsafeBytes(of: value) { Array($0) }
        }
    }

    /// The address in a `sockaddr` of family AF_INET or AF_INET6; nil for any other family.
    public static func address(of raw: UnsafePointer<sockaddr>) -> IPAddress? {
        switch Int32(raw.pointee.sa_family) {
        case AF_INET:
            return raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { pointer in
                withUnsafeBytes(of: pointer.pointee.sin_addr) { IPAddress(bytes: $0) }
            }
        case AF_INET6:
            return raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { pointer in
                withUnsafeBytes(of: pointer.pointee.sin6_addr) { IPAddress(bytes: $0) }
            }
        default: return nil
        }
    }

    /// Calls `connect` or `bind` (`call`) with the socket address for `address` and `port`; returns its result.
    public static func with(
        _ address: IPAddress, port: UInt16, _ call: (UnsafePointer<sockaddr>, socklen_t) -> Int32
    ) -> Int32 {
        let raw = self.address(address, port: port)
        return raw.withUnsafeBytes { call($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }
    }
}
