#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Reads the subject common name of the first certificate in a PEM file: the etcd user a client certificate
/// authenticates as. Only error messages use it, so anything unexpected yields nil instead of an error.
///
/// A few lines of DER walking instead of an X.509 library: the client needs one field, and a certificate library
/// would add its own ASN.1 and crypto modules to the agent.
enum CertificateName {
    static func commonName(pemFile path: String) -> String? {
        guard let data = try? Data(contentsOf: URL(filePath: path)) else { return nil }
        return commonName(pem: String(decoding: data, as: UTF8.self))
    }

    static func commonName(pem: String) -> String? {
        let begin = "-----BEGIN CERTIFICATE-----"
        let end = "-----END CERTIFICATE-----"
        guard let start = pem.firstRange(of: begin), let stop = pem[start.upperBound...].firstRange(of: end) else {
            return nil
        }
        let base64 = pem[start.upperBound..<stop.lowerBound].filter { !$0.isWhitespace }
        guard let der = Data(base64Encoded: String(base64)) else { return nil }
        return commonName(der: Array(der))
    }

    /// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serialNumber, signature, issuer,
    /// validity, subject, ... }, ... }; subject ::= SEQUENCE OF SET OF SEQUENCE { type OID, value }.
    static func commonName(der: [UInt8]) -> String? {
        var reader = DERReader(bytes: der[...])
        guard let certificate = reader.read(tag: 0x30) else { return nil }
        var certificateReader = DERReader(bytes: certificate)
        guard let tbs = certificateReader.read(tag: 0x30) else { return nil }
        var fields = DERReader(bytes: tbs)
        if fields.peekTag == 0xA0 { _ = fields.read(tag: 0xA0) }
        guard fields.read(tag: 0x02) != nil,  // serial number
            fields.read(tag: 0x30) != nil,  // signature algorithm
            fields.read(tag: 0x30) != nil,  // issuer
            fields.read(tag: 0x30) != nil,  // validity
            let subject = fields.read(tag: 0x30)
        else { return nil }
        let commonNameType: [UInt8] = [0x55, 0x04, 0x03]  // 2.5.4.3
        var name: String?
        var names = DERReader(bytes: subject)
        while let set = names.read(tag: 0x31) {
            var attributes = DERReader(bytes: set)
            while let attribute = attributes.read(tag: 0x30) {
                var parts = DERReader(bytes: attribute)
                guard let type = parts.read(tag: 0x06), let valueTag = parts.peekTag,
                    let value = parts.read(tag: valueTag)
                else { return nil }
                // UTF8String, PrintableString, IA5String; like Go's crypto/x509 (which etcd uses), the last one wins.
                if Array(type) == commonNameType, [0x0C, 0x13, 0x16].contains(valueTag) {
                    name = String(decoding: value, as: UTF8.self)
                }
            }
        }
        return name
    }
}

/// Reads DER tag-length-value items one after the other.
private struct DERReader {
    var bytes: ArraySlice<UInt8>

    var peekTag: UInt8? { bytes.first }

    /// The contents of the next item if its tag is `tag`; nil (and nothing consumed) otherwise.
    mutating func read(tag: UInt8) -> ArraySlice<UInt8>? {
        var index = bytes.startIndex
        guard index < bytes.endIndex, bytes[index] == tag else { return nil }
        index += 1
        guard index < bytes.endIndex else { return nil }
        var length = Int(bytes[index])
        index += 1
        if length & 0x80 != 0 {
            let count = length & 0x7F
            guard (1...3).contains(count), bytes.endIndex - index >= count else { return nil }
            length = 0
            for _ in 0..<count {
                length = length << 8 | Int(bytes[index])
                index += 1
            }
        }
        guard bytes.endIndex - index >= length else { return nil }
        let contents = bytes[index..<index + length]
        bytes = bytes[(index + length)...]
        return contents
    }
}
