/// One check for every piece of text that comes from outside — a request over the socket, a grants file, a
/// controller — before it is stored, audited or shown.
///
/// Text that could forge or hide output is refused, not cleaned: control characters (a newline would start a fake
/// line in `drawbridge list` or a log, ESC would drive the terminal, NUL truncates in C), Unicode line and paragraph
/// separators, and the bidirectional formatting characters that make text display in another order than it is stored.
public enum TextCheck {
    /// The longest reason accepted, in UTF-8 bytes.
    public static let maximumReasonBytes = 1024
    /// The longest identifier (grant id, file entry id) accepted.
    public static let maximumIdentifierBytes = 128

    /// Why `text` cannot be accepted as `field`, or nil when it can.
    public static func problem(with text: String, field: @autoclosure () -> String, maximumBytes: Int) -> String? {
        if text.utf8.count > maximumBytes {
            return "\(field()) is \(text.utf8.count) bytes long; at most \(maximumBytes) are allowed"
        }
        // Printable ASCII, the common case, needs no walk over scalars.
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) { return nil }
        for scalar in text.unicodeScalars where isRefused(scalar) {
            return "\(field()) contains the control or formatting character \(Self.name(of: scalar)); "
                + "write it as one line of printable text"
        }
        return nil
    }

    /// Why `text` is not a usable identifier: 1 to 128 characters from letters, digits and `. _ - : @`, starting
    /// with a letter or digit (so it can never be mistaken for an option or a path).
    public static func identifierProblem(_ text: String, field: @autoclosure () -> String) -> String? {
        guard let first = text.unicodeScalars.first else { return "\(field()) is empty" }
        guard text.utf8.count <= maximumIdentifierBytes else {
            return "\(field()) is longer than \(maximumIdentifierBytes) characters"
        }
        func isAlphanumeric(_ scalar: Unicode.Scalar) -> Bool {
            ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
        }
        guard isAlphanumeric(first) else { return "\(field()) '\(escaped(text))' must start with a letter or digit" }
        for scalar in text.unicodeScalars where !(isAlphanumeric(scalar) || ".-_:@".unicodeScalars.contains(scalar)) {
            return "\(field()) '\(escaped(text))' may hold only letters, digits and . _ - : @"
        }
        return nil
    }

    /// Whether a character is refused in text from outside.
    public static func isRefused(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1f, 0x7f...0x9f: return true  // C0, DEL, C1
        case 0x2028, 0x2029: return true  // line and paragraph separators
        case 0x061c, 0x200e, 0x200f, 0x202a...0x202e, 0x2066...0x2069: return true  // bidirectional formatting
        default: return false
        }
    }

    /// The text with every refused character written as `\u{…}`, for showing text that was never checked (a file's
    /// own name, a value being refused) without letting it act on the terminal or the log.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isRefused) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            if isRefused(scalar) {
                result += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    private static func name(of scalar: Unicode.Scalar) -> String {
        let hex = String(scalar.value, radix: 16, uppercase: true)
        return "U+" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
    }
}
