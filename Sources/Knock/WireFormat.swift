/// What is wrong with one field of a binary or text format. Shared by every parser in this module; the error types
/// around it (``SSHKeyError``, ``SSHSignatureError``, ``KnockPacketError``, ``SSHAgentError``) say which field.
public enum FormatProblem: Hashable, Sendable {
    /// The input ended inside the field.
    case truncated(needed: Int, available: Int)
    /// Bytes follow the end of a structure that must end here.
    case trailingBytes(count: Int)
    /// The field is longer than the format allows.
    case tooLong(length: Int, limit: Int)
    /// The field is shorter than the format allows (an empty host, a 1024-bit RSA modulus).
    case tooShort(length: Int, minimum: Int)
    /// The field is text but its bytes are not UTF-8.
    case invalidUTF8
    /// The text holds a control character (or a bidirectional override) at this byte offset within the field.
    case controlCharacter(offset: Int)
    /// The field has one fixed value and holds another.
    case mismatch(expected: String, found: String)
    /// The value is well formed but not one this module handles (an unknown key type, a hash it does not allow).
    case unsupported(String)
    /// The value breaks a rule of the format; the text says which.
    case invalid(String)
    /// The field holds a public key that did not parse.
    indirect case key(SSHKeyError)
    /// The field holds an SSHSIG signature that did not parse.
    indirect case signature(SSHSignatureError)
}

extension FormatProblem: CustomStringConvertible {
    public var description: String {
        switch self {
        case .truncated(let needed, let available):
            return "truncated: needs \(needed) bytes, \(available) remain"
        case .trailingBytes(let count):
            return "\(count) unexpected bytes after the end"
        case .tooLong(let length, let limit):
            return "too long: \(length), at most \(limit) allowed"
        case .tooShort(let length, let minimum):
            return "too short: \(length), at least \(minimum) required"
        case .invalidUTF8:
            return "not valid UTF-8"
        case .controlCharacter(let offset):
            return "control character at byte \(offset)"
        case .mismatch(let expected, let found):
            return "expected \(expected), found \(found)"
        case .unsupported(let what):
            return "unsupported: \(what)"
        case .invalid(let why):
            return why
        case .key(let error):
            return error.description
        case .signature(let error):
            return error.description
        }
    }
}

/// Reads the SSH wire encoding (RFC 4251 §5) from a byte array: big-endian integers and uint32-length-prefixed
/// strings. Every read checks the remaining length first and never traps, whatever the input: lengths are compared
/// with what remains (`length <= end - offset`), never added to the offset before the check.
///
/// Each read takes a function that turns a ``FormatProblem`` into the caller's own error, so the error names the
/// caller's field: `try reader.string { SSHSignatureError(.namespace, $0) }`.
struct WireReader {
    /// The input; indices are the slice's own (a slice of a slice keeps its parent's indices), so nothing is copied.
    let bytes: ArraySlice<UInt8>
    /// The index of the next byte to read.
    private(set) var offset: Int
    let end: Int

    init(_ bytes: [UInt8]) {
        self.init(bytes[...])
    }

    init(_ slice: ArraySlice<UInt8>) {
        self.bytes = slice
        self.offset = slice.startIndex
        self.end = slice.endIndex
    }

    /// How many bytes have been read.
    var consumed: Int { offset - bytes.startIndex }
    var remaining: Int { end - offset }
    var isAtEnd: Bool { offset >= end }

