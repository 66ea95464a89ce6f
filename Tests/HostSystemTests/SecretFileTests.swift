import Foundation
import Glibc
import HostSystem
import Testing

/// Files that hold secrets (an etcd password, a TLS key): refused while every user of the host can read them.
struct SecretFileTests {
    @Test("a secret readable by others is refused with its mode and the fix; owner and group may read it")
    func worldReadable() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("etcd.password").path
        try "s3cret\n".write(toFile: path, atomically: true, encoding: .utf8)

        #expect(chmod(path, 0o644) == 0)
        let problem = try #require(Files.secretProblem(path))
        #expect(problem.description.contains("every user of this host can read it (mode 644)"), "\(problem)")
        #expect(problem.description.contains("chmod o-r \(path)"))
        #expect { try Files.readSecret(path, maximumBytes: 64) } throws: {
            "\($0)".contains("every user of this host can read it (mode 644)")
        }
        // The ordinary read does not care.
        #expect(try Files.read(path, maximumBytes: 64) == Array("s3cret\n".utf8))

        for mode: mode_t in [0o600, 0o640, 0o400, 0o440] {
            #expect(chmod(path, mode) == 0)
            #expect(Files.secretProblem(path) == nil, "mode \(String(mode, radix: 8))")
            #expect(try Files.readSecret(path, maximumBytes: 64) == Array("s3cret\n".utf8))
        }
        // A file that is not there is for the reader to report, with the operating system's reason.
        #expect(Files.secretProblem(path + ".missing") == nil)
        #expect { try Files.readSecret(path + ".missing", maximumBytes: 64) } throws: {
            "\($0)".contains("No such file")
        }
    }
}
