import ArgumentParser
import DrawbridgeCore
import Etcd
import EtcdSync
import FoundationEssentials
import Glibc
import HostSystem

/// Exit statuses scripts can rely on (sysexits.h values where one fits), as `drawbridge` uses them.
enum ExitStatus {
    static let notFound = ExitCode(2)  // no such grant
    static let invalidData = ExitCode(65)  // EX_DATAERR: a policy, client configuration or password file is wrong
    static let unavailable = ExitCode(69)  // EX_UNAVAILABLE: etcd cannot be reached
    static let refused = ExitCode(77)  // EX_NOPERM: etcd refused the user, or a host refused the grant
    static let notConfigured = ExitCode(78)  // EX_CONFIG: the policy has no etcd section
}

@main
struct DrawbridgeEtcd: AsyncParsableCommand {
    /// A reader that goes away (`drawbridge-etcd list | head`) or an agent that hangs up must give an error, not kill
    /// the process with SIGPIPE.
    static func main() async {
        signal(SIGPIPE, SIG_IGN)
        await main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "drawbridge-etcd",
        abstract: "Grants for a fleet of hosts, through etcd.",
        discussion: """
            Requesters write a grant once, for one host or a group of hosts; every host's drawbridge-etcd sync \
            follows its own keys and hands each change to its agent, which enforces it if the host's own policy \
            allows it.

            Keys under the prefix (default /drawbridge):
              <prefix>/v1/grants/host/<host>/<id>     a grant for one host
              <prefix>/v1/grants/group/<group>/<id>   a grant for every host of the group
              <prefix>/v1/status/<host>               what the host applied and refused

            Examples:
              drawbridge-etcd grant ssh --from 203.0.113.7 --for 2h --group web
              drawbridge-etcd list --group web
              drawbridge-etcd revoke g-k3v9q2x7mz --group web
              drawbridge-etcd status
              drawbridge-etcd sync --config /etc/drawbridge/policy.yaml   (the service)

            Why a process of its own: privilege separation. The agent runs as root with CAP_NET_ADMIN; it never \
            links TLS, HTTP/2, gRPC or protobuf code and never parses what arrives from the network. \
            drawbridge-etcd sync runs as an unprivileged user (the policy's etcd.sync_user), reads etcd and passes \
            the raw values to the agent over its local socket; the agent checks every value against its own \
            policy, as it checks a grants file. The host's policy is law: a grant in etcd opens nothing the policy \
            does not allow, whoever could write it. (It also keeps the agent small.)

            What the requester commands check before writing: the syntax of ports, source, duration, reason, id \
            and names. What only each host can check, when its agent reads the value: whether the ports are \
            managed, the source lies within their allowed sources, and the duration within their longest grant. \
            `grant` waits (--wait) for the hosts' status keys to say applied or refused.

            Exit status: 0 done; 1 failed; 2 no such grant; 64 bad arguments; 65 invalid policy, client \
            configuration or password file; 69 etcd cannot be reached; 77 etcd refused the user, or a host refused \
            the grant; 78 the policy has no etcd section (sync).
            """,
        version: drawbridgeVersion,
        subcommands: [Sync.self, Grant.self, Revoke.self, List.self, Status.self])
}

// MARK: Options every requester command takes

struct EtcdOptions: ParsableArguments {
    @Option(
        name: .customLong("etcd"),
        help: ArgumentHelp("An etcd member's URL, like https://192.0.2.10:2379; repeat for more members.", valueName: "url"))
    var endpoints: [String] = []

    @Option(name: .customLong("cacert"), help: ArgumentHelp("The CA that signs etcd's certificate (PEM).", valueName: "file"))
    var certificateAuthority: String?

    @Option(
        name: .customLong("cert"),
        help: ArgumentHelp("A client certificate (PEM); its common name is your etcd user.", valueName: "file"))
    var certificate: String?

    @Option(name: .customLong("key"), help: ArgumentHelp("The client certificate's private key (PEM).", valueName: "file"))
    var key: String?

    @Option(help: ArgumentHelp("Your etcd user, for password authentication.", valueName: "name"))
    var user: String?

    @Option(help: ArgumentHelp("A file whose first line is the password of --user.", valueName: "file"))
    var passwordFile: String?

    @Option(help: ArgumentHelp("The root of every key (default /drawbridge, or the client configuration's).", valueName: "path"))
    var prefix: String?

    @Option(
        help: ArgumentHelp(
            "A client configuration (YAML, one etcd: section with endpoints, prefix, tls { ca, cert, key }, user and "
                + "password_file). Default: $DRAWBRIDGE_ETCD_CONFIG, else ~/.config/drawbridge/etcd.yaml, else "
                + "/etc/drawbridge/etcd-client.yaml, when they exist. Options given here override it.",
            valueName: "file"))
    var clientConfig: String?

