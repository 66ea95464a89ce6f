import DrawbridgeCore
import Etcd

/// The etcd options a requester gave on the command line; nil where none was given.
public struct ClientOptions: Sendable, Equatable {
    public var endpoints: [String]
    public var certificateAuthority: String?
    public var certificate: String?
    public var key: String?
    public var user: String?
    public var passwordFile: String?
    public var prefix: String?

    public init(
        endpoints: [String] = [], certificateAuthority: String? = nil, certificate: String? = nil, key: String? = nil,
        user: String? = nil, passwordFile: String? = nil, prefix: String? = nil
    ) {
        self.endpoints = endpoints
        self.certificateAuthority = certificateAuthority
        self.certificate = certificate
        self.key = key
        self.user = user
        self.passwordFile = passwordFile
        self.prefix = prefix
    }
}

/// How a requester reaches etcd: the client configuration file with the command-line options over it.
///
/// Each option replaces the file's setting of the same name. An identity replaces the other kind: `--cert`/`--key`
/// drop the file's user and password file, `--user`/`--password-file` drop the file's client certificate (the CA
/// stays). Giving both kinds on the command line is an error, as it is in the file.
public struct ClientSettings: Sendable, Equatable {
    public var endpoints: [String]
    public var prefix: String
    public var certificateAuthority: String?
    public var certificate: String?
    public var key: String?
    public var user: String?
    public var passwordFile: String?

    /// Merges `options` over `file` (a parsed client configuration, if one was found) and checks the result.
    public static func merge(file: EtcdSettings?, options: ClientOptions) throws(FleetProblem) -> ClientSettings {
        let endpoints = options.endpoints.isEmpty ? file?.endpoints ?? [] : options.endpoints
        guard !endpoints.isEmpty else {
            throw FleetProblem(
                "no etcd endpoint: give --etcd https://HOST:2379, or write a client configuration (see "
                    + "--client-config in --help)")
        }
        for endpoint in endpoints {
            if let problem = EtcdSettings.endpointProblem(endpoint) { throw FleetProblem("--etcd: \(problem)") }
        }
        let prefix = options.prefix ?? file?.prefix ?? EtcdSettings.defaultPrefix
        if let problem = EtcdSettings.prefixProblem(prefix) { throw FleetProblem("--prefix: \(problem)") }
        var settings = ClientSettings(
            endpoints: endpoints, prefix: prefix,
            certificateAuthority: options.certificateAuthority ?? file?.tls?.ca, certificate: file?.tls?.cert,
            key: file?.tls?.key, user: file?.user, passwordFile: file?.passwordFile)
        let certificateGiven = options.certificate != nil || options.key != nil
        let passwordGiven = options.user != nil || options.passwordFile != nil
        if certificateGiven && passwordGiven {
            throw FleetProblem(
                "give either --cert and --key or --user and --password-file: the certificate's common name is the "
                    + "etcd user")
        }
        if certificateGiven {
            guard let certificate = options.certificate, let key = options.key else {
                throw FleetProblem("a client certificate needs both --cert and --key")
            }
            (settings.certificate, settings.key, settings.user, settings.passwordFile) = (certificate, key, nil, nil)
        }
        if passwordGiven {
            guard let user = options.user, let passwordFile = options.passwordFile else {
                throw FleetProblem("password authentication needs both --user and --password-file")
            }
            (settings.user, settings.passwordFile, settings.certificate, settings.key) = (user, passwordFile, nil, nil)
        }
        if let user = settings.user, let problem = TextCheck.identifierProblem(user, field: "--user") {
            throw FleetProblem(problem)
        }
        let usesTLS = settings.certificateAuthority != nil || settings.certificate != nil
        if usesTLS, let plain = endpoints.first(where: { $0.hasPrefix("http://") }) {
            throw FleetProblem("TLS files are set but endpoint \(plain) is plain http://; use https://")
        }
        return settings
    }

    /// The settings of a host's policy (`drawbridge-etcd sync`), as they are.
    public init(policy settings: EtcdSettings) {
        self.init(
            endpoints: settings.endpoints, prefix: settings.prefix, certificateAuthority: settings.tls?.ca,
            certificate: settings.tls?.cert, key: settings.tls?.key, user: settings.user,
            passwordFile: settings.passwordFile)
    }

    init(
        endpoints: [String], prefix: String, certificateAuthority: String?, certificate: String?, key: String?,
        user: String?, passwordFile: String?
    ) {
        self.endpoints = endpoints
        self.prefix = prefix
        self.certificateAuthority = certificateAuthority
        self.certificate = certificate
        self.key = key
        self.user = user
        self.passwordFile = passwordFile
    }

    /// The client configuration, with the password read from ``passwordFile`` by the caller.
    public func configuration(password: String?) throws(EtcdError) -> EtcdConfiguration {
        var tls: EtcdConfiguration.TLS?
        if certificateAuthority != nil || certificate != nil {
            tls = .init(certificateAuthorityFile: certificateAuthority, certificateFile: certificate, keyFile: key)
        }
        let credentials = user.map { EtcdConfiguration.Credentials(user: $0, password: password ?? "") }
        return try EtcdConfiguration(endpoints: endpoints, tls: tls, credentials: credentials)
    }

    /// The password as a password file holds it: its first line, without the line break.
    public static func password(fromFile bytes: [UInt8], path: String) throws(FleetProblem) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw FleetProblem("the password file \(path) is not UTF-8 text")
        }
        // By scalars: "\r\n" is one Character.
        let password = String(String.UnicodeScalarView(text.unicodeScalars.prefix { $0 != "\n" && $0 != "\r" }))
        guard !password.isEmpty else { throw FleetProblem("the password file \(path) is empty") }
        return password
    }
}

/// Where a requester's client configuration is looked for.
public enum ClientConfigFile {
    /// The files to try, in order, each with whether it must exist: `--client-config` (must); else
    /// `$DRAWBRIDGE_ETCD_CONFIG` (must); else `~/.config/drawbridge/etcd.yaml`, then
    /// `/etc/drawbridge/etcd-client.yaml` (each if it exists).
    public static func candidates(
        explicit: String?, environment: [String: String], home: String?
    ) -> [(path: String, required: Bool)] {
        if let explicit { return [(explicit, true)] }
        if let variable = environment["DRAWBRIDGE_ETCD_CONFIG"], !variable.isEmpty { return [(variable, true)] }
        var paths: [(String, Bool)] = []
        if let home, !home.isEmpty { paths.append((home + "/.config/drawbridge/etcd.yaml", false)) }
        paths.append(("/etc/drawbridge/etcd-client.yaml", false))
        return paths
    }
}
