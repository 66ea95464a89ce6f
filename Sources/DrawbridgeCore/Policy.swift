import YAML

/// What this host puts under just-in-time control and who may open it: the parsed, validated policy file.
///
/// The file is YAML with exactly these keys (only `ports` is required):
/// ```yaml
/// ports:                      # the ports under just-in-time control, by name
///   ssh:      { port: 22,   protocol: tcp, max_duration: 3h,  allowed_sources: ["0.0.0.0/0", "::/0"] }
///   postgres: { port: 5432, protocol: tcp, max_duration: 30m, allowed_sources: ["198.51.100.0/24"] }
/// always_allow: ["192.0.2.10/32"]   # break-glass: never locked out
/// on_expiry: keep-sessions          # or cut-sessions
/// roles:                            # who may grant what, by Unix group
///   - { group: drawbridge-admins, ports: [ssh, postgres], max_duration: 3h }
///   - { group: developers,        ports: [ssh],           max_duration: 1h }
/// grant_files: ["/etc/drawbridge/grants.json"]   # optional: watched JSON files of grants
/// etcd:                             # optional: grants for this host and its groups from etcd (drawbridge-etcd)
///   endpoints: ["https://192.0.2.1:2379"]
///   host: web-1                     # default: the machine's host name
///   groups: [web, eu-west]
///   prefix: /drawbridge             # default
///   tls: { ca: /etc/drawbridge/etcd-ca.pem, cert: /etc/drawbridge/etcd.pem, key: /etc/drawbridge/etcd.key }
///   # or user: web-1 and password_file: /etc/drawbridge/etcd.password
///   sync_user: drawbridge-etcd      # default: the local account whose drawbridge-etcd may hand grants to the agent
/// knock:                            # optional: open ports with one datagram signed by an SSH key (drawbridge-knock)
///   port: 62201/udp
///   max_skew: 30s
///   keys:
///     - { authorized_keys: /etc/drawbridge/knock.d/admins, ports: [ssh], max_duration: 3h }
///     - { key: "ssh-ed25519 AAAA… alice@laptop", ports: [ssh], max_duration: 1h }
/// ```
///
/// Validation is strict: an unknown key, a value of the wrong kind or a prefix with host bits set is an error with
/// the line and column of the offending node, never a silent default. `ports: {}` is valid and manages nothing (the
/// agent then drops no traffic at all); `always_allow`, `roles` and `grant_files` may be empty or absent, and an
/// absent `on_expiry` means `keep-sessions`.
public struct Policy: Sendable, Equatable {
    /// A port under just-in-time control: closed to everyone except always-allowed prefixes and current grants.
    public struct ManagedPort: Sendable, Equatable {
        /// The name people use for the port (`ssh`): `[a-z][a-z0-9_-]{0,31}`, so never confused with `22/tcp`.
        public var name: String
        /// The port number and protocol.
        public var service: Service
        /// The longest grant this port accepts, in seconds.
        public var maxDuration: Double
        /// The prefixes a grant's source must lie within; `0.0.0.0/0` and `::/0` mean anywhere.
        public var allowedSources: [IPPrefix]
        /// Where the port is guarded: `input` (packets to this host, the default), `forward` (packets this host
        /// forwards, to containers or VMs, judged by the port the client asked for before any DNAT), or both.
        public var hooks: [Hook]

        public init(
            name: String, service: Service, maxDuration: Double, allowedSources: [IPPrefix], hooks: [Hook] = [.input]
        ) {
            self.name = name
            self.service = service
            self.maxDuration = maxDuration
            self.allowedSources = allowedSources
            self.hooks = hooks
        }
    }

    /// A netfilter hook a managed port is guarded on.
    public enum Hook: String, Sendable, Equatable, CaseIterable {
        case input, forward
    }

    /// Lets the members of a Unix group grant some ports for a bounded time.
    public struct Role: Sendable, Equatable {
        /// The Unix group whose members hold this role.
        public var group: String
        /// Names of managed ports the role may grant.
        public var ports: [String]
        /// The longest grant the role may make, in seconds (a port's own limit still applies).
        public var maxDuration: Double

        public init(group: String, ports: [String], maxDuration: Double) {
            self.group = group
            self.ports = ports
            self.maxDuration = maxDuration
        }
    }

    /// The managed ports, in file order.
    public var ports: [ManagedPort]
    /// Break-glass prefixes that always reach every managed port, so an operator is never locked out.
    public var alwaysAllow: [IPPrefix]
    /// What happens to open connections when their grant ends.
    public var onExpiry: SessionMode
    /// Who may grant what; root may grant anything the ports allow without a role.
    public var roles: [Role]
    /// Absolute paths of JSON files of grants that the agent watches.
    public var grantFiles: [String]
    /// Where this host's grants from etcd come from; nil when the host takes none.
    public var etcd: EtcdSettings?
    /// Who may open ports by knocking; nil when knocks are off (no knock rule in the table).
    public var knock: KnockSettings?
    /// Where Prometheus metrics are served over HTTP; nil when they are not (`drawbridge metrics` still works).
    public var metrics: MetricsSettings?

    public init(
        ports: [ManagedPort], alwaysAllow: [IPPrefix] = [], onExpiry: SessionMode = .keepSessions, roles: [Role] = [],
        grantFiles: [String] = [], etcd: EtcdSettings? = nil, knock: KnockSettings? = nil,
        metrics: MetricsSettings? = nil
    ) {
        self.knock = knock
        self.metrics = metrics
        self.ports = ports
        self.alwaysAllow = alwaysAllow
        self.onExpiry = onExpiry
        self.roles = roles
        self.grantFiles = grantFiles
        self.etcd = etcd
    }

