/// A YAML text read into a tree of positioned nodes.
///
/// The reader is meant for configuration files written by people, so it refuses what such a file never needs and an
/// attacker could use, each with a positioned ``YAMLError``:
/// - anchors and aliases, so no alias can multiply a value into a huge tree (the "billion laughs");
/// - tags other than the standard `!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!seq` and `!!map`;
/// - a key that appears twice in one mapping (keys are compared by their text, so `1` and `"1"` are the same key);
/// - more than one document, more than ``maximumByteCount`` bytes, nesting deeper than ``maximumDepth`` and more than
///   ``maximumNodeCount`` nodes.
///
/// Plain scalars are typed by the YAML 1.2 core schema (``Scalar/Kind``). Syntax errors carry libyaml's own words:
/// `not valid YAML: mapping values are not allowed in this context`.
public struct Document: Sendable, Equatable {
    /// The root node; nil when the text holds no document at all (it is empty, or only comments).
    public var root: Node?

    /// The largest text read, in bytes of UTF-8: a configuration file is a page or two, not a megabyte.
    public static let maximumByteCount = 1 << 20
    /// The deepest nesting of collections: `[[1]]` is 2 deep.
    public static let maximumDepth = 64
    /// The most nodes a document may have, keys, values and collections included.
    public static let maximumNodeCount = 100_000

    public init(root: Node?) {
        self.root = root
    }

    /// Reads YAML text.
    public init(parsing text: String) throws(YAMLError) {
        let size = text.utf8.count
        guard size <= Self.maximumByteCount else { throw Self.tooLarge(size) }
        var text = text
        root = try text.withUTF8 { Composer.compose($0) }.get()
    }

    /// Reads YAML text from its bytes, which must be UTF-8 (a byte order mark is allowed).
    public init(parsingUTF8 bytes: some Collection<UInt8>) throws(YAMLError) {
        let size = bytes.count
        guard size <= Self.maximumByteCount else { throw Self.tooLarge(size) }
        let bytes = Array(bytes)
        root = try bytes.withUnsafeBufferPointer { input -> Result<Node?, YAMLError> in
            if let offset = Text(input).firstInvalidUTF8Offset {
                let byte = "0x" + hexadecimal(input[offset], digits: 2)
                return .failure(
                    YAMLError(
                        .invalidText, at: Text(input).position(ofByte: offset),
                        "the text is not UTF-8: byte \(byte) is not part of a UTF-8 character",
                        hint: "save the file as UTF-8"))
            }
            return Composer.compose(input)
        }.get()
    }

    private static func tooLarge(_ size: Int) -> YAMLError {
        YAMLError(
            .tooLarge, at: nil,
            "the text is \(size) bytes, more than the \(maximumByteCount / 1024) KiB a YAML document may have here",
            hint: "is this the right file?")
    }
}

/// Builds the node tree from libyaml's events, refusing what ``Document`` does not accept as soon as it appears.
private struct Composer {
    let input: UnsafeBufferPointer<UInt8>
    var nodeCount = 0

    /// The tags `!!str`, `!!int`, ... expand to this prefix and their name.
    static let standardTagPrefix = "tag:yaml.org,2002:"

    static func compose(_ input: UnsafeBufferPointer<UInt8>) -> Result<Node?, YAMLError> {
        EventParser.reading(input) { events in
            var composer = Composer(input: input)
            do throws(YAMLError) {
                return .success(try composer.document(&events))
            } catch {
                return .failure(error)
            }
        }
    }

    mutating func document(_ events: inout EventParser) throws(YAMLError) -> Node? {
        _ = try next(&events)  // stream start
        guard case .documentStart(let start) = try next(&events) else { return nil }  // stream end: no document
        let root = try node(from: try next(&events), depth: 0, &events)
        _ = try next(&events)  // document end
        if case .documentStart(let another) = try next(&events) {
            throw YAMLError(
                .multipleDocuments, at: another,
                "not valid YAML: found another document, but only one is allowed here "
                    + "(the first starts at line \(start.line), column \(start.column))",
                hint: "a line '---' starts a new document; keep one document")
        }
        return root
    }

