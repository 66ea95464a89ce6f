import Knock

/// The seed corpus in corpus/, as `knock-fuzz --write-seeds DIR` writes it: knock packets signed by the fixed keys
/// (most verify at ``FuzzKeys/clock``; the others reach each refusal that comes after decoding), nonce caches,
/// authorized_keys lines and a bare SSHSIG. ECDSA signatures are randomised, so the P-256 seeds differ each time they
/// are written; every other seed is the same bytes every time.
enum SeedCorpus {
    static func seeds() throws -> [(name: String, bytes: [UInt8])] {
        let clock = FuzzKeys.clock
        let ipv4 = KnockAddress(bytes: [203, 0, 113, 9])
        let ipv6 = KnockAddress(bytes: [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [7])
        func request(
            _ serial: UInt64, timestamp: Int64 = FuzzKeys.clock, host: String = "gate.example.org",
            ports: [KnockPort] = [.named("ssh"), .number(8443, .tcp)], duration: UInt32 = 3600,
            address: KnockAddress? = ipv4, reason: String? = "deploy hotfix"
        ) -> KnockRequest {
            KnockRequest(
                host: host, ports: ports, durationSeconds: duration, clientAddress: address,
                timestampMilliseconds: timestamp, nonce: KnockNonce(high: 0x4B4E_4F43_4B00_0000 | serial, low: ~serial),
                reason: reason)
        }
        func signed(
            _ request: KnockRequest, _ signer: FuzzSigner, _ hash: SSHSignature.HashAlgorithm = .sha512
        ) throws -> [UInt8] {
            try KnockPacket.sign(request, with: signer, hashAlgorithm: hash).bytes
        }
        let manyPorts: [KnockPort] =
            [.named("ssh"), .named("https"), .named("git-daemon"), .named("a"), .named("x_y-9")]
            + [22, 80, 443, 1, 65535].map { .number($0, .tcp) }
            + [53, 123, 500, 4500, 51820, 65535].map { .number($0, .udp) }

        var seeds: [(String, [UInt8])] = []
        seeds.append(("knock-ed25519-sha512", try signed(request(1), FuzzKeys.ed25519)))
        seeds.append(
            (
                "knock-ed25519-sha256-ipv6",
                try signed(
                    request(2, ports: [.number(22, .tcp)], duration: 1, address: ipv6, reason: nil), FuzzKeys.ed25519,
                    .sha256)
            ))
        seeds.append(
            (
                "knock-ed25519-16-ports-utf8",
                try signed(
                    request(
                        3, host: "köln-gw.例え.example", ports: manyPorts, duration: KnockPacket.maximumDurationSeconds,
                        address: nil, reason: "Wartung für das Café ☕ – Ticket #4711"), FuzzKeys.ed25519)
            ))
        seeds.append(("knock-p256", try signed(request(4), FuzzKeys.p256)))
        seeds.append(("knock-sk-ed25519", try signed(request(5), FuzzKeys.securityKey)))
        seeds.append(("knock-rsa2048-sha512", try signed(request(6), FuzzKeys.rsa)))
        seeds.append(
            (
                "knock-rsa2048-rsa-sha2-256",
                try signed(request(7), FuzzKeys.rsa.with(rsaAlgorithm: "rsa-sha2-256"), .sha256)
            ))
        // Genuine, but outside the 30 s skew.
        seeds.append(("knock-ed25519-stale", try signed(request(8, timestamp: clock - 600_000), FuzzKeys.ed25519)))
        seeds.append(("knock-ed25519-future", try signed(request(9, timestamp: clock + 600_000), FuzzKeys.ed25519)))
        // Refused after decoding: another namespace, a key nobody allowed, a damaged signature, a security key that
        // was not touched.
        seeds.append(
            ("knock-wrong-namespace", try assembled(request(10), FuzzKeys.ed25519, namespace: "file", hash: .sha512)))
        seeds.append(("knock-unknown-key", try signed(request(11), FuzzKeys.unknown)))
        var damaged = try signed(request(12), FuzzKeys.ed25519)
        damaged[damaged.count - 40] ^= 0x10
        seeds.append(("knock-bad-signature", damaged))
        seeds.append(
            (
                "knock-sk-ed25519-not-touched",
                try assembled(
                    request(13), FuzzKeys.securityKey.with(flags: 0x00, counter: 8),
                    namespace: SSHSignature.knockNamespace, hash: .sha512)
            ))

        // Nonce caches: empty, and three entries inside the window.
        seeds.append(("noncecache-empty", NonceCache(window: FuzzKeys.skew, startingAt: clock).serialized()))
        var cache = NonceCache(window: FuzzKeys.skew, startingAt: clock - 60_000)
        for (serial, age) in [(UInt64(20), Int64(20_000)), (21, 5_000), (22, 0)] {
            _ = cache.insert(request(serial).nonce, timestampMilliseconds: clock - age, nowMilliseconds: clock)
        }
        seeds.append(("noncecache-3-entries", cache.serialized()))

        // authorized_keys: a plain line, a line with options a knock ignores, and a file.
        seeds.append(
            (
                "authorized-key-ed25519",
                Array(AuthorizedKey(key: FuzzKeys.ed25519.publicKey, comment: "fuzz@knock").line.utf8)
            ))
        seeds.append(
            (
                "authorized-key-options-sk",
                Array(
                    ("no-pty,permitopen=\"gate.example.org:22\",restrict "
                        + AuthorizedKey(key: FuzzKeys.securityKey.publicKey, comment: "yubikey 5").line).utf8)
            ))
        let file = [
            "# knock keys", AuthorizedKey(key: FuzzKeys.p256.publicKey, comment: "p256").line, "",
            "environment=\"A=b\",no-agent-forwarding "
                + AuthorizedKey(key: FuzzKeys.rsa.publicKey, comment: "rsa").line,
            "\t" + FuzzKeys.unknown.publicKey.openSSHText,
        ]
        seeds.append(("authorized-keys-file", Array((file.joined(separator: "\n") + "\n").utf8)))

        // A bare SSHSIG, as `ssh-keygen -Y sign -n file` makes it.
        seeds.append(
            (
                "sshsig-p256-file",
                try SSHSignature.sign(
                    message: Array("knock knock".utf8), namespace: "file", hashAlgorithm: .sha256,
                    signer: FuzzKeys.p256
                ).binary
            ))
        return seeds
    }

    /// A knock packet whose SSHSIG is assembled by hand, without ``SSHSignature/sign``'s checks (which refuse to make
    /// a security-key signature without user presence).
    static func assembled(
        _ request: KnockRequest, _ signer: FuzzSigner, namespace: String, hash: SSHSignature.HashAlgorithm
    ) throws -> [UInt8] {
        let body = try KnockPacket.encodeBody(request)
        let signatureBlob = try signer.signatureBlob(
            for: SSHSignature.signedData(for: body, namespace: namespace, hashAlgorithm: hash))
        var sshsig = WireBytes()
        sshsig.raw("SSHSIG".utf8)
        sshsig.uint32(1)
        sshsig.string(signer.publicKey.wireBlob)
        sshsig.string(namespace)
        sshsig.string([])
        sshsig.string(hash.rawValue)
        sshsig.string(signatureBlob)
        var packet = WireBytes()
        packet.raw(body)
        packet.uint16(UInt16(sshsig.bytes.count))
        packet.raw(sshsig.bytes)
        return packet.bytes
    }
}
