/// A knock: one UDP datagram carrying a ``KnockRequest`` and an SSHSIG signature over it.
///
/// Layout, all integers big-endian:
///
/// | bytes   | field                   | rule                                                                  |
/// |---------|-------------------------|-----------------------------------------------------------------------|
/// | 4       | magic                   | `DBKN` (0x44 0x42 0x4B 0x4E)                                          |
/// | 1       | version                 | 1                                                                     |
/// | 1 + H   | host                    | length 1…253, UTF-8, no control characters, no whitespace             |
/// | 1       | port count              | 1…16                                                                  |
/// | 1 + P   | each port               | length 1…32, ASCII, ``KnockPort`` spelling, no duplicates             |
/// | 4       | duration                | seconds, 1…2 592 000 (30 days)                                        |
/// | 1       | client address family   | 0 none, 4 IPv4, 6 IPv6                                                |
/// | 0/4/16  | client address          | as the family says                                                    |
/// | 8       | timestamp               | Unix milliseconds, below 2^63                                         |
/// | 16      | nonce                   | random                                                                |
/// | 1 + R   | reason                  | length 0…200 (0: none), UTF-8, no control characters                  |
/// | 2 + S   | signature               | length, then a binary SSHSIG (namespace `drawbridge-knock@v1`) over   |
/// |         |                         | every byte before the length                                          |
///
/// Nothing may follow the signature, and the whole datagram is at most ``maximumSize`` bytes.
public struct KnockPacket: Hashable, Sendable {
    /// The signed fields.
    public let request: KnockRequest
    /// The SSHSIG signature, with the signer's public key inside it.
    public let signature: SSHSignature
    /// The whole datagram.
    public let bytes: [UInt8]
    /// How many leading bytes of ``bytes`` the signature covers.
    public let signedLength: Int

    /// `DBKN`.
    public static let magic: [UInt8] = [0x44, 0x42, 0x4B, 0x4E]
    /// The layout version this module reads and writes.
    public static let version: UInt8 = 1
    /// The largest datagram: 1280 (IPv6's minimum MTU) − 40 (IPv6 header) − 8 (UDP header), so a knock is never
    /// fragmented. Ed25519, P-256 and security-key knocks take 270–360 bytes, RSA-2048 about 700; an RSA-4096
    /// knock takes about 1200, so with such a key a long reason does not fit and ``sign(_:with:hashAlgorithm:)``
    /// says so.
    public static let maximumSize = 1232
    /// The longest host name in bytes, as DNS allows.
    public static let maximumHostLength = 253
    /// The most ports one knock may ask for.
    public static let maximumPortCount = 16
    /// The longest port spelling in bytes (a policy port name is at most 32 characters).
    public static let maximumPortLength = 32
    /// The longest duration a knock may ask for, 30 days; the agent's policy caps it further.
    public static let maximumDurationSeconds: UInt32 = 30 * 24 * 60 * 60
    /// The longest reason in bytes.
    public static let maximumReasonLength = 200

    /// The bytes the signature covers.
    public var signedBytes: ArraySlice<UInt8> { bytes[..<signedLength] }

    // MARK: - Encoding

    /// Encodes and signs a request. Throws ``KnockPacketError`` for a field outside the rules above (or a packet
    /// that would not fit in ``maximumSize``), ``SSHSignatureError`` or the signer's own error if signing fails.
    public static func sign(
        _ request: KnockRequest, with signer: some SSHSigner,
        hashAlgorithm: SSHSignature.HashAlgorithm = .sha512
    ) throws -> KnockPacket {
        let body = try encodeBody(request)
        // Checked before signing too, with the largest signature the key can make, so that nobody touches a
        // security key (or is asked by an agent to confirm) for a packet that cannot be sent.
        let largest = body.count + 2 + SSHSignature.maximumBinarySize(for: signer.publicKey)
        try checkSize(largest)
        let signature = try SSHSignature.sign(
            message: body, namespace: SSHSignature.knockNamespace, hashAlgorithm: hashAlgorithm, signer: signer)
        try checkSize(body.count + 2 + signature.binary.count)
        var writer = WireWriter()
        writer.raw(body)
        writer.uint16(UInt16(signature.binary.count))
        writer.raw(signature.binary)
        return try decode(writer.bytes)
    }

