import DrawbridgeCore
import FoundationEssentials
import Testing

/// Text from outside — timestamps, JSON, socket requests, grants files — read one strict way.
struct TimestampTests {
    @Test(
        "RFC 3339 timestamps parse exactly",
        arguments: [
            ("2026-12-01T12:00:00Z", 1_796_126_400.0),
            ("2026-12-01t12:00:00z", 1_796_126_400.0),
            ("2026-12-01T12:00:00.250Z", 1_796_126_400.25),
            // Twelve fraction digits: nothing is rounded up to the next second, or down to the previous one.
            ("2026-12-01T12:00:00.123456789123Z", 1_796_126_400.123456789),
            ("2026-12-01T12:00:00.999999999999Z", 1_796_126_400.999999999),
            ("2026-12-01T13:30:00+01:30", 1_796_126_400.0),
            ("2026-12-01T10:00:00-02:00", 1_796_126_400.0),
            // A leap second is the first instant of the next minute.
            ("2016-12-31T23:59:60Z", 1_483_228_800.0),
            ("2024-02-29T00:00:00Z", 1_709_164_800.0),
            ("1970-01-01T00:00:00Z", 0.0),
        ])
    func parses(text: String, seconds: Double) throws {
        let date = try #require(Timestamp.parse(text))
        #expect(abs(date.timeIntervalSince1970 - seconds) < 1e-6, "\(date.timeIntervalSince1970)")
    }

    @Test(
        "anything else is refused",
        arguments: [
            "", "2026-12-01", "2026-12-01 12:00:00Z", "2026-12-01T12:00:00", "2026-13-01T12:00:00Z",
            "2026-02-29T12:00:00Z", "2026-12-32T12:00:00Z", "2026-12-01T24:00:00Z", "2026-12-01T12:60:00Z",
            "2026-12-01T12:00:61Z", "2026-12-01T12:00:00.Z", "2026-12-01T12:00:00+0100", "2026-12-01T12:00:00Zjunk",
            "+2026-12-01T12:00:00Z", "２０２６-12-01T12:00:00Z",
        ])
    func refuses(text: String) {
        #expect(Timestamp.parse(text) == nil)
    }

    /// Found by the parser fuzz target (duration): `9999-12-31T23:59:60Z` parsed as 10000-01-01T00:00:00Z, which
    /// `format` wrote as `10000-01-01T00:00:00Z`, text that does not parse; an offset did the same below year 0.
    @Test(
        "an instant outside years 0000 to 9999 in UTC is refused, so every parsed timestamp formats back",
        arguments: [
            "9999-12-31T23:59:60Z", "9999-12-31T23:30:00-01:00", "9999-12-31T23:59:59.9995Z",
            "0000-01-01T00:00:00+00:01", "0000-01-01T00:59:59.999+01:00",
        ])
    func refusesOutsideFormattableYears(text: String) {
        #expect(Timestamp.parse(text) == nil)
    }

    @Test(
        "the first and last formattable instants parse and format back",
        arguments: [
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"), ("0000-01-01T01:00:00+01:00", "0000-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
            ("9999-12-31T23:59:59.9994Z", "9999-12-31T23:59:59.999Z"),
        ])
    func formatsBoundaries(text: String, formatted: String) throws {
        let date = try #require(Timestamp.parse(text))
        #expect(Timestamp.format(date) == formatted)
        #expect(Timestamp.parse(Timestamp.format(date)) != nil)
    }

    @Test("formatting keeps milliseconds and reads back")
    func roundTrip() throws {
        for seconds in [0.0, 1_796_126_400, 1_796_126_400.25, 1_796_126_400.001, 951_782_400.5] {
            let date = Date(timeIntervalSince1970: seconds)
            let text = Timestamp.format(date)
            #expect(abs(try #require(Timestamp.parse(text)).timeIntervalSince(date)) < 0.0005, "\(text)")
        }
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_796_126_400.25)) == "2026-12-01T12:00:00.250Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_796_126_400)) == "2026-12-01T12:00:00Z")
    }
}

