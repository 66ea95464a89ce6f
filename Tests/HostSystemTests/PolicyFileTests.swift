import DrawbridgeCore
import Foundation
import HostSystem
import Testing

/// Reading the policy from a file: the path in every error, the operating system's reason, UTF-8 checked.
struct PolicyFileTests {
    static let exampleText = """
        ports:
          ssh: { port: 22, protocol: tcp, max_duration: 3h, allowed_sources: ["0.0.0.0/0", "::/0"] }
        always_allow: ["192.0.2.10/32"]

        """
    @Test("load reads a file and reports it under its path")
    func load() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("policy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let good = directory.appendingPathComponent("policy.yaml").path
        try Self.exampleText.write(toFile: good, atomically: true, encoding: .utf8)
        #expect(try PolicyFile.load(good) == Policy.parse(Self.exampleText, file: "other"))

        let bad = directory.appendingPathComponent("bad.yaml").path
        try "ports:\n  ssh: 22\n".write(toFile: bad, atomically: true, encoding: .utf8)
        #expect(throws: PolicyError.self) { try PolicyFile.load(bad) }
        do {
            _ = try PolicyFile.load(bad)
        } catch {
            #expect(error.file == bad && error.line == 2)
        }

        let binary = directory.appendingPathComponent("binary.yaml").path
        _ = FileManager.default.createFile(atPath: binary, contents: Data([0x70, 0x6f, 0xff, 0xfe, 0x0a]))
        #expect { try PolicyFile.load(binary) } throws: { "\($0)".contains("not UTF-8") }
    }

    @Test(
        "unreadable files give the operating system's reason",
        arguments: [
            ("/nonexistent/drawbridge/policy.yaml", "No such file or directory"),
            ("/", "it is a directory, not a regular file"),
        ])
    func unreadable(path: String, reason: String) {
        do {
            _ = try PolicyFile.load(path)
            Issue.record("loaded \(path)")
        } catch {
            #expect(error.file == path)
            #expect(error.line == nil)
            #expect(error.message.contains(reason), "\(error)")
        }
    }
    @Test("a file that is not UTF-8 is refused at its first bad byte")
    func notUTF8() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("policy-\(UUID().uuidString).yaml")
        try Data(Array("ports:\n  ss".utf8) + [0xE9, 0x68, 0x3A, 0x0A]).write(to: path)
        defer { try? FileManager.default.removeItem(at: path) }
        let expected = PolicyError(
            file: path.path, line: 2, column: 5,
            message: "the text is not UTF-8: byte 0xE9 is not part of a UTF-8 character",
            hint: "save the file as UTF-8")
        #expect(throws: expected) { try PolicyFile.load(path.path) }
    }
}