    /// The signed part of a packet for `request`: every field before the signature.
    public static func encodeBody(_ request: KnockRequest) throws(KnockPacketError) -> [UInt8] {
        var writer = WireWriter()
        writer.raw(magic)
        writer.byte(version)

        let host = Array(request.host.utf8)
        try checkHost(host[...], at: 0)
        writer.byte(UInt8(host.count))

        writer.raw(host)
        guard !request.ports.isEmpty else {
            throw KnockPacketError(.portCount, .tooShort(length: 0, minimum: 1))
        }
        guard request.ports.count <= maximumPortCount else {
            throw KnockPacketError(.portCount, .tooLong(length: request.ports.count, limit: maximumPortCount))
        }
        writer.byte(UInt8(request.ports.count))
        var seen: Set<KnockPort> = []
        for (index, port) in request.ports.enumerated() {
            let text = Array(port.text.utf8)
            guard KnockPort(port.text) == port else {
                throw KnockPacketError(.port(index: index), .invalid("\(quoted(text)) is not \(KnockPort.grammar)"))
            }
            guard seen.insert(port).inserted else {
                throw KnockPacketError(.port(index: index), .invalid("\(port) is listed twice"))
            }
            writer.byte(UInt8(text.count))
            writer.raw(text)
        }

        try checkDuration(request.durationSeconds, at: 0)
        writer.uint32(request.durationSeconds)

        if let address = request.clientAddress {
            writer.byte(address.isIPv6 ? 6 : 4)
            writer.raw(address.bytes)
        } else {
            writer.byte(0)
        }

        guard request.timestampMilliseconds >= 0 else {
            throw KnockPacketError(.timestamp, .invalid("a time before 1970"))
        }
        writer.uint64(UInt64(request.timestampMilliseconds))
        writer.raw(request.nonce.bytes)

        let reason = Array((request.reason ?? "").utf8)
        try checkReason(reason[...], at: 0)
        writer.byte(UInt8(reason.count))
        writer.raw(reason)
        return writer.bytes
    }

    // MARK: - Decoding

    /// Decodes a datagram, refusing anything but the exact layout above; the error names the field, its offset
    /// and the problem. Never traps, whatever the bytes. Decoding checks the form of the signature, not whether it
    /// verifies: that is ``KnockVerifier``'s job.
    public static func decode(_ datagram: some Collection<UInt8>) throws(KnockPacketError) -> KnockPacket {
        let bytes = Array(datagram)
        guard bytes.count <= maximumSize else {
            throw KnockPacketError(.packet, at: 0, .tooLong(length: bytes.count, limit: maximumSize))
        }
        var reader = WireReader(bytes)
        var start = 0
        func fail(_ field: KnockPacketError.Field) -> (FormatProblem) -> KnockPacketError {
            { [start] in KnockPacketError(field, at: start, $0) }
        }

        let magic = try reader.take(4, fail(.magic))
        guard magic.elementsEqual(Self.magic) else {
            throw KnockPacketError(.magic, at: start, .mismatch(expected: "\"DBKN\"", found: quoted(magic)))
        }
        start = reader.consumed
        let version = try reader.byte(fail(.version))
        guard version == Self.version else {
            throw KnockPacketError(.version, at: start, .unsupported("version \(version); this agent reads version 1"))
        }

        start = reader.consumed
        let hostBytes = try reader.take(Int(try reader.byte(fail(.host))), fail(.host))
        let host = try checkHost(hostBytes, at: start)

        start = reader.consumed
        let portCount = Int(try reader.byte(fail(.portCount)))
        guard portCount >= 1 else { throw KnockPacketError(.portCount, at: start, .tooShort(length: 0, minimum: 1)) }
        guard portCount <= maximumPortCount else {
            throw KnockPacketError(.portCount, at: start, .tooLong(length: portCount, limit: maximumPortCount))
        }
        var ports: [KnockPort] = []
        for index in 0..<portCount {
            start = reader.consumed
            let length = Int(try reader.byte(fail(.port(index: index))))
            guard length >= 1 else {
                throw KnockPacketError(.port(index: index), at: start, .tooShort(length: 0, minimum: 1))
            }
            guard length <= maximumPortLength else {
                throw KnockPacketError(
                    .port(index: index), at: start, .tooLong(length: length, limit: maximumPortLength))
            }
            let text = try reader.take(length, fail(.port(index: index)))
            guard let port = KnockPort(bytes: text) else {
                throw KnockPacketError(
                    .port(index: index), at: start, .invalid("\(quoted(text)) is not \(KnockPort.grammar)"))
            }
            guard !ports.contains(port) else {
                throw KnockPacketError(.port(index: index), at: start, .invalid("\(port) is listed twice"))
            }
            ports.append(port)
        }

        start = reader.consumed
        let duration = try reader.uint32(fail(.duration))
        try checkDuration(duration, at: start)

        start = reader.consumed
        let family = try reader.byte(fail(.clientAddressFamily))
        var clientAddress: KnockAddress?
        switch family {
        case 0: clientAddress = nil
        case 4, 6:
            start = reader.consumed
            clientAddress = KnockAddress(bytes: try reader.take(family == 4 ? 4 : 16, fail(.clientAddress)))
        default:
            throw KnockPacketError(
                .clientAddressFamily, at: start, .unsupported("family \(family); 0 (none), 4 or 6 are allowed"))
        }

        start = reader.consumed
        let timestamp = try reader.uint64(fail(.timestamp))
        guard timestamp <= UInt64(Int64.max) else {
            throw KnockPacketError(.timestamp, at: start, .invalid("\(timestamp) ms is beyond any real clock"))
        }

        start = reader.consumed
        let nonceBytes = try reader.take(KnockNonce.byteCount, fail(.nonce))
        guard let nonce = KnockNonce(bytes: nonceBytes) else {
            throw KnockPacketError(.nonce, at: start, .truncated(needed: 16, available: nonceBytes.count))
        }

        start = reader.consumed
        let reasonBytes = try reader.take(Int(try reader.byte(fail(.reason))), fail(.reason))
        let reason = try checkReason(reasonBytes, at: start)

        let signedLength = reader.consumed
        start = reader.consumed
        let signatureLength = Int(try reader.uint16(fail(.signatureLength)))
        guard signatureLength > 0 else {
            throw KnockPacketError(.signatureLength, at: start, .tooShort(length: 0, minimum: 1))
        }
        start = reader.consumed
        let signatureBytes = try reader.take(signatureLength, fail(.signature))
        let signature: SSHSignature
        do {
            signature = try SSHSignature(binary: signatureBytes)
        } catch {
            throw KnockPacketError(.signature, at: start, .signature(error))
        }
        start = reader.consumed
        try reader.expectEnd(fail(.packet))

        let request = KnockRequest(
            host: host, ports: ports, durationSeconds: duration, clientAddress: clientAddress,
            timestampMilliseconds: Int64(timestamp), nonce: nonce, reason: reason)
        return KnockPacket(request: request, signature: signature, bytes: bytes, signedLength: signedLength)
    }

