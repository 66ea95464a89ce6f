import Foundation
import TestSupport

/// A throwaway certificate authority made with `openssl` at test time, a server certificate for etcd's addresses, and
/// client certificates whose common name is the etcd user. Everything lives in `directory` and is valid for a day.
final class TestCertificates: @unchecked Sendable {
    let directory: String
    var authority: String { directory + "/ca.pem" }
    var serverCertificate: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server-key.pem" }
    private let lock = NSLock()

    init(directory: String, serverAddresses: [String]) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try run([
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", directory + "/ca-key.pem", "-out", authority, "-days", "1", "-subj", "/CN=drawbridge test CA",
        ])
        try issue(
            name: "server", commonName: "etcd test server",
            extensions: "subjectAltName=\(serverAddresses.map { "IP:\($0)" }.joined(separator: ","))\n"
                + "extendedKeyUsage=serverAuth,clientAuth\n")
    }

    /// The certificate and key for user `name` (CN=name), made on first use.
    func client(_ name: String) throws -> (certificate: String, key: String) {
        lock.lock()
        defer { lock.unlock() }
        let files = (directory + "/client-\(name).pem", directory + "/client-\(name)-key.pem")
        if !FileManager.default.fileExists(atPath: files.0) {
            try issue(name: "client-\(name)", commonName: name, extensions: "extendedKeyUsage=clientAuth\n")
        }
        return files
    }

    private func issue(name: String, commonName: String, extensions: String) throws {
        let key = directory + "/\(name)-key.pem"
        let request = directory + "/\(name).csr"
        let extensionsFile = directory + "/\(name).ext"
        try extensions.write(toFile: extensionsFile, atomically: true, encoding: .utf8)
        try run([
            "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
            "-out", request, "-subj", "/CN=\(commonName)",
        ])
        try run([
            "openssl", "x509", "-req", "-in", request, "-CA", authority, "-CAkey", directory + "/ca-key.pem",
            "-CAcreateserial", "-out", directory + "/\(name).pem", "-days", "1", "-extfile", extensionsFile,
        ])
    }
}
