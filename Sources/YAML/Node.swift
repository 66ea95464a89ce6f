/// Where something starts in the text: a line and a column, both from 1.
///
/// Columns count Unicode scalars, not bytes or grapheme clusters, as libyaml does; a byte order mark at the start of
/// the text is not counted. Lines end at LF, CR, CR LF, NEL, LS and PS, as in libyaml.
public struct Position: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The line, from 1.
    public var line: Int
    /// The column, from 1, counted in Unicode scalars.
    public var column: Int

    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    public static func < (left: Position, right: Position) -> Bool {
        (left.line, left.column) < (right.line, right.column)
    }

    /// `line:column`, as in a compiler diagnostic.
    public var description: String { "\(line):\(column)" }
}

/// A node of a YAML document: a scalar, a sequence or a mapping, with the position where it starts.
///
/// A node's position is where its first token starts: its tag if it has one, else the `[`, `{`, first `-` or first key
/// of a collection, or the first character of a scalar (its opening quote or `|`/`>` indicator included).
public struct Node: Sendable, Equatable {
    /// What a node holds.
    public enum Content: Sendable, Equatable {
        /// A single value.
        case scalar(Scalar)
        /// An ordered list of nodes (`[a, b]` or `- a` lines).
        case sequence([Node])
        /// Key/value pairs in the order they are written; no key appears twice.
        case mapping([Pair])
    }

    /// What the node holds.
    public var content: Content
    /// Where the node starts.
    public var position: Position

    public init(_ content: Content, at position: Position) {
        self.content = content
        self.position = position
    }

    /// The scalar, if the node is one.
    public var scalar: Scalar? {
        if case .scalar(let scalar) = content { return scalar }
        return nil
    }

    /// The items, if the node is a sequence.
    public var sequence: [Node]? {
        if case .sequence(let items) = content { return items }
        return nil
    }

    /// The pairs, if the node is a mapping.
    public var mapping: [Pair]? {
        if case .mapping(let pairs) = content { return pairs }
        return nil
    }

    /// True for a scalar whose type is null: an empty plain value, `~`, `null`, or one tagged `!!null`.
    public var isNull: Bool { scalar?.kind == .null }

    /// The value under the scalar key whose text is `key`, if the node is a mapping that has one.
    public subscript(key: String) -> Node? {
        mapping?.first { $0.key.scalar?.value == key }?.value
    }
}

/// One entry of a mapping.
public struct Pair: Sendable, Equatable {
    /// The key; usually a scalar, but YAML allows any node.
    public var key: Node
    /// The value.
    public var value: Node

    public init(key: Node, value: Node) {
        self.key = key
        self.value = value
    }
}

/// A single value, as written, with how it was quoted and the type YAML gives it.
public struct Scalar: Sendable, Equatable {
    /// How a scalar is written.
    public enum Style: Sendable, Equatable {
        /// Unquoted: `22`, `ssh`, `0.0.0.0/0`.
        case plain
        /// In single quotes: `'ssh'`.
        case singleQuoted
        /// In double quotes, where backslash escapes apply: `"ssh\n"`.
        case doubleQuoted
        /// A `|` block that keeps its line breaks.
        case literal
        /// A `>` block whose line breaks fold into spaces.
        case folded
    }

    /// The type of a scalar in the YAML 1.2 core schema.
    public enum Kind: Sendable, Equatable {
        /// No value: an empty plain scalar, `~`, `null`, `Null` or `NULL`; tag `!!null`.
        case null
        /// `true`, `True`, `TRUE`, `false`, `False` or `FALSE`; tag `!!bool`.
        case boolean
        /// Decimal (`22`, `-7`, `022`), octal (`0o17`) or hexadecimal (`0x16`); tag `!!int`.
        case integer
        /// `1.5`, `.5`, `1e3`, `-.inf`, `.nan` and the like; tag `!!float`.
        case float
        /// Anything else, and every quoted or block scalar without a tag; tag `!!str`.
        case string
    }

    /// The value after quotes, escapes, folding and indentation are undone.
    public var value: String
    /// How the value was written.
    public var style: Style
    /// The type a standard tag (`!!int`, `!!str`, ...) gave the scalar explicitly; nil when it has no tag.
    public var tag: Kind?

    public init(_ value: String, style: Style = .plain, tag: Kind? = nil) {
        self.value = value
        self.style = style
        self.tag = tag
    }

    /// The scalar's type: its tag's if it has one, else the core schema's reading of a plain value, else string.
    public var kind: Kind {
        if let tag { return tag }
        return style == .plain ? Kind(resolving: value) : .string
    }
}
