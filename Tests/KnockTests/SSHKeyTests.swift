import Foundation
import Testing

@testable import Knock

/// Public and private keys as ssh-keygen writes them.
@Suite struct SSHKeyTests {
    @Test(arguments: KeyGenerator.KeyKind.allCases)
    func keysFromSSHKeygenParseWithOpenSSHsFingerprint(kind: KeyGenerator.KeyKind) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let path = try keygen.generate("id", kind)

        let line = try String(contentsOfFile: path + ".pub", encoding: .utf8)
        let authorized = try AuthorizedKey(line: line)
        #expect(authorized.comment == "id@knock-tests")
        #expect(authorized.line + "\n" == line)
        // A .pub file saved with Windows line endings reads the same ("\r\n" is one Character in Swift).
        let windows = try AuthorizedKey(line: line.replacingOccurrences(of: "\n", with: "\r\n"))
        #expect(windows == authorized)
        let expectedAlgorithm: SSHPublicKey.Algorithm =
            switch kind {
            case .ed25519: .ed25519
            case .ecdsa: .ecdsaP256
            case .rsa: .rsa
            }
        #expect(authorized.key.algorithm == expectedAlgorithm)
        #expect(authorized.key.bits == (kind == .rsa ? 3072 : 256))

        // `ssh-keygen -lf` prints "BITS SHA256:… COMMENT (TYPE)".
        let listed = try Command.run(["ssh-keygen", "-lf", path + ".pub"], in: directory.path)
        let words = listed.output.split(separator: " ")
        #expect(words.count >= 2)
        #expect(authorized.key.fingerprint.description == String(words[1]))
        #expect(try SSHFingerprint(parsing: words[1]) == authorized.key.fingerprint)