    /// The longest `max_duration` a policy may set: seven days. A grant is meant to be short; a port that must stay
    /// open for weeks belongs in the ordinary firewall, or its source in `always_allow`.
    public static let maxDurationLimit: Double = 7 * 86_400

    /// The managed port with this policy name.
    public func port(named name: String) -> ManagedPort? {
        ports.first { $0.name == name }
    }

    /// The managed port for this port number and protocol.
    public func port(for service: Service) -> ManagedPort? {
        ports.first { $0.service == service }
    }

    /// The port/protocol pairs under just-in-time control, in file order.
    public var managedServices: [Service] { ports.filter { $0.hooks.contains(.input) }.map(\.service) }
    /// The ports guarded on the forward hook.
    public var forwardedServices: [Service] { ports.filter { $0.hooks.contains(.forward) }.map(\.service) }

    /// The longest duration any managed port allows (for display); nil when no port is managed.
    public var longestMaxDuration: Double? { ports.map(\.maxDuration).max() }

    /// Parses and validates policy text.
    ///
    /// - Parameters:
    ///   - text: the YAML text.
    ///   - file: the name errors are reported against, usually the path the text was read from.
    public static func parse(_ text: String, file: String) throws(PolicyError) -> Policy {
        try PolicyReader(file: file).read { () throws(YAMLError) in try Document(parsing: text) }
    }

    /// Parses and validates policy bytes as read from a file: text that is not UTF-8 is refused at the position of
    /// its first bad byte.
    public static func parse(utf8 bytes: [UInt8], file: String) throws(PolicyError) -> Policy {
        try PolicyReader(file: file).read { () throws(YAMLError) in try Document(parsingUTF8: bytes) }
    }

    /// Parses a requester's etcd client configuration (`etcd:` with endpoints, tls, user and password_file).
    public static func parseEtcdClient(_ text: String, file: String) throws(PolicyError) -> EtcdSettings {
        try PolicyReader(file: file).readEtcdClient { () throws(YAMLError) in try Document(parsing: text) }
    }

    /// Files larger than this are refused: a policy is a page of text, and a huge file is the wrong file.
    public static let largestFile = 1 << 20
}

/// Why a policy file was refused, with the position of the offending node.
///
/// Its description reads like a compiler diagnostic:
/// `policy.yaml:4:13: max_duration '3x' is not a duration (hint: write it like 90s, 30m, 2h or 1h30m)`.
public struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file as it was named to `parse` or `load`.
    public var file: String
    /// The line of the offending node, starting at 1; nil when the error is about the whole file.
    public var line: Int?
    /// The column of the offending node, starting at 1 and counted in Unicode scalars.
    public var column: Int?
    /// What is wrong, in a sentence.
    public var message: String
    /// How to fix it, when there is an obvious way.
    public var hint: String?

    public init(file: String, line: Int? = nil, column: Int? = nil, message: String, hint: String? = nil) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        self.hint = hint
    }

    public var description: String {
        var location = file
        if let line {
            location += ":\(line)"
            if let column { location += ":\(column)" }
        }
        return "\(location): \(message)" + (hint.map { " (hint: \($0))" } ?? "")
    }
}

// MARK: - Reading the YAML tree

/// Walks the YAML node tree, keeping every node's position for error messages. Decoding through Codable would lose
/// the positions, and with them the errors' usefulness.
private struct PolicyReader {
    let file: String

    private enum Keys {
        static let topLevel = ["ports", "always_allow", "on_expiry", "roles", "grant_files", "etcd", "knock", "metrics"]
        static let metrics = ["listen"]
        static let knock = ["port", "max_skew", "keys", "host", "rate", "log_group", "user", "require_source_address"]
        static let knockKey = ["authorized_keys", "key", "ports", "max_duration"]
        static let etcd = ["endpoints", "host", "groups", "prefix", "tls", "user", "password_file", "sync_user"]
        static let tls = ["ca", "cert", "key"]
        static let port = ["port", "protocol", "max_duration", "allowed_sources", "hooks"]
        static let role = ["group", "ports", "max_duration"]
    }

    /// Reads the policy from the document `parse` gives; its errors become ``PolicyError``s against the file.
    func read(_ parse: () throws(YAMLError) -> Document) throws(PolicyError) -> Policy {
        let root: Node?
        do {
            root = try parse().root
        } catch {
            throw failure(at: error.position, error.message, hint: error.hint)
        }
        guard let root, !isEmptyValue(root) else {
            throw PolicyError(
                file: file, line: 1, column: 1, message: "the policy is empty",
                hint: "a policy needs at least a ports key listing the ports under just-in-time control")
        }
        guard case .mapping(let top) = root.content else {
            throw failure(
                at: root,
                "the policy must be a mapping of the keys \(Keys.topLevel.joined(separator: ", ")); "
                    + "found \(describe(root))")
        }
        let entries = try fields(of: top, allowed: Keys.topLevel, context: "at the top level of the policy")
        guard let portsEntry = entries["ports"] else {
            throw failure(
                at: root, "the policy has no ports key",
                hint: "list the ports under just-in-time control, e.g. "
                    + "ports: { ssh: { port: 22, max_duration: 3h, allowed_sources: [\"0.0.0.0/0\"] } }")
        }
        let ports = try readPorts(portsEntry.value)
        var alwaysAllow: [IPPrefix] = []
        if let entry = entries["always_allow"] {
            alwaysAllow = try prefixes(entry.value, named: "always_allow", allowEmpty: true)
        }
        var onExpiry = SessionMode.keepSessions
        if let entry = entries["on_expiry"] {
            onExpiry = try sessionMode(entry.value)
        }
        var roles: [Policy.Role] = []
        if let entry = entries["roles"] {
            roles = try readRoles(entry.value, ports: ports)
        }
        var grantFiles: [String] = []
        if let entry = entries["grant_files"] {
            grantFiles = try readGrantFiles(entry.value)
        }
        var etcd: EtcdSettings?
        if let entry = entries["etcd"], !isEmptyValue(entry.value) {
            etcd = try readEtcd(entry.value, requireHostIdentity: true)
        }
        var knock: KnockSettings?
        if let entry = entries["knock"], !isEmptyValue(entry.value) {
            knock = try readKnock(entry.value, ports: ports)
        }
        var metrics: MetricsSettings?
        if let entry = entries["metrics"], !isEmptyValue(entry.value) {
            metrics = try readMetrics(entry.value)
        }
        return Policy(
            ports: ports, alwaysAllow: alwaysAllow, onExpiry: onExpiry, roles: roles, grantFiles: grantFiles, etcd: etcd,
            knock: knock, metrics: metrics)
    }

