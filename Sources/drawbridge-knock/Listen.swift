import ArgumentParser
import CDrawbridgeLinux
import Dispatch
import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import Knock
import Netfilter
import Synchronization

/// `drawbridge-knock listen`: the host side. Receives the knock port's packets from NFLOG, verifies them with no
/// capability left, and hands each knock that verified to the agent, which checks it against the policy once more.
struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive knocks (the drawbridge-knock service) and hand those that verify to the agent.",
        discussion: """
            Binds the policy's knock.log_group (NFLOG) in this network namespace, then drops every capability (and, \
            started as root, switches to the policy's knock.user when that account exists). Each packet is checked \
            in this order: a knock packet at all, signed in the knock namespace by a key of knock.keys, a valid \
            signature, a timestamp within knock.max_skew, meant for this host, a nonce not seen before (nonces are \
            kept in --state across restarts, written before the agent is asked). What verified goes to the agent \
            with the key that signed it; the agent looks the key up in its own current policy (key lines, and \
            authorized_keys files read afresh) and checks ports, duration and sources. Every \
            refusal is reported to the agent's audit log, at most 20 a second one by one, the rest as a count; \
            the reports go out beside the packets, so a flood of junk never holds up a knock.

            Keys are read at start: restart the service after adding a key, to knock.keys or an authorized_keys \
            file. A key taken away opens nothing from the next knock on, without a restart.
            """)

    @Option(help: "The policy file (the same the agent reads).")
    var policy = "/etc/drawbridge/policy.yaml"

    @Option(help: "The agent's socket.")
    var socket = LocalAPI.defaultSocketPath

    @Option(help: "Where the replay nonces are kept.")
    var state = "/var/lib/drawbridge-knock"

    func run() throws {
        let loaded: Policy
        do {
            loaded = try PolicyFile.load(policy)
        } catch {
            fail("\(error)", ExitStatus.invalidData)
        }
        guard let settings = loaded.knock else {
            fail("\(policy) has no knock section: nothing to listen for", ExitStatus.notConfigured)
        }
        let keys: KnockKeys
        do {
            keys = try KnockKeys(settings)
        } catch {
            fail("\(error)", ExitStatus.invalidData)
        }
        let log: PacketLog
        do {
            log = try PacketLog(group: settings.logGroup)
        } catch {
            fail("cannot receive knocks: \(error)", .failure)
        }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(log.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        do {
            try Files.createDirectory(state, mode: 0o700)
        } catch {
            fail("cannot create \(state): \(error)", .failure)
        }
        Privileges.drop(to: settings.user, keeping: state)

        var listener = KnockListener(
            settings: settings, keys: keys, machineName: machineHostName(), socketPath: socket,
            noncePath: state + "/nonces")
        StandardError.write(
            "drawbridge-knock: listening on \(settings.service) (NFLOG group \(settings.logGroup)) for "
                + "\(keys.count) keys; host names \(settings.hostNames.isEmpty ? [machineHostName()] : settings.hostNames)\n")
        while true {
            let deliveries: [PacketLog.Delivery]
            do {
                deliveries = try log.receive()
            } catch {
                StandardError.write("drawbridge-knock: reading NFLOG failed: \(error)\n")
                usleep(100_000)
                continue
            }
            for delivery in deliveries { listener.handle(delivery) }
            listener.flushSummary()
        }
    }
}

/// The allowed keys, and each key's comment. Which rule a key falls under is the agent's to decide, from its own
/// current policy.
struct KnockKeys {
    var fingerprints: Set<SSHFingerprint> = []
    var comments: [SSHFingerprint: String] = [:]
    var count: Int { fingerprints.count }

    struct Problem: Error, CustomStringConvertible {
        let description: String
    }

    init(_ settings: KnockSettings) throws {
        for (index, rule) in settings.keys.enumerated() {
            let keys: [AuthorizedKey]
            switch rule.keys {
            case .key(let line):
                do {
                    keys = [try AuthorizedKey(line: line)]
                } catch {
                    throw Problem(description: "knock key \(index + 1): \(error)")
                }
            case .authorizedKeys(let path):
                do {
                    let text = String(decoding: try Files.read(path, maximumBytes: 1 << 20), as: UTF8.self)
                    keys = try AuthorizedKey.parseFile(text)
                } catch let error as FileProblem {
                    throw Problem(description: "knock key \(index + 1): cannot read \(path): \(error.message)")
                } catch {
                    throw Problem(description: "knock key \(index + 1): \(path): \(error)")
                }
            }
            for key in keys {
                let fingerprint = key.key.fingerprint
                fingerprints.insert(fingerprint)
                if comments[fingerprint] == nil, !key.comment.isEmpty { comments[fingerprint] = key.comment }
            }
        }
    }
}

