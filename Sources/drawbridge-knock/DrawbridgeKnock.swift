import ArgumentParser
import Knock
import DrawbridgeCore
import Glibc

/// Exit statuses, as `drawbridge` uses them (sysexits.h values where one fits).
enum ExitStatus {
    static let invalidData = ExitCode(65)  // EX_DATAERR: the policy, a key file or a key is wrong
    static let unavailable = ExitCode(69)  // EX_UNAVAILABLE: the host cannot be reached, or the port did not open
    static let noKey = ExitCode(77)  // EX_NOPERM: no key to sign with
    static let notConfigured = ExitCode(78)  // EX_CONFIG: the policy has no knock section
}

@main
struct DrawbridgeKnock: ParsableCommand {
    static func main() {
        signal(SIGPIPE, SIG_IGN)
        main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "drawbridge-knock",
        abstract: "Open a port from anywhere with your SSH key: one signed UDP datagram, no open port.",
        discussion: """
            send (what `drawbridge knock` runs) signs a knock with your SSH key, through ssh-agent or from a key \
            file, and sends it to the host's knock port. listen (the drawbridge-knock service) receives the knock \
            port's packets from the kernel, checks them, and hands what verified to the agent.

            Examples:
              drawbridge knock web-1.example.org ssh --for 1h --reason "incident 4711"
              drawbridge-knock send 198.51.100.20 ssh --for 30m --key ~/.ssh/id_ed25519
              drawbridge-knock listen --policy /etc/drawbridge/policy.yaml   (the service)

            Nothing listens on the knock port: the agent's table hands its packets to this process through NFLOG \
            and drops them, so a port scan sees it filtered and no knock is ever answered. A knock carries the \
            target host's name, the ports, the duration, the address the client believes it has, a timestamp and \
            a random nonce, signed in the SSHSIG format (namespace \(knockNamespace)). The host opens the ports to \
            the packet's source address as it sees it, if the key is in its policy's knock.keys and the rule \
            allows the ports and duration; a packet replayed (from anywhere) within the skew window opens \
            nothing, also after a restart.

            Exit status: 0 done; 1 failed; 64 bad arguments; 65 invalid policy or key; 69 the host cannot be \
            reached or the port did not open (send --wait); 77 no key to sign with; 78 the policy has no knock \
            section.
            """,
        version: drawbridgeVersion,
        subcommands: [Send.self, Listen.self])
}
