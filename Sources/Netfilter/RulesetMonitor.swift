import CMnl
import CNftnl

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Listens to the kernel's nf_tables notifications (the NFNLGRP_NFTABLES multicast group), so a change to the
/// ruleset by any program — `nft flush ruleset`, a firewall reload, a hand-edited rule — is known within
/// milliseconds instead of at the next periodic check.
///
/// It says only that something changed; the caller reads what it needs (the generation, its own table).
public final class RulesetMonitor: @unchecked Sendable {
    private let socket: NetlinkSocket

    /// Subscribes in the calling thread's network namespace, or inside `namespace`.
    public init(namespace: NetworkNamespace? = nil) throws(NetfilterError) {
        let group = UInt32(1) << (UInt32(NFNLGRP_NFTABLES.rawValue) - 1)
        if let namespace {
            do {
                socket = try namespace.perform { try NetlinkSocket(groups: group) }
            } catch let error as NetfilterError {
                throw error
            } catch {
                throw NetfilterError(.other, operation: "subscribe to nf_tables events", detail: "\(error)")
            }
        } else {
            socket = try NetlinkSocket(groups: group)
        }
    }

    /// Waits up to `timeout` for notifications and reads all that are queued.
    ///
    /// - Returns: true when the ruleset changed (or notifications were lost because too many came at once, which
    ///   means the same), false when the time passed quietly.
    public func waitForChange(timeout: Duration) -> Bool {
        var poller = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(
            timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&poller, 1, milliseconds) > 0 else { return false }
        var changed = false
        while true {
            do {
                guard try socket.receive(wait: false, operation: "read nf_tables events", { _ in changed = true })
                else { break }
            } catch {
                // ENOBUFS: events overflowed the socket; something certainly changed.
                changed = true
                break
            }
        }
        return changed
    }
}