/// The checks and the reports, one packet at a time.
struct KnockListener {
    let settings: KnockSettings
    let keys: KnockKeys
    let machineName: String
    let socketPath: String
    let noncePath: String
    let verifier: KnockVerifier
    var nonces: NonceCache
    /// Sends refusal reports to the agent without holding up the packets.
    let reports: RefusalReports
    /// Refusals reported one by one in the current second, and those only counted.
    private var reportedThisSecond = 0
    private var second: Int64 = 0
    private var suppressed: [String: Int] = [:]
    private var overflows = 0

    static let reportsPerSecond = 20

    init(settings: KnockSettings, keys: KnockKeys, machineName: String, socketPath: String, noncePath: String) {
        self.settings = settings
        self.keys = keys
        self.machineName = machineName
        self.socketPath = socketPath
        self.noncePath = noncePath
        reports = RefusalReports(socketPath: socketPath)
        let window = Duration.milliseconds(Int64(settings.maxSkew * 1000))
        verifier = KnockVerifier(allowedFingerprints: keys.fingerprints, maximumSkew: window)
        let now = Self.nowMilliseconds()
        if let bytes = try? Files.read(noncePath, maximumBytes: 8 << 20),
            let cache = try? NonceCache(serialized: bytes, window: window)
        {
            nonces = cache
        } else {
            // No cache, or a damaged one: a new history starts now, so nothing stamped before now is accepted.
            nonces = NonceCache(window: window, startingAt: now)
            if Files.exists(noncePath) {
                StandardError.write(
                    "drawbridge-knock: \(noncePath) is unreadable; starting a new nonce history (knocks stamped "
                        + "before now are refused)\n")
            }
        }
    }

    static func nowMilliseconds() -> Int64 { Int64((SystemClock.wall().timeIntervalSince1970 * 1000).rounded(.down)) }

    mutating func handle(_ delivery: PacketLog.Delivery) {
        switch delivery {
        case .overflow:
            overflows += 1
        case .unreadable(let packet):
            refuse(source: packet.source, fingerprint: nil, kind: "unreadable", "unreadable packet: \(packet.problem)")
        case .datagram(let datagram):
            guard datagram.destinationPort == settings.port else { return }
            handle(datagram)
        }
    }

    private mutating func handle(_ datagram: LoggedDatagram) {
        let now = Self.nowMilliseconds()
        let acceptance: KnockAcceptance
        switch verifier.verify(datagram: datagram.payload, nowMilliseconds: now) {
        case .refused(let refusal):
            var fingerprint: SSHFingerprint?
            switch refusal {
            case .unknownKey(let value), .badSignature(let value), .userPresenceMissing(let value):
                fingerprint = value
            default: break
            }
            let kind: String
            switch refusal {
            case .malformed: kind = "malformed"
            case .unknownKey: kind = "unknown key"
            case .badSignature: kind = "bad signature"
            default: kind = "other"
            }
            refuse(source: datagram.source, fingerprint: fingerprint, kind: kind, "\(refusal)")
            return
        case .accepted(let value):
            acceptance = value
        }
        let request = acceptance.request
        let fingerprint = acceptance.fingerprint
        guard settings.isThisHost(request.host, machineName: machineName, destination: datagram.destination) else {
            let names = settings.hostNames.isEmpty ? [machineName] : settings.hostNames
            refuse(
                source: datagram.source, fingerprint: fingerprint, kind: "another host",
                "the knock is for host \(TextCheck.escaped(request.host)); this host answers to "
                    + "\(names.joined(separator: ", ")) and \(datagram.destination)")
            return
        }
        switch nonces.insert(request.nonce, timestampMilliseconds: request.timestampMilliseconds, nowMilliseconds: now) {
        case .inserted: break
        case .replayed:
            refuse(
                source: datagram.source, fingerprint: fingerprint, kind: "replayed",
                "replayed: nonce \(request.nonce) was accepted before")
            return
        case .full:
            refuse(
                source: datagram.source, fingerprint: fingerprint, kind: "nonce cache full",
                "the nonce cache is full; knocks are refused until old nonces age out")
            return
        case .outsideWindow, .beforeHistory:
            refuse(
                source: datagram.source, fingerprint: fingerprint, kind: "before history",
                "the knock is stamped before this listener's nonce history starts (its cache was lost)")
            return
        }
        do {
            // Written before the agent opens anything: a restart right after must still know this nonce.
            try Files.writeAtomically(noncePath, nonces.serialized(), mode: 0o600)
        } catch {
            refuse(
                source: datagram.source, fingerprint: fingerprint, kind: "storage",
                "cannot store the nonce, so the knock could be replayed after a restart: \(error)")
            return
        }
        let message = AgentMessage(
            command: "knock", source: datagram.source.description, fingerprint: fingerprint.description,
            key: acceptance.key.openSSHText, ports: request.ports.map(\.text), durationSeconds: Int(request.durationSeconds),
            reason: request.reason, clientAddress: request.clientAddress?.description,
            keyComment: keys.comments[fingerprint])
        let outcome = Self.send(message, socketPath: socketPath)
        StandardError.write(
            "drawbridge-knock: knock from \(datagram.source) by \(fingerprint) for "
                + "\(request.ports.map(\.text).joined(separator: ",")) \(request.durationSeconds)s: \(outcome)\n")
    }

