/// A public key from an authorized_keys-style line: `[options] type base64 [comment]`.
///
/// Options (sshd(8) AUTHORIZED_KEYS FILE FORMAT) are read the way sshd reads them, and then:
/// - options that only switch SSH session features off or on (`restrict`, `no-pty`, `no-port-forwarding`,
///   `permitopen=`, `environment=`, …) are accepted and ignored: a knock uses none of those features. So is
///   `no-touch-required`, because a knock always requires the security key's user-presence flag.
/// - options that limit who, from where, until when or for what the key may be used (`from=`, `command=`,
///   `expiry-time=`, `verify-required`), or that make the line something other than a user's key
///   (`cert-authority`, `principals=`), refuse the line: honouring them is not possible at the packet layer, and
///   ignoring them would let a key restricted for SSH open ports without the restriction.
/// - unknown options refuse the line, as sshd refuses them.
public struct AuthorizedKey: Hashable, Sendable {
    /// The key the line holds.
    public var key: SSHPublicKey
    /// The text after the key, often `user@host`; empty when there is none.
    public var comment: String
    /// The options the line carried that a knock ignores, as written (`no-pty`, `permitopen="host:22"`).
    public var ignoredOptions: [String]

    /// A key with its comment, as if read from a line.
    public init(key: SSHPublicKey, comment: String = "", ignoredOptions: [String] = []) {
        self.key = key
        self.comment = comment
        self.ignoredOptions = ignoredOptions
    }

    /// Parses one line. A blank line or a `#` comment is an error here; ``parseFile(_:)`` skips them.
    public init(line: some StringProtocol) throws(SSHKeyError) {
        var rest = Substring(line).drop { $0 == " " || $0 == "\t" }
        while let last = rest.last, last == " " || last == "\t" || last.isNewline { rest.removeLast() }
        if rest.isEmpty { throw SSHKeyError(.line, .invalid("the line is empty")) }
        if rest.first == "#" { throw SSHKeyError(.line, .invalid("the line is a comment")) }
        for scalar in rest.unicodeScalars where !isPrintable(scalar) && scalar != "\t" {
            throw SSHKeyError(.line, .invalid("the line holds a control character"))
        }

        var ignored: [String] = []
        let first = Self.word(rest)
        if SSHPublicKey.Algorithm(rawValue: String(first)) == nil && !Self.isOpenSSHKeyType(first) {
            let (options, afterOptions) = try Self.splitOptions(rest)
            ignored = try Self.checkOptions(options)
            rest = afterOptions.drop { $0 == " " || $0 == "\t" }
        }

        let typeWord = Self.word(rest)
        guard let algorithm = SSHPublicKey.Algorithm(rawValue: String(typeWord)) else {
            if typeWord.isEmpty { throw SSHKeyError(.keyType, .invalid("no key follows the options")) }
            let name = Array(typeWord.utf8)
            throw SSHKeyError(
                .keyType,
                .unsupported(
                    "key type \(quoted(name)); use ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa (2048 bits or more) "
                        + "or sk-ssh-ed25519@openssh.com"))
        }
        rest = rest.dropFirst(typeWord.count).drop { $0 == " " || $0 == "\t" }
        let base64Word = Self.word(rest)
        guard !base64Word.isEmpty else { throw SSHKeyError(.base64, .invalid("no key follows the key type")) }
        guard let blob = Base64.decode(base64Word) else {
            throw SSHKeyError(.base64, .invalid("not valid base64"))
        }
        let key = try SSHPublicKey(wireBlob: blob)
        guard key.algorithm == algorithm else {
            throw SSHKeyError(
                .keyType,
                .mismatch(
                    expected: "\"\(key.algorithm.rawValue)\" (the type inside the key)",
                    found: "\"\(algorithm.rawValue)\""))
        }
        let comment = rest.dropFirst(base64Word.count).drop { $0 == " " || $0 == "\t" }
        self.init(key: key, comment: String(comment), ignoredOptions: ignored)
    }

