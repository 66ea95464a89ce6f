import ArgumentParser
import DrawbridgeCore
import HostSystem

/// One `drawbridge grant`, from its arguments to the lines it prints.
///
/// ArgumentParser reads a command by reflecting over its definition, and the Swift runtime resolves the generic
/// metadata and protocol conformances that needs on first use, by a linear scan of the binary's conformance records:
/// about a third of a grant's CPU, in a process that lives for a few milliseconds (README, "Speed"). So the usual forms
/// of `grant` are read here, by hand: ports, and `--from`, `--for`, `--reason`, `--socket` (each once, as `--name value`
/// or `--name=value`) and `--json`. Anything else — help, another or a repeated option, a value that looks like an
/// option, `--`, a value that fails its check — is not recognised, and ArgumentParser reads the command line as before
/// and says what is wrong. Both ways end in `run()`, and the checks are `Drawbridge.Grant.problem`'s, so the two
/// readings cannot disagree about what a valid command line asks for.
struct QuickGrant: Equatable {
    var ports: [String]
    var source: String
    var duration: String
    var reason: String
    var socket: String
    var json: Bool
}

extension QuickGrant {
    /// The grant a whole command line (`drawbridge grant …`, program name first) asks for, when it is in a usual form
    /// and valid; nil otherwise.
    init?(arguments: [String]) {
        guard arguments.count > 2, arguments[1] == "grant" else { return nil }
        var ports: [String] = []
        // Plain variables, no dictionary or set: each generic type a process uses costs it a metadata lookup at first.
        var source: String?
        var duration: String?
        var reason: String?
        var socket: String?
        var json = false
        var index = 2
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("-") else {
                ports.append(argument)
                continue
            }
            if argument == "--json" {
                guard !json else { return nil }
                json = true
                continue
            }
            let name: Substring
            let value: String
            if let equals = argument.firstIndex(of: "=") {
                name = argument[..<equals]
                value = String(argument[argument.index(after: equals)...])
            } else {
                guard index < arguments.count, !arguments[index].hasPrefix("-") else { return nil }
                name = argument[...]
                value = arguments[index]
                index += 1
            }
            switch name {
            case "--from" where source == nil: source = value
            case "--for" where duration == nil: duration = value
            case "--reason" where reason == nil: reason = value
            case "--socket" where socket == nil: socket = value
            default: return nil
            }
        }
        guard let source, let duration else { return nil }
        guard Drawbridge.Grant.problem(ports: ports, source: source, duration: duration, reason: reason ?? "") == nil
        else { return nil }
        self.init(
            ports: ports, source: source, duration: duration, reason: reason ?? "",
            socket: socket ?? LocalAPI.defaultSocketPath, json: json)
    }

    /// Asks the agent and prints the outcome (the agent's JSON answer with --json); a failure is printed and thrown as
    /// the status to exit with.
    func run() throws {
        let client = Client(socket: socket, json: json)
        let raw = try client.answer(
            LocalAPI.Request(
                command: .grant, ports: ports, source: source, durationSeconds: GrantDuration.parse(duration),
                reason: reason))
        guard let answer = LocalAPI.GrantAnswer(raw) else { throw client.notUnderstood() }
        try client.check(ok: answer.ok, answer.error)
        guard !json, let granted = answer.grant else { return }
        let verb =
            switch answer.outcome {
            case "extended": "extended"
            case "unchanged": "already granted, unchanged"
            default: "granted"
            }
        StandardOutput.write(
            "\(verb) \(granted.id): \(granted.source) may reach \(GrantedPort.describe(granted.ports))\n"
                + "until \(Timestamp.format(granted.expiresAt)) (\(Format.remaining(granted.expiresAt)))\n")
        for warning in answer.warnings { Output.error("warning: \(warning)") }
    }
}
