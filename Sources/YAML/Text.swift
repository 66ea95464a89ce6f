/// Positions in the raw UTF-8 input, counted the way libyaml counts them, for the errors libyaml reports as a byte
/// offset (and for non-UTF-8 input, which never reaches libyaml).
struct Text {
    let bytes: UnsafeBufferPointer<UInt8>

    init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// A byte order mark at the start is skipped by libyaml without being counted.
    private var start: Int {
        bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
    }

    /// The length of the line break starting at `index`, or nil: libyaml ends lines at CR LF, LF, CR, NEL (U+0085),
    /// LS (U+2028) and PS (U+2029).
    private func lineBreak(at index: Int) -> Int? {
        func byte(_ offset: Int) -> UInt8? { index + offset < bytes.count ? bytes[index + offset] : nil }
        switch bytes[index] {
        case 0x0D: return byte(1) == 0x0A ? 2 : 1
        case 0x0A: return 1
        case 0xC2 where byte(1) == 0x85: return 2
        case 0xE2 where byte(1) == 0x80 && (byte(2) == 0xA8 || byte(2) == 0xA9): return 3
        default: return nil
        }
    }

    /// The length of the UTF-8 sequence its first byte announces (1 for a stray continuation byte).
    private func scalarLength(at index: Int) -> Int {
        switch bytes[index] {
        case 0xF0...: return 4
        case 0xE0...: return 3
        case 0xC0...: return 2
        default: return 1
        }
    }

    /// The line and column of the character at a byte offset.
    func position(ofByte offset: Int) -> Position {
        var position = Position(line: 1, column: 1)
        var index = start
        while index < min(offset, bytes.count) {
            if let length = lineBreak(at: index) {
                index += length
                position.line += 1
                position.column = 1
            } else {
                index += scalarLength(at: index)
                position.column += 1
            }
        }
        return position
    }

    /// The bytes of a line, from 1, without its line break; empty past the end.
    func line(_ number: Int) -> UnsafeBufferPointer<UInt8> {
        var line = 1
        var lineStart = start
        var index = start
        while index < bytes.count {
            if let length = lineBreak(at: index) {
                if line == number { break }
                index += length
                line += 1
                lineStart = index
            } else {
                index += 1
            }
        }
        guard line == number else { return UnsafeBufferPointer(rebasing: bytes[0..<0]) }
        return UnsafeBufferPointer(rebasing: bytes[lineStart..<index])
    }

    /// The offset of the first byte that is not part of a valid UTF-8 sequence, or nil when all are.
    var firstInvalidUTF8Offset: Int? {
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = bytes.makeIterator()
        var offset = 0
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid(let scalar): offset += scalar.count
            case .error: return offset
            case .emptyInput: return nil
            }
        }
    }
}