    mutating func take<E: Error>(_ count: Int, _ fail: (FormatProblem) -> E) throws(E) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else { throw fail(.truncated(needed: count, available: remaining)) }
        let slice = bytes[offset..<(offset + count)]
        offset += count
        return slice
    }

    mutating func byte<E: Error>(_ fail: (FormatProblem) -> E) throws(E) -> UInt8 {
        guard remaining >= 1 else { throw fail(.truncated(needed: 1, available: remaining)) }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint16<E: Error>(_ fail: (FormatProblem) -> E) throws(E) -> UInt16 {
        UInt16(truncatingIfNeeded: try bigEndian(2, fail))
    }

    mutating func uint32<E: Error>(_ fail: (FormatProblem) -> E) throws(E) -> UInt32 {
        UInt32(truncatingIfNeeded: try bigEndian(4, fail))
    }

    mutating func uint64<E: Error>(_ fail: (FormatProblem) -> E) throws(E) -> UInt64 {
        try bigEndian(8, fail)
    }

    private mutating func bigEndian<E: Error>(_ count: Int, _ fail: (FormatProblem) -> E) throws(E) -> UInt64 {
        guard count <= remaining else { throw fail(.truncated(needed: count, available: remaining)) }
        var value: UInt64 = 0
        for index in offset..<(offset + count) { value = value << 8 | UInt64(bytes[index]) }
        offset += count
        return value
    }

    /// An SSH `string`: uint32 length, then that many bytes.
    mutating func string<E: Error>(_ fail: (FormatProblem) -> E) throws(E) -> ArraySlice<UInt8> {
        let start = offset
        let length = try uint32(fail)
        guard Int(length) <= remaining else {
            offset = start
            throw fail(.truncated(needed: Int(length), available: remaining))
        }
        return try take(Int(length), fail)
    }

    /// An SSH `string` that must hold exactly `expected` (a key type name, a curve name).
    mutating func expectString<E: Error>(_ expected: String, _ fail: (FormatProblem) -> E) throws(E) {
        let found = try string(fail)
        guard found.elementsEqual(expected.utf8) else {
            throw fail(.mismatch(expected: "\"\(expected)\"", found: quoted(found)))
        }
    }

    /// An SSH `mpint` that must be positive and minimally encoded; returns its magnitude without a leading zero.
    ///
    /// OpenSSH writes minimal encodings only; refusing the others keeps one spelling per value, so a signature
    /// cannot be re-encoded into different bytes that still verify.
    mutating func positiveMPInt<E: Error>(_ fail: (FormatProblem) -> E) throws(E) -> ArraySlice<UInt8> {
        let value = try string(fail)
        guard let first = value.first else { throw fail(.invalid("zero is not allowed here")) }
        if first & 0x80 != 0 { throw fail(.invalid("negative number")) }
        if first == 0 {
            guard value.count > 1, value[value.startIndex + 1] & 0x80 != 0 else {
                throw fail(.invalid("number with a superfluous leading zero byte"))
            }
            return value.dropFirst()
        }
        return value
    }

    /// Fails unless every byte has been read.
    func expectEnd<E: Error>(_ fail: (FormatProblem) -> E) throws(E) {
        guard isAtEnd else { throw fail(.trailingBytes(count: remaining)) }
    }
}

/// Writes the SSH wire encoding.
struct WireWriter {
    private(set) var bytes: [UInt8] = []

    init() {}

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    mutating func uint16(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }

    mutating func uint32(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    mutating func uint64(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    mutating func raw(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }

    /// An SSH `string`. Callers keep their data far below 4 GiB (everything here is bounded by a datagram or a file).
    mutating func string(_ data: some Collection<UInt8>) {
        uint32(UInt32(truncatingIfNeeded: data.count))
        bytes.append(contentsOf: data)
    }

    mutating func string(_ text: String) { string(Array(text.utf8)) }

    /// An SSH `mpint` holding the unsigned big-endian magnitude `value`.
    mutating func mpint(_ magnitude: some Collection<UInt8>) {
        let trimmed = magnitude.drop { $0 == 0 }
        if let first = trimmed.first, first & 0x80 != 0 {
            uint32(UInt32(truncatingIfNeeded: trimmed.count + 1))
            bytes.append(0)
        } else {
            uint32(UInt32(truncatingIfNeeded: trimmed.count))
        }
        bytes.append(contentsOf: trimmed)
    }
}

/// A field's bytes as text for an error message: UTF-8 when printable, otherwise hex, and never very long.
func quoted(_ bytes: some Collection<UInt8>) -> String {
    let prefix = bytes.prefix(48)
    let suffix = bytes.count > 48 ? "…" : ""
    if let text = String(validating: prefix, as: UTF8.self), text.unicodeScalars.allSatisfy({ isPrintable($0) }) {
        return "\"\(text)\(suffix)\""
    }
    return "0x" + hexDigits(prefix) + suffix
}

/// Lower-case hexadecimal, two digits a byte.
func hexDigits(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text: [UInt8] = []
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: text, as: UTF8.self)
}

/// Whether a scalar may appear in text this module accepts: not a C0/C1 control character, not a line or paragraph
/// separator, not a bidirectional override or isolate (which can make a logged reason read differently from what it
/// says).
func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.value {
    case 0x00...0x1F, 0x7F...0x9F: return false
    case 0x061C, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069: return false
    default: return true
    }
}

/// Validates text from the wire: UTF-8, and no character that `isPrintable` refuses.
func validatedText<E: Error>(_ bytes: ArraySlice<UInt8>, _ fail: (FormatProblem) -> E) throws(E) -> String {
    guard let text = String(validating: bytes, as: UTF8.self) else { throw fail(.invalidUTF8) }
    var offset = 0
    for scalar in text.unicodeScalars {
        if !isPrintable(scalar) { throw fail(.controlCharacter(offset: offset)) }
        offset += UTF8.width(scalar)
    }
    return text
}