    // MARK: metrics

    private func readMetrics(_ node: Node) throws(PolicyError) -> MetricsSettings {
        let example = "write it like metrics: { listen: \"127.0.0.1:9447\" }"
        guard case .mapping(let mapping) = node.content else {
            throw failure(at: node, "metrics must be a mapping; found \(describe(node))", hint: example)
        }
        let entries = try fields(of: mapping, allowed: Keys.metrics, context: "in metrics")
        guard let entry = entries["listen"] else {
            throw failure(at: node, "metrics has no listen address", hint: example)
        }
        let text = try string(entry.value, named: "metrics listen")
        switch MetricsSettings.parse(listen: text) {
        case .success(let settings): return settings
        case .failure(let problem): throw failure(at: entry.value, problem.description, hint: example)
        }
    }

    // MARK: knock

    private func readKnock(_ node: Node, ports: [Policy.ManagedPort]) throws(PolicyError) -> KnockSettings {
        let example = "write it like knock: { port: 62201/udp, keys: [{ authorized_keys: /etc/drawbridge/knock.d/admins, "
            + "ports: [ssh], max_duration: 1h }] }"
        guard case .mapping(let mapping) = node.content else {
            throw failure(at: node, "knock must be a mapping; found \(describe(node))", hint: example)
        }
        let entries = try fields(of: mapping, allowed: Keys.knock, context: "in knock")
        var settings = KnockSettings(keys: [])
        if let entry = entries["port"] {
            settings.port = try knockPort(entry.value)
        }
        if let clash = ports.first(where: { $0.service == settings.service }) {
            throw failure(
                at: entries["port"]?.value ?? node,
                "the knock port \(settings.service) is also the managed port \(clash.name)",
                hint: "knocks arrive on a port of their own that is never opened; choose another, e.g. 62201/udp")
        }
        if let entry = entries["max_skew"] {
            let seconds = try duration(entry.value, of: "knock max_skew")
            guard seconds <= KnockSettings.maximumSkew else {
                throw failure(
                    at: entry.value, "knock max_skew \(entry.value.scalar?.value ?? "") is longer than the limit of "
                        + GrantDuration.format(KnockSettings.maximumSkew),
                    hint: "a knock is replayable within its skew window: keep it short and the clocks in sync")
            }
            settings.maxSkew = seconds
        }
        guard let keysEntry = entries["keys"] else {
            throw failure(at: node, "knock has no keys, so nobody could knock", hint: example)
        }
        guard case .sequence(let items) = keysEntry.value.content, !items.isEmpty else {
            throw failure(
                at: keysEntry.value, "knock keys must be a non-empty list; found \(describe(keysEntry.value))",
                hint: example)
        }
        for (index, item) in items.enumerated() {
            settings.keys.append(try readKnockKey(item, number: index + 1, ports: ports))
        }
        if let entry = entries["host"] {
            var names: [String] = []
            let nodes: [Node]
            if case .sequence(let list) = entry.value.content { nodes = list } else { nodes = [entry.value] }
            for item in nodes {
                let name = try string(item, named: "knock host")
                if let problem = KnockSettings.hostNameProblem(name) {
                    throw failure(at: item, problem)
                }
                names.append(name)
            }
            guard !names.isEmpty else { throw failure(at: entry.value, "knock host lists no name") }
            settings.hostNames = names
        }
        if let entry = entries["rate"] {
            let text = try string(entry.value, named: "knock rate")
            guard let rate = UInt32(text), rate >= 1, rate <= KnockSettings.maximumRate,
                text.allSatisfy(\.isASCIIDigit), !text.hasPrefix("0")
            else {
                throw failure(
                    at: entry.value,
                    "knock rate '\(text)' is not a number of packets a second from 1 to \(KnockSettings.maximumRate)")
            }
            settings.rate = rate
        }
        if let entry = entries["log_group"] {
            let text = try string(entry.value, named: "knock log_group")
            guard let group = UInt16(text), text.allSatisfy(\.isASCIIDigit), !text.hasPrefix("0") else {
                throw failure(at: entry.value, "knock log_group '\(text)' is not a number from 1 to 65535")
            }
            settings.logGroup = group
        } else {
            settings.logGroup = settings.port
        }
        if let entry = entries["require_source_address"] {
            guard let scalar = entry.value.scalar, scalar.style == .plain, scalar.value == "true" || scalar.value == "false"
            else {
                throw failure(
                    at: entry.value, "knock require_source_address must be true or false; found \(describe(entry.value))")
            }
            settings.requireSourceAddress = scalar.value == "true"
        }
        if let entry = entries["user"] {
            let user = try string(entry.value, named: "knock user")
            guard Self.isGroupName(user) else {
                throw failure(at: entry.value, "'\(user)' is not a valid Unix user name")
            }
            settings.user = user
        }
        return settings
    }