    // MARK: - Field rules shared by encoding and decoding

    private static func checkSize(_ size: Int) throws(KnockPacketError) {
        guard size <= maximumSize else {
            throw KnockPacketError(
                .packet,
                .invalid(
                    "the packet would take \(size) bytes, more than the \(maximumSize) one unfragmented datagram "
                        + "carries; shorten the reason or knock with an Ed25519 key"))
        }
    }

    @discardableResult
    private static func checkHost(_ bytes: ArraySlice<UInt8>, at offset: Int) throws(KnockPacketError) -> String {
        guard !bytes.isEmpty else { throw KnockPacketError(.host, at: offset, .tooShort(length: 0, minimum: 1)) }
        guard bytes.count <= maximumHostLength else {
            throw KnockPacketError(.host, at: offset, .tooLong(length: bytes.count, limit: maximumHostLength))
        }
        let text = try validatedText(bytes) { KnockPacketError(.host, at: offset, $0) }
        if text.unicodeScalars.contains(where: { $0.properties.isWhitespace }) {
            throw KnockPacketError(.host, at: offset, .invalid("a host name holds no whitespace"))
        }
        return text
    }

    private static func checkDuration(_ seconds: UInt32, at offset: Int) throws(KnockPacketError) {
        guard seconds >= 1 else { throw KnockPacketError(.duration, at: offset, .tooShort(length: 0, minimum: 1)) }
        guard seconds <= maximumDurationSeconds else {
            throw KnockPacketError(
                .duration, at: offset, .tooLong(length: Int(seconds), limit: Int(maximumDurationSeconds)))
        }
    }

    @discardableResult
    private static func checkReason(_ bytes: ArraySlice<UInt8>, at offset: Int) throws(KnockPacketError) -> String? {
        guard bytes.count <= maximumReasonLength else {
            throw KnockPacketError(.reason, at: offset, .tooLong(length: bytes.count, limit: maximumReasonLength))
        }
        guard !bytes.isEmpty else { return nil }
        return try validatedText(bytes) { KnockPacketError(.reason, at: offset, $0) }
    }
}
