import EtcdAPI
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import Synchronization

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// A client of one etcd member, speaking etcd's v3 gRPC API.
///
/// Start ``run()`` in a task before (or while) making requests, and call ``shutdown()`` when done; or use
/// ``withClient(configuration:endpoint:_:)``, which does both. Requests fail fast with a retryable ``EtcdError``
/// while the member is unreachable; trying again later, or on the next endpoint, is the caller's policy.
///
/// Every request carries the metadata `hasleader: true`, so a member cut off from its cluster refuses at once
/// instead of serving stale data or holding a watch that never delivers.
public final class EtcdClient: Sendable {
    /// The member this client talks to.
    public let endpoint: EtcdEndpoint
    /// What the client was made with.
    public let configuration: EtcdConfiguration
    /// The etcd user requests run as: the password user, or the common name of the client certificate.
    public let user: String?

    let grpc: GRPCClient<HTTP2ClientTransport.Posix>
    /// The current authentication token (password authentication only); nil until the first request, and again
    /// after etcd rejected it.
    private let token = Mutex<String?>(nil)

    /// Prepares a client for `endpoint` (by default the first of `configuration.endpoints`); nothing connects
    /// before ``run()``.
    public init(configuration: EtcdConfiguration, endpoint: EtcdEndpoint? = nil) throws(EtcdError) {
        guard let endpoint = endpoint ?? configuration.endpoints.first else {
            throw EtcdError(.invalidConfiguration, operation: "connecting", detail: "no endpoint is configured")
        }
        self.endpoint = endpoint
        self.configuration = configuration
        let tls = configuration.tls
        user =
            configuration.credentials?.user
            ?? tls?.certificateFile.flatMap { file in
                endpoint.scheme == .https ? CertificateName.commonName(pemFile: file) : nil
            }
        func invalid(_ detail: String) -> EtcdError {
            EtcdError(.invalidConfiguration, endpoint: endpoint, operation: "connecting", detail: detail)
        }

        let security: HTTP2ClientTransport.Posix.TransportSecurity
        switch endpoint.scheme {
        case .http:
            if let tls, tls.certificateFile != nil || tls.certificateAuthorityFile != nil {
                throw invalid("TLS files are configured but the endpoint is http://; use https://")
            }
            security = .plaintext
        case .https:
            if (tls?.certificateFile == nil) != (tls?.keyFile == nil) {
                throw invalid("a client certificate needs both its certificate file and its key file")
            }
            for file in [tls?.certificateAuthorityFile, tls?.certificateFile, tls?.keyFile].compactMap({ $0 }) {
                guard FileManager.default.isReadableFile(atPath: file) else { throw invalid("cannot read \(file)") }
            }
            security = .tls { settings in
                if let authority = tls?.certificateAuthorityFile {
                    settings.trustRoots = .certificates([.file(path: authority, format: .pem)])
                }
                if let certificate = tls?.certificateFile, let key = tls?.keyFile {
                    settings.certificateChain = [.file(path: certificate, format: .pem)]
                    settings.privateKey = .file(path: key, format: .pem)
                }
            }
        }

        let target: any ResolvableTarget =
            switch endpoint.hostKind {
            case .ipv4: .ipv4(address: endpoint.host, port: endpoint.port)
            case .ipv6: .ipv6(address: endpoint.host, port: endpoint.port)
            case .name: .dns(host: endpoint.host, port: endpoint.port)
            }
        let transportConfiguration = HTTP2ClientTransport.Posix.Config.defaults { settings in
            // Reconnect soon after a lost connection: the caller's backoff decides the pace, and a long transport
            // backoff underneath would turn its retries into instant failures.
            settings.backoff = .init(initial: .milliseconds(200), max: .seconds(2), multiplier: 1.6, jitter: 0.2)
            // Pings only while calls are open: etcd answers pings on an idle connection with GOAWAY.
            settings.connection.keepalive = .init(
                time: configuration.keepaliveInterval, timeout: configuration.keepaliveTimeout,
                allowWithoutCalls: false)
        }
        do {
            let transport = try HTTP2ClientTransport.Posix(
                target: target, transportSecurity: security, config: transportConfiguration)
            grpc = GRPCClient(transport: transport)
        } catch {
            throw invalid(EtcdError.describe(error))
        }
    }

