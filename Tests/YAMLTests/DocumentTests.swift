import Testing
import YAML

/// Reads a document that must parse and have a root.
func root(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Node {
    let root = try Document(parsing: text).root
    return try #require(root, "no document in \(text)", sourceLocation: sourceLocation)
}

/// The error reading `text` gives, or nil (and a recorded issue) when it parses.
func refusal(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> YAMLError? {
    do {
        let document = try Document(parsing: text)
        Issue.record("parsed, but should have failed: \(document)", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

struct DocumentTests {
    // MARK: Trees and positions

    @Test("block mappings and sequences: values, order and positions")
    func blockTree() throws {
        let node = try root(
            """
            # a comment before anything
            name: drawbridge   # a comment after a value
            ports:
              ssh: 22
              list:
                - one
                - two
            flat:
            - a
            empty:
            """)
        #expect(node.position == Position(line: 2, column: 1))
        let pairs = try #require(node.mapping)
        #expect(pairs.map { $0.key.scalar?.value } == ["name", "ports", "flat", "empty"])
        #expect(pairs.map(\.key.position.line) == [2, 3, 8, 10])
        #expect(node["name"]?.scalar == Scalar("drawbridge"))
        #expect(node["name"]?.position == Position(line: 2, column: 7))
        #expect(node["ports"]?.position == Position(line: 4, column: 3))
        #expect(node["ports"]?["ssh"]?.position == Position(line: 4, column: 8))
        let list = try #require(node["ports"]?["list"])
        #expect(list.position == Position(line: 6, column: 5))
        #expect(list.sequence?.map(\.position) == [Position(line: 6, column: 7), Position(line: 7, column: 7)])
        #expect(list.sequence?.compactMap(\.scalar?.value) == ["one", "two"])
        // An indentless sequence starts at its first dash.
        #expect(node["flat"]?.position == Position(line: 9, column: 1))
        #expect(node["empty"]?.isNull == true)
        #expect(node["empty"]?.position == Position(line: 10, column: 7))
        #expect(node["missing"] == nil)
        #expect(node["name"]?["anything"] == nil)
    }

    @Test("flow collections: positions of every node")
    func flowTree() throws {
        let node = try root(#"{a: 1, b: [x, "y"], 'c': {d: }}"#)
        #expect(node.position == Position(line: 1, column: 1))
        let pairs = try #require(node.mapping)
        #expect(pairs.map(\.key.position.column) == [2, 8, 21])
        #expect(pairs.map(\.value.position.column) == [5, 11, 26])
        #expect(node["b"]?.sequence?.map(\.position.column) == [12, 15])
        #expect(node["b"]?.sequence?[1].scalar == Scalar("y", style: .doubleQuoted))
        #expect(pairs[2].key.scalar == Scalar("c", style: .singleQuoted))
        #expect(node["c"]?["d"]?.isNull == true)
    }

    @Test("block and flow styles give the same tree")
    func stylesAgree() throws {
        let block = try root("ssh:\n  port: 22\n  sources:\n    - a\n    - b\n")
        let flow = try root("{ ssh: { port: 22, sources: [a, b] } }")
        #expect(block.hasSameValues(as: flow))
        #expect(block != flow, "positions differ")
    }

    struct PositionCase: Sendable, CustomTestStringConvertible {
        var label: String
        var text: String
        var key: String
        var line: Int
        var column: Int

        init(_ label: String, _ text: String, key: String, line: Int, column: Int) {
            self.label = label
            self.text = text
            self.key = key
            self.line = line
            self.column = column
        }

        var testDescription: String { label }
    }

    @Test(
        "the value under a key starts where its first token does",
        arguments: [
            PositionCase("plain", "key: value", key: "key", line: 1, column: 6),
            PositionCase("extra spaces", "key:     value", key: "key", line: 1, column: 10),
            PositionCase("double-quoted: at the quote", #"key: "value""#, key: "key", line: 1, column: 6),
            PositionCase("tagged: at the tag", "key: !!str 22", key: "key", line: 1, column: 6),
            PositionCase("literal: at the bar", "key: |\n  text\n", key: "key", line: 1, column: 6),
            PositionCase("on the next line", "key:\n  value\n", key: "key", line: 2, column: 3),
            PositionCase("empty value: after the colon", "key:\nother: 1\n", key: "key", line: 1, column: 5),
            PositionCase("Cyrillic key: scalars", "ключ: значение", key: "ключ", line: 1, column: 7),
            PositionCase("combining accent: two scalars", "e\u{301}: x", key: "e\u{301}", line: 1, column: 5),
            PositionCase("emoji: one scalar", "🔑: x", key: "🔑", line: 1, column: 4),
            PositionCase("CJK in flow", "{鍵: 値}", key: "鍵", line: 1, column: 5),
            PositionCase("byte order mark is not counted", "\u{FEFF}key: value", key: "key", line: 1, column: 6),
            PositionCase("CRLF line ends", "a: 1\r\nkey: value\r\n", key: "key", line: 2, column: 6),
            PositionCase("CR line ends", "a: 1\rkey: value\r", key: "key", line: 2, column: 6),
            PositionCase("after a comment line", "# note\n\nkey: value", key: "key", line: 3, column: 6),
            PositionCase("document marker", "---\nkey: value\n...\n", key: "key", line: 2, column: 6),
        ])
    func valuePosition(_ example: PositionCase) throws {
        let node = try root(example.text)
        #expect(node[example.key]?.position == Position(line: example.line, column: example.column))
    }

    // MARK: Scalars

    struct ScalarCase: Sendable, CustomTestStringConvertible {
        var label: String
        var text: String
        var value: String
        var style: Scalar.Style

        init(_ label: String, _ text: String, _ value: String, _ style: Scalar.Style) {
            self.label = label
            self.text = text
            self.value = value
            self.style = style
        }

        var testDescription: String { label }
    }

    @Test(
        "scalar styles, escapes, folding and multi-line values",
        arguments: [
            ScalarCase("plain", "v: hello world", "hello world", .plain),
            ScalarCase("plain with a colon", "v: a:b", "a:b", .plain),
            ScalarCase("plain address", "v: 2001:db8::/32", "2001:db8::/32", .plain),
            ScalarCase("plain with a hash", "v: a#b # comment", "a#b", .plain),
            ScalarCase("single-quoted", "v: 'it''s'", "it's", .singleQuoted),
            ScalarCase("double-quoted escapes", #"v: "a\tb\u00e9\n""#, "a\tbé\n", .doubleQuoted),
            ScalarCase("double-quoted NUL", #"v: "a\0b""#, "a\u{0}b", .doubleQuoted),
            ScalarCase("quoted comment sign", "v: '# not a comment'", "# not a comment", .singleQuoted),
            ScalarCase("empty quoted", "v: ''", "", .singleQuoted),
            ScalarCase("plain over two lines", "v: one\n  two\n", "one two", .plain),
            ScalarCase("double-quoted over two lines", "v: \"one\n  two\"\n", "one two", .doubleQuoted),
            ScalarCase("literal", "v: |\n  one\n  two\n", "one\ntwo\n", .literal),
            ScalarCase("literal, strip", "v: |-\n  one\n  two\n\n", "one\ntwo", .literal),
            ScalarCase("literal, keep", "v: |+\n  one\n\n", "one\n\n", .literal),
            ScalarCase("literal, indented", "v: |2\n    one\n", "  one\n", .literal),
            ScalarCase("folded", "v: >\n  one\n  two\n\n  three\n", "one two\nthree\n", .folded),
            ScalarCase("literal with CRLF", "v: |\r\n  one\r\n  two\r\n", "one\ntwo\n", .literal),
        ])
    func scalarStyles(_ example: ScalarCase) throws {
        let node = try root(example.text)
        #expect(node["v"]?.scalar == Scalar(example.value, style: example.style))
    }

    @Test(
        "plain scalars are typed by the YAML 1.2 core schema",
        arguments: [
            ("", Scalar.Kind.null), ("~", .null), ("null", .null), ("Null", .null), ("NULL", .null),
            ("nULL", .string), ("none", .string),
            ("true", .boolean), ("True", .boolean), ("TRUE", .boolean), ("false", .boolean), ("False", .boolean),
            ("FALSE", .boolean), ("tRUE", .string), ("yes", .string), ("no", .string), ("on", .string),
            ("off", .string),
            ("0", .integer), ("22", .integer), ("-22", .integer), ("+22", .integer), ("022", .integer),
            ("0o17", .integer), ("0x16", .integer), ("0xFf", .integer), ("99999999999999999999999", .integer),
            ("0o8", .string), ("0x", .string), ("0xg", .string), ("-0x16", .string), ("1_000", .string),
            ("0b101", .string), ("1:30", .string), ("--1", .string), ("-a", .string), ("+", .string),
            ("1.5", .float), ("-1.5", .float), (".5", .float), ("1.", .float), ("1e3", .float), ("1E-3", .float),
            ("+1.5e+3", .float), (".inf", .float), ("-.Inf", .float), ("+.INF", .float), (".nan", .float),
            (".NaN", .float), (".NAN", .float), ("-.nan", .string), (".", .string), ("1e", .string),
            ("1.5.5", .string), ("e3", .string), ("1h30m", .string), ("3h", .string), ("0.0.0.0/0", .string),
            ("2001:db8::1", .string), ("2026-01-01", .string), ("<<", .string), ("=", .string),
        ])
    func implicitTypes(text: String, kind: Scalar.Kind) throws {
        #expect(Scalar.Kind(resolving: text) == kind)
        let node = try root("v: \(text)")
        #expect(node["v"]?.scalar?.kind == kind, "\(text)")
        #expect(node["v"]?.scalar?.tag == nil)
    }

    @Test("quoted and block scalars are strings whatever they hold", arguments: ["'22'", "\"null\"", "|\n  true\n"])
    func quotedAreStrings(text: String) throws {
        let scalar = try #require(try root("v: \(text)")["v"]?.scalar)
        #expect(scalar.kind == .string)
        #expect(scalar.tag == nil)
    }

    @Test(
        "standard tags set the type and are checked against the value",
        arguments: [
            ("!!str 22", "22", Scalar.Kind.string), ("!!int \"22\"", "22", .integer), ("!!float 1", "1", .float),
            ("!!float 1.5", "1.5", .float), ("!!bool true", "true", .boolean), ("!!null ''", "", .null),
            ("!!null", "", .null), ("!<tag:yaml.org,2002:int> 7", "7", .integer),
        ])
    func standardTags(text: String, value: String, kind: Scalar.Kind) throws {
        let scalar = try #require(try root("v: \(text)")["v"]?.scalar)
        #expect(scalar.value == value)
        #expect(scalar.tag == kind)
        #expect(scalar.kind == kind)
    }

    @Test("collections may carry their own standard tag")
    func collectionTags() throws {
        let node = try root("!!map\nlist: !!seq [a]\nmap: !!map {a: 1}\n")
        #expect(node["list"]?.sequence?.count == 1)
        #expect(node["map"]?["a"]?.scalar?.kind == .integer)
    }

    @Test("quoted keys are keys like any other; keys need not be scalars")
    func keys() throws {
        let node = try root("\"a b\": 1\n'c': 2\n? [x, y]\n: 3\n? |\n  long\n: 4\n")
        let pairs = try #require(node.mapping)
        #expect(node["a b"]?.scalar?.value == "1")
        #expect(node["c"]?.scalar?.value == "2")
        #expect(pairs[2].key.sequence?.count == 2)
        #expect(pairs[2].key.position == Position(line: 3, column: 3))
        #expect(pairs[3].key.scalar == Scalar("long\n", style: .literal))
    }

    @Test(
        "no document: empty text, blank lines, only comments",
        arguments: ["", "\n\n", "# only a comment\n", "  # indented comment", "\u{FEFF}"])
    func noDocument(text: String) throws {
        #expect(try Document(parsing: text).root == nil)
        #expect(try Document(parsingUTF8: Array(text.utf8)).root == nil)
    }

    @Test("an explicit empty document has a null root")
    func emptyDocument() throws {
        let node = try root("---\n")
        #expect(node.isNull)
        #expect(node.scalar?.style == .plain)
    }

    @Test("a single document between markers, with a directive")
    func markers() throws {
        let node = try root("%YAML 1.2\n---\na: 1\n...\n")
        #expect(node["a"]?.position == Position(line: 3, column: 4))
    }

    @Test("bytes and text give the same document")
    func bytes() throws {
        let text = "a: [1, 'two', {three: 3}]\nb: |\n  é\n"
        #expect(try Document(parsingUTF8: Array(text.utf8)) == Document(parsing: text))
        #expect(try Document(parsingUTF8: [0xEF, 0xBB, 0xBF] + Array(text.utf8)) == Document(parsing: text))
    }

    // MARK: Refusals

    struct RefusalCase: Sendable, CustomTestStringConvertible {
        var label: String
        var text: String
        var code: YAMLError.Code
        var line: Int
        var column: Int
        var fragments: [String]

        init(_ label: String, _ text: String, _ code: YAMLError.Code, line: Int, column: Int, _ fragments: String...) {
            self.label = label
            self.text = text
            self.code = code
            self.line = line
            self.column = column
            self.fragments = fragments
        }

        var testDescription: String { label }
    }

    static let refusals: [RefusalCase] = [
        // Anchors and aliases, refused where they are written.
        RefusalCase(
            "anchor on a scalar", "a: &x 1\nb: *x\n", .anchor, line: 1, column: 4,
            "anchors and aliases are not supported (found anchor &x)", "hint: write the value out"),
        RefusalCase("anchor on a flow list", "a: &list [1, 2]\n", .anchor, line: 1, column: 4, "&list"),
        RefusalCase("anchor on a block mapping", "a: &m\n  b: 1\n", .anchor, line: 1, column: 4, "&m"),
        RefusalCase("anchor on the root", "&root\na: 1\n", .anchor, line: 1, column: 1, "&root"),
        RefusalCase("anchor on a key", "&k a: 1\n", .anchor, line: 1, column: 1, "&k"),
        RefusalCase("anchor with a tag", "a: !!str &x 1\n", .anchor, line: 1, column: 4, "&x"),
        RefusalCase(
            "alias without an anchor", "a: *nothing\n", .alias, line: 1, column: 4,
            "not valid YAML: alias *nothing names no anchor", "anchors and aliases are not supported"),
        RefusalCase("alias as a key", "a: 1\n*x : 2\n", .alias, line: 2, column: 1, "*x"),
        RefusalCase(
            "merge key with an alias", "base: &base {a: 1}\nother:\n  <<: *base\n", .anchor, line: 1, column: 7,
            "&base"),

        // Duplicate keys, at the second occurrence.
        RefusalCase(
            "duplicate key, block", "ports: {}\nroles: []\nports: {}\n", .duplicateKey, line: 3, column: 1,
            "key 'ports' appears more than once in the same mapping (first at line 1, column 1)",
            "hint: keep one of them"),
        RefusalCase(
            "duplicate key, flow", "ssh: { port: 22, port: 23 }\n", .duplicateKey, line: 1, column: 18,
            "key 'port' appears more than once in the same mapping (first at line 1, column 8)"),
        RefusalCase(
            "duplicate key, nested block", "a:\n  x: 1\n  y: 2\n  x: 3\n", .duplicateKey, line: 4, column: 3,
            "key 'x'", "first at line 2, column 3"),
        RefusalCase(
            "duplicate key, one quoted", "port: 1\n\"port\": 2\n", .duplicateKey, line: 2, column: 1, "key 'port'"),
        RefusalCase(
            "duplicate key, differently quoted", "'a': 1\n\"a\": 2\n", .duplicateKey, line: 2, column: 1, "key 'a'"),
        // An empty node is placed where it would have started: right after the `?`.
        RefusalCase(
            "duplicate empty key", "? \n: 1\n? \n: 2\n", .duplicateKey, line: 3, column: 2, "key ''",
            "first at line 1, column 2"),
        RefusalCase(
            "duplicate list key", "? [a, b]\n: 1\n? [a, b]\n: 2\n", .duplicateKey, line: 3, column: 3,
            "key '[a, b]'", "first at line 1, column 3"),
        RefusalCase(
            "duplicate after other keys", "{a: 1, b: 2, c: 3, b: 4}", .duplicateKey, line: 1, column: 20,
            "key 'b'", "first at line 1, column 8"),

        // Tags.
        RefusalCase(
            "local tag", "a: !secret x\n", .tag, line: 1, column: 4,
            "tag !secret is not supported; only the standard tags", "hint: remove the tag"),
        RefusalCase("non-specific tag", "a: ! x\n", .tag, line: 1, column: 4, "tag ! is not supported"),
        RefusalCase(
            "language tag", "a: !!python/object:os.system x\n", .tag, line: 1, column: 4,
            "tag !!python/object:os.system is not supported"),
        RefusalCase("YAML 1.1 binary", "a: !!binary aGk=\n", .tag, line: 1, column: 4, "tag !!binary"),
        RefusalCase("YAML 1.1 set", "a: !!set {x}\n", .tag, line: 1, column: 4, "tag !!set"),
        RefusalCase(
            "verbatim foreign tag", "a: !<tag:example.com,2026:x> 1\n", .tag, line: 1, column: 4,
            "tag !<tag:example.com,2026:x> is not supported"),
        RefusalCase(
            "redefined handle", "%TAG !! tag:example.com,2026:\n---\na: !!str x\n", .tag, line: 3, column: 4,
            "tag !<tag:example.com,2026:str>"),
        RefusalCase(
            "int tag on a word", "a: !!int abc\n", .tag, line: 1, column: 4, "'abc' is not a valid !!int value"),
        RefusalCase("bool tag on yes", "a: !!bool yes\n", .tag, line: 1, column: 4, "'yes' is not a valid !!bool"),
        RefusalCase("null tag on a word", "a: !!null x\n", .tag, line: 1, column: 4, "'x' is not a valid !!null"),
        RefusalCase("float tag on a word", "a: !!float x\n", .tag, line: 1, column: 4, "!!float"),
        RefusalCase("seq tag on a scalar", "a: !!seq x\n", .tag, line: 1, column: 4, "tag !!seq does not fit a scalar"),
        RefusalCase("map tag on a list", "a: !!map [x]\n", .tag, line: 1, column: 4, "tag !!map does not fit a list"),
        RefusalCase(
            "str tag on a mapping", "a: !!str {x: 1}\n", .tag, line: 1, column: 4, "tag !!str does not fit a mapping"),

        // More than one document.
        RefusalCase(
            "two documents", "a: 1\n---\nb: 2\n", .multipleDocuments, line: 2, column: 1,
            "not valid YAML: found another document, but only one is allowed here (the first starts at line 1, "
                + "column 1)", "hint: a line '---' starts a new document"),
        RefusalCase("two marked documents", "---\na: 1\n---\n", .multipleDocuments, line: 3, column: 1, "another"),
        RefusalCase(
            "document after end marker", "a: 1\n...\n---\nb: 2\n", .multipleDocuments, line: 3, column: 1, "another"),
        // libyaml reads YAML 1.1 here: after `...` only a `---` may start a document.
        RefusalCase(
            "bare document after end marker", "a: 1\n...\nb: 2\n", .syntax, line: 3, column: 1,
            "not valid YAML: did not find expected <document start>"),

        // Syntax, in libyaml's words with its context.
        RefusalCase(
            "unclosed flow mapping", "ports: { ssh: {\n", .syntax, line: 2, column: 1,
            "not valid YAML: did not find expected node content (while parsing a flow node at line 2, column 1)"),
        RefusalCase(
            "unclosed quote", "a: \"open\n", .syntax, line: 2, column: 1,
            "not valid YAML: found unexpected end of stream (while scanning a quoted scalar at line 1, column 4)"),
        RefusalCase(
            "value after a value", "a: b: c\n", .syntax, line: 1, column: 5,
            "not valid YAML: mapping values are not allowed in this context"),
        RefusalCase(
            "bad indentation", "ports:\n  ssh: {}\n bad: 1\n", .syntax, line: 3, column: 2,
            "not valid YAML: did not find expected key (while parsing a block mapping at line 1, column 1)"),
        RefusalCase(
            "list item after a mapping", "a: 1\n- b\n", .syntax, line: 2, column: 1,
            "not valid YAML: did not find expected key"),
        RefusalCase(
            "tab indentation", "ports:\n\tssh: {}\n", .syntax, line: 2, column: 1,
            "not valid YAML: found character that cannot start any token",
            "hint: indent with spaces; YAML does not allow tabs for indentation"),
        RefusalCase(
            "tab indentation with CRLF", "ports:\r\n\tssh: {}\r\n", .syntax, line: 2, column: 1,
            "hint: indent with spaces"),
        RefusalCase(
            "unknown escape", #"a: "\q""#, .syntax, line: 1, column: 5,
            "not valid YAML: found unknown escape character (while parsing a quoted scalar at line 1, column 4)"),
        RefusalCase(
            "control character", "a: 1\nb: x\u{7}y\n", .invalidText, line: 2, column: 5,
            "not valid YAML: control characters are not allowed (found U+0007)", "hint: remove the character"),
        RefusalCase("NUL character", "a: \u{0}\n", .invalidText, line: 1, column: 4, "(found U+0000)"),
        RefusalCase(
            "control character after a byte order mark", "\u{FEFF}a: \u{1}\n", .invalidText, line: 1, column: 4,
            "U+0001"),
        RefusalCase(
            "control character after CRLF lines", "a: 1\r\nb: 2\r\n\u{8}", .invalidText, line: 3, column: 1, "U+0008"),
    ]

    @Test("refusals carry a code, the position and a clear message", arguments: refusals)
    func refuses(_ example: RefusalCase) throws {
        let error = try #require(refusal(example.text))
        #expect(error.code == example.code, "\(error)")
        #expect(error.position == Position(line: example.line, column: example.column), "\(error)")
        for fragment in example.fragments {
            #expect(error.description.contains(fragment), "\(error) does not contain \(fragment)")
        }
        // The same bytes give the same error.
        #expect(throws: error) { try Document(parsingUTF8: Array(example.text.utf8)) }
    }

    @Test("a syntax error on a line without a tab has no tab hint")
    func noTabHint() throws {
        let error = try #require(refusal("a: b: c\n# a\ttab elsewhere\n"))
        #expect(error.hint == nil)
    }

    @Test(
        "bytes that are not UTF-8 are refused where they start",
        arguments: [
            ([0x70, 0x6F, 0xFF, 0xFE, 0x0A] as [UInt8], 1, 3, "byte 0xFF"),
            (Array("a: é\nb: ".utf8) + [0xC3], 2, 4, "byte 0xC3"),
            (Array("a: 1\r\nb: ".utf8) + [0xE9, 0x0A], 2, 4, "byte 0xE9"),
            ([0xEF, 0xBB, 0xBF, 0x61, 0x80], 1, 2, "byte 0x80"),
            ([0xED, 0xA0, 0x80], 1, 1, "byte 0xED"),  // an encoded surrogate
            ([0xC0, 0xAF], 1, 1, "byte 0xC0"),  // an overlong encoding
        ])
    func notUTF8(bytes: [UInt8], line: Int, column: Int, fragment: String) {
        #expect {
            try Document(parsingUTF8: bytes)
        } throws: { error in
            let error = error as! YAMLError
            return error.code == .invalidText && error.position == Position(line: line, column: column)
                && error.description.contains("the text is not UTF-8: \(fragment)")
                && error.hint == "save the file as UTF-8"
        }
    }

    @Test("UTF-16 is refused, not decoded")
    func utf16() {
        let bytes: [UInt8] = [0xFF, 0xFE] + Array("a: 1\n".utf8).flatMap { [$0, 0] }
        #expect(throws: YAMLError.self) { try Document(parsingUTF8: bytes) }
    }

    @Test("errors read like compiler diagnostics")
    func descriptions() {
        let error = YAMLError(.syntax, at: Position(line: 4, column: 13), "broken", hint: "fix it")
        #expect(error.description == "4:13: broken (hint: fix it)")
        #expect(YAMLError(.tooLarge, at: nil, "too large").description == "too large")
        #expect(Position(line: 2, column: 7).description == "2:7")
        #expect(Position(line: 2, column: 7) < Position(line: 2, column: 8))
        #expect(Position(line: 2, column: 70) < Position(line: 3, column: 1))
    }
}

extension Node {
    /// Whether two trees hold the same values, wherever they are written and however they are quoted.
    func hasSameValues(as other: Node) -> Bool {
        switch (content, other.content) {
        case (.scalar(let left), .scalar(let right)):
            return left.value == right.value && left.kind == right.kind
        case (.sequence(let left), .sequence(let right)):
            return left.count == right.count && zip(left, right).allSatisfy { $0.hasSameValues(as: $1) }
        case (.mapping(let left), .mapping(let right)):
            return left.count == right.count
                && zip(left, right).allSatisfy {
                    $0.key.hasSameValues(as: $1.key) && $0.value.hasSameValues(as: $1.value)
                }
        default:
            return false
        }
    }
}
