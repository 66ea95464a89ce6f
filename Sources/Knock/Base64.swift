/// Standard base64 (RFC 4648 §4), as OpenSSH writes it in key lines, fingerprints and armored files.
///
/// Here rather than Foundation's `Data(base64Encoded:)` because this module links no Foundation, and because the
/// decoder is strict: one spelling per value (padding where it belongs, unused bits zero), so text that decodes is
/// text OpenSSH wrote.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// The value of each ASCII byte in the alphabet, or 0xFF.
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, character) in alphabet.enumerated() { table[Int(character)] = UInt8(index) }
        return table
    }()

    static func encode(_ bytes: some Collection<UInt8>, padding: Bool = true) -> String {
        let input = Array(bytes)
        var output: [UInt8] = []
        output.reserveCapacity((input.count + 2) / 3 * 4)
        var index = 0
        while index + 3 <= input.count {
            let chunk = UInt32(input[index]) << 16 | UInt32(input[index + 1]) << 8 | UInt32(input[index + 2])
            for shift in [18, 12, 6, 0] { output.append(alphabet[Int((chunk >> UInt32(shift)) & 0x3F)]) }
            index += 3
        }
        let rest = input.count - index
        if rest > 0 {
            let second = rest == 2 ? UInt32(input[index + 1]) : 0
            let chunk = UInt32(input[index]) << 16 | second << 8
            output.append(alphabet[Int((chunk >> 18) & 0x3F)])
            output.append(alphabet[Int((chunk >> 12) & 0x3F)])
            if rest == 2 { output.append(alphabet[Int((chunk >> 6) & 0x3F)]) }
            if padding { output.append(contentsOf: Array(repeating: UInt8(ascii: "="), count: 3 - rest)) }
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Decodes padded base64, or unpadded when `padding` is false; nil for anything else, including whitespace.
    static func decode(_ text: some StringProtocol, padding: Bool = true) -> [UInt8]? {
        decode(bytes: Array(text.utf8), padding: padding)
    }

    static func decode(bytes input: [UInt8], padding: Bool = true) -> [UInt8]? {
        var body = input[...]
        var padCount = 0
        if padding {
            guard input.count % 4 == 0 else { return nil }
            while padCount < 2, body.last == UInt8(ascii: "=") {
                body.removeLast()
                padCount += 1
            }
        }
        // A final group of one character cannot encode a byte.
        guard body.count % 4 != 1 else { return nil }
        if padding, padCount != (4 - body.count % 4) % 4 { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(body.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for character in body {
            let value = values[Int(character)]
            guard value != 0xFF else { return nil }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
                accumulator &= (1 << UInt32(bits)) - 1
            }
        }
        // Bits left over must be zero, or two texts would decode to the same bytes.
        guard accumulator == 0 else { return nil }
        return output
    }
}