struct JSONReaderTests {
    @Test(
        "what a lenient decoder would read is refused, with where",
        arguments: [
            (#"{"a":1,"a":2}"#, "appears twice"), (#"{"a":"x\#u{01}y"}"#, "raw control character"),
            (#"{"a":"\ud800"}"#, "lone surrogate"), (#"{"a":"\udc00x"}"#, "lone surrogate"),
            (#"{"a":01}"#, "leading zero"), (#"{"a":1.}"#, "no digits after"), (#"{"a":tru}"#, "expected true"),
            (#"{"a":1} x"#, "after the end"), (#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#, "nested deeper"),
            (#"{"a":"\q"}"#, "unknown escape"), (#"{'a':1}"#, "expected a quoted key"), ("", "ends where a value"),
            (#"{"a":1,}"#, "expected a quoted key"),
        ])
    func refuses(text: String, problem: String) {
        do {
            _ = try JSONReader.parse(Array(text.utf8))
            Issue.record("parsed: \(text)")
        } catch {
            #expect(error.message.contains(problem), "\(error)")
        }
    }

    @Test("invalid UTF-8 in a string is refused")
    func invalidUTF8() {
        #expect(throws: JSONError.self) { try JSONReader.parse([0x22, 0xff, 0xfe, 0x22]) }
    }

    @Test("escapes, surrogate pairs, numbers and nesting read back")
    func reads() throws {
        let value = try JSONReader.parse(Array(#"{"s":"a\"b\\c\/d\n\u00e9\ud83d\ude00","n":-1.5e3,"l":[true,false,null],"o":{}}"#.utf8))
        #expect(
            value
                == .object([
                    ("s", .string("a\"b\\c/d\né😀")), ("n", .number(-1500, text: "-1.5e3")),
                    ("l", .array([.bool(true), .bool(false), .null])), ("o", .object([])),
                ]))
    }

    @Test("errors say the line and column")
    func position() {
        do {
            _ = try JSONReader.parse(Array("{\n  \"a\": 1,\n  \"a\": 2\n}".utf8))
        } catch {
            #expect(error.line == 3 && error.column == 3, "\(error)")
        }
    }
}

struct LocalAPIDecodingTests {
    @Test("requests decode into the command they name, checked once")
    func decodes() throws {
        #expect(try LocalAPI.decode(Array(#"{"command":"list"}"#.utf8)).get() == .list)
        #expect(
            try LocalAPI.decode(Array(#"{"command":"revoke","source":"198.51.100.0/24"}"#.utf8)).get()
                == .revoke(.within(try IPPrefix(parsing: "198.51.100.0/24"))))
        let grant = try LocalAPI.decode(
            Array(#"{"command":"grant","ports":["ssh"],"source":"203.0.113.7","duration_seconds":2.5,"reason":"x"}"#.utf8)
        ).get()
        #expect(grant == .grant(GrantRequest(ports: ["ssh"], source: try IPPrefix(parsing: "203.0.113.7"), duration: 2.5, reason: "x")))
    }

    @Test(
        "malformed requests are refused with a reason",
        arguments: [
            ("", "empty request"), ("   ", "empty request"), ("[]", "must be an object"),
            (#"{"command":"grant"}"#, "at least one port"),
            (#"{"command":"grant","ports":[],"source":"203.0.113.7","duration_seconds":60}"#, "at least one port"),
            (#"{"command":"grant","ports":["ssh"],"duration_seconds":60}"#, "needs a source"),
            (#"{"command":"grant","ports":["ssh"],"source":"203.0.113.7"}"#, "needs a duration"),
            (#"{"command":"grant","ports":["ssh"],"source":"203.0.113.7","duration_seconds":0.5}"#, "at least 1 second"),
            (#"{"command":"grant","ports":["ssh"],"source":"203.0.113.7","duration_seconds":"60"}"#, "must be a number"),
            (#"{"command":"grant","ports":["ssh"],"source":"203.0.113.7/8","duration_seconds":60}"#, "host bits set"),
            (#"{"command":"revoke"}"#, "either a grant id or a source"),
            (#"{"command":"revoke","id":"x","source":"203.0.113.7"}"#, "not both"),
            (#"{"command":"revoke","id":"--all"}"#, "must start with a letter or digit"),
            (#"{"command":"status","extra":1}"#, "unknown key"),
            (#"{"command":"STATUS"}"#, "unknown command"),
            (#"{"command":"grant","ports":["ssh\u0000"],"source":"203.0.113.7","duration_seconds":60}"#, "U+0000"),
            (#"{"command":"grant","ports":["ssh"],"source":"203.0.113.7","duration_seconds":60,"reason":"\u202eevil"}"#, "U+202E"),
            // knock and knock-refused, from drawbridge-knock.
            (
                KnockRequestDecodingTests.knock().replacing(#""key":"\#(KnockRequestDecodingTests.key)","#, with: ""), "needs the key it was verified with"
            ),
            (KnockRequestDecodingTests.knock(key: "ssh-ed25519 not-base64!"), "knock.key must be a public key"),
            (KnockRequestDecodingTests.knock(key: "ssh-dss AAAAB3NzaC1kc3MAAACBAP"), "knock.key must be a public key"),
            // The blob names another type than the line does.
            (KnockRequestDecodingTests.knock(key: "ecdsa-sha2-nistp256 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"),
             "knock.key must be a public key"),
            (KnockRequestDecodingTests.knock().replacing(#""key""#, with: #""key_rule":1,"key""#), "unknown key"),
            (#"{"command":"knock-refused","count":-1,"problem":"x"}"#, "count must be a whole number"),
            (#"{"command":"knock-refused","count":1.5,"problem":"x"}"#, "count must be a whole number"),
            (#"{"command":"knock-refused","source":"0.0.0.0/0","problem":"x"}"#, "source must be one IP address"),
        ])
    func refuses(text: String, problem: String) {
        switch LocalAPI.decode(Array(text.utf8)) {
        case .success(let command): Issue.record("decoded \(command)")
        case .failure(let failure):
            #expect(failure.code == .badRequest)
            #expect(failure.message.contains(problem), "\(failure.message)")
        }
    }
}

struct KnockRequestDecodingTests {
    static let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
    static let fingerprint = "SHA256:l6cFg0s9iPmRWksLekeNd1Y/ipa3Jtb2eB42NqQNl1c"

    static func knock(key: String = key) -> String {
        #"{"command":"knock","fingerprint":"\#(fingerprint)","key":"\#(key)","source":"192.0.2.2","ports":["ssh"],"duration_seconds":60}"#
    }

    @Test("a knock carries the key it was verified with, which the agent looks up itself")
    func knockCarriesKey() throws {
        guard case .knock(let grant) = try LocalAPI.decode(Array(Self.knock().utf8)).get() else {
            Issue.record("not a knock")
            return
        }
        #expect(grant.key == KnockKeyIdentity(Self.key + " alice@laptop"))
        #expect(grant.key.description == Self.key)
        #expect(grant.request.source == IPPrefix(address: IPAddress("192.0.2.2")!))
    }

    @Test("a refusal summary has a count and no source; a single refusal has a source and counts one")
    func refusalReports() throws {
        let summary = try LocalAPI.decode(
            Array(#"{"command":"knock-refused","count":310,"problem":"310 more knocks refused"}"#.utf8)).get()
        #expect(summary == .knockRefused(KnockRefusalReport(source: nil, problem: "310 more knocks refused", count: 310)))
        let single = try LocalAPI.decode(
            Array(#"{"command":"knock-refused","source":"203.0.113.9","problem":"stale"}"#.utf8)).get()
        #expect(single == .knockRefused(KnockRefusalReport(source: "203.0.113.9", problem: "stale", count: 1)))
    }

    @Test("authorized_keys text: options before the key passed over (quoted spaces too), comments left out")
    func authorizedKeysText() {
        let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8eHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgEA"
        let file = """
            # admins
            no-pty,permitopen="host:22",environment="A=b c" \(Self.key) alice@laptop

              \(other)
            ssh-dss AAAAB3NzaC1kc3MAAACBAP old
            not a key line at all
            """
        let keys = KnockKeyIdentity.keys(inAuthorizedKeys: file)
        #expect(keys == [KnockKeyIdentity(Self.key)!, KnockKeyIdentity(other)!])
        #expect(KnockKeyIdentity.keys(inAuthorizedKeys: "# \(Self.key)\n").isEmpty)
        #expect(KnockKeyIdentity(Self.key) != KnockKeyIdentity(other))
    }
}

struct TextCheckTests {
    @Test("printable text passes; control and formatting characters are refused and escaped on output")
    func checks() {
        #expect(TextCheck.problem(with: "deploy to web-1 (ticket #4711) — ok ✓", field: "reason", maximumBytes: 1024) == nil)
        for bad in ["a\nb", "a\u{1b}[31m", "a\u{0}", "a\u{7f}", "a\u{85}", "a\u{2028}", "a\u{202e}b", "a\u{2066}"] {
            #expect(TextCheck.problem(with: bad, field: "reason", maximumBytes: 1024) != nil, "\(bad.unicodeScalars.map(\.value))")
            #expect(!TextCheck.escaped(bad).unicodeScalars.contains(where: TextCheck.isRefused))
        }
        #expect(TextCheck.escaped("a\nb") == "a\\u{a}b")
        #expect(TextCheck.problem(with: String(repeating: "é", count: 600), field: "reason", maximumBytes: 1024) != nil)
        #expect(TextCheck.identifierProblem("g-abc_1.2:x@y", field: "id") == nil)
        #expect(TextCheck.identifierProblem("-rf", field: "id") != nil)
        #expect(TextCheck.identifierProblem("a/b", field: "id") != nil)
    }
}

struct GrantsFileTests {
    static let policy = try! Policy.parse(
        """
        ports:
          ssh: { port: 22, max_duration: 3h, allowed_sources: ["203.0.113.0/24", "2001:db8::/32"] }

        """, file: "policy.yaml")
    static let now = Instants(wall: Date(timeIntervalSince1970: 1_796_126_400), monotonic: MonotonicInstant(nanoseconds: 5_000_000_000))

    func parse(_ text: String) throws(GrantsFile.FormatError) -> GrantsFile.Contents {
        try GrantsFile.parse(Array(text.utf8), path: "/etc/drawbridge/grants.json", policy: Self.policy, now: Self.now)
    }

    @Test("entries become grants with monotonic deadlines; refused and expired entries are counted")
    func parses() throws {
        let contents = try parse(
            #"""
            {"grants": [
              {"id": "deploy", "source": "203.0.113.7", "ports": ["ssh"], "expires_at": "2026-12-01T13:00:00.5Z", "reason": "nightly"},
              {"source": "2001:db8::/64", "ports": ["22/tcp"], "expires_at": "2026-12-01T12:59:60Z"},
              {"source": "198.51.100.7", "ports": ["ssh"], "expires_at": "2026-12-01T13:00:00Z"},
              {"source": "203.0.113.8", "ports": ["ssh"], "expires_at": "2026-12-01T18:00:00Z"},
              {"source": "203.0.113.9", "ports": ["ssh"], "expires_at": "2026-12-01T11:00:00Z"}
            ]}
            """#)
        #expect(contents.grants.count == 2)
        #expect(contents.expired == 1)
        #expect(contents.refusals.map(\.refusal.reason) == [.sourceNotAllowed, .durationTooLong])
        let deploy = try #require(contents.grants.first { $0.id.hasSuffix("-deploy") })
        #expect(deploy.deadline == Self.now.monotonic.advanced(by: 3600.5))
        #expect(deploy.origin == .file("/etc/drawbridge/grants.json"))
        let leap = try #require(contents.grants.first { $0.source.description == "2001:db8::/64" })
        #expect(leap.expiresAt == Date(timeIntervalSince1970: 1_796_130_000), "23:59:60 is the next minute's start")
    }

    @Test("an entry without an id is named by a digest of what it says, as every earlier version named it")
    func contentIdentifiers() throws {
        // FNV-1a over source | ports | expiry as written, in lowercase hexadecimal without leading zeros: revocations
        // of file entries are kept by id, so the name must not change between versions.
        func digest(_ text: String) -> String {
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in text.utf8 {
                hash ^= UInt64(byte)
                hash = hash &* 0x100_0000_01b3
            }
            return String(hash, radix: 16)
        }
        let entries = (1...64).map { number in
            (source: number % 2 == 0 ? "203.0.113.\(number)" : "2001:db8::\(String(number, radix: 16))",
             expiry: number % 3 == 0 ? "2026-12-01t13:00:0\(number % 10)z" : "2026-12-01T13:\(10 + number % 50):00Z")
        }
        let text = "{\"grants\": [" + entries.map {
            #"{"source": "\#($0.source)", "ports": ["ssh"], "expires_at": "\#($0.expiry)"}"#
        }.joined(separator: ",") + "]}"
        let contents = try parse(text)
        let prefix = GrantBook.fileIdentifierPrefix(for: "/etc/drawbridge/grants.json")
        #expect(contents.grants.map(\.id) == entries.map { prefix + digest("\($0.source)|ssh|\($0.expiry)") })
        #expect(Set(contents.grants.map(\.id)).count == 64)
        #expect(contents.grants.contains { $0.id.count < prefix.count + 16 }, "some digest has a leading zero nibble")
    }

    @Test(
        "a malformed file is refused whole, naming the entry and field",
        arguments: [
            (#"{"grants":[{"source":"203.0.113.7","ports":["ssh"],"expires_at":"soon"}]}"#, "grants[0].expires_at"),
            (#"{"grants":[{"source":"203.0.113.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z","colour":1}]}"#, #"unknown key "colour""#),
            (#"{"grants":[{"source":"203.0.113.7","source":"203.0.113.8","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"}]}"#, "appears twice"),
            (#"{"grants":[{"id":"a","source":"203.0.113.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"},{"id":"a","source":"203.0.113.8","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"}]}"#, "duplicate id"),
            (#"{"grants":[{"source":"203.0.113.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z","reason":"a\nb"}]}"#, "grants[0].reason"),
            (#"{"grants":[{"source":"203.0.113.7","ports":[],"expires_at":"2026-12-01T13:00:00Z"}]}"#, "grants[0].ports"),
            (#"{"grants":[{"id":"../x","source":"203.0.113.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"}]}"#, "grants[0].id"),
            (#"{"grants":[]"#, "not valid JSON"), (#"{"other":[]}"#, #"only key is "grants""#), ("[]", "expected an object"),
        ])
    func refuses(text: String, problem: String) {
        do {
            _ = try parse(text)
            Issue.record("parsed")
        } catch {
            #expect(error.message.contains(problem), "\(error)")
        }
    }
}

extension GrantsFileTests {
    /// The same file read in pieces: either both readings give the same contents, or both refuse with the same error.
    func expectPiecewiseSame(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let bytes = Array(text.utf8)
        let whole = Result { () throws(GrantsFile.FormatError) in
            try GrantsFile.parse(bytes, path: "/etc/drawbridge/grants.json", policy: Self.policy, now: Self.now)
        }
        /// How many pieces the reading ran (the test's forEach runs them one by one, on this thread).
        final class Ran: @unchecked Sendable { var count = 0 }
        for pieces in [2, 3, 7, 64] {
            let ran = Ran()
            let split = Result { () throws(GrantsFile.FormatError) in
                try GrantsFile.parse(
                    bytes, path: "/etc/drawbridge/grants.json", policy: Self.policy, now: Self.now, pieces: pieces,
                    piecewiseFrom: 0,
                    forEach: { count, body in
                        // Backwards, so no piece can lean on the one before it having run.
                        for index in (0..<count).reversed() { body(index) }
                        ran.count += count
                    })
            }
            #expect(split == whole, "\(pieces) pieces", sourceLocation: sourceLocation)
            if case .success(let contents) = whole, contents.grants.count + contents.refusals.count > 3 {
                #expect(ran.count > 1, "the list was not cut (\(pieces) pieces)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test("a list read in pieces gives what reading it whole gives: grants, refusals named by position, errors")
    func piecewise() throws {
        func entry(_ index: Int, reason: String = "r", expiry: String = "2026-12-01T13:00:00Z") -> String {
            #"{"source":"203.0.113.\#(index % 250)","ports":["ssh"],"expires_at":"\#(expiry)","reason":"\#(reason)"}"#
        }
        // Reasons with the characters the cutting scan follows: commas, brackets, quotes, backslashes.
        let tricky = [#"a, b"#, #"x],[{"#, #"say \"hi\", ok"#, #"back\\"#, #"\\\",{"#, #"}, {"#, #"\u00e9,"#]
        var entries: [String] = []
        for index in 0..<40 {
            entries.append(
                #"{"id":"e\#(index)","source":"203.0.113.\#(index)","ports":["ssh","22/tcp"],"#
                    + #""expires_at":"2026-12-01T13:\#(10 + index):00Z","reason":"\#(tricky[index % tricky.count])"}"#)
        }
        // Refused (source and duration) and expired entries in the middle, so their positions must add up.
        entries.insert(#"{"source":"198.51.100.7","ports":["ssh"],"expires_at":"2026-12-01T13:00:00Z"}"#, at: 13)
        entries.insert(entry(5, expiry: "2026-12-01T11:00:00Z"), at: 20)
        entries.insert(entry(6, expiry: "2026-12-01T23:00:00Z"), at: 31)
        let good = "{\"grants\": [\n  " + entries.joined(separator: ",\n  ") + "\n]}\n"
        expectPiecewiseSame(good)
        if case .success(let contents) = Result(catching: { () throws(GrantsFile.FormatError) in try parse(good) }) {
            #expect(contents.refusals.map { String($0.entry.prefix(10)) } == ["grants[13]", "grants[31]"])
            #expect(contents.grants.count == 40)
        } else {
            Issue.record("the file did not parse")
        }
        // The cuts fall between entries, whatever the strings hold: every piece reads without error (a cut inside
        // a string would still give the right contents, by reading the file again whole, but slowly).
        for count in [2, 5, 9, 43] {
            var reader = JSONReader(Array(good.utf8), maximumDepth: 4)
            var split: [JSONReader]?
            try reader.readObject { (_: String, reader: inout JSONReader) throws(JSONError) in
                split = reader.splitList(pieces: count, minimumBytes: 0)
            }
            try reader.finish()
            let pieces = try #require(split)
            var entriesRead = 0
            for var piece in pieces {
                try piece.readPiece { (_: Int, reader: inout JSONReader) throws(JSONError) in
                    _ = try reader.readValue()
                    entriesRead += 1
                }
            }
            #expect(pieces.count > count / 2 && pieces.count <= count, "\(pieces.count) pieces for \(count) asked for")
            #expect(entriesRead == entries.count, "\(count) pieces")
        }
        expectPiecewiseSame(#"{"grants":[ ]}"#)
        expectPiecewiseSame(#"{"grants":[\#(entries[0])]}"#)
        // Errors deep inside: every one must come out as reading whole reports it (the first, by position).
        var broken = entries
        broken[25] = #"{"source":"203.0.113.9","ports":["ssh"],"expires_at":"soon"}"#
        broken[33] = #"{"source":"203.0.113.9","colour":1}"#
        expectPiecewiseSame("{\"grants\":[" + broken.joined(separator: ",") + "]}")
        // A bad entry in the list and a problem after it: the entry is the first problem, as reading whole finds.
        expectPiecewiseSame("{\"grants\":[" + broken.joined(separator: ",") + "]} trailing")
        expectPiecewiseSame("{\"grants\":[" + broken.joined(separator: ",") + #"],"colour":1}"#)
        var duplicate = entries
        duplicate[38] = entries[2]
        expectPiecewiseSame("{\"grants\":[" + duplicate.joined(separator: ",") + "]}")
        expectPiecewiseSame("{\"grants\":[" + entries.joined(separator: ",") + ",]}")
        expectPiecewiseSame("{\"grants\":[" + entries.joined(separator: ",,") + "]}")
        expectPiecewiseSame("{\"grants\":[" + entries.joined(separator: ",") + "]")
        expectPiecewiseSame("{\"grants\":[" + entries.joined(separator: ",") + "]}]")
        expectPiecewiseSame("{\"grants\":[" + entries.joined(separator: ",") + #"],"grants":[]}"#)
        expectPiecewiseSame("{\"grants\":[" + entries.joined(separator: ",").replacing("\"}", with: "\"") + "]}")
        expectPiecewiseSame("{\"grants\":[" + entries.dropLast().joined(separator: ",") + #","reason":"unterminated]}"#)
    }
}

struct StateRecordTests {
    static let grant = Grant(
        id: "g-abcdefghij", source: try! IPPrefix(parsing: "2001:db8::/64"),
        ports: [
            GrantedPort(name: "ssh", service: Service(port: 22, transport: .tcp)),
            GrantedPort(name: "dns", service: Service(port: 53, transport: .udp)),
        ], createdAt: Date(timeIntervalSince1970: 1_796_126_400.123), expiresAt: Date(timeIntervalSince1970: 1_796_130_000.5),
        deadline: MonotonicInstant(nanoseconds: 123_456_789_000), requestedBy: "alice smith", uid: 1000,
        reason: "100% ~ ok", origin: .file("/etc/drawbridge/my grants.json"))

    @Test("records read back exactly; a damaged or torn line is told apart")
    func roundTrip() throws {
        for record in [
            StateRecord.put(Self.grant), .remove(id: "g-x"), .tombstone(id: "f-1-a"), .forgetTombstone(id: "f-1-a"),
            .setting(key: "etcd.revision", value: "42"),
            .boot(id: "b-1", wall: Date(timeIntervalSince1970: 1_796_126_400), monotonic: MonotonicInstant(nanoseconds: 7)),
        ] {
            let line = record.encoded()
            #expect(!line.contains("\n"))
            #expect(try StateRecord.decode(line[...]).get() == record, "\(line)")
            var damaged = Array(line.utf8)
            damaged[damaged.count - 1] ^= 0x01
            #expect(StateRecord.decode(String(decoding: damaged, as: UTF8.self)[...]) == .failure(.checksum))
            #expect(StateRecord.decode(line.dropLast(3)) == .failure(.checksum))
        }
    }

    @Test("after a reboot a grant gets its wall-clock time left, never more than it was given")
    func acrossBoots() {
        let wall = Date(timeIntervalSince1970: 1_796_126_400)
        var grant = Self.grant
        grant.issuedAt = wall
        grant.expiresAt = wall.addingTimeInterval(600)
        grant.origin = .local
        // The same boot: the monotonic deadline decides, whatever the wall clock says.
        let sameBoot = Instants(wall: wall.addingTimeInterval(-3600), monotonic: MonotonicInstant(nanoseconds: 100_000_000_000))
        var replay = StateReplay(now: sameBoot, bootID: "b-1")
        replay.apply(.boot(id: "b-1", wall: wall, monotonic: MonotonicInstant(nanoseconds: 0)))
        replay.apply(.put(grant))
        #expect(replay.book[grant.id]?.deadline == grant.deadline)
        // Another boot with the clock set back an hour: ten minutes were given, ten minutes at most are left.
        var rebooted = StateReplay(now: sameBoot, bootID: "b-2")
        rebooted.apply(.boot(id: "b-1", wall: wall, monotonic: MonotonicInstant(nanoseconds: 0)))
        rebooted.apply(.put(grant))
        let left = rebooted.book[grant.id]!.deadline.seconds(since: sameBoot.monotonic)
        #expect(left <= 600 && left > 599, "\(left)")
        // Another boot after it expired: gone.
        var late = StateReplay(now: Instants(wall: wall.addingTimeInterval(700), monotonic: MonotonicInstant(nanoseconds: 1)), bootID: "b-3")
        late.apply(.put(grant))
        #expect(late.book.isEmpty && late.expired == 1)
    }
}

@Suite("Grant identifiers")
struct GrantIdentifierTests {
    @Test("an id is g- and ten characters of the alphabet; every character appears at every position, none is favoured")
    func identifiers() {
        let alphabet = Set("abcdefghijkmnpqrstuvwxyz23456789")
        var seen = Set<String>()
        var counts = Array(repeating: [Character: Int](), count: 10)
        let draws = 32_000
        var malformed: [String] = []
        for _ in 0..<draws {
            let id = Grant.newIdentifier()
            if !id.hasPrefix("g-") || id.count != 12 || TextCheck.identifierProblem(id, field: "id") != nil
                || !id.dropFirst(2).allSatisfy(alphabet.contains)
            {
                malformed.append(id)
            }
            for (position, character) in id.dropFirst(2).enumerated() { counts[position][character, default: 0] += 1 }
            seen.insert(id)
        }
        #expect(malformed.isEmpty, "\(malformed.prefix(5))")
        // 50 random bits: 32,000 ids collide with odds of about 1 in 2 million.
        #expect(seen.count == draws)
        for position in 0..<10 {
            #expect(counts[position].count == 32, "position \(position) uses \(counts[position].count) characters")
            // Expected 1,000 each; a fair draw stays within ±200 (over 6 standard deviations).
            #expect(counts[position].values.allSatisfy { (800...1200).contains($0) }, "position \(position): \(counts[position])")
        }
    }
}
