import CDrawbridgeLinux
import DrawbridgeCore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Who is on the other end of a Unix socket, as the kernel knows it: never what the client claims.
enum UnixIdentity {
    /// SO_PEERGROUPS (Linux 4.13+): the peer's supplementary groups at connect time.
    private static let peerGroupsOption: Int32 = 59

    /// The caller behind a connected socket: uid and primary gid from SO_PEERCRED, supplementary groups from
    /// SO_PEERGROUPS, names from the user and group databases.
    static func caller(of descriptor: Int32) throws -> Caller {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        guard drawbridge_peer_credentials(descriptor, &pid, &uid, &gid) == 0 else {
            throw AgentError("cannot read the caller's credentials (SO_PEERCRED): \(String(cString: strerror(errno)))")
        }
        var groupIDs = [gid]
        var buffer = [gid_t](repeating: 0, count: 64)
        var length = socklen_t(buffer.count * MemoryLayout<gid_t>.size)
        if getsockopt(descriptor, SOL_SOCKET, peerGroupsOption, &buffer, &length) != 0, errno == ERANGE {
            buffer = [gid_t](repeating: 0, count: Int(length) / MemoryLayout<gid_t>.size)
            length = socklen_t(buffer.count * MemoryLayout<gid_t>.size)
            _ = getsockopt(descriptor, SOL_SOCKET, peerGroupsOption, &buffer, &length)
        }
        groupIDs += buffer.prefix(Int(length) / MemoryLayout<gid_t>.size)
        var seen = Set<gid_t>()
        let groups = groupIDs.filter { seen.insert($0).inserted }.map(groupName)
        return Caller(uid: uid, user: userName(uid), groups: groups)
    }

    static func userName(_ uid: uid_t) -> String {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        if getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil, let name = entry.pw_name {
            return String(cString: name)
        }
        return "uid \(uid)"
    }

    static func groupName(_ gid: gid_t) -> String {
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 4096)
        if getgrgid_r(gid, &entry, &buffer, buffer.count, &result) == 0, result != nil, let name = entry.gr_name {
            return String(cString: name)
        }
        return "gid \(gid)"
    }

    static func groupID(named name: String) -> gid_t? {
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.gr_gid
    }
}