    private mutating func refuse(source: IPAddress?, fingerprint: SSHFingerprint?, kind: String, _ problem: String) {
        let second = Self.nowMilliseconds() / 1000
        if second != self.second {
            flushSummary()
            self.second = second
            reportedThisSecond = 0
        }
        guard reportedThisSecond < Self.reportsPerSecond, let source else {
            suppressed[kind, default: 0] += 1
            return
        }
        let message = AgentMessage(
            command: "knock-refused", source: source.description, fingerprint: fingerprint?.description,
            problem: String(problem.prefix(900)))
        guard reports.submit(message, log: "refused a knock from \(source): \(problem)") else {
            suppressed[kind, default: 0] += 1
            return
        }
        reportedThisSecond += 1
    }

    /// Reports the refusals only counted (and socket overflows) since the last summary, as one audit record.
    mutating func flushSummary() {
        guard !suppressed.isEmpty || overflows > 0 else { return }
        let total = suppressed.values.reduce(0, +)
        var parts = suppressed.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
        if overflows > 0 { parts.append("NFLOG overflows (packets lost before reading): \(overflows)") }
        let problem = "\(total) more knocks refused without a record each (\(parts.joined(separator: ", ")))"
        // No one source: the count says how many refusals the record stands for (0 when only packets were lost).
        // While the reports are backed up, the counts are kept for the next summary.
        guard reports.submit(AgentMessage(command: "knock-refused", problem: problem, count: total), log: problem)
        else { return }
        suppressed = [:]
        overflows = 0
    }

    /// One request to the agent; what came of it, in words for the log.
    static func send(_ message: AgentMessage, socketPath: String) -> String {
        let exchange: AgentSocket.Exchange
        do {
            exchange = try AgentSocket.exchange(message, path: socketPath, timeoutSeconds: 10)
        } catch {
            return "the agent could not be asked: \(error)"
        }
        guard let response = try? LocalAPI.decoder().decode(LocalAPI.Response.self, from: Data(exchange.answer)) else {
            return "the agent's answer was not understood"
        }
        if response.ok { return response.outcome ?? "ok" }
        return "the agent refused: \(response.error?.message ?? "no reason")"
    }
}

/// Refusal reports on their way to the agent, sent one after another on a queue of their own.
///
/// Each report is a round trip to the agent; made inline, they kept the listener from reading packets while the
/// kernel's NFLOG buffer filled during a flood (under emulation on 6.1, a real knock sent right after a flood went
/// unanswered in two of three runs). At most ``maximumPending`` wait; beyond that a refusal is only counted, like
/// those over the per-second budget.
final class RefusalReports: Sendable {
    static let maximumPending = 64
    private let queue = DispatchQueue(label: "drawbridge-knock.refusal-reports")
    private let pending = Atomic<Int>(0)
    private let socketPath: String

    init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// Queues a report; false when too many wait already (nothing is queued then).
    func submit(_ message: AgentMessage, log: String) -> Bool {
        guard pending.add(1, ordering: .relaxed).newValue <= Self.maximumPending else {
            pending.subtract(1, ordering: .relaxed)
            return false
        }
        queue.async { [self] in
            let outcome = KnockListener.send(message, socketPath: socketPath)
            StandardError.write("drawbridge-knock: \(log) (\(outcome))\n")
            pending.subtract(1, ordering: .relaxed)
        }
        return true
    }
}

/// A `knock` or `knock-refused` request to the agent (see ``KnockGrant``); absent fields are left out.
struct AgentMessage: Encodable, Sendable {
    var command: String
    var source: String?
    var fingerprint: String?
    var key: String?
    var ports: [String]?
    var durationSeconds: Int?
    var reason: String?
    var clientAddress: String?
    var keyComment: String?
    var problem: String?
    var count: Int?

    enum CodingKeys: String, CodingKey {
        case command, source, fingerprint
        case key
        case ports
        case durationSeconds = "duration_seconds"
        case reason
        case clientAddress = "client_address"
        case keyComment = "key_comment"
        case problem, count
    }
}

/// Gives up privileges once the NFLOG socket is bound.
enum Privileges {
    static func drop(to user: String, keeping directory: String) {
        if getuid() == 0, let uid = Accounts.userID(named: user) {
            let gid = getpwuid(uid).map { $0.pointee.pw_gid } ?? gid_t(uid)
            _ = chown(directory, uid, gid)
            _ = chown(directory + "/nonces", uid, gid)
            guard setgroups(0, nil) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
                fail("cannot switch to user \(user): \(String(cString: strerror(errno)))", .failure)
            }
        }
        guard drawbridge_drop_capabilities() == 0 else {
            fail("cannot drop capabilities: \(String(cString: strerror(errno)))", .failure)
        }
    }
}