    var commandLine: ClientOptions {
        ClientOptions(
            endpoints: endpoints, certificateAuthority: certificateAuthority, certificate: certificate, key: key,
            user: user, passwordFile: passwordFile, prefix: prefix)
    }

    /// The client configuration file (if any) with these options over it.
    func settings() throws -> ClientSettings {
        var file: EtcdSettings?
        let environment = getenv("DRAWBRIDGE_ETCD_CONFIG").map { ["DRAWBRIDGE_ETCD_CONFIG": String(cString: $0)] } ?? [:]
        let home = getenv("HOME").map { String(cString: $0) }
        for candidate in ClientConfigFile.candidates(explicit: clientConfig, environment: environment, home: home) {
            guard candidate.required || Files.exists(candidate.path) else { continue }
            do {
                let bytes = try Files.read(candidate.path, maximumBytes: 64 * 1024)
                file = try Policy.parseEtcdClient(String(decoding: bytes, as: UTF8.self), file: candidate.path)
            } catch {
                Output.error("client configuration: \(error)")
                throw ExitStatus.invalidData
            }
            break
        }
        do {
            return try ClientSettings.merge(file: file, options: commandLine)
        } catch {
            Output.error(error.message)
            throw ExitCode.validationFailure
        }
    }

    /// Runs `body` with a client of the first member that answers (the next one is tried when a member cannot be
    /// reached); etcd's errors are printed in its words and become exit statuses.
    func withClient<Result: Sendable>(
        _ settings: ClientSettings, _ body: (EtcdClient) async throws -> Result
    ) async throws -> Result {
        let configuration: EtcdConfiguration
        do {
            configuration = try settings.configuration(password: try Self.checkedSecrets(settings))
        } catch let error as EtcdError {
            throw Output.fail(error)
        }
        for (index, endpoint) in configuration.endpoints.enumerated() {
            do {
                return try await EtcdClient.withClient(configuration: configuration, endpoint: endpoint, body)
            } catch let error as EtcdError {
                if error.isRetryable, index + 1 < configuration.endpoints.count {
                    Output.error("\(error); trying \(configuration.endpoints[index + 1])")
                    continue
                }
                throw Output.fail(error)
            }
        }
        throw ExitStatus.unavailable
    }

    /// Checks the secrets the settings name and returns the password from the password file, if one is set; a
    /// password file or TLS key that every user of the host can read is refused (exit 65), as ssh refuses such a key.
    static func checkedSecrets(_ settings: ClientSettings) throws -> String? {
        if let key = settings.key, let problem = Files.secretProblem(key) {
            Output.error("TLS key \(problem)")
            throw ExitStatus.invalidData
        }
        guard let path = settings.passwordFile else { return nil }
        do {
            return try ClientSettings.password(fromFile: try Files.readSecret(path, maximumBytes: 4096), path: path)
        } catch let error as FleetProblem {
            Output.error(error.message)
        } catch {
            Output.error("password file: \(error)")
        }
        throw ExitStatus.invalidData
    }
}

/// `--host NAME` or `--group NAME`.
struct TargetOptions: ParsableArguments {
    @Option(help: ArgumentHelp("One host, by its etcd name (its policy's etcd.host, or its host name).", valueName: "name"))
    var host: String?

    @Option(help: ArgumentHelp("Every host that follows this group (its policy's etcd.groups).", valueName: "name"))
    var group: String?

    func target() throws -> FleetTarget {
        do {
            return try FleetTarget.make(host: host, group: group)
        } catch {
            throw ValidationError(error.message)
        }
    }
}

// MARK: Output

enum Output {
    static func error(_ message: String) {
        StandardError.write("drawbridge-etcd: \(TextCheck.escaped(message))\n")
    }

    /// Prints an etcd error and returns the exit status it means.
    static func fail(_ error: EtcdError) -> ExitCode {
        self.error(error.description)
        switch error.code {
        case .unavailable, .timedOut: return ExitStatus.unavailable
        case .permissionDenied, .authenticationFailed, .certificateRejected: return ExitStatus.refused
        case .invalidConfiguration: return ExitStatus.invalidData
        default: return .failure
        }
    }

    static func json(_ value: some Encodable) {
        if let data = try? LocalAPI.encoder().encode(value) { print(String(decoding: data, as: UTF8.self)) }
    }

    /// `in 1h30m`, or `expired`.
    static func remaining(_ date: Date) -> String {
        let seconds = date.timeIntervalSince(SystemClock.wall())
        return seconds > 0 ? "in \(GrantDuration.format(seconds))" : "expired"
    }
}
