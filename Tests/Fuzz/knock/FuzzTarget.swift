import Knock

// The knock fuzz target: every input goes through every parser of the Knock module that reads untrusted bytes, and
// whatever a parser accepts is checked against properties that must hold for any input. A trap, an AddressSanitizer
// report or a broken property (`violated`, a fatalError) is a finding.
//
// Built by Tests/Fuzz/run-knock-fuzz with `-sanitize=fuzzer,address -DKNOCK_FUZZ`, libFuzzer's main drives
// `LLVMFuzzerTestOneInput`. Built normally (`swift build`), Main.swift's main runs corpus files through the same
// function: a regression runner.

/// libFuzzer's entry point: one input, any bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    KnockFuzz.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

enum KnockFuzz {
    static func run(_ input: [UInt8]) {
        knockPacket(input)
        nonceCache(input)
        authorizedKey(input)
        signatureAndKey(input)
    }

    // MARK: - Knock packets

    /// The datagram through the verifier that allows the fixed keys, at the seeds' clock.
    static func knockPacket(_ input: [UInt8]) {
        let verdict = FuzzKeys.verifier.verify(datagram: input, nowMilliseconds: FuzzKeys.clock)
        if case .refused(.malformed) = verdict {
            if let packet = try? KnockPacket.decode(input) {
                violated("the verifier called a datagram malformed that decodes: \(packet.request)", input)
            }
            return
        }
        let packet: KnockPacket
        do {
            packet = try KnockPacket.decode(input)
        } catch {
            violated("the verifier got past decoding a datagram that does not decode: \(error)", input)
        }

        // One spelling per packet: decoding keeps the bytes, and encoding the decoded request gives the signed bytes
        // back, so no two datagrams carry the same request under one signature.
        guard packet.bytes == input else { violated("the decoded packet's bytes are not the datagram", input) }
        guard packet.signature.binary.elementsEqual(input[(packet.signedLength + 2)...]) else {
            violated("the signature's bytes are not the datagram's last bytes", input)
        }
        do {
            let body = try KnockPacket.encodeBody(packet.request)
            guard body.elementsEqual(packet.signedBytes) else {
                violated("re-encoding the decoded request gives other bytes than the signed ones: \(body)", input)
            }
        } catch {
            violated("a decoded request does not encode: \(error)", input)
        }

        let allowed = FuzzKeys.signer(for: packet.signature.publicKey)
        // Signed in the knock namespace (check compares it byte for byte first) by one of the fixed keys.
        let genuine = allowed != nil && packet.signature.check(message: packet.signedBytes) == .valid
        switch verdict {
        case .accepted(let acceptance):
            guard let signer = allowed, genuine, acceptance.packet == packet, acceptance.key == signer.publicKey
            else { violated("accepted a packet that is not genuine", input) }
            let age = FuzzKeys.clock &- packet.request.timestampMilliseconds
            guard age >= -FuzzKeys.skewMilliseconds, age <= FuzzKeys.skewMilliseconds else {
                violated("accepted a packet \(age) ms old", input)
            }
            resign(packet, with: signer, input)
        case .refused(.staleTimestamp), .refused(.futureTimestamp):
            guard genuine else { violated("a timestamp refusal for a packet that is not genuine: \(verdict)", input) }
        case .refused:
            guard !genuine else { violated("refused a genuine packet: \(verdict)", input) }
        }
        if genuine { clocks(packet, input) }
    }

    /// An accepted packet signed by a key that signs deterministically must be exactly what signing its request
    /// again gives: any other bytes that verify would be a malleable encoding or a forgery.
    static func resign(_ packet: KnockPacket, with signer: FuzzSigner, _ input: [UInt8]) {
        guard signer.isDeterministic else { return }
        let signature = packet.signature
        let again = signer.with(flags: signature.securityKeyFlags ?? 0, counter: signature.securityKeyCounter ?? 0)
            .with(rsaAlgorithm: signature.signatureAlgorithm)
        do {
            let signed = try KnockPacket.sign(packet.request, with: again, hashAlgorithm: signature.hashAlgorithm)
            guard signed.bytes == input else {
                violated("an accepted packet differs from its request signed again: \(signed.bytes)", input)
            }
        } catch {
            violated("the request of an accepted packet cannot be signed again: \(error)", input)
        }
    }

    /// A genuine packet against clocks around and far from its timestamp, where the age computation could overflow.
    static func clocks(_ packet: KnockPacket, _ input: [UInt8]) {
        let stamp = packet.request.timestampMilliseconds
        let skew = FuzzKeys.skewMilliseconds
        for now in [
            Int64.min, -1, 0, stamp &- skew &- 1, stamp &- skew, stamp, stamp &+ skew, stamp &+ skew &+ 1, Int64.max,
        ] {
            let verdict = FuzzKeys.verifier.verify(packet, nowMilliseconds: now)
            let (age, overflow) = now.subtractingReportingOverflow(stamp)
            let fresh = !overflow && age >= -skew && age <= skew
            switch verdict {
            case .accepted: guard fresh else { violated("accepted at clock \(now)", input) }
            case .refused(.staleTimestamp(let ageMilliseconds)):
                guard !fresh, now > stamp, ageMilliseconds > skew else {
                    violated("stale (\(ageMilliseconds) ms) at clock \(now)", input)
                }
            case .refused(.futureTimestamp(let ahead)):
                guard !fresh, now < stamp, ahead > skew else { violated("future (\(ahead) ms) at clock \(now)", input) }
            case .refused(let refusal): violated("refused at clock \(now): \(refusal)", input)
            }
        }
    }

