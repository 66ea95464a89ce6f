import DrawbridgeCore

/// The policy file, read and parsed: the one place both the agent and the command line load it.
public enum PolicyFile {
    /// Reads, parses and validates the policy file at `path`.
    ///
    /// An unreadable file gives a ``PolicyError`` with the operating system's reason; one that is not UTF-8, one with
    /// the position of the first byte that is not; a file larger than a megabyte is the wrong file.
    public static func load(_ path: String) throws(PolicyError) -> Policy {
        let bytes: [UInt8]
        do {
            bytes = try Files.read(path, maximumBytes: Policy.largestFile)
        } catch {
            throw PolicyError(file: path, message: error.message)
        }
        return try Policy.parse(utf8: bytes, file: path)
    }
}