    /// Runs the connection to the member until ``shutdown()`` and the end of every call still open, or until the
    /// calling task is cancelled.
    public func run() async throws(EtcdError) {
        do {
            try await grpc.runConnections()
        } catch {
            throw EtcdError(
                .unavailable, endpoint: endpoint, operation: "connecting", detail: EtcdError.describe(error))
        }
    }

    /// Stops accepting requests; ``run()`` returns once open calls end. Cancel open watches and keep-alives first.
    public func shutdown() {
        grpc.beginGracefulShutdown()
    }

    /// Creates a client, runs it while `body` does, and shuts it down after.
    public static func withClient<Result: Sendable>(
        configuration: EtcdConfiguration, endpoint: EtcdEndpoint? = nil,
        _ body: (EtcdClient) async throws -> Result
    ) async throws -> Result {
        let client = try EtcdClient(configuration: configuration, endpoint: endpoint)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            do {
                let result = try await body(client)
                client.shutdown()
                try await group.waitForAll()
                return result
            } catch {
                client.shutdown()
                group.cancelAll()
                throw error
            }
        }
    }

    // MARK: Keys

    /// Reads every key under `prefix` (all keys when it is empty), at `revision` or, when nil, at the newest one.
    public func range(prefix: String, revision: Int64? = nil) async throws(EtcdError) -> EtcdRange {
        var request = Etcdserverpb_RangeRequest()
        let (key, end) = Self.keyRange(prefix: prefix)
        request.key = key
        request.rangeEnd = end
        request.revision = revision ?? 0
        let at = revision.map { " at revision \($0)" } ?? ""
        var options = unaryOptions
        // A snapshot of many grants may exceed gRPC's usual 4 MiB limit; etcd itself allows large responses.
        options.maxResponseMessageBytes = 64 << 20
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let response = try await unary("reading \(prefix)\(at)", prefix: prefix) { metadata in
            try await kv.range(request, metadata: metadata, options: options)
        }
        return EtcdRange(revision: response.header.revision, keyValues: response.kvs.map(EtcdKeyValue.init))
    }

    /// Writes `value` at `key`, attached to `lease` if given; returns the revision of the write.
    @discardableResult
    public func put(_ key: String, value: [UInt8], lease: EtcdLease? = nil) async throws(EtcdError) -> Int64 {
        var request = Etcdserverpb_PutRequest()
        request.key = Data(key.utf8)
        request.value = Data(value)
        request.lease = lease?.id ?? 0
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let response = try await unary("writing \(key)", prefix: key) { metadata in
            try await kv.put(request, metadata: metadata, options: unaryOptions)
        }
        return response.header.revision
    }

    /// Deletes `key`; returns the revision after the delete and whether the key existed.
    @discardableResult
    public func delete(_ key: String) async throws(EtcdError) -> (revision: Int64, deleted: Bool) {
        var request = Etcdserverpb_DeleteRangeRequest()
        request.key = Data(key.utf8)
        let kv = Etcdserverpb_KV.Client(wrapping: grpc)
        let response = try await unary("deleting \(key)", prefix: key) { metadata in
            try await kv.deleteRange(request, metadata: metadata, options: unaryOptions)
        }
        return (response.header.revision, response.deleted > 0)
    }

    // MARK: Leases

    /// Creates a lease that expires `ttl` (whole seconds, rounded up) after its last keep-alive.
    public func grantLease(ttl: Duration) async throws(EtcdError) -> EtcdLease {
        var request = Etcdserverpb_LeaseGrantRequest()
        let seconds = max(1, ttl.components.seconds + (ttl.components.attoseconds > 0 ? 1 : 0))
        request.ttl = seconds
        let lease = Etcdserverpb_Lease.Client(wrapping: grpc)
        let operation = "granting a lease of \(seconds) s"
        let response = try await unary(operation) { metadata in
            try await lease.leaseGrant(request, metadata: metadata, options: unaryOptions)
        }
        guard response.error.isEmpty else {
            throw EtcdError(.other, endpoint: endpoint, operation: operation, user: user, detail: response.error)
        }
        return EtcdLease(id: response.id, ttl: .seconds(response.ttl))
    }

    /// Revokes `lease`, deleting every key attached to it.
    public func revokeLease(_ lease: EtcdLease) async throws(EtcdError) {
        var request = Etcdserverpb_LeaseRevokeRequest()
        request.id = lease.id
        let leases = Etcdserverpb_Lease.Client(wrapping: grpc)
        _ = try await unary("revoking lease \(lease)") { metadata in
            try await leases.leaseRevoke(request, metadata: metadata, options: unaryOptions)
        }
    }

    /// Keeps `lease` alive until the calling task is cancelled (then it returns normally), renewing it every third
    /// of its TTL (the TTL etcd answers with, once it has); `onRenewal` receives the TTL etcd reset it to.
    ///
    /// Throws ``EtcdError/Code/leaseNotFound`` when etcd no longer knows the lease (it expired or was revoked), and
    /// a retryable error when the connection fails: keep-alive again soon, before the TTL runs out.
    public func keepAlive(_ lease: EtcdLease, onRenewal: @escaping @Sendable (Duration) -> Void = { _ in })
        async throws(EtcdError)
    {
        let operation = "keeping lease \(lease) alive"
        let interval = SharedValue(max(lease.ttl / 3, .milliseconds(500)))
        let leases = Etcdserverpb_Lease.Client(wrapping: grpc)
        let metadata = try await requestMetadata(operation: operation)
        var message = Etcdserverpb_LeaseKeepAliveRequest()
        message.id = lease.id
        let request = message
        let expired: Bool
        do {
            expired = try await leases.leaseKeepAlive(metadata: metadata, options: streamOptions) { writer in
                while !Task.isCancelled {
                    try await writer.write(request)
                    try await Task.sleep(for: interval.value)
                }
            } onResponse: { response in
                for try await message in response.messages {
                    // etcd answers TTL 0 (or less) for a lease it does not have.
                    if message.ttl <= 0 { return true }
                    interval.value = max(.seconds(message.ttl) / 3, .milliseconds(500))
                    onRenewal(.seconds(message.ttl))
                }
                return false
            }
        } catch {
            if Task.isCancelled { return }
            throw mapped(error, operation: operation)
        }
        if Task.isCancelled { return }
        if expired {
            throw EtcdError(.leaseNotFound, endpoint: endpoint, operation: operation, user: user)
        }
        throw EtcdError(
            .unavailable, endpoint: endpoint, operation: operation, user: user,
            detail: "the member closed the keep-alive stream")
    }

    // MARK: Watch

    /// Watches every key under `prefix` from `fromRevision` on (inclusive).
    public func watch(prefix: String, fromRevision: Int64) -> EtcdWatch {
        EtcdWatch(client: self, starts: [EtcdWatch.Start(prefix: prefix, revision: fromRevision)])
    }

    /// Watches several prefixes from one revision on, over one stream.
    public func watch(prefixes: [String], fromRevision: Int64) -> EtcdWatch {
        EtcdWatch(client: self, starts: prefixes.map { EtcdWatch.Start(prefix: $0, revision: fromRevision) })
    }

    /// Watches several prefixes, each from its own revision: how a watch resumes after a disconnect, from each
    /// prefix's last ``EtcdWatchResponse/nextRevision`` (etcd does not order events of different prefixes).
    public func watch(fromRevisions: [String: Int64]) -> EtcdWatch {
        EtcdWatch(
            client: self,
            starts: fromRevisions.sorted { $0.key < $1.key }.map { EtcdWatch.Start(prefix: $0.key, revision: $0.value) }
        )
    }

    // MARK: Plumbing

    var unaryOptions: CallOptions {
        var options = CallOptions.defaults
        options.timeout = configuration.requestTimeout
        options.waitForReady = false
        return options
    }

    var streamOptions: CallOptions {
        var options = CallOptions.defaults
        options.waitForReady = false
        return options
    }

    /// `hasleader`, and the token when authenticating by password (fetched first if there is none).
    func requestMetadata(operation: String) async throws(EtcdError) -> Metadata {
        var metadata: Metadata = ["hasleader": "true"]
        if let credentials = configuration.credentials {
            let current = token.withLock { $0 }
            let value: String
            if let current {
                value = current
            } else {
                value = try await authenticate(credentials)
            }
            metadata.addString(value, forKey: "token")
        }
        return metadata
    }

    /// Forgets a token etcd rejected (it expired, or etcd lost it), so the next request authenticates anew.
    func forgetToken() {
        token.withLock { $0 = nil }
    }

    private func authenticate(_ credentials: EtcdConfiguration.Credentials) async throws(EtcdError) -> String {
        var request = Etcdserverpb_AuthenticateRequest()
        request.name = credentials.user
        request.password = credentials.password
        let auth = Etcdserverpb_Auth.Client(wrapping: grpc)
        let response: Etcdserverpb_AuthenticateResponse
        do {
            response = try await auth.authenticate(request, metadata: ["hasleader": "true"], options: unaryOptions)
        } catch {
            throw mapped(error, operation: "logging in")
        }
        token.withLock { $0 = response.token }
        return response.token
    }

    /// Runs a unary call with fresh metadata; when etcd rejects the token, authenticates once more and repeats.
    private func unary<Response: Sendable>(
        _ operation: String, prefix: String? = nil,
        _ call: (Metadata) async throws -> Response
    ) async throws(EtcdError) -> Response {
        var renewed = false
        while true {
            let metadata = try await requestMetadata(operation: operation)
            do {
                return try await call(metadata)
            } catch {
                if !renewed, configuration.credentials != nil, EtcdError.isTokenRejection(error) {
                    forgetToken()
                    renewed = true
                    continue
                }
                throw mapped(error, operation: operation, prefix: prefix)
            }
        }
    }

    func mapped(_ error: any Error, operation: String, prefix: String? = nil) -> EtcdError {
        EtcdError(error, endpoint: endpoint, operation: operation, user: user, prefix: prefix)
    }

    /// The key and range end that select every key starting with `prefix`.
    static func keyRange(prefix: String) -> (key: Data, end: Data) {
        // An empty prefix means every key: from "\0" to the end ("\0" as range end means no upper bound).
        guard !prefix.isEmpty else { return (Data([0]), Data([0])) }
        var end = Array(prefix.utf8)
        while let last = end.last {
            if last < 0xFF {
                end[end.count - 1] = last + 1
                return (Data(prefix.utf8), Data(end))
            }
            end.removeLast()
        }
        return (Data(prefix.utf8), Data([0]))
    }
}

/// A value the closures of one call share (a `Mutex` itself cannot be captured: it is not copyable).
final class SharedValue<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        mutex = Mutex(value)
    }

    var value: Value {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
}

extension EtcdKeyValue {
    init(_ message: Mvccpb_KeyValue) {
        self.init(
            key: String(decoding: message.key, as: UTF8.self), value: Array(message.value),
            createRevision: message.createRevision, modRevision: message.modRevision, version: message.version,
            leaseID: message.lease == 0 ? nil : message.lease)
    }
}
