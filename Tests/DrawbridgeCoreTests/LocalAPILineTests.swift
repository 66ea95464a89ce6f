import DrawbridgeCore
import FoundationEssentials
import Testing

/// The CLI writes requests and reads a grant's answer without Codable; the agent reads requests with JSONReader and
/// writes answers with `LocalAPI.encoder()`. Each hand-written side must mean exactly what the Codable side means.
struct LocalAPILineTests {
    static let texts = [
        "", "plain", "quote \" and backslash \\ and slash /", "tab\tnewline\nreturn\r", "bell \u{7} escape \u{1b}[31m",
        "bidi \u{202e}evil\u{202c} and \u{2028}", "ünïcödé ✓ 𝄞 emoji 🙂", "del \u{7f} c1 \u{85}",
    ]

    @Test("a request line reads as the same JSON as the encoder's, and the agent takes it as the same command")
    func requestLine() throws {
        var requests: [LocalAPI.Request] = [
            LocalAPI.Request(command: .list), LocalAPI.Request(command: .status), LocalAPI.Request(command: .metrics),
            LocalAPI.Request(command: .revoke, id: "g-abcdefghij"),
            LocalAPI.Request(command: .revoke, source: "2001:db8::/64"),
        ]
        for duration in [1.0, 90, 3600, 5400.5, 0.001, 1e9, 123_456.789] {
            requests.append(
                LocalAPI.Request(
                    command: .grant, ports: ["ssh", "5432/tcp"], source: "203.0.113.7", durationSeconds: duration,
                    reason: "hotfix"))
        }
        for text in Self.texts {
            requests.append(
                LocalAPI.Request(command: .grant, ports: [text], source: text, durationSeconds: 60, reason: text))
            requests.append(LocalAPI.Request(command: .revoke, id: text))
        }
        for request in requests {
            let line = request.jsonLine()
            #expect(line.last == 0x0a)
            #expect(line.dropLast().allSatisfy { $0 != 0x0a }, "one line: \(String(decoding: line, as: UTF8.self))")
            let encoded = Array(try LocalAPI.encoder().encode(request))
            let handWritten = try JSONReader.parse(Array(line.dropLast()))
            #expect(handWritten == (try JSONReader.parse(encoded)), "\(String(decoding: line, as: UTF8.self))")
            #expect(
                LocalAPI.decode(Array(line.dropLast())) == LocalAPI.decode(encoded),
                "\(String(decoding: line, as: UTF8.self))")
        }
        // The encoder sorts keys; so does the line (the agent does not care, a person reading a capture might).
        let grant = LocalAPI.Request(
            command: .grant, ports: ["ssh"], source: "192.0.2.1", durationSeconds: 7200, reason: "r")
        #expect(
            String(decoding: grant.jsonLine(), as: UTF8.self)
                == #"{"command":"grant","duration_seconds":7200,"ports":["ssh"],"reason":"r","source":"192.0.2.1"}"#
                + "\n")
    }

    static let granted = Grant(
        id: "g-abcdefghij", source: try! IPPrefix(parsing: "2001:db8::/64"),
        ports: [
            GrantedPort(name: "ssh", service: Service(port: 22, transport: .tcp)),
            GrantedPort(name: "dns", service: Service(port: 53, transport: .udp)),
        ], createdAt: Date(timeIntervalSince1970: 1_796_126_400.123),
        expiresAt: Date(timeIntervalSince1970: 1_796_130_000.5),
        deadline: MonotonicInstant(nanoseconds: 123_456_789_000), requestedBy: "alice", uid: 1000, reason: "ok",
        origin: .local)

    @Test("a grant's answer reads the same by hand as by Codable: outcome, grant, warnings, failures")
    func grantAnswer() throws {
        var answers: [LocalAPI.Response] = []
        for outcome in ["created", "extended", "unchanged"] {
            answers.append(
                LocalAPI.Response(
                    ok: true,
                    grants: [
                        LocalAPI.GrantStatus(grant: Self.granted, kernelRemainingSeconds: ["ssh": 3599.5, "dns": nil])
                    ], outcome: outcome))
        }
        answers.append(LocalAPI.Response(ok: true, grants: [], warnings: Self.texts))
        for code in [LocalAPI.Failure.Code.refused, .forbidden, .badRequest, .notFound, .kernel, .busy, .storage, .internal]
        {
            answers.append(.failure(.init(code: code, message: "why: \(code)")))
        }
        answers.append(.failure(.init(code: .refused, reason: "duration-too-long", message: "ssh allows at most 3h")))
        answers.append(
            LocalAPI.Response(
                ok: false, error: .init(code: .kernel, message: "revoked, but"),
                grants: [LocalAPI.GrantStatus(grant: Self.granted, kernelRemainingSeconds: [:])], warnings: ["w"]))
        for response in answers {
            let bytes = Array(try LocalAPI.encoder().encode(response))
            let decoded = try LocalAPI.decoder().decode(LocalAPI.Response.self, from: Data(bytes))
            let read = try #require(LocalAPI.GrantAnswer(bytes), "\(String(decoding: bytes, as: UTF8.self))")
            #expect(read.ok == decoded.ok)
            #expect(read.error == decoded.error)
            #expect(read.outcome == decoded.outcome)
            #expect(read.warnings == (decoded.warnings ?? []))
            let first = decoded.grants?.first?.grant
            #expect(read.grant?.id == first?.id)
            #expect(read.grant?.source == first?.source.description)
            #expect(read.grant?.ports == first?.ports)
            #expect(read.grant?.expiresAt == first?.expiresAt)
            if let first { #expect(GrantedPort.describe(read.grant!.ports) == first.portsDescription) }
        }
    }

    @Test(
        "an answer the agent would not write is not read as one",
        arguments: [
            "", "not json", "[]", #"{"grants":[]}"#, #"{"ok":"yes"}"#, #"{"ok":true,"outcome":7}"#,
            #"{"ok":false,"error":{"code":"unheard-of","message":"m"}}"#, #"{"ok":false,"error":{"code":"kernel"}}"#,
            #"{"ok":true,"warnings":"one"}"#, #"{"ok":true,"warnings":[1]}"#, #"{"ok":true,"grants":[{"grant":{}}]}"#,
            #"{"ok":true,"grants":[{"grant":{"id":"g-a","source":"192.0.2.1","expires_at":"soon","ports":[]}}]}"#,
            #"{"ok":true,"grants":[{"grant":{"id":"g-a","source":"192.0.2.1","expires_at":"2026-12-01T12:00:00Z","ports":[{"name":"ssh","service":"22/xyz"}]}}]}"#,
        ])
    func strangeAnswers(_ text: String) {
        #expect(LocalAPI.GrantAnswer(Array(text.utf8)) == nil)
    }
}

