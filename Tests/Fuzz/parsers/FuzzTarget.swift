import DrawbridgeCore
import FoundationEssentials
import Netfilter
import NetfilterModel

// The parser fuzz target: one libFuzzer entry point for every parser of drawbridged that reads text or bytes from
// outside (the policy file, grants files and etcd values, local API requests, netlink replies and notifications,
// addresses, durations and timestamps). Which one an input goes to is chosen once per process (`selected`); whatever
// a parser accepts is checked against properties that must hold for any input. A trap, an AddressSanitizer report or
// a broken property (`violated`, a fatalError) is a finding.
//
// Built by Tests/Fuzz/run-fuzz with `-sanitize=fuzzer,address -DPARSER_FUZZ`, libFuzzer's driver calls `fuzz`.
// Built normally (`swift build`), Main.swift's main runs corpus files through the same function: a regression runner.

/// The parsers, by the names the runner script, the corpus directories and the dictionaries use.
enum ParserTarget: String, CaseIterable, Sendable {
    /// YAML text to `Policy` (Policy.parse(utf8:file:)).
    case policy
    /// A grants file (GrantsFile.parse) and the same bytes as an etcd grant value (EtcdGrantValue.grant).
    case grants
    /// A local API request line (LocalAPI.decode), and the same bytes through JSONReader.parse.
    case localAPI = "local-api"
    /// Bytes as one read from a netlink socket: the reply splitter and error parser, then each data message through
    /// the notification, NFLOG packet, set element dump and rule dump decoders.
    case netlink
    /// IPAddress(_:), IPPrefix(parsing:), IPAddress(bytes:) and Service(parsing:).
    case address
    /// GrantDuration.parse and Timestamp.parse.
    case duration
}

/// libFuzzer's entry point: one input, any bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    ParserFuzz.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

enum ParserFuzz {
    /// Set once, before the first input (by main), never changed while inputs run.
    nonisolated(unsafe) static var selected: ParserTarget = .policy

    static func run(_ input: [UInt8]) {
        switch selected {
        case .policy: policy(input)
        case .grants: grants(input)
        case .localAPI: localAPI(input)
        case .netlink: netlink(input)
        case .address: address(input)
        case .duration: duration(input)
        }
    }

    /// What the selected parser made of an input, for the regression run's log.
    static func describe(_ input: [UInt8]) -> String {
        let text = String(decoding: input, as: UTF8.self)
        switch selected {
        case .policy:
            do {
                let policy = try Policy.parse(utf8: input, file: policyFile)
                return "policy of \(policy.ports.count) ports, \(policy.roles.count) roles"
                    + (policy.etcd == nil ? "" : ", etcd") + (policy.knock == nil ? "" : ", knock")
            } catch {
                return "refused: \(error)"
            }
        case .grants:
            var parts: [String] = []
            do {
                let contents = try GrantsFile.parse(input, path: grantsPath, policy: grantsPolicy, now: now)
                parts.append(
                    "grants file: \(contents.grants.count) grants, \(contents.refusals.count) refused, "
                        + "\(contents.expired) expired")
            } catch {
                parts.append("grants file refused: \(error)")
            }
            switch etcdValue(input) {
            case .success(let grant): parts.append("etcd value: grant of \(grant.portsDescription) to \(grant.source)")
            case .failure(let refusal): parts.append("etcd value refused: \(refusal)")
            }
            return parts.joined(separator: "; ")
        case .localAPI:
            switch LocalAPI.decode(input) {
            case .success(let command): return "command \(command)"
            case .failure(let failure): return "refused: \(failure.message)"
            }
        case .netlink:
            var kinds: [String] = []
            let outcome = input.withUnsafeBytes { buffer in
                Result { () throws(NetfilterError) in
                    try NetlinkReply.decode(buffer, operation: "fuzz") { reply in
                        switch reply.kind {
                        case .acknowledgement: kinds.append("ack")
                        case .done: kinds.append("done")
                        case .error(let errno, _, let message): kinds.append("error \(errno) '\(message)'")
                        case .data(let bytes):
                            let message = NetfilterMessage(bytes)
                            let elements = elements(bytes).count
                            let rule = rule(bytes)
                            var text = "data \(bytes.count) bytes"
                            if let message { text += " type \(message.subsystem):\(message.type)" }
                            if elements > 0 { text += ", \(elements) elements" }
                            if let rule { text += ", rule of \(rule.count) expressions" }
                            if nftablesType(bytes) == 6, !KernelContract.isRuleDump(bytes) {
                                text += ", a rule with attributes of other types than the kernel's"
                            }
                            if let delivery = PacketLog.parse(message: bytes) { text += ", NFLOG \(delivery)" }
                            kinds.append(text)
                        }
                    }
                }
            }
            if case .failure(let error) = outcome { kinds.append("failed: \(error)") }
            return kinds.isEmpty ? "no message" : kinds.joined(separator: "; ")
        case .address:
            if let address = IPAddress(text) { return "address \(address)" }
            do {
                return "prefix \(try IPPrefix(parsing: text))"
            } catch {
                return "refused: \(error)"
            }
        case .duration:
            if let seconds = GrantDuration.parse(text) { return "duration \(seconds) s" }
            if let date = Timestamp.parse(text) { return "timestamp \(Timestamp.format(date))" }
            return "neither a duration nor a timestamp"
        }
    }

