/// Why a text was not read as a YAML document, with where.
///
/// Its description reads like a compiler diagnostic without the file name, which the caller knows:
/// `3:1: key 'ports' appears more than once in the same mapping (first at line 1, column 1) (hint: keep one of them)`.
public struct YAMLError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure, for code that needs to react to it.
    public enum Code: Sendable, Equatable {
        /// libyaml could not scan or parse the text.
        case syntax
        /// The bytes are not UTF-8, or hold a character YAML does not allow (a control character).
        case invalidText
        /// The text is larger than ``Document/maximumByteCount``.
        case tooLarge
        /// Collections nest deeper than ``Document/maximumDepth``.
        case tooDeep
        /// The document has more than ``Document/maximumNodeCount`` nodes.
        case tooManyNodes
        /// An anchor (`&name`): refused, so no alias can multiply a value (the "billion laughs").
        case anchor
        /// An alias (`*name`); since anchors are refused, it never names one.
        case alias
        /// A tag other than the standard `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!seq` and `!!map`, or a
        /// standard tag on a node it does not fit.
        case tag
        /// A key appears twice in one mapping.
        case duplicateKey
        /// The text holds more than one document.
        case multipleDocuments
        /// libyaml could not allocate memory.
        case outOfMemory
    }

    /// The kind of failure.
    public var code: Code
    /// Where the problem is; nil when it is about the whole text.
    public var position: Position?
    /// What is wrong, in a sentence.
    public var message: String
    /// How to fix it, when there is an obvious way.
    public var hint: String?

    public init(_ code: Code, at position: Position?, _ message: String, hint: String? = nil) {
        self.code = code
        self.position = position
        self.message = message
        self.hint = hint
    }

    /// `line:column: message (hint: hint)`.
    public var description: String {
        let location = position.map { "\($0): " } ?? ""
        return location + message + (hint.map { " (hint: \($0))" } ?? "")
    }
}
