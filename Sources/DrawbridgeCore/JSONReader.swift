/// A strict, streaming JSON (RFC 8259) reader for text from outside: the local API's requests, grants files and
/// controller values.
///
/// It refuses what a lenient decoder would silently read: a key twice in one object (which of the two would win
/// depends on the decoder), raw control characters in strings, invalid UTF-8, lone surrogates, nesting deeper than
/// a limit, and anything after the document. It reads one value at a time, so a grants file of a million entries is
/// decoded entry by entry without a tree of the whole document.
public struct JSONReader: Sendable {
    private let bytes: [UInt8]
    private var index = 0
    /// Where this reader's text ends: the document's end, or a piece's (``splitList(pieces:minimumBytes:)``).
    private var end: Int
    private var depth = 0
    /// The deepest nesting accepted.
    public let maximumDepth: Int

    public init(_ bytes: [UInt8], maximumDepth: Int = 32) {
        self.bytes = bytes
        self.end = bytes.count
        self.maximumDepth = maximumDepth
    }

    public init(_ text: String, maximumDepth: Int = 32) {
        self.init(Array(text.utf8), maximumDepth: maximumDepth)
    }

    /// What the next value is.
    public enum Kind: Sendable, Equatable {
        case object, array, string, number, bool, null
    }

    /// The byte offset the reader is at.
    public var offset: Int { index }

    /// The bytes left for this reader (of the document, or of its piece).
    public var remainingBytes: Int { end - index }

    /// Line and column (from 1) of a byte offset, for error messages.
    public func position(of offset: Int) -> (line: Int, column: Int) {
        var line = 1
        var column = 1
        for byte in bytes[0..<min(offset, bytes.count)] {
            if byte == 0x0a {
                line += 1
                column = 1
            } else if byte & 0xc0 != 0x80 {
                column += 1
            }
        }
        return (line, column)
    }

    private func failure(_ message: String, at offset: Int? = nil) -> JSONError {
        let place = position(of: offset ?? index)
        return JSONError(message: message, line: place.line, column: place.column)
    }

    private mutating func skipWhitespace() {
        while index < end {
            switch bytes[index] {
            case 0x20, 0x09, 0x0a, 0x0d: index += 1
            default: return
            }
        }
    }

    /// The kind of the next value, without reading it.
    public mutating func peek() throws(JSONError) -> Kind {
        skipWhitespace()
        guard index < end else { throw failure("the text ends where a value was expected") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return .object
        case UInt8(ascii: "["): return .array
        case UInt8(ascii: "\""): return .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool
        case UInt8(ascii: "n"): return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        default: throw failure("unexpected character \(describe(bytes[index])) where a value was expected")
        }
    }

    private func describe(_ byte: UInt8) -> String {
        byte >= 0x21 && byte < 0x7f ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x\(String(byte, radix: 16))"
    }