    /// `62201/udp` or `62201`; knocks are datagrams, so tcp is refused.
    private func knockPort(_ node: Node) throws(PolicyError) -> UInt16 {
        let example = "write it like port: 62201/udp"
        let text = try string(node, named: "knock port")
        var number = Substring(text)
        if let slash = text.firstIndex(of: "/") {
            let transport = text[text.index(after: slash)...]
            guard transport == "udp" else {
                throw failure(at: node, "knock port \(text) is not UDP; a knock is one UDP datagram", hint: example)
            }
            number = text[..<slash]
        }
        guard !number.isEmpty, number.allSatisfy(\.isASCIIDigit), !number.hasPrefix("0"), let value = UInt16(number),
            value >= 1
        else {
            throw failure(at: node, "knock port '\(text)' is not a port number from 1 to 65535", hint: example)
        }
        return value
    }

    private func readKnockKey(_ node: Node, number: Int, ports: [Policy.ManagedPort]) throws(PolicyError)
        -> KnockSettings.KeyRule
    {
        let context = "knock key \(number)"
        guard case .mapping(let mapping) = node.content else {
            throw failure(
                at: node, "\(context) must be a mapping; found \(describe(node))",
                hint: "write it like { key: \"ssh-ed25519 AAAA… alice@laptop\", ports: [ssh], max_duration: 1h }")
        }
        let entries = try fields(of: mapping, allowed: Keys.knockKey, context: "in \(context)")
        let keys: KnockSettings.KeyRule.Keys
        switch (entries["authorized_keys"], entries["key"]) {
        case (let file?, nil):
            keys = .authorizedKeys(path: try absolutePath(file.value, named: "authorized_keys of \(context)"))
        case (nil, let line?):
            let text = try string(line.value, named: "key of \(context)")
            if let problem = KnockSettings.keyLineProblem(text) {
                throw failure(at: line.value, "key of \(context): \(problem)",
                    hint: "paste one line of a .pub file: ssh-ed25519 AAAA… comment")
            }
            keys = .key(line: text)
        case (.some, .some):
            throw failure(at: node, "\(context) names both authorized_keys and key", hint: "one rule per key source")
        case (nil, nil):
            throw failure(
                at: node, "\(context) has neither authorized_keys nor key",
                hint: "name a file of keys (authorized_keys: /etc/drawbridge/knock.d/admins) or one key line")
        }
        guard let portsEntry = entries["ports"] else { throw failure(at: node, "\(context) has no ports") }
        guard let durationEntry = entries["max_duration"] else {
            throw failure(at: node, "\(context) has no max_duration")
        }
        let names = try rolePorts(portsEntry.value, context: context, known: ports)
        let maxDuration = try duration(durationEntry.value, of: context)
        return KnockSettings.KeyRule(keys: keys, ports: names, maxDuration: maxDuration)
    }

    /// Reads a document whose only key is `etcd` (a requester's client configuration: no host, groups or sync user).
    func readEtcdClient(_ parse: () throws(YAMLError) -> Document) throws(PolicyError) -> EtcdSettings {
        let root: Node?
        do {
            root = try parse().root
        } catch {
            throw failure(at: error.position, error.message, hint: error.hint)
        }
        guard let root, case .mapping(let top) = root.content else {
            throw PolicyError(
                file: file, line: 1, column: 1, message: "the configuration must be a mapping with the key etcd",
                hint: "write it like etcd: { endpoints: [\"https://192.0.2.1:2379\"] }")
        }
        let entries = try fields(of: top, allowed: ["etcd"], context: "at the top level of the configuration")
        guard let entry = entries["etcd"] else {
            throw failure(at: root, "the configuration has no etcd key")
        }
        return try readEtcd(entry.value, requireHostIdentity: false)
    }

    // MARK: Sections

    private func readPorts(_ node: Node) throws(PolicyError) -> [Policy.ManagedPort] {
        if isEmptyValue(node) { return [] }
        guard case .mapping(let mapping) = node.content else {
            throw failure(
                at: node, "ports must be a mapping of port names to their settings; found \(describe(node))",
                hint: "write it like ports: { ssh: { port: 22, max_duration: 3h, allowed_sources: [\"0.0.0.0/0\"] } }")
        }
        var ports: [Policy.ManagedPort] = []
        for pair in mapping {
            let name = try portName(pair.key)
            let port = try readPort(pair.value, name: name)
            if let other = ports.first(where: { $0.service == port.service }) {
                let position = (pair.value["port"] ?? pair.key).position
                throw failure(
                    at: position,
                    "port '\(name)' manages \(port.service), which port '\(other.name)' already manages",
                    hint: "give each port and protocol one name")
            }
            ports.append(port)
        }
        return ports
    }

    private func portName(_ key: Node) throws(PolicyError) -> String {
        guard let scalar = key.scalar, !isEmptyValue(key) else {
            throw failure(at: key, "a port name must be a plain word such as ssh; found \(describe(key))")
        }
        let name = scalar.value
        guard Self.isPortName(name) else {
            throw failure(
                at: key, "'\(name)' is not a valid port name",
                hint: "a name is 1 to 32 characters: a lowercase letter, then lowercase letters, digits, '-' or '_'; "
                    + "it starts with a letter so that it is never mistaken for a number such as 22/tcp")
        }
        return name
    }

