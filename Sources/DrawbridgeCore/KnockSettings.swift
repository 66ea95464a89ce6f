import FoundationEssentials

/// The policy's `knock:` section: who may open which ports by sending one signed UDP datagram (`drawbridge knock`).
///
/// ```yaml
/// knock:
///   port: 62201/udp                   # where knocks arrive; never answered, never open (default 62201/udp)
///   max_skew: 30s                     # how far a knock's timestamp may be from this host's clock (default 30s)
///   keys:                             # who may knock, mapped to what they may open, like roles
///     - { authorized_keys: /etc/drawbridge/knock.d/admins, ports: [ssh], max_duration: 3h }
///     - { key: "ssh-ed25519 AAAA… alice@laptop", ports: [ssh, postgres], max_duration: 1h }
///   host: web-1.example.org           # names a knock may carry for this host (default: the host name)
///   rate: 200                         # knock packets a second handed to drawbridge-knock; the rest are dropped
///   log_group: 62201                  # the NFLOG group that carries them (default: the port number)
///   user: drawbridge-knock            # the local account whose drawbridge-knock may hand knocks to the agent
///   require_source_address: false     # true: the signed client address must be the packet's source (no NAT)
/// ```
public struct KnockSettings: Sendable, Equatable {
    /// Which keys may knock, and what a knock signed by one of them may open.
    public struct KeyRule: Sendable, Equatable {
        /// Where the rule's keys come from.
        public enum Keys: Sendable, Equatable {
            /// An OpenSSH authorized_keys file (read by drawbridge-knock at start and on reload).
            case authorizedKeys(path: String)
            /// One public key line, `ssh-ed25519 AAAA… comment`.
            case key(line: String)
        }

        public var keys: Keys
        /// Names of managed ports a knock by these keys may open.
        public var ports: [String]
        /// The longest grant such a knock may make, in seconds (each port's own limit still applies).
        public var maxDuration: Double

        public init(keys: Keys, ports: [String], maxDuration: Double) {
            self.keys = keys
            self.ports = ports
            self.maxDuration = maxDuration
        }
    }

    /// The UDP port knocks arrive on.
    public var port: UInt16
    /// How far a knock's timestamp may lie from this host's clock, in seconds; also how long nonces are remembered.
    public var maxSkew: Double
    public var keys: [KeyRule]
    /// The host names a knock may name as its target; empty means this machine's host name.
    public var hostNames: [String]
    /// Knock packets per second the kernel hands on; the rest are dropped by the same table.
    public var rate: UInt32
    /// The NFLOG group the table sends knock packets to.
    public var logGroup: UInt16
    /// The local account drawbridge-knock runs as: besides root, the only caller the agent takes knocks from.
    public var user: String
    /// Whether a knock must carry the address it is sent from (as the host sees it): no NAT between client and host,
    /// and a captured knock re-sent from another address by someone on the path opens nothing, even first.
    public var requireSourceAddress = false

    public static let defaultPort: UInt16 = 62201
    public static let defaultMaxSkew: Double = 30
    public static let maximumSkew: Double = 600
    public static let defaultRate: UInt32 = 200
    public static let maximumRate: UInt32 = 10_000
    public static let defaultUser = "drawbridge-knock"

    public init(
        port: UInt16 = defaultPort, maxSkew: Double = defaultMaxSkew, keys: [KeyRule], hostNames: [String] = [],
        rate: UInt32 = defaultRate, logGroup: UInt16? = nil, user: String = defaultUser
    ) {
        self.port = port
        self.maxSkew = maxSkew
        self.keys = keys
        self.hostNames = hostNames
        self.rate = rate
        self.logGroup = logGroup ?? port
        self.user = user
    }

    /// The knock port as a service (always UDP).
    public var service: Service { Service(port: port, transport: .udp) }

    /// Whether a knock naming `name` is meant for this host: one of `hostNames` (the machine's own name when the
    /// policy names none), or the address the packet was sent to, written out. Compared without case and without
    /// a trailing dot, as DNS names are; otherwise exactly, so a knock for web-1.example.org opens nothing on a host
    /// that answers to web-1.example.com.
    public func isThisHost(_ name: String, machineName: String, destination: IPAddress) -> Bool {
        func normal(_ text: String) -> String {
            var text = text.lowercased()
            if text.hasSuffix(".") { text.removeLast() }
            return text
        }
        if let address = IPAddress(name) { return address == destination }
        let names = hostNames.isEmpty ? [machineName] : hostNames
        return names.contains { normal($0) == normal(name) }
    }

    /// The origin a knock's grant carries: `knock:SHA256:…`.
    public static func origin(fingerprint: String) -> String { "knock:\(fingerprint)" }

    /// The key types a knock may be signed with.
    public static let keyTypes = [
        "ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256", "ssh-rsa",
    ]