    /// Reads an object, calling `body` with each key while the reader stands at that key's value; `body` must read
    /// or skip exactly that value. A repeated key is refused.
    public mutating func readObject(_ body: (String, inout JSONReader) throws(JSONError) -> Void) throws(JSONError) {
        skipWhitespace()
        guard index < end, bytes[index] == UInt8(ascii: "{") else {
            throw failure("expected an object")
        }
        try enter()
        index += 1
        // Objects here have a handful of keys: a list beats hashing until it grows.
        var seenFew: [String] = []
        var seenMany: Set<String>?
        skipWhitespace()
        if index < end, bytes[index] == UInt8(ascii: "}") {
            index += 1
            depth -= 1
            return
        }
        // One allocation for the keys of a usual object, not one per doubling.
        seenFew.reserveCapacity(8)
        while true {
            skipWhitespace()
            let keyOffset = index
            guard index < end, bytes[index] == UInt8(ascii: "\"") else {
                throw failure("expected a quoted key")
            }
            let key = try readString()
            let repeated: Bool
            if seenMany != nil {
                repeated = !seenMany!.insert(key).inserted
            } else if seenFew.contains(key) {
                repeated = true
            } else {
                repeated = false
                seenFew.append(key)
                if seenFew.count > 16 { seenMany = Set(seenFew) }
            }
            guard !repeated else {
                throw failure("the key \"\(TextCheck.escaped(key))\" appears twice in one object", at: keyOffset)
            }
            skipWhitespace()
            guard index < end, bytes[index] == UInt8(ascii: ":") else { throw failure("expected ':'") }
            index += 1
            try body(key, &self)
            skipWhitespace()
            guard index < end else { throw failure("the text ends inside an object") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard bytes[index] == UInt8(ascii: "}") else { throw failure("expected ',' or '}'") }
            index += 1
            depth -= 1
            return
        }
    }

    /// Reads an array, calling `body` with each element's position while the reader stands at it.
    public mutating func readArray(_ body: (Int, inout JSONReader) throws(JSONError) -> Void) throws(JSONError) {
        skipWhitespace()
        guard index < end, bytes[index] == UInt8(ascii: "[") else { throw failure("expected a list") }
        try enter()
        index += 1
        skipWhitespace()
        if index < end, bytes[index] == UInt8(ascii: "]") {
            index += 1
            depth -= 1
            return
        }
        var position = 0
        while true {
            try body(position, &self)
            position += 1
            skipWhitespace()
            guard index < end else { throw failure("the text ends inside a list") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard bytes[index] == UInt8(ascii: "]") else { throw failure("expected ',' or ']'") }
            index += 1
            depth -= 1
            return
        }
    }

    /// Splits a long list at the reader's position into pieces of whole elements that separate readers can read at
    /// the same time (``readPiece(_:)``), and moves this reader past the list.
    ///
    /// The cut points come from a quick scan that follows only strings and nesting; it does not check the text. Each
    /// piece reader checks its piece as strictly as ``readArray(_:)`` would, and the pieces put together are exactly
    /// the list, so if every piece reads without error the whole list was valid. When one fails, read the document
    /// again in one piece for the error (the pieces do not know their elements' positions in the whole list).
    ///
    /// - Returns: nil, with the reader unmoved, when no list starts here, the list is shorter than `minimumBytes`,
    ///   or it does not end.
    public mutating func splitList(pieces: Int, minimumBytes: Int) -> [JSONReader]? {
        skipWhitespace()
        guard pieces > 1, index < end, bytes[index] == UInt8(ascii: "["), end - index >= minimumBytes,
            depth + 1 <= maximumDepth
        else { return nil }
        let listStart = index + 1
        let spacing = max(1, (end - listStart) / pieces)
        var cuts: [Int] = []  // offsets of the commas the list is cut at
        var closing = -1
        bytes.withUnsafeBufferPointer { text in
            var position = listStart
            var nesting = 0
            var inString = false
            var nextCut = listStart + spacing
            while position < end {
                let byte = text[position]
                if inString {
                    if byte == UInt8(ascii: "\\") {
                        position += 1
                    } else if byte == UInt8(ascii: "\"") {
                        inString = false
                    }
                } else {
                    switch byte {
                    case UInt8(ascii: "\""): inString = true
                    case UInt8(ascii: "["), UInt8(ascii: "{"): nesting += 1
                    case UInt8(ascii: "]"), UInt8(ascii: "}"):
                        if nesting == 0 {
                            closing = position
                            return
                        }
                        nesting -= 1
                    case UInt8(ascii: ","):
                        if nesting == 0, position >= nextCut {
                            cuts.append(position)
                            nextCut = position + spacing
                        }
                    default: break
                    }
                }
                position += 1
            }
        }
        guard closing >= 0, bytes[closing] == UInt8(ascii: "]"), closing - listStart >= minimumBytes,
            bytes[listStart..<closing].contains(where: { ![0x20, 0x09, 0x0a, 0x0d].contains($0) })
        else { return nil }
        var readers: [JSONReader] = []
        var start = listStart
        for cut in cuts + [closing] {
            var piece = self
            piece.index = start
            piece.depth = depth + 1
            readers.append(JSONReader(piece, end: cut))
            start = cut + 1
        }
        index = closing + 1
        return readers
    }

    private init(_ reader: JSONReader, end: Int) {
        self = reader
        self.end = end
    }

    /// Reads the elements of a piece from ``splitList(pieces:minimumBytes:)``, calling `body` with each one's
    /// position within the piece while the reader stands at it.
    public mutating func readPiece(_ body: (Int, inout JSONReader) throws(JSONError) -> Void) throws(JSONError) {
        var position = 0
        while true {
            try body(position, &self)
            position += 1
            skipWhitespace()
            guard index < end else { return }
            guard bytes[index] == UInt8(ascii: ",") else { throw failure("expected ',' or ']'") }
            index += 1
        }
    }

    private mutating func enter() throws(JSONError) {
        depth += 1
        guard depth <= maximumDepth else { throw failure("nested deeper than \(maximumDepth) levels") }
    }

    /// Reads a string, decoding escapes; refuses raw control characters, invalid UTF-8 and lone surrogates.
    public mutating func readString() throws(JSONError) -> String {
        skipWhitespace()
        guard index < end, bytes[index] == UInt8(ascii: "\"") else { throw failure("expected a string") }
        let start = index
        index += 1
        let contentStart = index
        // Fast path: no escapes. Text of ASCII bytes alone is valid UTF-8 as it stands, so only other text is
        // validated (String(validating:) looks up generic metadata on every call: a tenth of a big file's read).
        var ascii = true
        while index < end {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let text = bytes.withUnsafeBufferPointer {
                    let content = UnsafeBufferPointer(rebasing: $0[contentStart..<index])
                    return ascii
                        ? String(decoding: content, as: UTF8.self) : String(validating: content, as: UTF8.self)
                }
                guard let text else { throw failure("the string is not valid UTF-8", at: start) }
                index += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            guard byte >= 0x20 else { throw failure("a string holds a raw control character") }
            if byte >= 0x80 { ascii = false }
            index += 1
        }
        var scratch = Array(bytes[contentStart..<index])
        while index < end {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                guard let text = String(validating: scratch, as: UTF8.self) else {
                    throw failure("the string is not valid UTF-8", at: start)
                }
                return text
            case UInt8(ascii: "\\"):
                index += 1
                guard index < end else { throw failure("the text ends inside a string") }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): scratch.append(0x22)
                case UInt8(ascii: "\\"): scratch.append(0x5c)
                case UInt8(ascii: "/"): scratch.append(0x2f)
                case UInt8(ascii: "b"): scratch.append(0x08)
                case UInt8(ascii: "f"): scratch.append(0x0c)
                case UInt8(ascii: "n"): scratch.append(0x0a)
                case UInt8(ascii: "r"): scratch.append(0x0d)
                case UInt8(ascii: "t"): scratch.append(0x09)
                case UInt8(ascii: "u"):
                    var value = try readHex4()
                    if (0xd800...0xdbff).contains(value) {
                        guard index + 1 < end, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw failure("a \\u escape holds a lone surrogate") }
                        index += 2
                        let low = try readHex4()
                        guard (0xdc00...0xdfff).contains(low) else {
                            throw failure("a \\u escape holds a lone surrogate")
                        }
                        value = 0x10000 + ((value - 0xd800) << 10) + (low - 0xdc00)
                    } else if (0xdc00...0xdfff).contains(value) {
                        throw failure("a \\u escape holds a lone surrogate")
                    }
                    guard let scalar = Unicode.Scalar(value) else { throw failure("a \\u escape is not a character") }
                    scratch.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    throw failure("unknown escape \\\(Character(Unicode.Scalar(escape)))")
                }
            default:
                guard byte >= 0x20 else { throw failure("a string holds a raw control character") }
                scratch.append(byte)
                index += 1
            }
        }
        throw failure("the text ends inside a string", at: start)
    }

    private mutating func readHex4() throws(JSONError) -> UInt32 {
        guard index + 4 <= end else { throw failure("the text ends inside a \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case 0x30...0x39: digit = UInt32(byte - 0x30)
            case 0x41...0x46: digit = UInt32(byte - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(byte - 0x61 + 10)
            default: throw failure("a \\u escape needs four hexadecimal digits")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    /// Reads a number as RFC 8259 writes it, returning its text and value.
    public mutating func readNumber() throws(JSONError) -> (text: String, value: Double) {
        skipWhitespace()
        let start = index
        if index < end, bytes[index] == UInt8(ascii: "-") { index += 1 }
        func digits() -> Int {
            let from = index
            while index < end, bytes[index] >= 0x30, bytes[index] <= 0x39 { index += 1 }
            return index - from
        }
        let integerStart = index
        let integerDigits = digits()
        guard integerDigits > 0 else { throw failure("expected a number", at: start) }
        guard integerDigits == 1 || bytes[integerStart] != UInt8(ascii: "0") else {
            throw failure("a number has a leading zero", at: start)
        }
        if index < end, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw failure("a number has no digits after '.'", at: start) }
        }
        if index < end, bytes[index] | 0x20 == UInt8(ascii: "e") {
            index += 1
            if index < end, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            guard digits() > 0 else { throw failure("a number has no digits in its exponent", at: start) }
        }
        guard index - start <= 64 else { throw failure("a number is longer than 64 characters", at: start) }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        guard let value = Double(text), value.isFinite else { throw failure("a number is out of range", at: start) }
        return (text, value)
    }

    /// Reads `true` or `false`.
    public mutating func readBool() throws(JSONError) -> Bool {
        skipWhitespace()
        if match("true") { return true }
        if match("false") { return false }
        throw failure("expected true or false")
    }

    /// Reads `null`.
    public mutating func readNull() throws(JSONError) {
        skipWhitespace()
        guard match("null") else { throw failure("expected null") }
    }

    private mutating func match(_ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard index + count <= end else { return false }
        let matches = word.withUTF8Buffer { literal in
            (0..<count).allSatisfy { bytes[index + $0] == literal[$0] }
        }
        if matches { index += count }
        return matches
    }

    /// Reads any value into a tree (for small documents).
    public mutating func readValue() throws(JSONError) -> JSONValue {
        switch try peek() {
        case .object:
            var members: [(key: String, value: JSONValue)] = []
            try readObject { (key: String, reader: inout JSONReader) throws(JSONError) in
                members.append((key, try reader.readValue()))
            }
            return .object(members)
        case .array:
            var elements: [JSONValue] = []
            try readArray { (_, reader: inout JSONReader) throws(JSONError) in elements.append(try reader.readValue()) }
            return .array(elements)
        case .string: return .string(try readString())
        case .number:
            let number = try readNumber()
            return .number(number.value, text: number.text)
        case .bool: return .bool(try readBool())
        case .null:
            try readNull()
            return .null
        }
    }

    /// Skips one value of any kind (still checking it).
    public mutating func skipValue() throws(JSONError) {
        _ = try readValue()
    }

    /// Checks that nothing but whitespace follows the document.
    public mutating func finish() throws(JSONError) {
        skipWhitespace()
        guard index == end else { throw failure("unexpected text after the end of the document") }
    }

    /// Parses a whole document into a tree.
    public static func parse(_ bytes: [UInt8], maximumDepth: Int = 32) throws(JSONError) -> JSONValue {
        var reader = JSONReader(bytes, maximumDepth: maximumDepth)
        let value = try reader.readValue()
        try reader.finish()
        return value
    }
}

/// Why a JSON text was refused, with where.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var line: Int
    public var column: Int

    public init(message: String, line: Int, column: Int) {
        self.message = message
        self.line = line
        self.column = column
    }

    public var description: String { "line \(line), column \(column): \(message)" }
}