    private func readPort(_ node: Node, name: String) throws(PolicyError) -> Policy.ManagedPort {
        let context = "port '\(name)'"
        guard case .mapping(let mapping) = node.content else {
            throw failure(
                at: node, "the settings of \(context) must be a mapping; found \(describe(node))",
                hint: "write it like \(name): { port: 22, max_duration: 3h, allowed_sources: [\"0.0.0.0/0\"] }")
        }
        let entries = try fields(of: mapping, allowed: Keys.port, context: "in \(context)")
        let required = ["port", "max_duration", "allowed_sources"]
        for key in required where entries[key] == nil {
            throw failure(
                at: node, "\(context) has no \(key)",
                hint: "every managed port needs \(required.joined(separator: ", ")); protocol is optional, default tcp")
        }
        let number = try portNumber(entries["port"]!.value)
        var transport = TransportProtocol.tcp
        if let entry = entries["protocol"] {
            transport = try transportProtocol(entry.value)
        }
        let maxDuration = try duration(entries["max_duration"]!.value, of: context)
        let sources = try prefixes(
            entries["allowed_sources"]!.value, named: "allowed_sources of \(context)", allowEmpty: false)
        var hooks: [Policy.Hook] = [.input]
        if let entry = entries["hooks"] {
            hooks = try readHooks(entry.value, of: context)
        }
        return Policy.ManagedPort(
            name: name, service: Service(port: number, transport: transport), maxDuration: maxDuration,
            allowedSources: sources, hooks: hooks)
    }

    /// `[input]`, `[forward]` or `[input, forward]`.
    private func readHooks(_ node: Node, of context: String) throws(PolicyError) -> [Policy.Hook] {
        let hint = "write it like hooks: [input, forward]; input guards packets to this host, forward packets it "
            + "forwards (to containers or VMs, by the port the client asked for)"
        guard case .sequence(let items) = node.content, !items.isEmpty else {
            throw failure(at: node, "hooks of \(context) must be a non-empty list; found \(describe(node))", hint: hint)
        }
        var hooks: [Policy.Hook] = []
        for item in items {
            let text = try string(item, named: "a hook of \(context)")
            guard let hook = Policy.Hook(rawValue: text) else {
                throw failure(at: item, "'\(TextCheck.escaped(text))' is not a hook; use input or forward", hint: hint)
            }
            guard !hooks.contains(hook) else {
                throw failure(at: item, "hooks of \(context) name \(text) twice")
            }
            hooks.append(hook)
        }
        return hooks
    }

    private func readRoles(_ node: Node, ports: [Policy.ManagedPort]) throws(PolicyError) -> [Policy.Role] {
        if isEmptyValue(node) { return [] }
        guard case .sequence(let sequence) = node.content else {
            throw failure(
                at: node, "roles must be a list of roles; found \(describe(node))",
                hint: "write it like roles: [{ group: admins, ports: [ssh], max_duration: 1h }]")
        }
        var roles: [Policy.Role] = []
        for (index, item) in sequence.enumerated() {
            roles.append(try readRole(item, number: index + 1, ports: ports))
        }
        return roles
    }

    private func readRole(_ node: Node, number: Int, ports: [Policy.ManagedPort]) throws(PolicyError) -> Policy.Role {
        guard case .mapping(let mapping) = node.content else {
            throw failure(
                at: node, "role \(number) must be a mapping; found \(describe(node))",
                hint: "write it like { group: admins, ports: [ssh], max_duration: 1h }")
        }
        var context = "role \(number)"
        if let group = node["group"]?.scalar?.value, !group.isEmpty { context += " (group \(group))" }
        let entries = try fields(of: mapping, allowed: Keys.role, context: "in \(context)")
        for key in Keys.role where entries[key] == nil {
            throw failure(
                at: node, "\(context) has no \(key)",
                hint: "every role needs \(Keys.role.joined(separator: ", "))")
        }
        let group = try groupName(entries["group"]!.value, context: context)
        let names = try rolePorts(entries["ports"]!.value, context: context, known: ports)
        let maxDuration = try duration(entries["max_duration"]!.value, of: context)
        return Policy.Role(group: group, ports: names, maxDuration: maxDuration)
    }

    private func groupName(_ node: Node, context: String) throws(PolicyError) -> String {
        let group = try string(node, named: "group of \(context)")
        guard Self.isGroupName(group) else {
            throw failure(
                at: node, "'\(group)' is not a valid Unix group name",
                hint: "a group name is 1 to 32 characters: a letter or '_', then letters, digits, '.', '-' or '_', "
                    + "optionally ending in '$'")
        }
        return group
    }

    private func rolePorts(_ node: Node, context: String, known: [Policy.ManagedPort]) throws(PolicyError)
        -> [String]
    {
        let knownNames = known.map(\.name)
        let knownList = knownNames.isEmpty ? "none (ports is empty)" : knownNames.joined(separator: ", ")
        let example = "write it like ports: [\(knownNames.first ?? "ssh")]"
        guard case .sequence(let sequence) = node.content else {
            throw failure(
                at: node, "ports of \(context) must be a list of port names; found \(describe(node))", hint: example)
        }
        guard sequence.count > 0 else {
            throw failure(at: node, "ports of \(context) is empty, so the role could grant nothing", hint: example)
        }
        var names: [String] = []
        for item in sequence {
            let name = try string(item, named: "a port name in \(context)")
            guard knownNames.contains(name) else {
                var hint = "roles name ports by their names under ports"
                if let suggestion = Spelling.closest(to: name, among: knownNames) {
                    hint = "did you mean \(suggestion)?"
                } else if let service = Service(parsing: name), let port = known.first(where: { $0.service == service })
                {
                    hint = "roles name ports by their names under ports: \(service) is \(port.name)"
                }
                throw failure(
                    at: item, "\(context) names port '\(name)', which is not under ports; known ports: \(knownList)",
                    hint: hint)
            }
            guard !names.contains(name) else {
                throw failure(at: item, "\(context) lists port '\(name)' twice")
            }
            names.append(name)
        }
        return names
    }

