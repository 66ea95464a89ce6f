import CMnl
import CDrawbridgeLinux
import CNftnl
import Glibc
import HostSystem

/// One committed nf_tables transaction, as the notifications describe it.
public struct RulesetChange: Sendable, Equatable {
    /// The ruleset generation after it.
    public var generation: UInt32?
    /// The netlink port of the socket that committed it: how the agent tells its own commits from others' (the
    /// process id in the notification is the committing thread's, in the initial pid namespace).
    public var portID: UInt32?
    /// The thread that committed it (NFTA_GEN_PROC_PID) and its name, for the audit trail.
    public var processID: UInt32?
    public var processName: String?
    /// `family:name` of every table a message of the transaction was about (family 1 is inet).
    public var tables: Set<String>

    /// Whether the transaction touched the inet table of this name.
    public func touches(inetTable name: String) -> Bool { tables.contains("1:\(name)") }
}

/// What the monitor reports.
public enum RulesetEvent: Sendable, Equatable {
    /// A transaction was committed.
    case change(RulesetChange)
    /// Notifications were lost (the socket overflowed): anything may have changed.
    case lost
}

/// Listens to the kernel's nf_tables notifications (the NFNLGRP_NFTABLES multicast group), so a change to the
/// ruleset by any program — `nft flush ruleset`, a firewall reload, a hand-edited rule or element — is known within
/// milliseconds, with which tables it touched and which process made it.
public final class RulesetMonitor: @unchecked Sendable {
    public let events: AsyncStream<RulesetEvent>
    private let continuation: AsyncStream<RulesetEvent>.Continuation
    private let socket: NetlinkSocket
    private let watch: EventWatch
    private var pending = RulesetChange(tables: [])

    /// Whether the notifications of `ignoring`'s commits are dropped in the kernel (false when the socket filter could
    /// not be attached: they are then delivered, and a caller should tell them apart by `portID`).
    public let ignoresOwnCommits: Bool

    /// Subscribes in the calling thread's network namespace, or inside `namespace`.
    ///
    /// - Parameter ignoring: the netlink port of a socket whose commits are not reported (the agent's own: it knows
    ///   them already, and each would otherwise wake the watch thread and the agent once per grant).
    public init(on watch: EventWatch, namespace: NetworkNamespace? = nil, ignoring port: UInt32? = nil)
        throws(NetfilterError)
    {
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
        // Bursts of notifications (a 100,000-element commit notifies per message) need room.
        socket.reserve(sendBytes: 0, replies: 4096)
        if let port {
            ignoresOwnCommits = drawbridge_ignore_netlink_port(socket.fd, port) == 0
        } else {
            ignoresOwnCommits = false
        }
        self.watch = watch
        (events, continuation) = AsyncStream.makeStream(of: RulesetEvent.self, bufferingPolicy: .unbounded)
        let flags = fcntl(socket.fd, F_GETFL)
        _ = fcntl(socket.fd, F_SETFL, flags | O_NONBLOCK)
        do {
            try watch.watch(socket.fd) { [self] _ in drain() }
        } catch {
            throw NetfilterError(.other, operation: "watch nf_tables events", detail: "\(error)")
        }
    }

    deinit {
        watch.unwatch(socket.fd)
        continuation.finish()
    }

    /// Reads every queued notification (on the watch thread).
    private func drain() {
        while true {
            do {
                let more = try socket.receive(wait: false, operation: "read nf_tables events") { reply in
                    guard case .data(let bytes) = reply.kind, let message = NetfilterMessage(bytes),
                        message.subsystem == UInt16(NFNL_SUBSYS_NFTABLES)
                    else { return }
                    if message.type == UInt16(NFT_MSG_NEWGEN.rawValue) {
                        pending.generation = message.bigEndianUInt32(1)
                        pending.portID = message.portID
                        pending.processID = message.bigEndianUInt32(2)
                        pending.processName = message.string(3)
                        continuation.yield(.change(pending))
                        pending = RulesetChange(tables: [])
                    } else if let table = message.table {
                        pending.tables.insert("\(message.family):\(table)")
                    }
                }
                if !more { return }
            } catch {
                // ENOBUFS: notifications overflowed the socket; what they said is gone.
                pending = RulesetChange(tables: [])
                continuation.yield(.lost)
                return
            }
        }
    }
}