    // MARK: - Policy

    static let policyFile = "/etc/drawbridge/policy.yaml"

    /// The policy reader: what it accepts is within the limits it claims, reads the same from a `String`, and reads
    /// back equal from a rendering of its fields.
    static func policy(_ input: [UInt8]) {
        let policy: Policy
        do {
            policy = try Policy.parse(utf8: input, file: policyFile)
        } catch {
            guard !error.message.isEmpty, error.file == policyFile, error.line.map({ $0 >= 1 }) ?? true,
                error.column.map({ $0 >= 1 }) ?? true
            else { violated("a policy error without a message or with a bad position: \(error)", input) }
            return
        }
        if let text = String(validating: input, as: UTF8.self) {
            guard (try? Policy.parse(text, file: policyFile)) == policy else {
                violated("the policy reads differently from a String", input)
            }
        }
        checkLimits(policy, input)

        // The core fields rendered as YAML read back equal (etcd and knock are left out: they have no renderer here).
        let rendered = render(policy)
        do {
            let again = try Policy.parse(rendered, file: policyFile)
            var core = policy
            core.etcd = nil
            core.knock = nil
            guard again == core else { violated("the rendered policy reads back different:\n\(rendered)", input) }
        } catch {
            violated("the rendered policy does not read back: \(error)\n\(rendered)", input)
        }
    }