    private func readGrantFiles(_ node: Node) throws(PolicyError) -> [String] {
        if isEmptyValue(node) { return [] }
        guard case .sequence(let sequence) = node.content else {
            throw failure(
                at: node, "grant_files must be a list of paths; found \(describe(node))",
                hint: "write it like grant_files: [\"/etc/drawbridge/grants.json\"]")
        }
        var paths: [String] = []
        for item in sequence {
            let path = try string(item, named: "a path in grant_files")
            guard !path.isEmpty else {
                throw failure(at: item, "a path in grant_files is empty")
            }
            guard path.hasPrefix("/") else {
                throw failure(
                    at: item, "grant file '\(path)' is not an absolute path",
                    hint: "write the full path, e.g. /etc/drawbridge/\(path)")
            }
            paths.append(path)
        }
        return paths
    }

    private func readEtcd(_ node: Node, requireHostIdentity: Bool) throws(PolicyError) -> EtcdSettings {
        let example = "write it like etcd: { endpoints: [\"https://192.0.2.1:2379\"], groups: [web] }"
        guard case .mapping(let mapping) = node.content else {
            throw failure(at: node, "etcd must be a mapping; found \(describe(node))", hint: example)
        }
        let allowed = requireHostIdentity ? Keys.etcd : Keys.etcd.filter { !["host", "groups", "sync_user"].contains($0) }
        let entries = try fields(of: mapping, allowed: allowed, context: "in etcd")
        guard let endpointsEntry = entries["endpoints"] else {
            throw failure(at: node, "etcd has no endpoints", hint: example)
        }
        var settings = EtcdSettings(endpoints: try etcdEndpoints(endpointsEntry.value))
        if let entry = entries["host"] {
            let host = try string(entry.value, named: "etcd host")
            if let problem = EtcdSettings.nameProblem(host, kind: "host") { throw failure(at: entry.value, problem) }
            settings.host = host
        }
        if let entry = entries["groups"], !isEmptyValue(entry.value) {
            guard case .sequence(let items) = entry.value.content else {
                throw failure(
                    at: entry.value, "etcd groups must be a list of group names; found \(describe(entry.value))",
                    hint: "write it like groups: [web, eu-west]")
            }
            for item in items {
                let group = try string(item, named: "an etcd group")
                if let problem = EtcdSettings.nameProblem(group, kind: "group") { throw failure(at: item, problem) }
                guard !settings.groups.contains(group) else {
                    throw failure(at: item, "etcd groups lists '\(group)' twice")
                }
                settings.groups.append(group)
            }
            guard settings.groups.count <= EtcdSettings.maximumGroups else {
                throw failure(
                    at: entry.value, "etcd groups lists \(settings.groups.count) groups; at most "
                        + "\(EtcdSettings.maximumGroups) are allowed")
            }
        }
        if let entry = entries["prefix"] {
            let prefix = try string(entry.value, named: "etcd prefix")
            if let problem = EtcdSettings.prefixProblem(prefix) {
                throw failure(at: entry.value, problem, hint: "write it like prefix: /drawbridge")
            }
            settings.prefix = prefix
        }
        if let entry = entries["tls"] {
            guard case .mapping(let tlsMapping) = entry.value.content else {
                throw failure(
                    at: entry.value, "etcd tls must be a mapping of ca, cert and key; found \(describe(entry.value))",
                    hint: "write it like tls: { ca: /etc/drawbridge/etcd-ca.pem, cert: /etc/drawbridge/etcd.pem, "
                        + "key: /etc/drawbridge/etcd.key }")
            }
            let tlsEntries = try fields(of: tlsMapping, allowed: Keys.tls, context: "in etcd tls")
            var tls = EtcdSettings.TLS()
            tls.ca = try tlsEntries["ca"].map { (pair: Pair) throws(PolicyError) in try absolutePath(pair.value, named: "etcd tls ca") }
            tls.cert = try tlsEntries["cert"].map { (pair: Pair) throws(PolicyError) in try absolutePath(pair.value, named: "etcd tls cert") }
            tls.key = try tlsEntries["key"].map { (pair: Pair) throws(PolicyError) in try absolutePath(pair.value, named: "etcd tls key") }
            guard (tls.cert == nil) == (tls.key == nil) else {
                throw failure(
                    at: entry.value, "etcd tls names a \(tls.cert == nil ? "key" : "cert") without a "
                        + "\(tls.cert == nil ? "cert" : "key")",
                    hint: "a client certificate needs its key: give both cert and key, or neither")
            }
            settings.tls = tls
        }
        if let entry = entries["user"] {
            let user = try string(entry.value, named: "etcd user")
            if let problem = TextCheck.identifierProblem(user, field: "etcd user") {
                throw failure(at: entry.value, problem)
            }
            settings.user = user
        }
        if let entry = entries["password_file"] {
            settings.passwordFile = try absolutePath(entry.value, named: "etcd password_file")
        }
        guard (settings.user == nil) == (settings.passwordFile == nil) else {
            throw failure(
                at: node, "etcd names a \(settings.user == nil ? "password_file" : "user") without a "
                    + "\(settings.user == nil ? "user" : "password_file")",
                hint: "password authentication needs both user and password_file")
        }
        if settings.user != nil, settings.tls?.cert != nil {
            throw failure(
                at: node, "etcd names both a client certificate and a user with a password",
                hint: "choose one: the certificate's common name is the etcd user")
        }
        let plain = settings.endpoints.filter { $0.hasPrefix("http://") }
        if settings.tls != nil, !plain.isEmpty {
            throw failure(
                at: endpointsEntry.value, "etcd tls is set but endpoint \(plain[0]) is plain http://",
                hint: "write https:// endpoints, or drop tls on a private test network")
        }
        if let entry = entries["sync_user"] {
            let user = try string(entry.value, named: "etcd sync_user")
            guard Self.isGroupName(user) else {
                throw failure(at: entry.value, "'\(user)' is not a valid Unix user name")
            }
            settings.syncUser = user
        }
        return settings
    }

