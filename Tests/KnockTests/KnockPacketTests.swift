import Foundation
import Testing

@testable import Knock

/// The knock packet's bytes: encoding, and a decoder that refuses everything but the exact layout.
@Suite struct KnockPacketTests {
    @Test func encodeThenDecodeGivesTheRequestBack() throws {
        let signer = Ed25519TestSigner()
        let requests = [
            sampleRequest(),
            sampleRequest(reason: nil),
            sampleRequest(address: KnockAddress(bytes: [192, 0, 2, 7])),
            sampleRequest(
                address: KnockAddress(bytes: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1])),
            KnockRequest(
                host: "hôte.example", ports: (1...16).map { .number(UInt16($0), $0 % 2 == 0 ? .tcp : .udp) },
                durationSeconds: KnockPacket.maximumDurationSeconds, timestampMilliseconds: 0,
                reason: String(repeating: "é", count: 100)),
        ]
        for request in requests {
            let packet = try KnockPacket.sign(request, with: signer)
            let decoded = try KnockPacket.decode(packet.bytes)
            #expect(decoded.request == request)
            #expect(decoded == packet)
            #expect(decoded.signature.publicKey == signer.publicKey)
            #expect(Array(decoded.signedBytes) == (try KnockPacket.encodeBody(request)))
        }
    }

    @Test func theLayoutIsByteForByteAsDocumented() throws {
        let request = KnockRequest(
            host: "h", ports: [.named("ssh")], durationSeconds: 60, clientAddress: KnockAddress(bytes: [10, 0, 0, 1]),
            timestampMilliseconds: 0x0102_0304_0506_0708, nonce: KnockNonce(high: 0x1111_1111_1111_1111, low: 2),
            reason: "r")
        let expected: [UInt8] =
            [0x44, 0x42, 0x4B, 0x4E, 1]  // magic, version
            + [1, 0x68]  // host "h"
            + [1, 3, 0x73, 0x73, 0x68]  // one port, "ssh"
            + [0, 0, 0, 60]  // duration
            + [4, 10, 0, 0, 1]  // IPv4 10.0.0.1
            + [1, 2, 3, 4, 5, 6, 7, 8]  // timestamp
            + [UInt8](repeating: 0x11, count: 8) + [0, 0, 0, 0, 0, 0, 0, 2]  // nonce
            + [1, 0x72]  // reason "r"
        #expect(try KnockPacket.encodeBody(request) == expected)
        let packet = try KnockPacket.sign(request, with: Ed25519TestSigner())
        #expect(packet.signedLength == expected.count)
        let length = Int(packet.bytes[expected.count]) << 8 | Int(packet.bytes[expected.count + 1])
        #expect(length == packet.signature.binary.count)
        #expect(Array(packet.bytes[(expected.count + 2)...]) == packet.signature.binary)
        #expect(packet.bytes.count == expected.count + 2 + length)
    }

    // MARK: - Refusals, field by field

    /// A packet body built field by field from raw bytes, so that each field can be made wrong on its own.
    struct RawBody {
        var magic: [UInt8] = KnockPacket.magic
        var version: [UInt8] = [1]
        var host: [UInt8] = [4] + Array("gate".utf8)
        var ports: [UInt8] = [2] + KnockPacketTests.text("ssh") + KnockPacketTests.text("443/tcp")
        var duration: [UInt8] = [0, 0, 0x0E, 0x10]
        var address: [UInt8] = [0]
        var timestamp: [UInt8] = [0, 0, 1, 0x8B, 0xCF, 0xE5, 0x68, 0x00]
        var nonce: [UInt8] = Array(0..<16)
        var reason: [UInt8] = [2] + Array("ok".utf8)

        var bytes: [UInt8] { magic + version + host + ports + duration + address + timestamp + nonce + reason }

        /// Offsets of the fields, in order.
        var offsets: [String: Int] {
            var result: [String: Int] = [:]
            var offset = 0
            for (name, field) in [
                ("magic", magic), ("version", version), ("host", host), ("ports", ports), ("duration", duration),
                ("address", address), ("timestamp", timestamp), ("nonce", nonce), ("reason", reason),
            ] {
                result[name] = offset
                offset += field.count
            }
            result["end"] = offset
            return result
        }
    }

    struct RefusalCase: Sendable, CustomTestStringConvertible {
        var name: String
        var change: @Sendable (inout RawBody) -> Void
        var field: KnockPacketError.Field
        var problem: FormatProblem?
        /// The key of `RawBody.offsets` where the error must point (the field's start), or nil to skip.
        var at: String?
        var testDescription: String { name }
    }

    static func text(_ string: String) -> [UInt8] { [UInt8(string.utf8.count)] + Array(string.utf8) }

    static let refusals: [RefusalCase] = [
        RefusalCase(name: "wrong magic", change: { $0.magic = Array("DBKX".utf8) }, field: .magic, at: "magic"),
        RefusalCase(
            name: "version 2", change: { $0.version = [2] }, field: .version,
            problem: .unsupported("version 2; this agent reads version 1"), at: "version"),
        RefusalCase(
            name: "empty host", change: { $0.host = [0] }, field: .host, problem: .tooShort(length: 0, minimum: 1),
            at: "host"),
        RefusalCase(
            name: "host of 254 bytes", change: { $0.host = [254] + [UInt8](repeating: 0x61, count: 254) },
            field: .host, problem: .tooLong(length: 254, limit: 253), at: "host"),
        RefusalCase(
            name: "host with a control character", change: { $0.host = [3, 0x61, 0x01, 0x62] }, field: .host,
            problem: .controlCharacter(offset: 1), at: "host"),
        RefusalCase(
            name: "host with bad UTF-8", change: { $0.host = [2, 0xC3, 0x28] }, field: .host, problem: .invalidUTF8,
            at: "host"),
        RefusalCase(
            name: "host with a space", change: { $0.host = text("a b") }, field: .host,
            problem: .invalid("a host name holds no whitespace"), at: "host"),
        RefusalCase(
            name: "host with a bidirectional override", change: { $0.host = text("a\u{202E}b") }, field: .host,
            problem: .controlCharacter(offset: 1), at: "host"),
        RefusalCase(
            name: "no ports", change: { $0.ports = [0] }, field: .portCount, problem: .tooShort(length: 0, minimum: 1),
            at: "ports"),
        RefusalCase(
            name: "17 ports", change: { $0.ports = [17] + (1...17).flatMap { text("\($0)/tcp") } }, field: .portCount,
            problem: .tooLong(length: 17, limit: 16), at: "ports"),
        RefusalCase(name: "bare number", change: { $0.ports = [1] + text("22") }, field: .port(index: 0)),
        RefusalCase(name: "leading zero", change: { $0.ports = [1] + text("022/tcp") }, field: .port(index: 0)),
        RefusalCase(name: "upper-case protocol", change: { $0.ports = [1] + text("22/TCP") }, field: .port(index: 0)),
        RefusalCase(name: "port zero", change: { $0.ports = [1] + text("0/tcp") }, field: .port(index: 0)),
        RefusalCase(name: "port 65536", change: { $0.ports = [1] + text("65536/tcp") }, field: .port(index: 0)),
        RefusalCase(name: "sctp", change: { $0.ports = [1] + text("22/sctp") }, field: .port(index: 0)),
        RefusalCase(name: "upper-case name", change: { $0.ports = [1] + text("SSH") }, field: .port(index: 0)),
        RefusalCase(name: "name with a dot", change: { $0.ports = [1] + text("ssh.alt") }, field: .port(index: 0)),
        RefusalCase(
            name: "empty port", change: { $0.ports = [1, 0] }, field: .port(index: 0),
            problem: .tooShort(length: 0, minimum: 1)),
        RefusalCase(
            name: "port name of 33 bytes", change: { $0.ports = [1] + text(String(repeating: "a", count: 33)) },
            field: .port(index: 0), problem: .tooLong(length: 33, limit: 32)),
        RefusalCase(
            name: "duplicate port", change: { $0.ports = [2] + text("ssh") + text("ssh") }, field: .port(index: 1)),
        RefusalCase(
            name: "zero duration", change: { $0.duration = [0, 0, 0, 0] }, field: .duration,
            problem: .tooShort(length: 0, minimum: 1), at: "duration"),
        RefusalCase(
            name: "duration over 30 days", change: { $0.duration = [0, 0x27, 0x8D, 0x01] }, field: .duration,
            problem: .tooLong(length: 2_592_001, limit: 2_592_000), at: "duration"),
        RefusalCase(
            name: "address family 5", change: { $0.address = [5, 1, 2, 3, 4, 5] }, field: .clientAddressFamily,
            at: "address"),
        RefusalCase(
            name: "timestamp of 2^63", change: { $0.timestamp = [0x80, 0, 0, 0, 0, 0, 0, 0] }, field: .timestamp,
            at: "timestamp"),
        RefusalCase(
            name: "reason of 201 bytes", change: { $0.reason = text(String(repeating: "x", count: 201)) },
            field: .reason, problem: .tooLong(length: 201, limit: 200), at: "reason"),
        RefusalCase(
            name: "reason with a newline", change: { $0.reason = text("one\ntwo") }, field: .reason,
            problem: .controlCharacter(offset: 3), at: "reason"),
        RefusalCase(
            name: "reason with DEL", change: { $0.reason = text("a\u{7F}") }, field: .reason,
            problem: .controlCharacter(offset: 1), at: "reason"),
        RefusalCase(
            name: "reason with a C1 control", change: { $0.reason = text("é\u{85}") }, field: .reason,
            problem: .controlCharacter(offset: 2), at: "reason"),
        RefusalCase(
            name: "reason with a bidirectional isolate", change: { $0.reason = text("fix \u{2066}x") },
            field: .reason, problem: .controlCharacter(offset: 4), at: "reason"),
        RefusalCase(
            name: "reason with bad UTF-8", change: { $0.reason = [3, 0x61, 0xFF, 0x62] }, field: .reason,
            problem: .invalidUTF8, at: "reason"),
        RefusalCase(
            name: "reason with an overlong encoding", change: { $0.reason = [2, 0xC0, 0xAF] }, field: .reason,
            problem: .invalidUTF8, at: "reason"),
        RefusalCase(
            name: "reason with a UTF-8 surrogate", change: { $0.reason = [3, 0xED, 0xA0, 0x80] }, field: .reason,
            problem: .invalidUTF8, at: "reason"),
    ]

    @Test(arguments: refusals)
    func decodeRefusesABadField(_ testCase: RefusalCase) throws {
        var raw = RawBody()
        testCase.change(&raw)
        let body = raw.bytes
        let signature = try SSHSignature.sign(message: body, signer: Ed25519TestSigner())
        let packet = assemblePacket(body: body, signature: signature.binary)
        do {
            _ = try KnockPacket.decode(packet)
            Issue.record("accepted a packet with \(testCase.name)")
        } catch {
            #expect(error.field == testCase.field, "\(error)")
            if let problem = testCase.problem { #expect(error.problem == problem, "\(error)") }
            if let name = testCase.at { #expect(error.offset == raw.offsets[name], "\(error)") }
        }
    }

    @Test func theUntouchedRawBodyDecodes() throws {
        let body = RawBody().bytes
        let signature = try SSHSignature.sign(message: body, signer: Ed25519TestSigner())
        let packet = try KnockPacket.decode(assemblePacket(body: body, signature: signature.binary))
        #expect(packet.request.host == "gate")
        #expect(packet.request.ports == [.named("ssh"), .number(443, .tcp)])
        #expect(packet.request.durationSeconds == 3600)
        #expect(packet.request.reason == "ok")
    }

    @Test func signatureFramingIsChecked() throws {
        let body = RawBody().bytes
        let signature = try SSHSignature.sign(message: body, signer: Ed25519TestSigner()).binary
        let good = assemblePacket(body: body, signature: signature)
        let end = RawBody().offsets["end"]!

        #expect(throws: KnockPacketError(.packet, at: good.count, .trailingBytes(count: 1))) {
            try KnockPacket.decode(good + [0])
        }
        #expect(throws: KnockPacketError(.signatureLength, at: end, .tooShort(length: 0, minimum: 1))) {
            try KnockPacket.decode(body + [0, 0])
        }
        do {
            _ = try KnockPacket.decode(assemblePacket(body: body, signature: signature + [0]))
            Issue.record("an SSHSIG with a trailing byte was accepted")
        } catch {
            #expect(error.field == .signature)
            #expect(error.problem == .signature(SSHSignatureError(.end, .trailingBytes(count: 1))))
        }
        let oversize = good + [UInt8](repeating: 0, count: KnockPacket.maximumSize + 1 - good.count)
        #expect(throws: KnockPacketError(.packet, at: 0, .tooLong(length: 1233, limit: 1232))) {
            try KnockPacket.decode(oversize)
        }
    }

    @Test func truncationAtEveryOffsetIsRefused() throws {
        for signer in [Ed25519TestSigner() as any SSHSigner, P256TestSigner(), SecurityKeyTestSigner()] {
            let packet = try KnockPacket.sign(
                sampleRequest(address: KnockAddress(bytes: [192, 0, 2, 1])), with: signer)
            for length in 0..<packet.bytes.count {
                let prefix = Array(packet.bytes.prefix(length))
                do {
                    _ = try KnockPacket.decode(prefix)
                    Issue.record("a packet cut to \(length) of \(packet.bytes.count) bytes decoded")
                } catch {
                    switch error.problem {
                    case .truncated, .signature: break
                    default: Issue.record("cut to \(length): \(error)")
                    }
                }
            }
        }
    }

    // MARK: - Encoding refusals

    @Test func encodingRefusesWhatDecodingWouldRefuse() {
        let base = sampleRequest()
        let cases: [(String, (inout KnockRequest) -> Void, KnockPacketError.Field)] = [
            ("empty host", { $0.host = "" }, .host),
            ("long host", { $0.host = String(repeating: "h", count: 254) }, .host),
            ("host with a tab", { $0.host = "a\tb" }, .host),
            ("no ports", { $0.ports = [] }, .portCount),
            ("17 ports", { $0.ports = (1...17).map { .number(UInt16($0), .udp) } }, .portCount),
            ("upper-case name", { $0.ports = [.named("SSH")] }, .port(index: 0)),
            ("numeric name", { $0.ports = [.named("22")] }, .port(index: 0)),
            ("port zero", { $0.ports = [.named("ssh"), .number(0, .tcp)] }, .port(index: 1)),
            ("duplicate", { $0.ports = [.number(22, .tcp), .number(22, .tcp)] }, .port(index: 1)),
            ("zero duration", { $0.durationSeconds = 0 }, .duration),
            ("long duration", { $0.durationSeconds = KnockPacket.maximumDurationSeconds + 1 }, .duration),
            ("negative timestamp", { $0.timestampMilliseconds = -1 }, .timestamp),
            ("long reason", { $0.reason = String(repeating: "r", count: 201) }, .reason),
            ("reason with a newline", { $0.reason = "a\nb" }, .reason),
        ]
        for (name, change, field) in cases {
            var request = base
            change(&request)
            do {
                _ = try KnockPacket.encodeBody(request)
                Issue.record("encoded a request with \(name)")
            } catch {
                #expect(error.field == field, "\(name): \(error)")
            }
        }
    }

    @Test func portSpellings() {
        #expect(KnockPort("ssh") == .named("ssh"))
        #expect(KnockPort("web_2-alt") == .named("web_2-alt"))
        #expect(KnockPort("22/tcp") == .number(22, .tcp))
        #expect(KnockPort("65535/udp") == .number(65535, .udp))
        for bad in ["", "22", "/tcp", "22/", "22/tcp/x", "-1/tcp", "+22/tcp", "1e3/tcp", "2ssh", "ssh ", "ß"] {
            #expect(KnockPort(bad) == nil, "\(bad)")
        }
        #expect(KnockPort.number(8443, .tcp).text == "8443/tcp")
    }

    @Test func addressesPrintAsPeopleWriteThem() {
        func address(_ bytes: [UInt8]) -> String { KnockAddress(bytes: bytes)!.description }
        #expect(address([192, 0, 2, 1]) == "192.0.2.1")
        #expect(address([0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]) == "2001:db8::1")
        #expect(address([UInt8](repeating: 0, count: 16)) == "::")
        #expect(address([0, 1] + [UInt8](repeating: 0, count: 14)) == "1::")
        #expect(address([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]) == "2001:db8:0:1:1:1:1:1")
        #expect(KnockAddress(bytes: [1, 2, 3]) == nil)
    }

    // MARK: - Sizes

    /// Packet sizes for each key kind with the sample request (host of 16 bytes, two ports, a 13-byte reason):
    /// printed for the record, and each must fit the limit.
    @Test func packetsOfEveryKeyKindFitOneDatagram() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        var signers: [(String, any SSHSigner)] = [
            ("ssh-ed25519", Ed25519TestSigner()), ("ecdsa-sha2-nistp256", P256TestSigner()),
            ("sk-ssh-ed25519", SecurityKeyTestSigner()),
        ]
        for bits in [2048, 3072, 4096] {
            signers.append(
                (
                    "ssh-rsa \(bits)",
                    try keygen.privateKey(try keygen.generate("rsa\(bits)", ["-t", "rsa", "-b", "\(bits)"]))
                ))
        }
        let sixAddress = KnockAddress(bytes: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1])
        var lines: [String] = []
        for (name, signer) in signers {
            let plain = try KnockPacket.sign(sampleRequest(), with: signer)
            let withAddress = try KnockPacket.sign(sampleRequest(address: sixAddress), with: signer)
            #expect(plain.bytes.count <= KnockPacket.maximumSize)
            // The estimate used to refuse before signing is exact, or (ECDSA) an upper bound.
            let estimate = SSHSignature.maximumBinarySize(for: signer.publicKey)
            if signer.publicKey.algorithm == .ecdsaP256 {
                #expect(estimate >= plain.signature.binary.count && estimate <= plain.signature.binary.count + 2)
            } else {
                #expect(estimate == plain.signature.binary.count)
            }
            lines.append("\(name): \(plain.bytes.count) bytes (with an IPv6 address: \(withAddress.bytes.count))")
        }
        print("knock packet sizes:\n  " + lines.joined(separator: "\n  "))

        // A long reason does not fit with RSA-4096: the encoder says so and what to do, before asking the signer.
        let rsa4096 = CountingSigner(signers.last!.1)
        do {
            _ = try KnockPacket.sign(sampleRequest(reason: String(repeating: "r", count: 200)), with: rsa4096)
            Issue.record("an RSA-4096 packet with a 200-byte reason was encoded")
        } catch let error as KnockPacketError {
            #expect(error.field == .packet)
            #expect("\(error)".contains("Ed25519"))
        }
        #expect(rsa4096.calls.value == 0)
    }
}