    /// Why a policy's key line is not one public key line, or nil. The shape only: drawbridge-knock decodes the key.
    public static func keyLineProblem(_ line: String) -> String? {
        guard line.utf8.count <= 16_384 else { return "the line is longer than 16 KiB" }
        guard !line.contains(where: { $0 == "\n" || $0 == "\r" || $0 == "\0" }) else {
            return "the line holds a line break or NUL; give one key per rule"
        }
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 2 else { return "expected a key type and base64 key, found '\(TextCheck.escaped(line))'" }
        guard keyTypes.contains(String(fields[0])) else {
            return "key type '\(TextCheck.escaped(String(fields[0])))' is not one of \(keyTypes.joined(separator: ", "))"
        }
        let base64 = fields[1].unicodeScalars.allSatisfy { scalar in
            ("A"..."Z").contains(scalar) || ("a"..."z").contains(scalar) || ("0"..."9").contains(scalar)
                || scalar == "+" || scalar == "/" || scalar == "="
        }
        guard base64, fields[1].count % 4 == 0 else { return "the key after \(fields[0]) is not base64" }
        return nil
    }

    /// Why `name` cannot be a host name a knock names, or nil: 1 to 253 characters of letters, digits, '.', '-', '_'.
    public static func hostNameProblem(_ name: String) -> String? {
        guard !name.isEmpty, name.utf8.count <= 253 else { return "a knock host name has 1 to 253 characters" }
        let valid = name.unicodeScalars.allSatisfy { scalar in
            ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
                || scalar == "." || scalar == "-" || scalar == "_" || scalar == ":"
        }
        guard valid, !name.hasPrefix("-"), !name.hasPrefix(".") else {
            return "'\(TextCheck.escaped(name))' is not a host name: use letters, digits, '.', '-' and '_'"
        }
        return nil
    }
}

/// A public key as the agent compares keys: its type and its key bytes (the base64 after the type, decoded).
///
/// The agent links no SSH code: drawbridge-knock decodes keys and verifies signatures. What the agent checks itself is
/// that the key a knock was verified with is listed by its own policy *now*: a `key:` line of a rule, or a line of a
/// rule's authorized_keys file (read afresh for each knock). So a key removed from the policy or from its file opens
/// nothing from the next knock on, even while a listener started with the old policy still accepts it.
public struct KnockKeyIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The key type, one of ``KnockSettings/keyTypes``.
    public let type: String
    /// The key in SSH wire format (what the base64 encodes).
    public let blob: [UInt8]

    /// Reads `type base64 [comment]`; nil unless the type is a knock key type and the base64 decodes to a blob that
    /// names the same type (as every OpenSSH public key blob starts with its type).
    public init?(_ text: some StringProtocol) {
        let fields = text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count >= 2, KnockSettings.keyTypes.contains(String(fields[0])), fields[1].utf8.count <= 16_384,
            let data = Data(base64Encoded: String(fields[1]))
        else { return nil }
        let blob = [UInt8](data)
        let type = Array(fields[0].utf8)
        let prefix = [UInt8(type.count >> 24 & 0xff), UInt8(type.count >> 16 & 0xff), UInt8(type.count >> 8 & 0xff),
            UInt8(type.count & 0xff)] + type
        guard blob.count > prefix.count, blob.starts(with: prefix) else { return nil }
        self.type = String(fields[0])
        self.blob = blob
    }

    /// `type base64`, as in a .pub file without the comment.
    public var description: String { "\(type) \(Data(blob).base64EncodedString())" }

    /// The keys on an authorized_keys file's lines. Options before the key type are skipped (double-quoted values may
    /// hold spaces); blank lines, `#` comments and lines that hold no knock key are left out (drawbridge-knock refuses
    /// those, and options that restrict a key, itself).
    public static func keys(inAuthorizedKeys text: some StringProtocol) -> Set<KnockKeyIdentity> {
        var keys = Set<KnockKeyIdentity>()
        for line in text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            var rest = line.drop { $0 == " " || $0 == "\t" }
            if rest.isEmpty || rest.first == "#" { continue }
            let firstWord = rest.prefix { $0 != " " && $0 != "\t" }
            if !KnockSettings.keyTypes.contains(String(firstWord)) {
                // Options: up to the first space or tab outside double quotes (a backslash escapes a quote inside).
                var inQuotes = false
                var escaped = false
                var end = rest.endIndex
                for index in rest.indices {
                    let character = rest[index]
                    if escaped {
                        escaped = false
                    } else if character == "\\" && inQuotes {
                        escaped = true
                    } else if character == "\"" {
                        inQuotes.toggle()
                    } else if !inQuotes && (character == " " || character == "\t") {
                        end = index
                        break
                    }
                }
                rest = rest[end...]
            }
            if let key = KnockKeyIdentity(rest) { keys.insert(key) }
        }
        return keys
    }
}