    private func etcdEndpoints(_ node: Node) throws(PolicyError) -> [String] {
        let example = "write it like endpoints: [\"https://192.0.2.1:2379\"]"
        guard case .sequence(let items) = node.content, !items.isEmpty else {
            throw failure(at: node, "etcd endpoints must be a non-empty list of URLs; found \(describe(node))", hint: example)
        }
        var endpoints: [String] = []
        for item in items {
            let url = try string(item, named: "an etcd endpoint")
            if let problem = EtcdSettings.endpointProblem(url) { throw failure(at: item, problem, hint: example) }
            guard !endpoints.contains(url) else { throw failure(at: item, "etcd endpoints lists \(url) twice") }
            endpoints.append(url)
        }
        return endpoints
    }

    private func absolutePath(_ node: Node, named name: String) throws(PolicyError) -> String {
        let path = try string(node, named: name)
        guard path.hasPrefix("/"), !path.contains("\0") else {
            throw failure(at: node, "\(name) '\(TextCheck.escaped(path))' is not an absolute path")
        }
        return path
    }

    // MARK: Values

    private func portNumber(_ node: Node) throws(PolicyError) -> UInt16 {
        let example = "write it as a bare number, e.g. port: 22"
        guard let scalar = node.scalar, !isEmptyValue(node) else {
            throw failure(at: node, "port must be a number from 1 to 65535; found \(describe(node))", hint: example)
        }
        let text = scalar.value
        guard scalar.style == .plain, scalar.kind == .integer else {
            if scalar.style != .plain, UInt16(text) != nil {
                throw failure(at: node, "port must be a number, not the quoted text '\(text)'", hint: example)
            }
            throw failure(at: node, "port '\(text)' is not a whole number from 1 to 65535", hint: example)
        }
        // YAML reads 022 as octal and 0x16 as hexadecimal; only plain decimal is unambiguous.
        guard text.allSatisfy(\.isASCIIDigit), !text.hasPrefix("0") || text == "0" else {
            throw failure(at: node, "port '\(text)' is not a plain decimal number", hint: example)
        }
        guard let value = Int(text), (1...65_535).contains(value) else {
            throw failure(at: node, "port \(text) is out of range; a port is a number from 1 to 65535")
        }
        return UInt16(value)
    }

    private func transportProtocol(_ node: Node) throws(PolicyError) -> TransportProtocol {
        let text = try string(node, named: "protocol")
        guard let transport = TransportProtocol(rawValue: text) else {
            throw failure(
                at: node, "protocol '\(text)' is not supported; use tcp or udp",
                hint: text.lowercased() != text ? "write it in lowercase" : nil)
        }
        return transport
    }

    /// A `max_duration`: positive, at most ``Policy/maxDurationLimit``.
    private func duration(_ node: Node, of owner: String) throws(PolicyError) -> Double {
        let shape = "write it like 90s, 30m, 2h or 1h30m"
        guard let scalar = node.scalar, !isEmptyValue(node) else {
            throw failure(at: node, "max_duration of \(owner) must be a duration; found \(describe(node))", hint: shape)
        }
        let text = scalar.value
        guard let seconds = GrantDuration.parse(text) else {
            if GrantDuration.isZero(text) {
                throw failure(at: node, "max_duration of \(owner) is zero, so nothing could ever be granted")
            }
            let bare = !text.isEmpty && text.allSatisfy(\.isASCIIDigit)
            throw failure(
                at: node, "max_duration '\(text)' of \(owner) is not a duration",
                hint: bare && text != "0" ? "add a unit: \(text)s, \(text)m or \(text)h" : shape)
        }
        guard seconds <= Policy.maxDurationLimit else {
            let limit = GrantDuration.format(Policy.maxDurationLimit)
            throw failure(
                at: node, "max_duration \(text) of \(owner) is longer than the limit of \(limit)",
                hint: "a grant is meant to be short: open a port for the task at hand and let it close; "
                    + "a source that needs access for weeks belongs in always_allow")
        }
        return seconds
    }

    private func sessionMode(_ node: Node) throws(PolicyError) -> SessionMode {
        let text = try string(node, named: "on_expiry")
        guard let mode = SessionMode(rawValue: text) else {
            let choices = SessionMode.allCases.map(\.rawValue)
            throw failure(
                at: node, "on_expiry '\(text)' is not one of \(choices.joined(separator: ", "))",
                hint: Spelling.closest(to: text, among: choices).map { "did you mean \($0)?" })
        }
        return mode
    }