    static func checkLimits(_ policy: Policy, _ input: [UInt8]) {
        func validDuration(_ seconds: Double) -> Bool {
            seconds > 0 && seconds <= Policy.maxDurationLimit && seconds == seconds.rounded()
        }
        func validPrefix(_ prefix: IPPrefix) -> Bool {
            (try? IPPrefix(network: prefix.network, length: prefix.length)) == prefix
                && prefix.length <= prefix.family.bitWidth
        }
        var names: Set<String> = []
        var services: Set<Service> = []
        for port in policy.ports {
            let name = Array(port.name.utf8)
            guard (1...32).contains(name.count), (0x61...0x7a).contains(name[0]),
                name.allSatisfy({
                    (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2d || $0 == 0x5f
                })
            else { violated("port name '\(port.name)' outside [a-z][a-z0-9_-]{0,31}", input) }
            guard names.insert(port.name).inserted, services.insert(port.service).inserted else {
                violated("port \(port.name) (\(port.service)) is named or numbered twice", input)
            }
            guard port.service.port >= 1 else { violated("port \(port.name) has port number 0", input) }
            guard validDuration(port.maxDuration) else {
                violated("port \(port.name) has max_duration \(port.maxDuration)", input)
            }
            guard !port.allowedSources.isEmpty, port.allowedSources.allSatisfy(validPrefix) else {
                violated("port \(port.name) has allowed_sources \(port.allowedSources)", input)
            }
        }
        guard policy.alwaysAllow.allSatisfy(validPrefix) else {
            violated("always_allow has an invalid prefix: \(policy.alwaysAllow)", input)
        }
        for role in policy.roles {
            guard !role.ports.isEmpty, role.ports.allSatisfy(names.contains), Set(role.ports).count == role.ports.count
            else { violated("role \(role.group) names ports \(role.ports) of \(names.sorted())", input) }
            guard validDuration(role.maxDuration) else {
                violated("role \(role.group) has max_duration \(role.maxDuration)", input)
            }
            guard !role.group.isEmpty, role.group.utf8.count <= 32 else {
                violated("role group '\(role.group)' is empty or longer than 32 bytes", input)
            }
        }
        guard policy.grantFiles.allSatisfy({ $0.hasPrefix("/") }) else {
            violated("grant_files has a relative path: \(policy.grantFiles)", input)
        }
        if let longest = policy.longestMaxDuration, !validDuration(longest) {
            violated("longestMaxDuration \(longest)", input)
        }
        if let metrics = policy.metrics {
            guard metrics.address != .v4(0), metrics.address != .v6(high: 0, low: 0), metrics.port >= 1 else {
                violated("metrics listens on \(metrics.listen)", input)
            }
        }
        for port in policy.ports {
            guard !port.hooks.isEmpty, Set(port.hooks).count == port.hooks.count else {
                violated("port \(port.name) has hooks \(port.hooks)", input)
            }
        }
        if let knock = policy.knock {
            for rule in knock.keys {
                guard !rule.ports.isEmpty, rule.ports.allSatisfy(names.contains) else {
                    violated("a knock key rule names ports \(rule.ports) of \(names.sorted())", input)
                }
            }
        }
    }

    /// The policy's core fields as YAML, in flow style, every free text double-quoted.
    static func render(_ policy: Policy) -> String {
        func quoted(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case _ where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar.value == 0xfeff
                    || scalar.value == 0x2028 || scalar.value == 0x2029:
                    let hex = String(scalar.value, radix: 16)
                    out += "\\U" + String(repeating: "0", count: 8 - hex.count) + hex
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        }
        func list(_ items: [String]) -> String { "[" + items.joined(separator: ", ") + "]" }
        var text = "ports:\n"
        if policy.ports.isEmpty { text = "ports: {}\n" }
        for port in policy.ports {
            text += "  \(port.name): { port: \(port.service.port), protocol: \(port.service.transport.rawValue), "
            text += "max_duration: \(GrantDuration.format(port.maxDuration)), "
            text += "allowed_sources: \(list(port.allowedSources.map { quoted($0.description) }))"
            text += ", hooks: \(list(port.hooks.map(\.rawValue))) }\n"
        }
        text += "always_allow: \(list(policy.alwaysAllow.map { quoted($0.description) }))\n"
        text += "on_expiry: \(policy.onExpiry.rawValue)\n"
        text += "roles:\(policy.roles.isEmpty ? " []" : "")\n"
        for role in policy.roles {
            text += "  - { group: \(quoted(role.group)), ports: \(list(role.ports)), "
            text += "max_duration: \(GrantDuration.format(role.maxDuration)) }\n"
        }
        text += "grant_files: \(list(policy.grantFiles.map(quoted)))\n"
        if let metrics = policy.metrics { text += "metrics: { listen: \(quoted(metrics.listen)) }\n" }
        return text
    }

    // MARK: - Grants files and etcd values

    static let grantsPath = "/etc/drawbridge/grants.json"
    static let now = Instants(
        wall: Timestamp.parse("2026-12-01T12:00:00Z")!, monotonic: MonotonicInstant(nanoseconds: 1_000_000_000_000))
    /// The policy grants are checked against: three ports with different limits and sources.
    static let grantsPolicy = try! Policy.parse(
        """
        ports:
          ssh: { port: 22, protocol: tcp, max_duration: 3h, allowed_sources: ["0.0.0.0/0", "::/0"] }
          postgres: { port: 5432, max_duration: 30m, allowed_sources: ["198.51.100.0/24", "2001:db8::/32"] }
          dns: { port: 53, protocol: udp, max_duration: 7d, allowed_sources: ["203.0.113.0/24"] }
        always_allow: ["192.0.2.10/32"]
        """, file: "fuzz-policy.yaml")
    static let etcdDirectory = EtcdLayout.hostDirectory(prefix: "/drawbridge", host: "web-1")
    static let etcdID = "g-1"

    static func etcdValue(_ input: [UInt8]) -> Result<Grant, Refusal> {
        EtcdGrantValue.grant(
            key: etcdDirectory + etcdID, directory: etcdDirectory, id: etcdID, value: input, policy: grantsPolicy,
            now: now)
    }

    /// A grants file and an etcd value: every grant they yield is one the policy allows, for no longer than it allows;
    /// the file's grants, refusals and expired entries add up to its entries; reading twice gives the same, and so
    /// does reading the list in pieces (the agent's way with a large file).
    static func grants(_ input: [UInt8]) {
        let whole = Result { () throws(GrantsFile.FormatError) in
            try GrantsFile.parse(input, path: grantsPath, policy: grantsPolicy, now: now)
        }
        for pieces in [2, 5] {
            let split = Result { () throws(GrantsFile.FormatError) in
                try GrantsFile.parse(
                    input, path: grantsPath, policy: grantsPolicy, now: now, pieces: pieces, piecewiseFrom: 0)
            }
            guard split == whole else { violated("a grants file read in \(pieces) pieces reads differently", input) }
        }
        do {
            let contents = try GrantsFile.parse(input, path: grantsPath, policy: grantsPolicy, now: now)
            guard (try? GrantsFile.parse(input, path: grantsPath, policy: grantsPolicy, now: now)) == contents else {
                violated("a grants file reads differently the second time", input)
            }
            guard case .object(let members)? = try? JSONReader.parse(input, maximumDepth: 4), members.count == 1,
                members[0].key == "grants", case .array(let entries) = members[0].value
            else { violated("a grants file that is not one object with one grants list was accepted", input) }
            guard contents.grants.count + contents.refusals.count + contents.expired == entries.count else {
                violated(
                    "\(entries.count) entries gave \(contents.grants.count) grants, \(contents.refusals.count) "
                        + "refusals and \(contents.expired) expired", input)
            }
            let prefix = GrantBook.fileIdentifierPrefix(for: grantsPath)
            guard Set(contents.grants.map(\.id)).count == contents.grants.count else {
                violated("two grants of a file share an id", input)
            }
            for grant in contents.grants {
                guard grant.id.hasPrefix(prefix), grant.origin == .file(grantsPath) else {
                    violated("file grant \(grant.id) has origin \(grant.origin)", input)
                }
                checkGrant(grant, input)
            }
        } catch {
            guard !error.message.isEmpty, error.path == grantsPath else {
                violated("a grants file error without a message: \(error)", input)
            }
        }
        switch etcdValue(input) {
        case .success(let grant):
            guard grant.id == EtcdLayout.bookIdentifier(directory: etcdDirectory, id: etcdID),
                grant.origin == .etcd(etcdDirectory + etcdID)
            else { violated("etcd grant \(grant.id) has origin \(grant.origin)", input) }
            checkGrant(grant, input)
            guard case .success(grant) = etcdValue(input) else {
                violated("an etcd value reads differently the second time", input)
            }
        case .failure(let refusal):
            guard !refusal.message.isEmpty else { violated("an etcd value refused without a message", input) }
        }
    }

    /// A grant from a file or etcd: in the future, no longer than each of its ports allows, from a source each of
    /// its ports allows, on ports of the policy.
    static func checkGrant(_ grant: Grant, _ input: [UInt8]) {
        let duration = grant.expiresAt.timeIntervalSince(now.wall)
        guard duration > 0, grant.deadline == now.deadline(forWall: grant.expiresAt) else {
            violated("grant \(grant.id) expires at \(grant.expiresAt), deadline \(grant.deadline)", input)
        }
        guard !grant.ports.isEmpty, grant.ports.count <= GrantEntry.maximumPorts else {
            violated("grant \(grant.id) has \(grant.ports.count) ports", input)
        }
        for granted in grant.ports {
            guard let port = grantsPolicy.port(named: granted.name), port.service == granted.service else {
                violated("grant \(grant.id) opens \(granted.name) \(granted.service), not a port of the policy", input)
            }
            guard duration <= port.maxDuration else {
                violated("grant \(grant.id) lasts \(duration) s, port \(port.name) allows \(port.maxDuration)", input)
            }
            guard port.allowedSources.contains(where: { $0.contains(grant.source) }) else {
                violated("grant \(grant.id) opens \(port.name) to \(grant.source), outside its sources", input)
            }
        }
        guard TextCheck.problem(with: grant.reason, field: "reason", maximumBytes: TextCheck.maximumReasonBytes) == nil
        else { violated("grant \(grant.id) has a reason that TextCheck refuses", input) }
    }

    // MARK: - Local API

    /// A request line: a refusal is a bad request with a message; a command re-encodes (through the client's
    /// `LocalAPI.Request` encoder where one exists, else through a JSON object of its fields) to a request that
    /// decodes to the same command. Any JSON JSONReader accepts serializes back to JSON that reads equal.
    static func localAPI(_ input: [UInt8]) {
        switch LocalAPI.decode(input) {
        case .failure(let failure):
            guard failure.code == .badRequest, !failure.message.isEmpty else {
                violated("a refused request without a message or with code \(failure.code)", input)
            }
        case .success(let command):
            let encoded = encode(command, input)
            switch LocalAPI.decode(encoded) {
            case .success(command): break
            case .success(let other):
                violated("the command re-encoded as \(String(decoding: encoded, as: UTF8.self)) decodes as \(other)",
                    input)
            case .failure(let failure):
                violated("the command re-encoded as \(String(decoding: encoded, as: UTF8.self)) fails: \(failure)",
                    input)
            }
            checkCommand(command, input)
        }
        if let value = try? JSONReader.parse(input, maximumDepth: 32) {
            let text = serialize(value)
            do {
                let again = try JSONReader.parse(Array(text.utf8), maximumDepth: 32)
                guard again == value else { violated("JSON reads back different from \(text)", input) }
            } catch {
                violated("JSON serialized as \(text) does not read back: \(error)", input)
            }
        }
    }

    static func checkCommand(_ command: LocalAPI.Command, _ input: [UInt8]) {
        func checkRequest(_ request: GrantRequest) {
            guard !request.ports.isEmpty, request.ports.count <= GrantEntry.maximumPorts, request.duration.isFinite,
                request.duration >= 1, request.duration <= LocalAPI.maximumDurationSeconds
            else { violated("a grant request out of bounds: \(request)", input) }
        }
        switch command {
        case .grant(let request): checkRequest(request)
        case .knock(let grant):
            checkRequest(grant.request)
            guard grant.request.source.isSingleAddress, KnockKeyIdentity(grant.key.description) == grant.key else {
                violated("a knock grant out of bounds: \(grant)", input)
            }
        case .etcdSync(let update):
            guard update.revision >= 0, update.changes.count <= EtcdUpdate.maximumChanges else {
                violated("an etcd-sync out of bounds: revision \(update.revision)", input)
            }
        case .knockRefused(let report):
            guard report.count >= 0, report.count <= KnockRefusalReport.maximumCount else {
                violated("a knock-refused count out of bounds: \(report.count)", input)
            }
        case .revoke, .list, .status, .metrics, .etcdConnection: break
        }
    }

    /// The command as a client would send it.
    static func encode(_ command: LocalAPI.Command, _ input: [UInt8]) -> [UInt8] {
        func request(_ request: LocalAPI.Request) -> [UInt8] {
            do {
                return Array(try LocalAPI.encoder().encode(request))
            } catch {
                violated("LocalAPI.Request does not encode: \(error)", input)
            }
        }
        func object(_ members: [(String, JSONValue?)]) -> [UInt8] {
            Array(serialize(.object(members.compactMap { key, value in value.map { (key, $0) } })).utf8)
        }
        func number(_ value: Double) -> JSONValue { .number(value, text: "\(value)") }
        func whole(_ value: Int64) -> JSONValue { .number(Double(value), text: "\(value)") }
        func strings(_ values: [String]) -> JSONValue { .array(values.map { .string($0) }) }
        switch command {
        case .grant(let grant):
            return request(
                LocalAPI.Request(
                    command: .grant, ports: grant.ports, source: grant.source.description,
                    durationSeconds: grant.duration, reason: grant.reason))
        case .revoke(.id(let id)): return request(LocalAPI.Request(command: .revoke, id: id))
        case .revoke(.within(let prefix)): return request(LocalAPI.Request(command: .revoke, source: "\(prefix)"))
        case .list: return request(LocalAPI.Request(command: .list))
        case .status: return request(LocalAPI.Request(command: .status))
        case .metrics: return request(LocalAPI.Request(command: .metrics))
        case .etcdSync(let update):
            let changes: [JSONValue] = update.changes.map { change in
                switch change {
                case .put(let key, let value):
                    return .object([("key", .string(key)), ("value", .string(String(decoding: value, as: UTF8.self)))])
                case .delete(let key): return .object([("key", .string(key)), ("deleted", .bool(true))])
                case .unusable(let key, let problem):
                    return .object([("key", .string(key)), ("problem", .string(problem))])
                }
            }
            return object([
                ("command", .string("etcd-sync")), ("revision", whole(update.revision)),
                ("complete", .bool(update.complete)), ("changes", .array(changes)),
            ])
        case .etcdConnection(let report):
            return object([
                ("command", .string("etcd-connection")), ("connected", .bool(report.connected)),
                ("endpoint", report.endpoint.map { .string($0) }), ("error", report.error.map { .string($0) }),
                ("revision", report.revision.map(whole)),
            ])
        case .knock(let grant):
            return object([
                ("command", .string("knock")), ("fingerprint", .string(grant.fingerprint)),
                ("key", .string(grant.key.description)),
                ("source", .string(grant.request.source.network.description)),
                ("ports", strings(grant.request.ports)), ("duration_seconds", number(grant.request.duration)),
                ("reason", .string(grant.request.reason)), ("client_address", grant.clientAddress.map { .string($0) }),
                ("key_comment", grant.keyComment.map { .string($0) }),
            ])
        case .knockRefused(let report):
            return object([
                ("command", .string("knock-refused")), ("source", report.source.map { .string($0) }),
                ("fingerprint", report.fingerprint.map { .string($0) }), ("problem", .string(report.problem)),
                ("count", whole(Int64(report.count))),
            ])
        }
    }

    /// JSON text for a value: numbers as they were written, strings with only `"`, `\` and control characters
    /// escaped.
    static func serialize(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .number(_, let text): return text
        case .string(let text):
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case _ where scalar.value < 0x20:
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        case .array(let items): return "[" + items.map(serialize).joined(separator: ",") + "]"
        case .object(let members):
            return "{" + members.map { serialize(.string($0.key)) + ":" + serialize($0.value) }.joined(separator: ",")
                + "}"
        }
    }

