// Every call into libyaml is in this file: the parser's life, its events copied into Swift values, its errors.
internal import CYaml

/// One event of libyaml's parser, copied out of C memory.
enum Event {
    case streamStart
    case streamEnd
    case documentStart(Position)
    case documentEnd
    case alias(anchor: String, Position)
    case scalar(String, Scalar.Style, NodeProperties, Position)
    case sequenceStart(NodeProperties, Position)
    case sequenceEnd
    case mappingStart(NodeProperties, Position)
    case mappingEnd
}

/// The anchor and tag written before a node, as libyaml reports them (tag handles such as `!!` already expanded).
struct NodeProperties {
    var anchor: String?
    var tag: String?
}

/// Why libyaml stopped: its own problem text and marks, unchanged.
struct LibYAMLFailure: Error {
    enum Stage {
        /// Decoding the input: libyaml reports a byte offset and the offending character, not a line and column.
        case reader
        case scanner
        case parser
        case memory
    }

    var stage: Stage
    var problem: String
    /// Where the problem is (scanner and parser).
    var position: Position?
    /// What libyaml was doing: "while parsing a flow mapping".
    var context: String?
    /// Where what it was doing started.
    var contextPosition: Position?
    /// The byte offset of the problem in the input (reader).
    var byteOffset: Int
    /// The offending character (reader), or -1.
    var value: Int32
}

/// Owns a libyaml parser reading a buffer in place, and frees it when done.
struct EventParser: ~Copyable {
    private let parser: UnsafeMutablePointer<yaml_parser_t>

    /// Lends a parser reading `input` to `body`. libyaml keeps a pointer to `input`, so the parser exists only for the
    /// duration of the call, inside which the caller's buffer stays valid.
    ///
    /// The input's encoding is detected from its first bytes, which skips a UTF-8 byte order mark without counting it
    /// in column numbers; callers pass UTF-8 only.
    static func reading<Result>(_ input: UnsafeBufferPointer<UInt8>, _ body: (inout EventParser) -> Result) -> Result {
        // libyaml asserts a non-null input pointer, which an empty buffer need not have.
        guard let start = input.baseAddress else {
            let empty: [UInt8] = [0]
            return empty.withUnsafeBufferPointer { reading(UnsafeBufferPointer(rebasing: $0[0..<0]), body) }
        }
        var parser = EventParser()
        yaml_parser_set_input_string(parser.parser, start, input.count)
        return body(&parser)
    }

    private init() {
        parser = .allocate(capacity: 1)
        // yaml_parser_initialize fails only when it cannot allocate its buffers.
        guard yaml_parser_initialize(parser) == 1 else { fatalError("libyaml could not allocate its parser") }
    }

    deinit {
        yaml_parser_delete(parser)
        parser.deallocate()
    }

    /// The next event. After a failure, the parser must not be asked again.
    mutating func next() throws(LibYAMLFailure) -> Event {
        var event = yaml_event_t()
        guard yaml_parser_parse(parser, &event) == 1 else { throw failure() }
        defer { yaml_event_delete(&event) }
        let position = Position(event.start_mark)
        switch event.type {
        case YAML_STREAM_START_EVENT:
            return .streamStart
        case YAML_STREAM_END_EVENT:
            return .streamEnd
        case YAML_DOCUMENT_START_EVENT:
            return .documentStart(position)
        case YAML_DOCUMENT_END_EVENT:
            return .documentEnd
        case YAML_ALIAS_EVENT:
            return .alias(anchor: string(event.data.alias.anchor) ?? "", position)
        case YAML_SCALAR_EVENT:
            let scalar = event.data.scalar
            // The value may hold NUL characters (written as "\0"), so it is read by its length.
            let value = String(decoding: UnsafeBufferPointer(start: scalar.value, count: scalar.length), as: UTF8.self)
            let properties = NodeProperties(anchor: string(scalar.anchor), tag: string(scalar.tag))
            return .scalar(value, Scalar.Style(scalar.style), properties, position)
        case YAML_SEQUENCE_START_EVENT:
            let start = event.data.sequence_start
            return .sequenceStart(NodeProperties(anchor: string(start.anchor), tag: string(start.tag)), position)
        case YAML_SEQUENCE_END_EVENT:
            return .sequenceEnd
        case YAML_MAPPING_START_EVENT:
            let start = event.data.mapping_start
            return .mappingStart(NodeProperties(anchor: string(start.anchor), tag: string(start.tag)), position)
        case YAML_MAPPING_END_EVENT:
            return .mappingEnd
        default:
            // YAML_NO_EVENT comes only from a parser that has already failed or ended; this one is never asked then.
            fatalError("libyaml produced no event")
        }
    }

    private func failure() -> LibYAMLFailure {
        let state = parser.pointee
        let stage: LibYAMLFailure.Stage
        switch state.error {
        case YAML_READER_ERROR: stage = .reader
        case YAML_SCANNER_ERROR: stage = .scanner
        case YAML_PARSER_ERROR: stage = .parser
        case YAML_MEMORY_ERROR: stage = .memory
        default: fatalError("libyaml failed with error type \(state.error.rawValue), which its parser never sets")
        }
        let positioned = stage == .scanner || stage == .parser
        return LibYAMLFailure(
            stage: stage,
            problem: state.problem.map { String(cString: $0) } ?? "out of memory",
            position: positioned ? Position(state.problem_mark) : nil,
            context: state.context.map { String(cString: $0) },
            contextPosition: state.context == nil ? nil : Position(state.context_mark),
            byteOffset: state.problem_offset,
            value: state.problem_value)
    }
}

private func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
    pointer.map { String(cString: UnsafePointer($0)) }
}

extension Position {
    /// libyaml counts lines and columns from 0.
    fileprivate init(_ mark: yaml_mark_t) {
        self.init(line: mark.line + 1, column: mark.column + 1)
    }
}

extension Scalar.Style {
    fileprivate init(_ style: yaml_scalar_style_t) {
        switch style {
        case YAML_SINGLE_QUOTED_SCALAR_STYLE: self = .singleQuoted
        case YAML_DOUBLE_QUOTED_SCALAR_STYLE: self = .doubleQuoted
        case YAML_LITERAL_SCALAR_STYLE: self = .literal
        case YAML_FOLDED_SCALAR_STYLE: self = .folded
        default: self = .plain
        }
    }
}