    /// Reads one node whose first event is `event`, inside `depth` collections.
    private mutating func node(from event: Event, depth: Int, _ events: inout EventParser)
        throws(YAMLError) -> Node
    {
        switch event {
        case .scalar(let value, let style, let properties, let position):
            try admit(properties, at: position)
            let tag = try scalarTag(properties.tag, value: value, at: position)
            return Node(.scalar(Scalar(value, style: style, tag: tag)), at: position)

        case .sequenceStart(let properties, let position):
            try admit(properties, at: position)
            try collectionTag(properties.tag, expected: "seq", noun: "a list", at: position)
            try enter(depth + 1, at: position)
            var items: [Node] = []
            while true {
                let event = try next(&events)
                if case .sequenceEnd = event { break }
                items.append(try node(from: event, depth: depth + 1, &events))
            }
            return Node(.sequence(items), at: position)

        case .mappingStart(let properties, let position):
            try admit(properties, at: position)
            try collectionTag(properties.tag, expected: "map", noun: "a mapping", at: position)
            try enter(depth + 1, at: position)
            var pairs: [Pair] = []
            var scalarKeys: [String: Position] = [:]
            while true {
                let event = try next(&events)
                if case .mappingEnd = event { break }
                let key = try node(from: event, depth: depth + 1, &events)
                try checkUnique(key, in: pairs, scalarKeys: &scalarKeys)
                let value = try node(from: try next(&events), depth: depth + 1, &events)
                pairs.append(Pair(key: key, value: value))
            }
            return Node(.mapping(pairs), at: position)

        case .alias(let anchor, let position):
            // Anchors are refused where they are defined, so an alias that gets here names none.
            throw YAMLError(
                .alias, at: position, "not valid YAML: alias *\(anchor) names no anchor",
                hint: "anchors and aliases are not supported; write the value out in full where it is used")

        case .streamStart, .streamEnd, .documentStart, .documentEnd, .sequenceEnd, .mappingEnd:
            // libyaml's grammar puts a node event here; anything else is a bug in libyaml or in this reader.
            fatalError("libyaml produced \(event) where a node belongs")
        }
    }

    /// Counts the node and refuses an anchor on it.
    private mutating func admit(_ properties: NodeProperties, at position: Position) throws(YAMLError) {
        if let anchor = properties.anchor {
            throw YAMLError(
                .anchor, at: position, "anchors and aliases are not supported (found anchor &\(anchor))",
                hint: "write the value out in full where it is used")
        }
        nodeCount += 1
        guard nodeCount <= Document.maximumNodeCount else {
            throw YAMLError(
                .tooManyNodes, at: position, "the document has more than \(Document.maximumNodeCount) nodes",
                hint: "is this the right file?")
        }
    }

    private func enter(_ depth: Int, at position: Position) throws(YAMLError) {
        guard depth <= Document.maximumDepth else {
            throw YAMLError(
                .tooDeep, at: position, "collections nest more than \(Document.maximumDepth) levels deep here",
                hint: "is this the right file?")
        }
    }

    /// Refuses a key already in the mapping, at its second occurrence, naming the first.
    private func checkUnique(_ key: Node, in pairs: [Pair], scalarKeys: inout [String: Position]) throws(YAMLError) {
        let first: Position?
        if let scalar = key.scalar {
            first = scalarKeys[scalar.value]
            if first == nil { scalarKeys[scalar.value] = key.position }
        } else {
            first = pairs.first { $0.key.scalar == nil && $0.key.hasSameContent(as: key) }?.key.position
        }
        guard let first else { return }
        throw YAMLError(
            .duplicateKey, at: key.position,
            "key '\(key.flowText)' appears more than once in the same mapping "
                + "(first at line \(first.line), column \(first.column))",
            hint: "keep one of them")
    }

    private func scalarTag(_ tag: String?, value: String, at position: Position) throws(YAMLError) -> Scalar.Kind? {
        guard let tag else { return nil }
        guard tag.hasPrefix(Self.standardTagPrefix) else { throw unsupported(tag, at: position) }
        let kind: Scalar.Kind
        switch tag.dropFirst(Self.standardTagPrefix.count) {
        case "str": kind = .string
        case "int": kind = .integer
        case "float": kind = .float
        case "bool": kind = .boolean
        case "null": kind = .null
        case "seq", "map": throw misfit(tag, noun: "a scalar", at: position)
        default: throw unsupported(tag, at: position)
        }
        guard kind.admits(value) else {
            throw YAMLError(
                .tag, at: position, "'\(value)' is not a valid \(kind.tagName) value",
                hint: "remove the tag, or write a value of that type")
        }
        return kind
    }

