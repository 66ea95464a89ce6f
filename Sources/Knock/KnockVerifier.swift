/// Decides whether a knock packet is genuine and fresh: signed in the knock namespace by one of the allowed keys,
/// with a timestamp within the allowed clock skew.
///
/// What the key may open, whether the host name is this host's, and whether the nonce was seen before are the
/// agent's questions; the verifier answers which key signed (see ``NonceCache`` for the replay check).
public struct KnockVerifier: Sendable {
    /// How far the packet's timestamp may lie behind or ahead of the receiver's clock.
    public let maximumSkew: Duration
    private let allowed: Set<SSHFingerprint>
    private let skewMilliseconds: Int64

    /// A verifier that accepts knocks signed by any of `allowedKeys`.
    public init(allowedKeys: some Sequence<SSHPublicKey>, maximumSkew: Duration) {
        self.init(allowedFingerprints: allowedKeys.map(\.fingerprint), maximumSkew: maximumSkew)
    }

    /// A verifier that accepts knocks signed by the keys with these fingerprints. A packet carries its signer's
    /// whole public key, so a fingerprint is enough to recognise it.
    public init(allowedFingerprints: some Sequence<SSHFingerprint>, maximumSkew: Duration) {
        self.allowed = Set(allowedFingerprints)
        self.maximumSkew = maximumSkew
        self.skewMilliseconds = Self.milliseconds(maximumSkew)
    }

    /// Decodes and verifies a datagram; a datagram that does not decode is refused as ``KnockRefusal/malformed(_:)``.
    /// Never traps, whatever the bytes: this is the entry point a fuzzer drives.
    public func verify(datagram: some Collection<UInt8>, nowMilliseconds: Int64) -> KnockVerdict {
        do {
            return verify(try KnockPacket.decode(datagram), nowMilliseconds: nowMilliseconds)
        } catch {
            return .refused(.malformed(error))
        }
    }

    /// Verifies a decoded packet against the clock `nowMilliseconds` (Unix milliseconds).
    ///
    /// The checks run in this order, and the first that fails is the reason: the namespace, whether the key is
    /// allowed, the signature (and a security key's user-presence flag), the timestamp. The signature comes before
    /// the timestamp so that a stale or future timestamp in the log always belongs to a genuinely signed packet (a
    /// replay, or a client with a wrong clock), never to a forgery.
    public func verify(_ packet: KnockPacket, nowMilliseconds: Int64) -> KnockVerdict {
        let signature = packet.signature
        let key = signature.publicKey
        let fingerprint = key.fingerprint
        // Namespace and key first, as they cost no public-key operation: a flood of packets naming keys nobody
        // allowed costs a hash each, not a signature check.
        guard signature.namespaceBytes.elementsEqual(SSHSignature.knockNamespace.utf8) else {
            return .refused(.wrongNamespace(signature.namespace))
        }
        guard allowed.contains(fingerprint) else { return .refused(.unknownKey(fingerprint)) }
        switch signature.check(message: packet.signedBytes, namespace: SSHSignature.knockNamespace) {
        case .wrongNamespace(let namespace):
            return .refused(.wrongNamespace(namespace))
        case .invalid:
            return .refused(.badSignature(fingerprint))
        case .userPresenceMissing:
            return .refused(.userPresenceMissing(fingerprint))
        case .valid:
            break
        }
        let timestamp = packet.request.timestampMilliseconds
        let (difference, overflow) = nowMilliseconds.subtractingReportingOverflow(timestamp)
        let age = overflow ? (nowMilliseconds < timestamp ? Int64.min : Int64.max) : difference
        if age > skewMilliseconds { return .refused(.staleTimestamp(ageMilliseconds: age)) }
        if age < -skewMilliseconds {
            return .refused(.futureTimestamp(aheadMilliseconds: age == .min ? .max : -age))
        }
        return .accepted(KnockAcceptance(key: key, fingerprint: fingerprint, packet: packet))
    }

    /// A duration in whole milliseconds, from 0 up to `Int64.max` (negative durations count as 0).
    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0 || seconds > 0 else { return 0 }
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return .max }
        let (total, overflowAgain) = whole.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        return overflowAgain ? .max : max(0, total)
    }
}

/// The outcome of verifying a knock.
public enum KnockVerdict: Hashable, Sendable {
    case accepted(KnockAcceptance)
    case refused(KnockRefusal)
}

/// A knock that verified: who signed it and what it asks for.
public struct KnockAcceptance: Hashable, Sendable {
    /// The allowed key that signed.
    public let key: SSHPublicKey
    /// The key's fingerprint, as the policy and the audit log name it.
    public let fingerprint: SSHFingerprint
    /// The packet as decoded.
    public let packet: KnockPacket

    /// The signed fields.
    public var request: KnockRequest { packet.request }
}

/// Why a knock was refused.
public enum KnockRefusal: Error, Hashable, Sendable {
    /// The datagram is not a knock packet; the error names the field and the problem.
    case malformed(KnockPacketError)
    /// The signature was made for another namespace (this one), so it was never meant as a knock.
    case wrongNamespace(String)
    /// The signer's key is not among the allowed keys.
    case unknownKey(SSHFingerprint)
    /// The signature does not verify with the key it names: a forgery, or a damaged packet.
    case badSignature(SSHFingerprint)
    /// A security key signed without its user-presence flag: nobody touched it.
    case userPresenceMissing(SSHFingerprint)
    /// The timestamp is older than the allowed skew, by this much: a replay, or a client clock running behind.
    case staleTimestamp(ageMilliseconds: Int64)
    /// The timestamp is further ahead than the allowed skew, by this much: a client clock running ahead.
    case futureTimestamp(aheadMilliseconds: Int64)
}

extension KnockRefusal: CustomStringConvertible {
    public var description: String {
        switch self {
        case .malformed(let error): return "malformed: \(error)"
        case .wrongNamespace(let namespace):
            return "signed for namespace \"\(namespace)\", not \"\(SSHSignature.knockNamespace)\""
        case .unknownKey(let fingerprint): return "key \(fingerprint) is not allowed to knock"
        case .badSignature(let fingerprint): return "the signature does not verify with key \(fingerprint)"
        case .userPresenceMissing(let fingerprint):
            return "security key \(fingerprint) signed without user presence (not touched)"
        case .staleTimestamp(let age): return "the timestamp is \(age) ms old, more than the allowed skew"
        case .futureTimestamp(let ahead): return "the timestamp is \(ahead) ms ahead, more than the allowed skew"
        }
    }
}
