import DrawbridgeCore
import Foundation
import Testing

/// Hostile policy files: each is refused at once, with a position, before anything else is looked at.
struct PolicyAttackTests {
    /// Nine levels of nine aliases: 9^9 strings for a reader that expands aliases.
    static let billionLaughs = """
        a: &a ["x","x","x","x","x","x","x","x","x"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
        i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
        ports: {}

        """

    struct AttackCase: Sendable, CustomTestStringConvertible {
        var label: String
        var text: String
        var description: String

        init(_ label: String, _ text: String, _ description: String) {
            self.label = label
            self.text = text
            self.description = description
        }

        var testDescription: String { label }
    }

    @Test(
        "hostile YAML is refused at once with a positioned error",
        arguments: [
            AttackCase(
                "billion laughs", billionLaughs,
                "policy.yaml:1:4: anchors and aliases are not supported (found anchor &a) "
                    + "(hint: write the value out in full where it is used)"),
            AttackCase(
                "200 nested lists", "ports: " + String(repeating: "[", count: 200) + String(repeating: "]", count: 200),
                "policy.yaml:1:71: collections nest more than 64 levels deep here (hint: is this the right file?)"),
            AttackCase(
                "a language tag", "ports: !!python/object/apply:os.system [\"true\"]\n",
                "policy.yaml:1:8: tag !!python/object/apply:os.system is not supported; only the standard tags "
                    + "!!str, !!int, !!float, !!bool, !!null, !!seq and !!map are (hint: remove the tag)"),
            AttackCase(
                "a merge key pulling in an anchor", "defaults: &d { port: 22 }\nports:\n  ssh:\n    <<: *d\n",
                "policy.yaml:1:11: anchors and aliases are not supported (found anchor &d) "
                    + "(hint: write the value out in full where it is used)"),
        ])
    func refused(_ attack: AttackCase) {
        var caught: PolicyError?
        let elapsed = ContinuousClock().measure {
            do throws(PolicyError) {
                _ = try Policy.parse(attack.text, file: "policy.yaml")
            } catch {
                caught = error
            }
        }
        #expect(caught?.description == attack.description)
        // A guard against a reader that expands the document before refusing it, not a benchmark.
        #expect(elapsed < .milliseconds(100), "took \(elapsed)")
    }
}