    // MARK: - Netlink

    static let table = "drawbridge"
    static let chain = "input"

    /// Bytes as one read from a netlink socket: every message the splitter hands over lies inside the buffer (and
    /// ASan checks every decoder stays inside it); an error reply carries a positive errno; the same bytes cut short
    /// decode without a trap too.
    static func netlink(_ input: [UInt8]) {
        netlinkBuffer(input, input)
        if input.count > 1 { netlinkBuffer(Array(input[..<(input.count - 1 - input.count / 3)]), input) }
    }

    static func netlinkBuffer(_ bytes: [UInt8], _ input: [UInt8]) {
        // Exactly the input's bytes on the heap, so that ASan reports any read past them.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        defer { buffer.deallocate() }
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        let view = UnsafeRawBufferPointer(start: buffer.baseAddress, count: bytes.count)
        let start = UInt(bitPattern: buffer.baseAddress)
        var replies = 0
        do {
            try NetlinkReply.decode(view, operation: "fuzz") { reply in
                replies += 1
                switch reply.kind {
                case .acknowledgement, .done: break
                case .error(let errno, _, let message):
                    guard errno > 0 else { violated("an error reply with errno \(errno)", input) }
                    guard message.utf8.count < 256 else { violated("an error message of \(message.utf8.count)", input) }
                    _ = NetfilterError(.other, operation: "fuzz", errno: errno, detail: message).description
                case .data(let message):
                    let offset = Int(UInt(bitPattern: message.baseAddress)) - Int(start)
                    guard message.count >= 16, offset >= 0, offset % 4 == 0, offset + message.count <= bytes.count
                    else { violated("a data message of \(message.count) bytes at \(offset)", input) }
                    decodeMessage(message, input)
                }
            }
        } catch {
            guard error.code == .protocolViolation else { violated("the splitter failed with \(error)", input) }
        }
        guard replies <= bytes.count / 16 else { violated("\(replies) replies from \(bytes.count) bytes", input) }
    }