        let privateKey = try keygen.privateKey(path)
        #expect(privateKey.publicKey == authorized.key)
        #expect(privateKey.comment == "id@knock-tests")
    }

    @Test func rsaKeysShorterThan2048BitsAreRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let path = try keygen.generate("short", ["-t", "rsa", "-b", "1024"])
        let line = try String(contentsOfFile: path + ".pub", encoding: .utf8)
        #expect(throws: SSHKeyError(.modulus, .tooShort(length: 1024, minimum: 2048))) {
            try AuthorizedKey(line: line)
        }
        let enough = try keygen.generate("enough", ["-t", "rsa", "-b", "2048"])
        #expect(try keygen.publicKey(enough).bits == 2048)
    }

    @Test func keyTypesAKnockCannotUseAreRefusedByName() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let path = try keygen.generate("p384", ["-t", "ecdsa", "-b", "384"])
        let line = try String(contentsOfFile: path + ".pub", encoding: .utf8)
        do {
            _ = try AuthorizedKey(line: line)
            Issue.record("a P-384 key was accepted")
        } catch {
            #expect(error.field == .keyType)
            #expect("\(error)".contains("ecdsa-sha2-nistp384"))
        }
        // The same key as a bare blob: refused by its algorithm name.
        let blob = Base64.decode(line.split(separator: " ")[1])!
        #expect(throws: SSHKeyError(.algorithm, .unsupported("key type \"ecdsa-sha2-nistp384\""))) {
            try SSHPublicKey(wireBlob: blob)
        }
    }

    @Test func encryptedPrivateKeysPointToTheAgent() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let path = try keygen.generate("locked", ["-t", "ed25519"], passphrase: "correct horse")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        do {
            _ = try OpenSSHPrivateKey(fileText: text)
            Issue.record("an encrypted key was read")
        } catch {
            #expect(error.field == .cipher)
            #expect("\(error)".contains("ssh-add"))
            #expect("\(error)".contains("encrypted"))
        }
    }

    @Test func pemPrivateKeysAreRefusedWithTheWayOut() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let path = try keygen.generate("pem", ["-t", "ecdsa", "-b", "256", "-m", "PEM"])
        let text = try String(contentsOfFile: path, encoding: .utf8)
        do {
            _ = try OpenSSHPrivateKey(fileText: text)
            Issue.record("a PEM key was read")
        } catch {
            #expect(error.field == .armor)
            #expect("\(error)".contains("ssh-keygen -p"))
        }
    }

    @Test func damagedPrivateKeysAreRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let keygen = KeyGenerator(directory: directory)
        let path = try keygen.generate("id", .ed25519)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init)
        let binary = Base64.decode(lines.dropFirst().dropLast().joined())!
        #expect(try OpenSSHPrivateKey(binary: binary).publicKey == keygen.publicKey(path))
        // Every truncation and every flipped byte is either refused or (for bytes no check covers, such as the
        // comment) still yields the same key; none traps.
        for length in 0..<binary.count {
            #expect(throws: SSHKeyError.self) { try OpenSSHPrivateKey(binary: Array(binary.prefix(length))) }
        }
        let original = try OpenSSHPrivateKey(binary: binary).publicKey
        for index in binary.indices {
            var damaged = binary
            damaged[index] ^= 0x20
            if let key = try? OpenSSHPrivateKey(binary: damaged) { #expect(key.publicKey == original) }
        }
    }

    @Test func wireBlobsMustEndWithTheKey() throws {
        let signer = Ed25519TestSigner()
        let blob = signer.publicKey.wireBlob
        #expect(throws: SSHKeyError(.blob, .trailingBytes(count: 1))) { try SSHPublicKey(wireBlob: blob + [0]) }
        for length in 0..<blob.count {
            #expect(throws: SSHKeyError.self) { try SSHPublicKey(wireBlob: blob.prefix(length)) }
        }
    }

    struct LineCase: Sendable, CustomTestStringConvertible {
        var options: String
        /// nil: accepted; otherwise a word the error must contain.
        var refusal: String?
        var testDescription: String { options.isEmpty ? "(no options)" : options }
    }

    static let lineCases: [LineCase] = [
        LineCase(options: "", refusal: nil),
        LineCase(options: "no-pty", refusal: nil),
        LineCase(options: "restrict,no-touch-required", refusal: nil),
        LineCase(options: "NO-PORT-FORWARDING,No-X11-Forwarding", refusal: nil),
        LineCase(options: #"permitopen="db:5432",environment="GREETING=hello, world""#, refusal: nil),
        LineCase(options: #"environment="QUOTE=\"a b\"",pty"#, refusal: nil),
        LineCase(options: #"from="10.0.0.0/8""#, refusal: "from"),
        LineCase(options: #"restrict,command="backup --now""#, refusal: "command"),
        LineCase(options: #"expiry-time="20300101""#, refusal: "expiry-time"),
        LineCase(options: "verify-required", refusal: "verify-required"),
        LineCase(options: "cert-authority", refusal: "cert-authority"),
        LineCase(options: #"cert-authority,principals="alice""#, refusal: "cert-authority"),
        LineCase(options: "frobnicate", refusal: "frobnicate"),
        LineCase(options: "no-pty,,restrict", refusal: "empty option"),
        LineCase(options: "no-pty=\"yes\"", refusal: "takes no value"),
        LineCase(options: "permitopen", refusal: "double-quoted value"),
        LineCase(options: #"environment="unclosed"#, refusal: "not closed"),
    ]

    @Test(arguments: lineCases)
    func authorizedKeysOptions(_ testCase: LineCase) throws {
        let key = Ed25519TestSigner().publicKey
        let prefix = testCase.options.isEmpty ? "" : testCase.options + " "
        let line = "\(prefix)\(key.openSSHText) alice@laptop"
        if let refusal = testCase.refusal {
            do {
                _ = try AuthorizedKey(line: line)
                Issue.record("accepted \(line)")
            } catch {
                #expect(error.field == .options)
                #expect("\(error)".contains(refusal), "\(error)")
            }
        } else {
            let parsed = try AuthorizedKey(line: line)
            #expect(parsed.key == key)
            #expect(parsed.comment == "alice@laptop")
            #expect(parsed.ignoredOptions.isEmpty == testCase.options.isEmpty)
        }
    }

    @Test func badKeyLines() {
        let key = Ed25519TestSigner().publicKey
        let base64 = Base64.encode(key.wireBlob)
        let cases: [(String, SSHKeyError.Field)] = [
            ("", .line),
            ("   # a comment", .line),
            ("ssh-ed25519", .base64),
            ("ssh-ed25519 !!!!", .base64),
            ("ssh-ed25519 \(base64.dropLast())", .base64),
            ("ecdsa-sha2-nistp256 \(base64)", .keyType),
            ("ssh-dss \(base64)", .keyType),
            ("ssh-ed25519-cert-v01@openssh.com \(base64)", .keyType),
            ("no-pty", .keyType),
            ("ssh-ed25519 \(base64) comment with \u{7} bell", .line),
        ]
        for (line, field) in cases {
            do {
                _ = try AuthorizedKey(line: line)
                Issue.record("accepted \(line)")
            } catch {
                #expect(error.field == field, "\(line): \(error)")
            }
        }
    }

    @Test func authorizedKeysFilesSkipCommentsAndNameTheBadLine() throws {
        let first = Ed25519TestSigner().publicKey
        let second = P256TestSigner().publicKey
        let text = """
            # Drawbridge knockers

            \(first.openSSHText) alice
              no-pty \(second.openSSHText) bob\r
            """
        let keys = try AuthorizedKey.parseFile(text)
        #expect(keys.map(\.key) == [first, second])
        #expect(keys.map(\.comment) == ["alice", "bob"])

        let broken = text + "\nfrom=\"10.0.0.1\" \(first.openSSHText) carol\n"
        do {
            _ = try AuthorizedKey.parseFile(broken)
            Issue.record("a file with a from= line was accepted")
        } catch {
            #expect(error.line == 5)
            #expect(error.field == .options)
        }
    }

    @Test func fingerprintsParseOnlyInOpenSSHsForm() throws {
        let key = Ed25519TestSigner().publicKey
        let text = key.fingerprint.description
        #expect(text.hasPrefix("SHA256:") && text.count == 7 + 43)
        #expect(try SSHFingerprint(parsing: text) == key.fingerprint)
        for bad in ["", "MD5:" + text.dropFirst(7), text + "=", String(text.dropLast()), "SHA256:" + "!" * 43] {
            #expect(throws: SSHKeyError.self, "\(bad)") { try SSHFingerprint(parsing: bad) }
        }
    }

    @Test func base64IsStrict() {
        let samples: [[UInt8]] = [[], [0], [0, 1], [0, 1, 2], Array(0...255)]
        for sample in samples {
            #expect(Base64.decode(Base64.encode(sample)) == sample)
            #expect(Base64.decode(Base64.encode(sample, padding: false), padding: false) == sample)
        }
        #expect(Base64.decode("QQ==") == [0x41])
        #expect(Base64.decode("QR==") == nil, "non-zero unused bits")
        #expect(Base64.decode("QQ=") == nil)
        #expect(Base64.decode("Q===") == nil)
        #expect(Base64.decode("QQ==QQ==") == nil)
        #expect(Base64.decode("QU JD") == nil)
    }
}

extension String {
    fileprivate static func * (text: String, count: Int) -> String { String(repeating: text, count: count) }
}
