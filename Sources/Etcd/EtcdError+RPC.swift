import GRPCCore

extension EtcdError {
    /// Classifies a gRPC failure by its status code and etcd's message (etcd's own errors read "etcdserver: ...";
    /// the same code can mean different things, as InvalidArgument does for a wrong password).
    init(_ error: any Error, endpoint: EtcdEndpoint, operation: String, user: String?, prefix: String? = nil) {
        if let error = error as? EtcdError {
            self = error
            return
        }
        let (code, detail) = Self.classify(error)
        self.init(code, endpoint: endpoint, operation: operation, user: user, detail: detail, prefix: prefix)
    }

    /// Builds the error for a watch etcd cancelled, from its `cancel_reason` (an etcd error message).
    init(cancelReason: String, endpoint: EtcdEndpoint, operation: String, user: String?, prefix: String) {
        let (code, detail) = Self.classify(serverMessage: cancelReason, status: nil)
        self.init(code, endpoint: endpoint, operation: operation, user: user, detail: detail, prefix: prefix)
    }

    /// Whether etcd refused the token itself (as opposed to what the user may do): after the token's expiry, or a
    /// change of the auth store. The remedy is to authenticate again.
    static func isTokenRejection(_ error: any Error) -> Bool {
        guard let error = error as? RPCError else { return false }
        return isTokenRejection(message: error.message)
    }

    static func isTokenRejection(message: String) -> Bool {
        let words = serverWords(message)
        return words == "invalid auth token" || words == "revision of auth store is old"
    }

    /// etcd's message without its "etcdserver: " prefix, and without the gRPC status wrapper
    /// ("rpc error: code = PermissionDenied desc = ...") that etcd 3.4 leaves in a watch's cancel reason.
    static func serverWords(_ message: String) -> String {
        var words = Substring(message)
        if words.hasPrefix("rpc error: code = "), let description = words.firstRange(of: " desc = ") {
            words = words[description.upperBound...]
        }
        if words.hasPrefix("etcdserver: ") { words = words.dropFirst("etcdserver: ".count) }
        return String(words)
    }

    static func classify(_ error: any Error) -> (Code, String?) {
        guard let error = error as? RPCError else {
            if error is CancellationError { return (.other, "cancelled") }
            return (.other, describe(error))
        }
        if error.message.hasPrefix("etcdserver: ") {
            return classify(serverMessage: error.message, status: error.code)
        }
        // Not etcd's words: the transport failed (connection refused or lost, TLS handshake, deadline).
        let detail = describe(error)
        if let reason = tlsReason(detail) {
            if reason.contains("CERTIFICATE_VERIFY_FAILED") {
                return (
                    .certificateRejected,
                    "the member's certificate is not trusted (\(reason)); check the certificate authority file and "
                        + "that the certificate names the member's address"
                )
            }
            if reason.contains("CERTIFICATE") || reason.contains("UNKNOWN_CA") {
                return (.certificateRejected, "the member refused the client certificate, or its absence (\(reason))")
            }
        }
        switch error.code {
        // Cancelled by the other side (our own cancellation never gets here): the stream is gone, try again.
        case .unavailable, .unknown, .internalError, .aborted, .cancelled: return (.unavailable, detail)
        case .deadlineExceeded: return (.timedOut, nil)
        case .permissionDenied: return (.permissionDenied, detail)
        case .unauthenticated: return (.authenticationFailed, detail)
        case .unimplemented: return (.protocolViolation, detail)
        default: return (.other, detail)
        }
    }

    /// BoringSSL's reason name in a TLS failure ("SSLV3_ALERT_BAD_CERTIFICATE"), which says more than the rest.
    static func tlsReason(_ text: String) -> String? {
        guard let marker = text.firstRange(of: "OPENSSL_internal:") else { return nil }
        let reason = text[marker.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
        return reason.isEmpty ? nil : String(reason)
    }

    /// Maps one of etcd's error messages (rpctypes/error.go in etcd's sources) to a code and the words worth
    /// keeping.
    static func classify(serverMessage message: String, status: RPCError.Code?) -> (Code, String?) {
        let words = serverWords(message)
        switch words {
        case "permission denied": return (.permissionDenied, nil)
        case "authentication failed, invalid user ID or password":
            return (.authenticationFailed, "wrong user or password")
        case "invalid auth token", "revision of auth store is old", "user name is empty",
            "authentication is not enabled":
            return (.authenticationFailed, words)
        case "mvcc: required revision has been compacted": return (.compacted, nil)
        case "mvcc: required revision is a future revision": return (.futureRevision, nil)
        case "requested lease not found": return (.leaseNotFound, nil)
        case "mvcc: database space exceeded": return (.noSpace, nil)
        // "watch canceled": etcd ended the stream itself; after losing its leader, it says so half of the time
        // and "no leader" the other half (a race in etcd 3.4's Watch handler).
        case "too many requests", "not leader", "no leader", "leader changed", "not capable", "server stopped",
            "unhealthy cluster", "rpc not supported for learner", "watch canceled":
            return (.unavailable, words)
        default:
            if words.hasPrefix("request timed out") { return (.timedOut, words) }
            if status == .unavailable { return (.unavailable, words) }
            return (.other, words)
        }
    }

    /// A transport error in one line: gRPC's message and the innermost cause, without wrappers and noise.
    static func describe(_ error: any Error) -> String {
        var parts: [String] = []
        var current: (any Error)? = error
        var depth = 0
        while let error = current, depth < 5 {
            depth += 1
            var message: String
            switch error {
            case let error as RPCError:
                message = error.message
                current = error.cause
            case let error as RuntimeError:
                message = error.message
                current = error.cause
            default:
                message = systemWords(String(describing: error))
                current = nil
            }
            // What wait-for-ready means is gRPC's business; what follows it is the caller's.
            let noise = "Channel is in a transient failure state and 'wait for ready' isn't enabled."
            if message.hasPrefix(noise) { message = String(message.dropFirst(noise.count).drop { $0 == " " }) }
            if message.isEmpty { continue }
            parts.append(message.hasSuffix(".") ? String(message.dropLast()) : message)
        }
        return parts.joined(separator: ": ")
    }

    /// NIO describes a failed system call as "connection reset (error set): Connection refused) (errno: 111)";
    /// the system's own words are the useful part.
    static func systemWords(_ text: String) -> String {
        guard let marker = text.firstRange(of: " (errno: ") else { return text }
        var head = text[..<marker.lowerBound]
        if head.hasSuffix(")") { head = head.dropLast() }
        if let colon = head.lastIndex(of: ":") { head = head[head.index(after: colon)...] }
        let words = head.drop { $0 == " " }
        return words.isEmpty ? text : String(words)
    }
}