    /// Parses every key line of an authorized_keys-style text, skipping blank lines and `#` comments. Any bad line
    /// fails the whole text, with its line number: a file that half loads would silently drop keys or keep keys the
    /// administrator meant to change.
    public static func parseFile(_ text: String) throws(SSHKeyError) -> [AuthorizedKey] {
        var keys: [AuthorizedKey] = []
        // "\r\n" is one Character in Swift, so a file with CRLF line ends is split on it explicitly.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, line) in lines.enumerated() {
            let trimmed = line.drop { $0 == " " || $0 == "\t" || $0 == "\r" }
            if trimmed.isEmpty || trimmed.first == "#" { continue }
            do {
                keys.append(try AuthorizedKey(line: line))
            } catch {
                var located = error
                located.line = index + 1
                throw located
            }
        }
        return keys
    }

    /// The authorized_keys line for this key: type, base64, comment.
    public var line: String {
        comment.isEmpty ? key.openSSHText : "\(key.openSSHText) \(comment)"
    }

    // MARK: - Options

    private static func word(_ text: Substring) -> Substring {
        text.prefix { $0 != " " && $0 != "\t" }
    }

    /// Key types OpenSSH knows that a knock does not accept; the line is refused as an unsupported key, not read as
    /// options.
    private static func isOpenSSHKeyType(_ word: Substring) -> Bool {
        let known = [
            "ssh-dss", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ecdsa-sha2-nistp256@openssh.com",
            "ssh-xmss@openssh.com",
        ]
        return known.contains(String(word)) || word.hasSuffix("-cert-v01@openssh.com")
    }

    /// Splits the options at the first space or tab outside double quotes, and the options at commas outside
    /// quotes. Inside quotes `\"` is a quote, as sshd reads it.
    private static func splitOptions(_ text: Substring) throws(SSHKeyError) -> ([String], Substring) {
        var options: [String] = []
        var current = ""
        var inQuotes = false
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if inQuotes {
                if character == "\\", text.index(after: index) < text.endIndex, text[text.index(after: index)] == "\"" {
                    current.append("\\\"")
                    index = text.index(index, offsetBy: 2)
                    continue
                }
                if character == "\"" { inQuotes = false }
                current.append(character)
            } else if character == " " || character == "\t" {
                break
            } else if character == "," {
                options.append(current)
                current = ""
            } else {
                if character == "\"" { inQuotes = true }
                current.append(character)
            }
            index = text.index(after: index)
        }
        if inQuotes { throw SSHKeyError(.options, .invalid("a quoted option value is not closed")) }
        options.append(current)
        return (options, text[index...])
    }

    private static let ignoredFlags: Set<String> = [
        "restrict", "no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-x11-forwarding",
        "agent-forwarding", "port-forwarding", "pty", "user-rc", "x11-forwarding", "no-touch-required",
    ]
    private static let ignoredWithValue: Set<String> = ["permitopen", "permitlisten", "environment", "tunnel"]
    private static let refused: [String: String] = [
        "from": "it limits the addresses the key may be used from, which a knock cannot check",
        "command": "it limits the key to one forced command; such a key must not open ports",
        "expiry-time": "it limits how long the key is valid, which a knock does not check",
        "verify-required": "it requires user verification (a PIN), which a knock does not check",
        "cert-authority": "the line is a certificate authority, not a user's key",
        "principals": "it belongs to a certificate authority line",
    ]

    /// Returns the options a knock ignores; throws for an option that refuses the line.
    private static func checkOptions(_ options: [String]) throws(SSHKeyError) -> [String] {
        var ignored: [String] = []
        for option in options {
            let name = String(option.prefix { $0 != "=" }).lowercased()
            let hasValue = option.contains("=")
            if name.isEmpty { throw SSHKeyError(.options, .invalid("an empty option (two commas in a row?)")) }
            if let why = refused[name] {
                throw SSHKeyError(.options, .unsupported("option \"\(name)\": \(why)"))
            }
            if ignoredFlags.contains(name) {
                if hasValue { throw SSHKeyError(.options, .invalid("option \"\(name)\" takes no value")) }
            } else if ignoredWithValue.contains(name) {
                let value = option.drop { $0 != "=" }.dropFirst()
                guard value.count >= 2, value.first == "\"", value.last == "\"" else {
                    throw SSHKeyError(.options, .invalid("option \"\(name)\" needs a double-quoted value"))
                }
            } else {
                throw SSHKeyError(.options, .unsupported("unknown option \(quoted(Array(name.utf8)))"))
            }
            ignored.append(option)
        }
        return ignored
    }
}
