import Testing
import YAML

/// The attacks a YAML reader must survive, and the limits that bound its work.
struct LimitsTests {
    /// The classic "billion laughs": nine levels of nine aliases each would expand to 9^9 (387 million) strings in a
    /// reader that follows aliases. About 450 bytes.
    static let billionLaughs = """
        a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
        i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
        j: &j [*i,*i,*i,*i,*i,*i,*i,*i,*i]
        k: [*j,*j,*j,*j,*j,*j,*j,*j,*j]

        """

    /// A refusal must come at once: far below this, on any machine. A guard against a regression to expanding the
    /// tree, not a benchmark.
    static let promptly = Duration.milliseconds(100)

    /// Reads `text`, expecting a refusal, and says how long it took.
    func timedRefusal(_ text: String) -> (YAMLError?, Duration) {
        var error: YAMLError?
        let elapsed = ContinuousClock().measure {
            do throws(YAMLError) {
                _ = try Document(parsing: text)
            } catch let caught {
                error = caught
            }
        }
        return (error, elapsed)
    }

    @Test("the billion laughs are refused at the first anchor, at once")
    func billionLaughs() throws {
        #expect((400..<500).contains(Self.billionLaughs.utf8.count))
        let (error, elapsed) = timedRefusal(Self.billionLaughs)
        let refusal = try #require(error)
        #expect(refusal.code == .anchor)
        #expect(refusal.position == Position(line: 1, column: 4))
        #expect(refusal.description.hasPrefix("1:4: anchors and aliases are not supported (found anchor &a)"))
        #expect(elapsed < Self.promptly, "took \(elapsed)")
    }

    @Test("a 200-level nested flow list is refused by depth, at the 65th level, at once")
    func deepFlowList() throws {
        let text = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        let (error, elapsed) = timedRefusal(text)
        let refusal = try #require(error)
        #expect(refusal.code == .tooDeep)
        #expect(refusal.position == Position(line: 1, column: 65))
        #expect(refusal.message == "collections nest more than 64 levels deep here")
        #expect(elapsed < Self.promptly, "took \(elapsed)")
    }

    @Test("a deep block structure is refused by depth too")
    func deepBlock() throws {
        let text = (0..<70).map { String(repeating: " ", count: $0) + "k:\n" }.joined()
        let error = try #require(refusal(text))
        #expect(error.code == .tooDeep)
        #expect(error.position == Position(line: 65, column: 65))
    }

    @Test("64 levels are read; 65 are not")
    func depthBoundary() throws {
        func nested(_ depth: Int) -> String {
            String(repeating: "{a: ", count: depth - 1) + "[x]" + String(repeating: "}", count: depth - 1)
        }
        var node = try root(nested(Document.maximumDepth))
        for _ in 1..<Document.maximumDepth { node = try #require(node["a"]) }
        #expect(node.sequence?.first?.scalar?.value == "x")
        #expect(refusal(nested(Document.maximumDepth + 1))?.code == .tooDeep)
    }

    @Test("100,000 nodes are read; one more is refused where it starts")
    func nodeCount() throws {
        // The list itself is a node: a list of 99,999 items is 100,000 nodes.
        func list(_ items: Int) -> String { "[" + Array(repeating: "0", count: items).joined(separator: ",") + "]" }
        #expect(try root(list(Document.maximumNodeCount - 1)).sequence?.count == Document.maximumNodeCount - 1)
        let error = try #require(refusal(list(Document.maximumNodeCount)))
        #expect(error.code == .tooManyNodes)
        #expect(error.position == Position(line: 1, column: 2 * Document.maximumNodeCount))
        #expect(error.message == "the document has more than 100000 nodes")
    }

    @Test("1 MiB of text is read; one byte more is refused before parsing")
    func size() throws {
        let prefix = "a: "
        let largest = prefix + String(repeating: "x", count: Document.maximumByteCount - prefix.utf8.count)
        #expect(try root(largest)["a"]?.scalar?.value.utf8.count == Document.maximumByteCount - 3)
        for text in [largest + "x", largest + "\u{1}"] {
            let error = try #require(refusal(text))
            #expect(error.code == .tooLarge)
            #expect(error.position == nil)
            #expect(error.message.contains("the text is 1048577 bytes, more than the 1024 KiB"))
            #expect(throws: error) { try Document(parsingUTF8: Array(text.utf8)) }
        }
    }

    @Test("an anchor far into the text is refused where it is written")
    func anchorLate() throws {
        let text = (0..<1_000).map { "k\($0): v\n" }.joined() + "late: &x 1\nlater: *x\n"
        let error = try #require(refusal(text))
        #expect(error.code == .anchor)
        #expect(error.position == Position(line: 1_001, column: 7))
    }
}
