/// One etcd member's client URL: `http://host:port` or `https://host:port`.
///
/// The host is an IPv4 address, an IPv6 address in brackets (`https://[2001:db8::10]:2379`) or a DNS name. Its
/// description (`192.0.2.10:2379`) is how errors name the member.
public struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// Whether the connection is plain HTTP/2 or TLS.
    public enum Scheme: String, Sendable, Hashable {
        case http
        case https
    }

    /// The kind of host, which decides how it is reached: an address as it is, a name through DNS.
    public enum HostKind: Sendable, Hashable {
        case ipv4
        case ipv6
        case name
    }

    /// `http` or `https`.
    public var scheme: Scheme
    /// The host without brackets: `192.0.2.10`, `2001:db8::10`, `etcd-1.example.net`.
    public var host: String
    /// The client port, 2379 by etcd's convention.
    public var port: Int

    /// An endpoint from its parts; the host without brackets.
    public init(scheme: Scheme, host: String, port: Int) {
        self.scheme = scheme
        self.host = host
        self.port = port
    }

    /// Parses `http://host:port` or `https://host:port`; the port is required, a path is refused.
    public init(parsing url: String) throws(EtcdError) {
        func invalid(_ reason: String) -> EtcdError {
            EtcdError(.invalidConfiguration, operation: "reading endpoint \"\(url)\"", detail: reason)
        }
        let scheme: Scheme
        let rest: Substring
        if url.hasPrefix("http://") {
            scheme = .http
            rest = url.dropFirst("http://".count)
        } else if url.hasPrefix("https://") {
            scheme = .https
            rest = url.dropFirst("https://".count)
        } else {
            throw invalid("an endpoint starts with http:// or https://")
        }
        var authority = rest
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        guard !authority.contains("/"), !authority.contains("@"), !authority.contains("?") else {
            throw invalid("an endpoint is only scheme, host and port, without a path, a user or a query")
        }
        let host: Substring
        let portText: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid("an IPv6 address needs its ]") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let afterBracket = authority[authority.index(after: close)...]
            guard afterBracket.hasPrefix(":") else { throw invalid("the port is missing (as in [2001:db8::10]:2379)") }
            portText = afterBracket.dropFirst()
        } else {
            guard let colon = authority.lastIndex(of: ":") else {
                throw invalid("the port is missing (as in \(scheme.rawValue)://192.0.2.10:2379)")
            }
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        }
        guard !host.isEmpty else { throw invalid("the host is missing") }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw invalid("the port must be a number from 1 to 65535")
        }
        let endpoint = EtcdEndpoint(scheme: scheme, host: String(host), port: port)
        if authority.hasPrefix("[") {
            guard endpoint.hostKind == .ipv6 else { throw invalid("only an IPv6 address goes in brackets") }
        } else if endpoint.hostKind == .ipv6 {
            throw invalid("an IPv6 address goes in brackets (as in [2001:db8::10]:2379)")
        }
        self = endpoint
    }

    /// What the host is, judged by its spelling.
    public var hostKind: HostKind {
        if host.contains(":") { return .ipv6 }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        if parts.count == 4, parts.allSatisfy({ part in UInt8(part) != nil && !part.isEmpty }) { return .ipv4 }
        return .name
    }

    /// `host:port`, with brackets around an IPv6 address.
    public var description: String {
        hostKind == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The URL this endpoint was parsed from, in its canonical spelling.
    public var url: String { "\(scheme.rawValue)://\(description)" }
}

/// How to reach etcd and who to be there.
///
/// ```swift
/// var configuration = try EtcdConfiguration(endpoints: ["https://192.0.2.10:2379", "https://192.0.2.11:2379"])
/// configuration.tls = .init(certificateAuthorityFile: "/etc/drawbridge/etcd-ca.pem",
///                           certificateFile: "/etc/drawbridge/web-1.pem", keyFile: "/etc/drawbridge/web-1-key.pem")
/// ```
public struct EtcdConfiguration: Sendable {
    /// Files for TLS (`https://` endpoints).
    public struct TLS: Sendable, Hashable {
        /// PEM bundle of the certificate authorities that may sign the server's certificate; nil trusts the system's.
        public var certificateAuthorityFile: String?
        /// PEM client certificate for mutual TLS. When etcd runs with `--client-cert-auth`, its common name is the
        /// etcd user.
        public var certificateFile: String?
        /// PEM private key of `certificateFile`.
        public var keyFile: String?

        /// TLS files by path; all optional.
        public init(certificateAuthorityFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil) {
            self.certificateAuthorityFile = certificateAuthorityFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
        }
    }

    /// An etcd user name and password, exchanged for a token (sent as the metadata `token`).
    public struct Credentials: Sendable, Hashable {
        /// The etcd user name.
        public var user: String
        /// The user's password, sent once per token (Authenticate), never with every request.
        public var password: String

        /// A user and its password.
        public init(user: String, password: String) {
            self.user = user
            self.password = password
        }
    }

    /// The members to use, in the order of preference. The client talks to one of them; which one, and when to move
    /// on to the next, is the caller's decision (see ``EtcdError/isRetryable``).
    public var endpoints: [EtcdEndpoint]
    /// TLS files, used by `https://` endpoints; nil there means the system's trust roots and no client certificate.
    public var tls: TLS?
    /// User and password; nil when the client certificate names the user, or etcd runs without authentication.
    public var credentials: Credentials?
    /// How long a unary request (range, put, delete, lease grant and revoke, authenticate) may take.
    public var requestTimeout: Duration
    /// How often an idle HTTP/2 connection with open watches is pinged, so a dead member is noticed; etcd refuses
    /// pings more frequent than its `--grpc-keepalive-min-time` (5 s by default).
    public var keepaliveInterval: Duration
    /// How long to wait for a ping's answer before the connection counts as lost.
    public var keepaliveTimeout: Duration

    /// A configuration from parsed endpoints; timeouts have defaults.
    public init(
        endpoints: [EtcdEndpoint], tls: TLS? = nil, credentials: Credentials? = nil,
        requestTimeout: Duration = .seconds(5), keepaliveInterval: Duration = .seconds(10),
        keepaliveTimeout: Duration = .seconds(5)
    ) {
        self.endpoints = endpoints
        self.tls = tls
        self.credentials = credentials
        self.requestTimeout = requestTimeout
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout
    }

    /// Parses each URL with ``EtcdEndpoint/init(parsing:)``.
    public init(endpoints urls: [String], tls: TLS? = nil, credentials: Credentials? = nil) throws(EtcdError) {
        var endpoints: [EtcdEndpoint] = []
        for url in urls { endpoints.append(try EtcdEndpoint(parsing: url)) }
        self.init(endpoints: endpoints, tls: tls, credentials: credentials)
    }
}