    // MARK: - Nonce cache

    static let window: Duration = FuzzKeys.skew

    /// A persisted nonce cache: what reads must write back the same, and forgetting must forget every expired entry.
    static func nonceCache(_ input: [UInt8]) {
        guard var cache = try? NonceCache(serialized: input, window: window) else { return }
        roundTrip(cache, input)
        let start = cache.historyStart
        for now in [start, start &+ 1, start &+ FuzzKeys.skewMilliseconds &* 2, FuzzKeys.clock] {
            let before = cache.count
            cache.removeExpired(nowMilliseconds: now)
            guard cache.count <= before else { violated("removeExpired added entries", input) }
            let (oldest, overflow) = now.subtractingReportingOverflow(cache.windowMilliseconds)
            if !overflow, let stale = entries(cache).first(where: { $0.timestamp < oldest }) {
                violated("an entry stamped \(stale.timestamp) survived removeExpired at \(now)", input)
            }
            let nonce = KnockNonce(high: UInt64(truncatingIfNeeded: now), low: UInt64(truncatingIfNeeded: input.count))
            let outcome = cache.insert(nonce, timestampMilliseconds: now, nowMilliseconds: now)
            switch outcome {
            case .inserted, .replayed:
                guard cache.contains(nonce) else { violated("\(outcome) but the nonce is not in the cache", input) }
                guard cache.insert(nonce, timestampMilliseconds: now, nowMilliseconds: now) == .replayed else {
                    violated("a nonce just inserted is not a replay", input)
                }
            case .full, .beforeHistory, .outsideWindow:
                guard !cache.contains(nonce) else { violated("\(outcome) but the nonce is in the cache", input) }
            }
            roundTrip(cache, input)
        }
    }

    static func roundTrip(_ cache: NonceCache, _ input: [UInt8]) {
        let bytes = cache.serialized()
        do {
            let again = try NonceCache(serialized: bytes, window: window)
            guard again == cache else { violated("a nonce cache reads back different: \(bytes)", input) }
        } catch {
            violated("a nonce cache cannot read what it wrote: \(error)", input)
        }
    }

    /// The entries of a cache, from its serialized form (4 magic, 1 version, 8 start, 4 count, then 16 + 8 each).
    static func entries(_ cache: NonceCache) -> [(nonce: ArraySlice<UInt8>, timestamp: Int64)] {
        let bytes = cache.serialized()
        return stride(from: 17, to: bytes.count, by: 24).map { offset in
            let timestamp = bytes[(offset + 16)..<(offset + 24)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            return (bytes[offset..<(offset + 16)], Int64(bitPattern: timestamp))
        }
    }

    // MARK: - Keys and signatures

    /// An authorized_keys line, and the same bytes as a whole file.
    static func authorizedKey(_ input: [UInt8]) {
        let text = String(decoding: input, as: UTF8.self)
        if let line = try? AuthorizedKey(line: text) { keyRoundTrip(line.key, input) }
        if let keys = try? AuthorizedKey.parseFile(text) {
            for key in keys { keyRoundTrip(key.key, input) }
        }
    }

    /// A bare SSHSIG, and a bare public key blob.
    static func signatureAndKey(_ input: [UInt8]) {
        if let signature = try? SSHSignature(binary: input) {
            guard signature.binary == input else { violated("an SSHSIG does not keep its bytes", input) }
            guard (try? SSHSignature(armored: signature.armored)) == signature else {
                violated("an SSHSIG does not read back from its armored form", input)
            }
            keyRoundTrip(signature.publicKey, input)
            // Only the fixed keys' signatures are checked: a check costs a public-key operation.
            if FuzzKeys.signer(for: signature.publicKey) != nil {
                _ = signature.check(message: input.prefix(16))
            }
        }
        if let key = try? SSHPublicKey(wireBlob: input) {
            guard key.wireBlob == input else { violated("a public key does not keep its bytes", input) }
            keyRoundTrip(key, input)
        }
    }

    /// A key must read back from its key line, and its fingerprint from its text.
    static func keyRoundTrip(_ key: SSHPublicKey, _ input: [UInt8]) {
        guard (try? AuthorizedKey(line: key.openSSHText))?.key == key else {
            violated("a key does not read back from its key line \(key.openSSHText)", input)
        }
        guard (try? SSHFingerprint(parsing: key.fingerprint.description)) == key.fingerprint else {
            violated("a fingerprint does not read back from \(key.fingerprint)", input)
        }
    }

    // MARK: -

    /// A broken property: a finding, reported like a crash.
    static func violated(_ what: String, _ input: [UInt8]) -> Never {
        fatalError("knock-fuzz: property violated: \(what); input (\(input.count) bytes): \(input)")
    }
}
