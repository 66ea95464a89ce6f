import DrawbridgeCore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Keeps the grant book on disk, replaced atomically: written to a temporary file, flushed, renamed over the old
/// one and the directory flushed, so a crash or power loss leaves either the old state or the new, never a mix.
public struct StateStore: Sendable {
    public let directory: String
    public var path: String { directory + "/grants.json" }

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
    }

    struct Document: Codable {
        var version: Int
        var book: GrantBook
    }

    /// The stored book, or an empty one on first start.
    public func load() throws -> GrantBook {
        guard FileManager.default.fileExists(atPath: path) else { return GrantBook() }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        do {
            let document = try LocalAPI.decoder().decode(Document.self, from: data)
            guard document.version == 1 else {
                throw AgentError("\(path) has state version \(document.version); this drawbridged reads version 1")
            }
            return document.book
        } catch let error as AgentError {
            throw error
        } catch {
            throw AgentError("\(path) is not a readable grants state (\(error)); move it aside to start without grants")
        }
    }

    public func save(_ book: GrantBook) throws {
        let encoder = LocalAPI.encoder()
        encoder.outputFormatting.insert(.prettyPrinted)
        let data = try encoder.encode(Document(version: 1, book: book))
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            throw AgentError("cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        let written = data.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        let synced = fsync(descriptor)
        close(descriptor)
        guard written == data.count, synced == 0 else {
            unlink(temporary)
            throw AgentError("cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        guard rename(temporary, path) == 0 else {
            throw AgentError("cannot replace \(path): \(String(cString: strerror(errno)))")
        }
        let directoryDescriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryDescriptor >= 0 {
            fsync(directoryDescriptor)
            close(directoryDescriptor)
        }
    }
}
