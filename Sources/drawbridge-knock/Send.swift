import ArgumentParser
import DrawbridgeCore
import FoundationEssentials
import Glibc
import HostSystem
import Knock

let knockNamespace = SSHSignature.knockNamespace

/// `drawbridge-knock send HOST PORT… --for D`: sign a knock and send it; by default wait until a TCP port answers.
struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sign a knock with your SSH key and send it to a host (what `drawbridge knock` runs).",
        discussion: """
            The key: --key FILE names an unencrypted OpenSSH private key, or a public key (.pub) whose private half \
            is in ssh-agent; without --key the first Ed25519, ECDSA P-256 or RSA key ssh-agent offers \
            (SSH_AUTH_SOCK), so keys on hardware tokens and forwarded agents work. Encrypted key files: add them \
            to ssh-agent (ssh-add) first.

            The host opens the ports to the address it sees the knock come from. PORT is a name from the host's \
            policy (ssh) or NUMBER/PROTO (22/tcp). With --wait (the default) the command then connects to each \
            TCP port it can name a number for (NUMBER/tcp, or a name in /etc/services) until it answers or \
            --timeout passes; UDP is lost silently, so a knock that did not arrive is seen here.

            Examples:
              drawbridge knock web-1.example.org ssh --for 1h --reason "incident 4711"
              drawbridge knock 2001:db8::20 ssh 5432/tcp --for 30m --key ~/.ssh/id_ed25519.pub
            """)

    @Argument(help: "The host to knock at: a name (as the host's policy knows it) or an address; the knock carries it as written.")
    var host: String

    @Argument(help: "The ports to open: policy names (ssh) or NUMBER/PROTO (22/tcp).")
    var ports: [String]

    @Option(name: .customLong("for"), help: "How long, e.g. 30m, 1h, 1h30m (the host's policy caps it).")
    var duration: String

    @Option(help: "Why, for the host's audit log (at most 200 bytes).")
    var reason: String?

    @Option(help: "An unencrypted private key file, or a .pub file naming a key in ssh-agent.")
    var key: String?

    @Option(help: "Send to this address instead of resolving HOST (the knock still names HOST).")
    var address: String?

    @Option(help: "Send from this local address (a host with several); the grant is for the address the host sees.")
    var source: String?

    @Option(
        help: "The address to sign as yours, when the host sees another one than this machine has (NAT) and its policy sets require_source_address.")
    var clientAddress: String?

    @Option(help: "The host's knock port (UDP).")
    var port: UInt16 = KnockSettings.defaultPort

    @Flag(inversion: .prefixedNo, help: "Wait until a TCP port answers, and fail if it does not.")
    var wait = true

    @Option(help: "Seconds to wait for the port to answer.")
    var timeout: Double = 5

    @Flag(name: .customShort("4"), help: "Use IPv4 only.")
    var ipv4 = false

    @Flag(name: .customShort("6"), help: "Use IPv6 only.")
    var ipv6 = false

    @Flag(help: "Print the outcome as JSON, for scripts.")
    var json = false

    @Option(help: .hidden)
    var clockOffset: Double = 0

    @Option(help: .hidden)
    var saveDatagram: String?

    func validate() throws {
        if ipv4 && ipv6 { throw ValidationError("choose -4 or -6, not both") }
        if ports.isEmpty { throw ValidationError("name at least one port, e.g. ssh or 22/tcp") }
        guard timeout > 0, timeout <= 600 else { throw ValidationError("--timeout is 0 to 600 seconds") }
    }

    func run() throws {
        var knockPorts: [KnockPort] = []
        for text in ports {
            guard let port = KnockPort(text) else {
                throw ValidationError(
                    "'\(text)' is not a port: write a policy name (ssh) or NUMBER/PROTO in lower case (22/tcp)")
            }
            guard !knockPorts.contains(port) else { throw ValidationError("port \(text) is named twice") }
            knockPorts.append(port)
        }
        guard let seconds = GrantDuration.parse(duration), seconds >= 1,
            seconds <= Double(KnockPacket.maximumDurationSeconds)
        else {
            throw ValidationError("--for '\(duration)' is not a duration from 1s to 30 days (write 90s, 30m, 2h, 1h30m)")
        }
        if let reason, reason.utf8.count > KnockPacket.maximumReasonLength {
            throw ValidationError("--reason is longer than \(KnockPacket.maximumReasonLength) bytes")
        }

        let target: ResolvedHost
        do {
            target = try ResolvedHost(
                address ?? host, port: port, family: ipv4 ? AF_INET : ipv6 ? AF_INET6 : AF_UNSPEC)
        } catch {
            fail("\(error)", ExitStatus.unavailable)
        }
        var local: IPAddress?
        if let source {
            guard let parsed = IPAddress(source), parsed.family == target.address.family else {
                throw ValidationError("--source '\(source)' is not an address of the same family as \(target.address)")
            }
            local = parsed
        }
        let signer: any SSHSigner
        do {
            signer = try KeySelection.signer(keyPath: key)
        } catch {
            fail(error.message, error.exitCode)
        }
        let socket = try UDPSender(to: target, from: local)
        var claimed = socket.localAddress.flatMap { KnockAddress(bytes: $0.bytes) }
        if let clientAddress {
            guard let parsed = IPAddress(clientAddress) else {
                throw ValidationError("--client-address '\(clientAddress)' is not an IP address")
            }
            claimed = KnockAddress(bytes: parsed.bytes)
        }
        let now = Int64((SystemClock.wall().timeIntervalSince1970 + clockOffset) * 1000)
        let request = KnockRequest(
            host: host, ports: knockPorts, durationSeconds: UInt32(seconds.rounded(.up)),
            clientAddress: claimed, timestampMilliseconds: now,
            reason: reason)
        let packet: KnockPacket
        do {
            packet = try KnockPacket.sign(request, with: signer)
        } catch {
            fail("cannot sign the knock: \(error)", ExitStatus.noKey)
        }
        if let saveDatagram {
            do {
                try Files.writeAtomically(saveDatagram, packet.bytes, mode: 0o600)
            } catch {
                fail("cannot save the datagram: \(error)", .failure)
            }
        }
        do {
            try socket.send(packet.bytes)
        } catch {
            fail("cannot send the knock to \(target.address): \(error)", ExitStatus.unavailable)
        }
        let key = signer.publicKey
        let summary =
            "knocked \(host) (\(target.address)) from \(socket.localAddress.map(\.description) ?? "?") as "
            + "\(key.algorithm.rawValue) \(key.fingerprint): \(knockPorts.map(\.text).joined(separator: ", ")) for "
            + GrantDuration.format(seconds)
        if !json { print(summary) }

        var checks: [(port: String, number: UInt16, open: Bool?)] = []
        if wait {
            for knockPort in knockPorts {
                guard let number = Self.tcpPortNumber(knockPort), !checks.contains(where: { $0.number == number })
                else { continue }
                checks.append((knockPort.text, number, nil))
            }
            let deadline = SystemClock.monotonic().advanced(by: timeout)
            for index in checks.indices {
                checks[index].open = TCPProbe.waitUntilOpen(
                    target.address, port: checks[index].number, from: local, until: deadline)
                if !json {
                    print("port \(checks[index].number) answers: \(checks[index].open == true ? "open" : "not open")")
                }
            }
        }
        if json {
            let outcome = Outcome(
                host: host, address: target.address.description, clientAddress: socket.localAddress?.description,
                fingerprint: key.fingerprint.description, ports: knockPorts.map(\.text),
                durationSeconds: Int(seconds.rounded(.up)), nonce: request.nonce.description,
                checked: wait ? checks.map { Outcome.Check(port: Int($0.number), open: $0.open == true) } : nil)
            if let data = try? LocalAPI.encoder().encode(outcome) { print(String(decoding: data, as: UTF8.self)) }
        }
        if checks.contains(where: { $0.open != true }) {
            let closed = checks.filter { $0.open != true }.map { String($0.number) }.joined(separator: ", ")
            fail(
                "port \(closed) did not answer within \(GrantDuration.format(timeout)): the host refused the knock "
                    + "(its audit log says why), the knock was lost (UDP: try again), or the service is down",
                ExitStatus.unavailable)
        }
        if wait && checks.isEmpty && !knockPorts.isEmpty && !json {
            print("(no TCP port number known to check; the knock was sent)")
        }
    }

    /// What `--json` prints.
    struct Outcome: Encodable {
        struct Check: Encodable {
            var port: Int
            var open: Bool
        }
        var host: String
        var address: String
        var clientAddress: String?
        var fingerprint: String
        var ports: [String]
        var durationSeconds: Int
        var nonce: String
        var checked: [Check]?

        enum CodingKeys: String, CodingKey {
            case host, address
            case clientAddress = "client_address"
            case fingerprint, ports
            case durationSeconds = "duration_seconds"
            case nonce, checked
        }
    }

    /// The TCP port number a knock port names: `22/tcp`, or a name /etc/services knows for tcp.
    static func tcpPortNumber(_ port: KnockPort) -> UInt16? {
        switch port {
        case .number(let number, let transport): return transport == .tcp ? number : nil
        case .named(let name):
            guard let entry = getservbyname(name, "tcp") else { return nil }
            return UInt16(bigEndian: UInt16(truncatingIfNeeded: entry.pointee.s_port))
        }
    }
}

func fail(_ message: String, _ code: ExitCode) -> Never {
    StandardError.write("drawbridge-knock: \(TextCheck.escaped(message))\n")
    Glibc.exit(code.rawValue)
}