/// The agent writes the answers that carry grants by hand; they must be the documents the encoder writes.
struct HandWrittenAnswerTests {
    typealias Response = LocalAPI.Response

    static func grants(plain: Bool) -> [Grant] {
        let base = LocalAPILineTests.granted
        var fromFile = base
        fromFile.uid = nil
        fromFile.origin = .file("/etc/drawbridge/grants.d/web-team.json")
        fromFile.ports = [GrantedPort(name: "postgres", service: Service(port: 5432, transport: .tcp))]
        fromFile.source = try! IPPrefix(parsing: "198.51.100.0/24")
        var fromEtcd = base
        fromEtcd.origin = .etcd("/drawbridge/grants/web/deploy-1")
        fromEtcd.uid = 0
        fromEtcd.issuedAt = Date(timeIntervalSince1970: 1_796_127_000)
        var knocked = base
        knocked.origin = .knock("SHA256:Zm9vYmFy+/=")
        knocked.source = try! IPPrefix(parsing: "203.0.113.9")
        knocked.createdAt = Date(timeIntervalSince1970: 0)
        var grants = [base, fromFile, fromEtcd, knocked]
        if !plain {
            for text in LocalAPILineTests.texts {
                var odd = base
                odd.reason = text
                odd.requestedBy = text
                odd.id = text
                odd.ports = [GrantedPort(name: text, service: Service(port: 2222, transport: .tcp))]
                grants.append(odd)
            }
        }
        return grants
    }

    static func responses(plain: Bool) -> [Response] {
        let grants = grants(plain: plain)
        let remaining: [[String: Double?]] = [
            [:], ["ssh": 3599.998, "dns": nil], ["ssh": 3600, "dns": 0.001], ["postgres": 1e-7],
            ["a": 123_456.789, "b": 0.1 + 0.2, "c": 5e-324],
        ]
        let statuses = grants.enumerated().map { index, grant in
            LocalAPI.GrantStatus(grant: grant, kernelRemainingSeconds: remaining[index % remaining.count])
        }
        var warnings = ["a revocation could not be stored yet; it is kept and written as soon as the disk allows"]
        if !plain { warnings += LocalAPILineTests.texts }
        var responses = [
            Response(ok: true, grants: []),
            Response(ok: true, grants: [statuses[0]], outcome: "created"),
            Response(ok: true, grants: [statuses[1]], outcome: "extended", warnings: warnings),
            Response(ok: true, grants: statuses, warnings: []),
            Response(ok: true, grants: statuses),
        ]
        if !plain { responses.append(Response(ok: true, grants: statuses, outcome: LocalAPILineTests.texts[3])) }
        return responses
    }

    @Test("an answer carrying grants is byte for byte the encoder's for plain text, and reads the same for any text")
    func sameDocuments() throws {
        for plain in [true, false] {
            for response in Self.responses(plain: plain) {
                let hand = try #require(response.handWrittenJSON())
                let encoded = Array(try LocalAPI.encoder().encode(response))
                let shown = String(decoding: hand, as: UTF8.self)
                if plain { #expect(hand == encoded, "\(shown)\n\(String(decoding: encoded, as: UTF8.self))") }
                #expect(!hand.contains(0x0a), "one line: \(shown)")
                #expect(try JSONReader.parse(hand) == JSONReader.parse(encoded), "\(shown)")
                let decoder = LocalAPI.decoder()
                #expect(
                    try decoder.decode(Response.self, from: Data(hand))
                        == decoder.decode(Response.self, from: Data(encoded)), "\(shown)")
            }
        }
    }

    @Test("any other answer is left to the encoder")
    func othersToTheEncoder() {
        let failure = Response.failure(.init(code: .refused, reason: "port", message: "no"))
        #expect(failure.handWrittenJSON() == nil)
        #expect(Response(ok: true).handWrittenJSON() == nil)
        #expect(Response(ok: true, metrics: "# HELP").handWrittenJSON() == nil)
        var failed = Response(ok: false, grants: [])
        #expect(failed.handWrittenJSON() == nil)
        failed.ok = true
        failed.error = .init(code: .kernel, message: "x")
        #expect(failed.handWrittenJSON() == nil)
    }
}
