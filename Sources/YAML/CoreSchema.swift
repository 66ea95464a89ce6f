/// The implicit typing of plain scalars in the YAML 1.2 core schema (YAML 1.2.2, section 10.3.2), written out by
/// hand instead of as regular expressions: the patterns are short, and this keeps the module to the standard library.
extension Scalar.Kind {
    /// The type the core schema gives a plain scalar with this text.
    public init(resolving text: String) {
        let bytes = Array(text.utf8)
        if CoreSchema.isNull(bytes) {
            self = .null
        } else if CoreSchema.isBoolean(bytes) {
            self = .boolean
        } else if CoreSchema.isInteger(bytes) {
            self = .integer
        } else if CoreSchema.isFloat(bytes) {
            self = .float
        } else {
            self = .string
        }
    }

    /// Whether text may carry this type's tag: `!!int abc` is refused, `!!float 1` and `!!str 22` are not.
    func admits(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        switch self {
        case .null: return CoreSchema.isNull(bytes)
        case .boolean: return CoreSchema.isBoolean(bytes)
        case .integer: return CoreSchema.isInteger(bytes)
        case .float: return CoreSchema.isInteger(bytes) || CoreSchema.isFloat(bytes)
        case .string: return true
        }
    }

    /// The standard tag's short name: `!!int`.
    var tagName: String {
        switch self {
        case .null: return "!!null"
        case .boolean: return "!!bool"
        case .integer: return "!!int"
        case .float: return "!!float"
        case .string: return "!!str"
        }
    }
}

private enum CoreSchema {
    static let nulls = words("", "~", "null", "Null", "NULL")
    static let booleans = words("true", "True", "TRUE", "false", "False", "FALSE")
    static let infinities = words(".inf", ".Inf", ".INF")
    static let notANumber = words(".nan", ".NaN", ".NAN")

    static func words(_ words: String...) -> Set<[UInt8]> { Set(words.map { Array($0.utf8) }) }

    static func isNull(_ text: [UInt8]) -> Bool { nulls.contains(text) }

    static func isBoolean(_ text: [UInt8]) -> Bool { booleans.contains(text) }

    /// `[-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+`
    static func isInteger(_ text: [UInt8]) -> Bool {
        if text.count > 2, text[0] == UInt8(ascii: "0") {
            let digits = text.dropFirst(2)
            if text[1] == UInt8(ascii: "o") { return digits.allSatisfy(isOctalDigit) }
            if text[1] == UInt8(ascii: "x") { return digits.allSatisfy(isHexadecimalDigit) }
        }
        let digits = text.first.map(isSign) == true ? text.dropFirst() : text[...]
        return !digits.isEmpty && digits.allSatisfy(isDigit)
    }

    /// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`, `[-+]? \.(inf|Inf|INF)`,
    /// `\.(nan|NaN|NAN)`
    static func isFloat(_ text: [UInt8]) -> Bool {
        if notANumber.contains(text) { return true }
        var rest = text.first.map(isSign) == true ? text.dropFirst() : text[...]
        if infinities.contains(Array(rest)) { return true }
        let whole = rest.prefix(while: isDigit).count
        rest = rest.dropFirst(whole)
        var fraction = 0
        if rest.first == UInt8(ascii: ".") {
            rest = rest.dropFirst()
            fraction = rest.prefix(while: isDigit).count
            rest = rest.dropFirst(fraction)
        }
        // `.5` and `1.` are floats; `.` alone is not.
        guard whole > 0 || fraction > 0 else { return false }
        if let marker = rest.first, marker == UInt8(ascii: "e") || marker == UInt8(ascii: "E") {
            rest = rest.dropFirst()
            if rest.first.map(isSign) == true { rest = rest.dropFirst() }
            return !rest.isEmpty && rest.allSatisfy(isDigit)
        }
        return rest.isEmpty
    }

    static func isSign(_ byte: UInt8) -> Bool { byte == UInt8(ascii: "-") || byte == UInt8(ascii: "+") }

    static func isDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }

    static func isOctalDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte) }

    static func isHexadecimalDigit(_ byte: UInt8) -> Bool {
        isDigit(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }
}