    /// One data message through every decoder that reads such messages.
    static func decodeMessage(_ bytes: UnsafeRawBufferPointer, _ input: [UInt8]) {
        // A notification (RulesetMonitor): which table, and a NEWGEN's generation, process id and name.
        if let message = NetfilterMessage(bytes) {
            _ = message.table
            _ = (message.bigEndianUInt32(1), message.bigEndianUInt32(2), message.string(3))
            // (Invalid UTF-8 reads as U+FFFD, three bytes for one: count characters, not bytes.)
            guard message.string(1).map({ $0.unicodeScalars.count <= bytes.count - 20 }) ?? true else {
                violated("a string attribute longer than its message", input)
            }
        }
        // An NFLOG packet (PacketLog): a datagram's payload comes from inside the message.
        switch PacketLog.parse(message: bytes) {
        case .datagram(let datagram)?:
            guard datagram.payload.count + 52 <= bytes.count, datagram.source.family == datagram.destination.family
            else { violated("a logged datagram larger than its message", input) }
        default: break
        }
        // A set element dump (listElements) and a rule dump (listRules), through libnftnl, for messages whose
        // attributes have the types the kernel gives them (see KernelContract).
        for element in elements(bytes) {
            guard element.key.count <= bytes.count, (element.keyEnd?.count ?? 0) <= bytes.count else {
                violated("a set element key larger than its message", input)
            }
        }
        if let rule = rule(bytes) {
            guard rule.count <= bytes.count / 4 else { violated("\(rule.count) expressions in one rule", input) }
        }
    }