    private func prefixes(_ node: Node, named name: String, allowEmpty: Bool) throws(PolicyError) -> [IPPrefix] {
        let shape = "write it like \(name.split(separator: " ").first ?? ""): [\"198.51.100.0/24\", \"2001:db8::/32\"]"
        if allowEmpty, isEmptyValue(node) { return [] }
        guard case .sequence(let sequence) = node.content else {
            throw failure(at: node, "\(name) must be a list of prefixes; found \(describe(node))", hint: shape)
        }
        guard allowEmpty || sequence.count > 0 else {
            throw failure(
                at: node, "\(name) is empty, so the port could never be opened",
                hint: "list the prefixes it may be opened to; [\"0.0.0.0/0\", \"::/0\"] means anywhere")
        }
        var result: [IPPrefix] = []
        for item in sequence {
            let text = try string(item, named: "an entry of \(name)")
            do {
                result.append(try IPPrefix(parsing: text))
            } catch {
                throw failure(at: item, "\(name): \(error.description)")
            }
        }
        return result
    }

    private func string(_ node: Node, named name: String) throws(PolicyError) -> String {
        guard let scalar = node.scalar, !isEmptyValue(node) else {
            throw failure(at: node, "\(name) must be a single value; found \(describe(node))")
        }
        return scalar.value
    }

    /// The keys of a mapping, refusing anything not in `allowed` with the closest allowed key as a hint.
    private func fields(of mapping: [Pair], allowed: [String], context: String) throws(PolicyError)
        -> [String: Pair]
    {
        var entries: [String: Pair] = [:]
        for pair in mapping {
            let key = pair.key
            guard let scalar = key.scalar else {
                throw failure(at: key, "a key \(context) must be a plain word; found \(describe(key))")
            }
            let name = scalar.value
            guard allowed.contains(name) else {
                var hint = Spelling.closest(to: name, among: allowed).map { "did you mean \($0)?" }
                if name == "<<" { hint = "YAML merge keys are not supported; write the settings out in full" }
                throw failure(
                    at: key, "unknown key '\(name)' \(context); allowed keys: \(allowed.joined(separator: ", "))",
                    hint: hint)
            }
            entries[name] = pair
        }
        return entries
    }

    // MARK: Errors

    private func failure(at node: Node, _ message: String, hint: String? = nil) -> PolicyError {
        failure(at: node.position, message, hint: hint)
    }

    private func failure(at position: Position?, _ message: String, hint: String? = nil) -> PolicyError {
        PolicyError(file: file, line: position?.line, column: position?.column, message: message, hint: hint)
    }

    // MARK: Helpers

    /// A null scalar: nothing written, `~` or `null`.
    private func isEmptyValue(_ node: Node) -> Bool { node.isNull }

    private func describe(_ node: Node) -> String {
        switch node.content {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .scalar(let scalar): return isEmptyValue(node) ? "an empty value" : "'\(scalar.value)'"
        }
    }

    static func isPortName(_ name: String) -> Bool {
        let scalars = Array(name.unicodeScalars)
        guard let first = scalars.first, scalars.count <= 32, ("a"..."z").contains(first) else { return false }
        return scalars.dropFirst().allSatisfy {
            ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_"
        }
    }

    static func isGroupName(_ name: String) -> Bool {
        var scalars = Array(name.unicodeScalars)
        if scalars.count > 1, scalars.last == "$" { scalars.removeLast() }
        guard let first = scalars.first, name.unicodeScalars.count <= 32 else { return false }
        func isLetter(_ scalar: Unicode.Scalar) -> Bool { ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) }
        guard isLetter(first) || first == "_" else { return false }
        return scalars.dropFirst().allSatisfy {
            isLetter($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" || $0 == "."
        }
    }
}

/// Suggestions for misspelled keys, values and port names.
enum Spelling {
    /// The candidate a misspelled word most likely meant, if one is close: `max_durration` gives `max_duration`,
    /// `allowed-sources` gives `allowed_sources`, `sources` gives `allowed_sources`.
    static func closest(to word: String, among candidates: [String]) -> String? {
        func normalized(_ text: String) -> String {
            String(text.lowercased().unicodeScalars.filter { $0 != "_" && $0 != "-" && $0 != " " })
        }
        let lowered = word.lowercased()
        var best: (candidate: String, score: Int)?
        for candidate in candidates {
            let distance = min(
                editDistance(lowered, candidate), editDistance(normalized(word), normalized(candidate)))
            let threshold = max(1, min(3, candidate.count / 3))
            var score: Int?
            if distance <= threshold {
                score = distance
            } else if lowered.count >= 3, candidate.contains(lowered) || lowered.contains(candidate) {
                score = threshold + 1
            }
            if let score, score < (best?.score ?? .max) { best = (candidate, score) }
        }
        return best?.candidate
    }

    /// The Levenshtein distance: single-character insertions, deletions and substitutions.
    static func editDistance(_ left: String, _ right: String) -> Int {
        let left = Array(left.unicodeScalars)
        let right = Array(right.unicodeScalars)
        if left.isEmpty { return right.count }
        var previous = Array(0...right.count)
        for (leftIndex, leftScalar) in left.enumerated() {
            var current = [leftIndex + 1] + Array(repeating: 0, count: right.count)
            for (rightIndex, rightScalar) in right.enumerated() {
                let substitution = previous[rightIndex] + (leftScalar == rightScalar ? 0 : 1)
                current[rightIndex + 1] = Swift.min(previous[rightIndex + 1] + 1, current[rightIndex] + 1, substitution)
            }
            previous = current
        }
        return previous[right.count]
    }
}