/// A parsed JSON value; objects keep their members in order.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double, text: String)
    case string(String)
    case array([JSONValue])
    case object([(key: String, value: JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.number(let a, _), .number(let b, _)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// `an object`, `a list`, `the text "…"`: for error messages.
    public var kindDescription: String {
        switch self {
        case .null: return "null"
        case .bool(let value): return "\(value)"
        case .number(_, let text): return "the number \(text)"
        case .string(let text): return "the text \"\(TextCheck.escaped(String(text.prefix(40))))\""
        case .array: return "a list"
        case .object: return "an object"
        }
    }
}

/// The members of one JSON object, read by name with type checks, refusing names it was not asked about.
///
/// ```swift
/// var fields = try JSONFields(value, path: "request", allowed: ["command", "id"])
/// let command = try fields.string("command")
/// ```
public struct JSONFields {
    private let members: [String: JSONValue]
    /// Where the object sits, for messages: `grants[3]`.
    public let path: String

    /// - Throws: when `value` is not an object or holds a key outside `allowed`.
    public init(_ value: JSONValue, path: String, allowed: Set<String>) throws(FieldError) {
        guard case .object(let list) = value else {
            throw FieldError("\(path) must be an object; found \(value.kindDescription)")
        }
        var members: [String: JSONValue] = [:]
        for (key, member) in list {
            guard allowed.contains(key) else {
                throw FieldError(
                    "\(path): unknown key \"\(TextCheck.escaped(key))\"; allowed: \(allowed.sorted().joined(separator: ", "))"
                )
            }
            members[key] = member
        }
        self.members = members
        self.path = path
    }

    public func contains(_ key: String) -> Bool { members[key] != nil && members[key] != .null }

    public func value(_ key: String) -> JSONValue? { members[key] }

    /// A string member; nil when absent or null.
    public func string(_ key: String) throws(FieldError) -> String? {
        switch members[key] {
        case nil, .null?: return nil
        case .string(let text)?: return text
        case let other?: throw FieldError("\(path).\(key) must be a string; found \(other.kindDescription)")
        }
    }

    /// A number member; nil when absent or null.
    public func number(_ key: String) throws(FieldError) -> Double? {
        switch members[key] {
        case nil, .null?: return nil
        case .number(let value, _)?: return value
        case let other?: throw FieldError("\(path).\(key) must be a number; found \(other.kindDescription)")
        }
    }

    /// A bool member; nil when absent or null.
    public func bool(_ key: String) throws(FieldError) -> Bool? {
        switch members[key] {
        case nil, .null?: return nil
        case .bool(let value)?: return value
        case let other?: throw FieldError("\(path).\(key) must be true or false; found \(other.kindDescription)")
        }
    }

    /// A list of strings; nil when absent or null.
    public func strings(_ key: String) throws(FieldError) -> [String]? {
        switch members[key] {
        case nil, .null?: return nil
        case .array(let elements)?:
            var result: [String] = []
            for (position, element) in elements.enumerated() {
                guard case .string(let text) = element else {
                    throw FieldError(
                        "\(path).\(key)[\(position)] must be a string; found \(element.kindDescription)")
                }
                result.append(text)
            }
            return result
        case let other?: throw FieldError("\(path).\(key) must be a list of strings; found \(other.kindDescription)")
        }
    }
}

/// A member of a JSON object that is missing, of the wrong type, or not allowed.
public struct FieldError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
