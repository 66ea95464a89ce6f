import DrawbridgeCore

/// The policy file, read and parsed: the one place both the agent and the command line load it.
public enum PolicyFile {
    /// A policy is a page of text; a file of a megabyte is the wrong file.
    public static let maximumBytes = 1 << 20

    public static func load(_ path: String) throws(PolicyError) -> Policy {
        let bytes: [UInt8]
        do {
            bytes = try Files.read(path, maximumBytes: maximumBytes)
        } catch {
            throw PolicyError(file: path, message: error.message)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw PolicyError(file: path, message: "the policy is not UTF-8 text")
        }
        return try Policy.parse(text, file: path)
    }
}