    /// The subsystem and type of a message (NFNL_SUBSYS_NFTABLES is 10; NFT_MSG_NEWRULE 6, NEWSETELEM 12).
    static func nftablesType(_ bytes: UnsafeRawBufferPointer) -> UInt16? {
        guard bytes.count >= 16 else { return nil }
        let type = UInt16(bytes[4]) | UInt16(bytes[5]) << 8
        return type >> 8 == 10 ? type & 0xff : nil
    }

    static func elements(_ bytes: UnsafeRawBufferPointer) -> [ListedElement] {
        guard nftablesType(bytes) == 12, KernelContract.isElementDump(bytes) else { return [] }
        return NetfilterConnection.parseElements(message: bytes)
    }

    static func rule(_ bytes: UnsafeRawBufferPointer) -> [String]? {
        guard nftablesType(bytes) == 6, KernelContract.isRuleDump(bytes) else { return nil }
        // The rule's own chain (NFTA_RULE_CHAIN), so that every rule of the table reaches the expression printer.
        let chain = NetfilterMessage(bytes)?.string(2) ?? chain
        return NetfilterConnection.parseRule(message: bytes, table: table, chain: chain)
    }

    // MARK: - Addresses

    /// An address or prefix that parses prints to text that parses to the same value; a prefix's bounds lie in it.
    static func address(_ input: [UInt8]) {
        let text = String(decoding: input, as: UTF8.self)
        if let address = IPAddress(text) {
            checkAddress(address, input)
            guard (try? IPPrefix(parsing: text)) == IPPrefix(address: address) else {
                violated("an address does not parse as its single-address prefix", input)
            }
        }
        do {
            let prefix = try IPPrefix(parsing: text)
            guard prefix.length >= 0, prefix.length <= prefix.family.bitWidth else {
                violated("prefix length \(prefix.length)", input)
            }
            guard (try? IPPrefix(parsing: prefix.description)) == prefix,
                (try? IPPrefix(network: prefix.network, length: prefix.length)) == prefix
            else { violated("prefix \(prefix) does not read back", input) }
            guard prefix.contains(prefix.network), prefix.contains(prefix.lastAddress), prefix.contains(prefix),
                prefix.network <= prefix.lastAddress
            else { violated("prefix \(prefix) does not contain its bounds", input) }
            checkAddress(prefix.network, input)
            checkAddress(prefix.lastAddress, input)
        } catch {
            guard !error.description.isEmpty else { violated("a prefix error without a message", input) }
        }
        if input.count == 4 || input.count == 16 {
            guard let address = IPAddress(bytes: input), address.bytes == input else {
                violated("\(input.count) bytes are not an address", input)
            }
            checkAddress(address, input)
        }
        if let service = Service(parsing: text) {
            guard Service(parsing: service.description) == service else {
                violated("service \(service) does not read back", input)
            }
        }
    }

