import Foundation
import Testing

@testable import Etcd

@Suite struct EndpointTests {
    @Test(
        "endpoints parse",
        arguments: [
            ("http://192.0.2.10:2379", EtcdEndpoint(scheme: .http, host: "192.0.2.10", port: 2379), "192.0.2.10:2379"),
            (
                "https://[2001:db8::10]:2379", EtcdEndpoint(scheme: .https, host: "2001:db8::10", port: 2379),
                "[2001:db8::10]:2379"
            ),
            (
                "https://etcd-1.example.net:2379/",
                EtcdEndpoint(scheme: .https, host: "etcd-1.example.net", port: 2379), "etcd-1.example.net:2379"
            ),
        ])
    func parses(url: String, endpoint: EtcdEndpoint, description: String) throws {
        let parsed = try EtcdEndpoint(parsing: url)
        #expect(parsed == endpoint)
        #expect(parsed.description == description)
    }

    @Test(
        "host kinds",
        arguments: [
            ("192.0.2.10", EtcdEndpoint.HostKind.ipv4), ("2001:db8::1", .ipv6), ("192.0.2", .name), ("etcd", .name),
            ("300.0.2.1", .name),
        ])
    func hostKinds(host: String, kind: EtcdEndpoint.HostKind) {
        #expect(EtcdEndpoint(scheme: .http, host: host, port: 1).hostKind == kind)
    }

    @Test(
        "bad endpoints are refused with a reason",
        arguments: [
            ("192.0.2.10:2379", "an endpoint starts with http:// or https://"),
            ("http://192.0.2.10", "the port is missing (as in http://192.0.2.10:2379)"),
            ("https://192.0.2.10:0", "the port must be a number from 1 to 65535"),
            ("https://192.0.2.10:http", "the port must be a number from 1 to 65535"),
            ("https://2001:db8::10:2379", "an IPv6 address goes in brackets (as in [2001:db8::10]:2379)"),
            ("https://[etcd]:2379", "only an IPv6 address goes in brackets"),
            (
                "https://192.0.2.10:2379/v3",
                "an endpoint is only scheme, host and port, without a path, a user or a query"
            ),
            ("https://:2379", "the host is missing"),
        ])
    func refuses(url: String, reason: String) {
        #expect {
            try EtcdEndpoint(parsing: url)
        } throws: { error in
            let error = error as! EtcdError
            return error.code == .invalidConfiguration && error.detail == reason
                && error.description == "etcd: invalid configuration reading endpoint \"\(url)\": \(reason)"
        }
    }

    @Test("TLS files with an http:// endpoint are a configuration error, not a silent downgrade")
    func tlsWithPlainEndpoint() throws {
        let configuration = try EtcdConfiguration(
            endpoints: ["http://192.0.2.10:2379"], tls: .init(certificateAuthorityFile: "/etc/ssl/ca.pem"))
        #expect(throws: EtcdError.self) { try EtcdClient(configuration: configuration) }
    }
}

@Suite struct KeyRangeTests {
    @Test(
        "a prefix selects the keys that start with it",
        arguments: [
            ("/a/", Array("/a/".utf8), Array("/a0".utf8)),
            ("", [0], [0]),
            ("a\u{7F}", [0x61, 0x7F], [0x61, 0x80]),
        ])
    func prefixes(prefix: String, key: [UInt8], end: [UInt8]) {
        let range = EtcdClient.keyRange(prefix: prefix)
        #expect(Array(range.key) == key)
        #expect(Array(range.end) == end)
    }
}

@Suite struct ErrorTests {
    static let endpoint = EtcdEndpoint(scheme: .https, host: "192.0.2.10", port: 2379)

    @Test(
        "etcd's messages map to codes",
        arguments: [
            ("etcdserver: permission denied", EtcdError.Code.permissionDenied, false),
            ("etcdserver: authentication failed, invalid user ID or password", .authenticationFailed, false),
            ("etcdserver: mvcc: required revision has been compacted", .compacted, false),
            ("etcdserver: requested lease not found", .leaseNotFound, false),
            ("etcdserver: no leader", .unavailable, true),
            ("etcdserver: request timed out", .timedOut, true),
            ("etcdserver: mvcc: database space exceeded", .noSpace, false),
            ("etcdserver: too many requests", .unavailable, true),
            ("etcdserver: watch canceled", .unavailable, true),
            ("etcdserver: something new", .other, false),
            // etcd 3.4 puts a watch's refusal in its cancel reason with the gRPC status around it.
            ("rpc error: code = PermissionDenied desc = etcdserver: permission denied", .permissionDenied, false),
        ])
    func serverMessages(message: String, code: EtcdError.Code, retryable: Bool) {
        let error = EtcdError(
            cancelReason: message, endpoint: Self.endpoint, operation: "reading /a/", user: "web-1", prefix: "/a/")
        #expect(error.code == code)
        #expect(error.isRetryable == retryable)
        #expect(error.description.hasPrefix("etcd 192.0.2.10:2379: "))
    }

    @Test(
        "a rejected token is told apart from a refused permission",
        arguments: [
            ("etcdserver: invalid auth token", true),
            ("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token", true),
            ("etcdserver: revision of auth store is old", true),
            ("etcdserver: permission denied", false),
        ])
    func tokenRejection(message: String, rejected: Bool) {
        #expect(EtcdError.isTokenRejection(message: message) == rejected)
    }

    @Test("transport failures keep the system's and BoringSSL's words")
    func transportWords() {
        #expect(
            EtcdError.systemWords("connection reset (error set): Connection refused) (errno: 111)")
                == "Connection refused")
        #expect(EtcdError.systemWords("no errno here") == "no errno here")
        let handshake = "sslError([Error: 268436498 error:10000412:SSL routines:OPENSSL_internal:"
        #expect(
            EtcdError.tlsReason(handshake + "SSLV3_ALERT_BAD_CERTIFICATE at x.cc:491])")
                == "SSLV3_ALERT_BAD_CERTIFICATE")
        #expect(EtcdError.tlsReason("Stream unexpectedly closed") == nil)
    }

    @Test("the description names member, operation, user")
    func description() {
        let error = EtcdError(
            .permissionDenied, endpoint: Self.endpoint, operation: "reading /drawbridge/v1/grants/host/b/",
            user: "web-1")
        #expect(
            error.description
                == "etcd 192.0.2.10:2379: permission denied reading /drawbridge/v1/grants/host/b/ (user web-1)")
    }
}

@Suite struct CertificateNameTests {
    @Test(
        "the common name is read from a PEM certificate",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func commonName() throws {
        let directory = NSTemporaryDirectory() + "drawbridge-cn-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            directory + "/key.pem", "-out", directory + "/cert.pem", "-days", "1", "-subj", "/O=Drawbridge/CN=web-1",
        ]
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(CertificateName.commonName(pemFile: directory + "/cert.pem") == "web-1")
        #expect(CertificateName.commonName(pemFile: directory + "/key.pem") == nil)
        #expect(CertificateName.commonName(pemFile: directory + "/missing.pem") == nil)
    }

    @Test("garbage is no name, not a crash")
    func garbage() {
        #expect(CertificateName.commonName(der: []) == nil)
        #expect(CertificateName.commonName(der: [0x30, 0x82, 0xFF]) == nil)
        #expect(CertificateName.commonName(der: [0x30, 0x03, 0x30, 0x01, 0x02]) == nil)
    }
}