    private func collectionTag(_ tag: String?, expected: String, noun: String, at position: Position)
        throws(YAMLError)
    {
        guard let tag else { return }
        guard tag.hasPrefix(Self.standardTagPrefix) else { throw unsupported(tag, at: position) }
        switch tag.dropFirst(Self.standardTagPrefix.count) {
        case expected[...]: return
        case "str", "int", "float", "bool", "null", "seq", "map": throw misfit(tag, noun: noun, at: position)
        default: throw unsupported(tag, at: position)
        }
    }

    private func unsupported(_ tag: String, at position: Position) -> YAMLError {
        YAMLError(
            .tag, at: position,
            "tag \(Self.shortName(of: tag)) is not supported; only the standard tags "
                + "!!str, !!int, !!float, !!bool, !!null, !!seq and !!map are",
            hint: "remove the tag")
    }

    private func misfit(_ tag: String, noun: String, at position: Position) -> YAMLError {
        YAMLError(.tag, at: position, "tag \(Self.shortName(of: tag)) does not fit \(noun)", hint: "remove the tag")
    }

    /// A tag as people write it: `!!int`, `!local`, or `!<tag:example.com,2026:thing>` written out.
    private static func shortName(of tag: String) -> String {
        if tag.hasPrefix(standardTagPrefix) { return "!!" + tag.dropFirst(standardTagPrefix.count) }
        if tag.hasPrefix("!") { return tag }
        return "!<\(tag)>"
    }

    private func next(_ events: inout EventParser) throws(YAMLError) -> Event {
        do {
            return try events.next()
        } catch {
            throw syntaxError(error)
        }
    }

    /// libyaml's failure as a positioned error; its problem and context texts are kept word for word.
    private func syntaxError(_ failure: LibYAMLFailure) -> YAMLError {
        switch failure.stage {
        case .memory:
            return YAMLError(.outOfMemory, at: nil, "libyaml ran out of memory reading the text")
        case .reader:
            var message = "not valid YAML: \(failure.problem)"
            if failure.value >= 0 { message += " (found U+\(hexadecimal(failure.value, digits: 4)))" }
            return YAMLError(
                .invalidText, at: Text(input).position(ofByte: failure.byteOffset), message,
                hint: "remove the character, or write it as an escape such as \\t in a double-quoted string")
        case .scanner, .parser:
            var message = "not valid YAML: \(failure.problem)"
            if let context = failure.context, let start = failure.contextPosition {
                message += " (\(context) at line \(start.line), column \(start.column))"
            }
            let tabbed = failure.position.map { Text(input).line($0.line).contains(UInt8(ascii: "\t")) } ?? false
            return YAMLError(
                .syntax, at: failure.position, message,
                hint: tabbed ? "indent with spaces; YAML does not allow tabs for indentation" : nil)
        }
    }
}

extension Node {
    /// Whether two nodes hold the same values, wherever they are.
    func hasSameContent(as other: Node) -> Bool {
        switch (content, other.content) {
        case (.scalar(let left), .scalar(let right)):
            return left.value == right.value
        case (.sequence(let left), .sequence(let right)):
            return left.count == right.count && zip(left, right).allSatisfy { $0.hasSameContent(as: $1) }
        case (.mapping(let left), .mapping(let right)):
            return left.count == right.count
                && zip(left, right).allSatisfy {
                    $0.key.hasSameContent(as: $1.key) && $0.value.hasSameContent(as: $1.value)
                }
        default:
            return false
        }
    }

    /// The node on one line, for messages: `ssh`, `[a, b]`, `{a: 1}`.
    var flowText: String {
        switch content {
        case .scalar(let scalar): return scalar.value
        case .sequence(let items): return "[" + items.map(\.flowText).joined(separator: ", ") + "]"
        case .mapping(let pairs):
            return "{" + pairs.map { "\($0.key.flowText): \($0.value.flowText)" }.joined(separator: ", ") + "}"
        }
    }
}

/// Uppercase hexadecimal, padded with zeros to at least `digits`.
func hexadecimal(_ value: some BinaryInteger, digits: Int) -> String {
    let text = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, digits - text.count)) + text
}
