import ArgumentParser
import DrawbridgeCore
import Glibc
import HostSystem

/// A host name or address resolved to the one address the knock goes to.
struct ResolvedHost {
    let address: IPAddress
    let port: UInt16

    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    init(_ host: String, port: UInt16, family: Int32) throws {
        if let literal = IPAddress(host) {
            guard family == AF_UNSPEC || (family == AF_INET) == (literal.family == .ipv4) else {
                throw Problem(description: "\(host) is not an address of the family asked for (-4/-6)")
            }
            address = literal
            self.port = port
            return
        }
        var hints = addrinfo()
        hints.ai_family = family
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &list)
        guard status == 0, let first = list else {
            throw Problem(description: "cannot resolve \(host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var found: IPAddress?
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry, found == nil {
            if let raw = current.pointee.ai_addr { found = InternetSocket.address(of: raw) }
            entry = current.pointee.ai_next
        }
        guard let found else { throw Problem(description: "\(host) has no IPv4 or IPv6 address") }
        address = found
        self.port = port
    }
}

/// A connected UDP socket: the kernel picks the source address a packet to the host would leave with, which is the
/// client's own view of its address (the knock carries it; NAT may change what the host sees).
struct UDPSender {
    let descriptor: Int32
    let localAddress: IPAddress?

    init(to target: ResolvedHost, from local: IPAddress?) throws {
        let family = target.address.family == .ipv4 ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { fail("cannot open a UDP socket: \(String(cString: strerror(errno)))", .failure) }
        if let local, !bindLocal(fd, local) {
            fail("cannot send from \(local): \(String(cString: strerror(errno)))", ExitStatus.unavailable)
        }
        let connected = InternetSocket.with(target.address, port: target.port) { connect(fd, $0, $1) }
        guard connected == 0 else {
            fail("cannot reach \(target.address): \(String(cString: strerror(errno)))", ExitStatus.unavailable)
        }
        descriptor = fd
        localAddress = Self.localAddress(of: fd)
    }

    static func localAddress(of fd: Int32) -> IPAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        return withUnsafePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { InternetSocket.address(of: $0) }
        }
    }

    func send(_ bytes: [UInt8]) throws {
        let sent = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, 0) }
        guard sent == bytes.count else { throw ResolvedHost.Problem(description: String(cString: strerror(errno))) }
    }
}

/// Whether a TCP port answers: a full handshake, retried until a deadline.
enum TCPProbe {
    static func waitUntilOpen(
        _ address: IPAddress, port: UInt16, from local: IPAddress?, until deadline: MonotonicInstant
    ) -> Bool {
        repeat {
            let started = SystemClock.monotonic()
            if connects(address, port: port, from: local, within: 0.5) { return true }
            let spent = SystemClock.monotonic().seconds(since: started)
            if spent < 0.2 { usleep(UInt32((0.2 - spent) * 1_000_000)) }
        } while SystemClock.monotonic() < deadline
        return false
    }

    static func connects(_ address: IPAddress, port: UInt16, from local: IPAddress?, within seconds: Double) -> Bool {
        let family = address.family == .ipv4 ? AF_INET : AF_INET6
        let descriptor = socket(
            family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        if let local, !bindLocal(descriptor, local) { return false }
        let result = InternetSocket.with(address, port: port) { connect(descriptor, $0, $1) }
        if result == 0 { return true }
        guard errno == EINPROGRESS else { return false }
        var entry = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        guard poll(&entry, 1, Int32(seconds * 1000)) == 1 else { return false }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length)
        return error == 0
    }
}

/// Binds a socket to a local address (any port).
func bindLocal(_ descriptor: Int32, _ address: IPAddress) -> Bool {
    InternetSocket.with(address, port: 0) { bind(descriptor, $0, $1) } == 0
}