    static func checkAddress(_ address: IPAddress, _ input: [UInt8]) {
        let text = address.description
        guard IPAddress(text) == address else { violated("address \(text) does not read back", input) }
        guard address.bytes.count == address.family.bitWidth / 8, IPAddress(bytes: address.bytes) == address else {
            violated("address \(text) does not read back from its bytes", input)
        }
    }

    // MARK: - Durations and timestamps

    /// A duration that parses is a whole number of seconds within bounds, in the grammar, and its rendering reads
    /// back equal; a timestamp that parses renders to one that reads back within the rendering's millisecond.
    static func duration(_ input: [UInt8]) {
        let text = String(decoding: input, as: UTF8.self)
        if let seconds = GrantDuration.parse(text) {
            guard seconds >= 1, seconds <= 1e9, seconds == seconds.rounded() else {
                violated("duration \(seconds) out of bounds", input)
            }
            guard input.allSatisfy({ (0x30...0x39).contains($0) || [0x64, 0x68, 0x6d, 0x73].contains($0) }) else {
                violated("a duration with bytes outside [0-9dhms]", input)
            }
            let formatted = GrantDuration.format(seconds)
            guard GrantDuration.parse(formatted) == seconds else {
                violated("duration \(seconds) renders as \(formatted), which does not read back", input)
            }
        }
        if let date = Timestamp.parse(text) {
            guard date.timeIntervalSince1970.isFinite else { violated("timestamp \(date) is not finite", input) }
            let formatted = Timestamp.format(date)
            guard let again = Timestamp.parse(formatted) else {
                violated("timestamp renders as \(formatted), which does not read back", input)
            }
            guard abs(again.timeIntervalSince(date)) <= 0.001 else {
                violated("timestamp renders as \(formatted), \(again.timeIntervalSince(date)) s away", input)
            }
            guard Timestamp.format(again) == formatted else {
                violated("timestamp \(formatted) renders differently after reading back", input)
            }
        }
    }

    // MARK: -

    /// A broken property: a finding, reported like a crash.
    static func violated(_ what: String, _ input: [UInt8]) -> Never {
        fatalError(
            "parser-fuzz (\(selected.rawValue)): property violated: \(what); input (\(input.count) bytes): \(input)")
    }
}
