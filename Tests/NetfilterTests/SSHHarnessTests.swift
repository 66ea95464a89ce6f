import DrawbridgeCore
import Foundation
import HostSystem
import Netfilter
import TestSupport
import Testing

/// Proof with a real OpenSSH server and client: sshd in the host namespace, ssh in the client namespace, the
/// drawbridge table installed in the host namespace through `TableDriver` (no agent).
///
/// Timings are printed as `SSH-HARNESS …` lines.
@Suite(.enabled(if: KernelTestGate.enabled, Comment(rawValue: KernelTestGate.reason)))
struct SSHHarnessTests {
typealias Path = NetworkPath

static let paths = NetworkPath.clientToHost

    static let ssh = Service(port: 22, transport: .tcp)

    static func milliseconds(_ interval: TimeInterval) -> Int { Int((interval * 1000).rounded()) }
    static func format(_ interval: TimeInterval) -> String { String(format: "%.1f", interval * 1000) }

    static func sleep(until date: Date) {
        let interval = date.timeIntervalSinceNow
        if interval > 0 { usleep(UInt32(interval * 1_000_000)) }
    }

    @Test("ssh login: refused before a grant, works during it, refused after its kernel timeout", arguments: paths)
    func loginFollowsGrant(_ path: Path) throws {
        let network = try TestNetwork()
        let server = try SSHServer(in: network.host)
        defer { server.stop() }
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: network.host))
        try enforcer.install(mode: .keepSessions, managedServices: [Self.ssh], alwaysAllowed: [])
        func logIn() throws -> SSHResult {
            try SSHClient.logIn(
                from: network.client, source: path.source, to: path.destination, key: server.clientKeyPath)
        }

        let before = try logIn()
        #expect(!before.succeeded, "no login before a grant: \(before)")
        #expect(before.connectTimedOut, "the SYN is dropped, not refused: \(before)")

        let grantedAt = Date()
        let time = TestTiming.seconds
        let expiresAt = grantedAt.addingTimeInterval(time(4))
        _ = try enforcer.reconcile(desired: [
            AccessKey(source: IPPrefix(address: path.source), service: Self.ssh): expiresAt
        ])
        let reconciled = Date()

        // During the grant: log in again and again; every login works, the first one at once.
        var logins: [SSHResult] = []
        repeat {
            let login = try logIn()
            logins.append(login)
            #expect(login.loggedIn, "a login during the grant failed: \(login)\nsshd log:\n\(server.log)")
        } while Date() < expiresAt.addingTimeInterval(-time(1.2))
        let firstLogin = logins[0]

        // Across the expiry: an attempt every 100 ms from 0.6 s before to 0.6 s after, overlapping. Each attempt's
        // SYN leaves some time after the attempt starts (ssh starting up: tens of ms, ~100 ms on a busy machine),
        // so one started after the expiry must be dropped, and one started comfortably before it must log in (its
        // connection is then established, which keep-sessions lets finish). In between, either is right. Under
        // emulation (TestTiming) ssh starts slower: the window and the margin before expiry stretch, not the rest.
        let starts = (0...12).map { expiresAt.addingTimeInterval(time(-0.6 + Double($0) * 0.1)) }
        let attempts = SSHClient.logInAttempts(
            at: starts, from: network.client, source: path.source, to: path.destination, key: server.clientKeyPath
        ).sorted { $0.startedAt < $1.startedAt }
        for attempt in attempts {
            let offset = attempt.startedAt.timeIntervalSince(expiresAt)
            if offset < -time(0.45) {
                #expect(attempt.loggedIn, "an attempt \(Self.signed(offset)) ms from expiry failed: \(attempt)")
            } else if offset >= 0.05 {  // the kernel counts timeouts in jiffies: allow a few ms of rounding
                #expect(
                    !attempt.succeeded && attempt.connectTimedOut,
                    "an attempt \(Self.signed(offset)) ms after expiry was not dropped: \(attempt)")
            } else {
                #expect(attempt.loggedIn || attempt.connectTimedOut, "either in or dropped: \(attempt)")
            }
        }
        let lastSuccess = attempts.last { $0.loggedIn }
        let firstRefusal = try #require(attempts.first { !$0.loggedIn }, "the grant never expired")

        let after = try logIn()
        #expect(!after.succeeded && after.connectTimedOut, "still refused well after expiry: \(after)")

        let mean = logins.map { $0.elapsed.inSeconds }.reduce(0, +) / Double(logins.count)
        print(
            """
            SSH-HARNESS \(path.name) login: reconcile \(Self.format(reconciled.timeIntervalSince(grantedAt))) ms; \
            grant -> first login done \(Self.milliseconds(firstLogin.finishedAt.timeIntervalSince(grantedAt))) ms \
            (that ssh run alone \(Self.milliseconds(firstLogin.elapsed.inSeconds)) ms); \
            \(logins.count) logins during the grant, mean \(Self.milliseconds(mean)) ms; \
            last successful attempt started at expiry\(lastSuccess.map { Self.signed($0.startedAt.timeIntervalSince(expiresAt)) } ?? " n/a") ms, \
            first refused attempt started at expiry\(Self.signed(firstRefusal.startedAt.timeIntervalSince(expiresAt))) ms \
            (refusal known at expiry\(Self.signed(firstRefusal.finishedAt.timeIntervalSince(expiresAt))) ms, ConnectTimeout=\(SSHClient.connectTimeout)); \
            attempts: \(attempts.map { "\(Self.signed($0.startedAt.timeIntervalSince(expiresAt)))\($0.loggedIn ? "ok" : "x")" }.joined(separator: " "))
            """)
    }

    struct SessionCase: Sendable, CustomTestStringConvertible {
        var mode: SessionMode
        var path: Path
        var testDescription: String { "\(mode.rawValue) \(path.name)" }
    }

    static let sessionCases = [SessionMode.keepSessions, .cutSessions].flatMap { mode in
        paths.map { SessionCase(mode: mode, path: $0) }
    }

    @Test("an open session at expiry: keep-sessions keeps it, cut-sessions cuts it", arguments: sessionCases)
    func sessionAtExpiry(_ example: SessionCase) throws {
        let path = example.path
        let network = try TestNetwork()
        let server = try SSHServer(in: network.host)
        defer { server.stop() }
        let enforcer = TableDriver(connection: try NetfilterConnection(namespace: network.host))
        try enforcer.install(mode: example.mode, managedServices: [Self.ssh], alwaysAllowed: [])

        let time = TestTiming.seconds
        let expiresAt = Date().addingTimeInterval(time(4))
        _ = try enforcer.reconcile(desired: [
            AccessKey(source: IPPrefix(address: path.source), service: Self.ssh): expiresAt
        ])
        let session = try SSHSession(
            from: network.client, source: path.source, to: path.destination, key: server.clientKeyPath)
        defer { session.close() }
        try #require(
            session.waitUntilOpen(within: TestTiming.duration(.seconds(3))),
            "session opened during the grant: \(session.errorOutput)\nsshd log:\n\(server.log)")
        #expect(session.isAlive(within: .seconds(1)))

        Self.sleep(until: expiresAt)
        let label = "SSH-HARNESS \(example.testDescription) session:"
        switch example.mode {
        case .keepSessions:
            // A new login is refused while the old session goes on, past the 3 s in which ssh's keepalives would
            // have given up on a dead connection.
            let login = try SSHClient.logIn(
                from: network.client, source: path.source, to: path.destination, key: server.clientKeyPath)
            #expect(!login.succeeded && login.connectTimedOut, "a new login after expiry is refused: \(login)")
            #expect(session.isAlive(within: .seconds(1)), "the session still delivers output")
            Self.sleep(until: expiresAt.addingTimeInterval(4.5))
            #expect(session.isAlive(within: .seconds(1)), "the session still delivers output 4.5 s after expiry")
            #expect(session.isRunning, "ssh did not give up: \(session.errorOutput)")
            let ticks = session.outputArrivals.filter { $0 > expiresAt }.count
            print(
                "\(label) \(ticks) outputs after expiry; still open at expiry+\(Self.milliseconds(Date().timeIntervalSince(expiresAt))) ms"
            )
        case .cutSessions:
            // Output stops: the host drops the client's ACKs and keepalives, so sshd's TCP stops sending new data
            // at its first retransmission timeout. ssh gives up after ServerAliveInterval × (CountMax + 1) ≈ 3 s.
            _ = eventually(within: TestTiming.duration(.seconds(7))) { !session.isRunning }
            let gaveUp = Date().timeIntervalSince(expiresAt)
            let lastOutput = try #require(session.lastOutputAt)
            let stopped = lastOutput.timeIntervalSince(expiresAt)
            #expect(stopped > -time(1), "the session delivered output until the expiry")
            #expect(stopped < time(2), "no output later than 2 s after expiry")
            #expect(!session.isAlive(within: .seconds(1)), "no fresh output")
            #expect(!session.isRunning, "ssh gave up on the dead connection")
            #expect(session.exitStatus == 255, "ssh exits 255 on a server-alive timeout: \(session.errorOutput)")
            print(
                "\(label) last output at expiry\(Self.signed(stopped)) ms; ssh exited \(session.exitStatus.map(String.init) ?? "-") "
                    + "(\(session.errorOutput.split(whereSeparator: \.isNewline).filter { !$0.contains("Permanently added") }.joined(separator: " / "))), noticed by expiry+\(Self.milliseconds(gaveUp)) ms"
            )
        }
    }

    static func signed(_ interval: TimeInterval) -> String {
        let value = milliseconds(interval)
        return value < 0 ? "\(value)" : "+\(value)"
    }
}

extension Duration {
    fileprivate var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
