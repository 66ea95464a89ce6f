// The few Linux interfaces Swift cannot import directly: function-like netlink macros, the extended-ACK
// attribute walk, and calls glibc only declares under _GNU_SOURCE (setns, unshare, struct ucred).
#ifndef C_DRAWBRIDGE_LINUX_H
#define C_DRAWBRIDGE_LINUX_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/inotify.h>
#include <sys/file.h>

/// What one NLMSG_ERROR reply says: the errno (0 for an ACK), the sequence number of the request it answers,
/// and the extended-ACK details when the kernel sent them.
typedef struct {
    int32_t error;              // positive errno, 0 for a plain ACK
    uint32_t sequence;          // the seq of the request this answers
    uint16_t request_type;      // nlmsg_type of the request
    uint32_t attribute_offset;  // NLMSGERR_ATTR_OFFS, byte offset into the request; valid if has_offset
    int has_offset;
    char message[256];          // NLMSGERR_ATTR_MSG, empty if absent
} drawbridge_netlink_error;

/// Parses an NLMSG_ERROR message. Returns 0 on success, -1 if the message is not a well-formed error reply.
int drawbridge_parse_netlink_error(const void *message, size_t length, drawbridge_netlink_error *out);

/// Walks the netlink messages in a receive buffer. Returns the header of the next message, or NULL when no
/// complete message is left. `*remaining` is updated to the bytes after the returned message.
const void *drawbridge_next_message(const void *buffer, size_t *remaining, size_t *message_length,
                                    uint16_t *type, uint16_t *flags, uint32_t *sequence);

int drawbridge_setns_net(int fd);
int drawbridge_unshare_net(void);

/// Fills a Unix socket address for a filesystem path, or for an abstract name when the path starts with '@' (as
/// systemd's NOTIFY_SOCKET may). Sets *length to the size to pass to bind, connect or sendto. Returns 0, or -1 with
/// errno ENAMETOOLONG when the path does not fit.
int drawbridge_unix_address(const char *path, struct sockaddr_un *address, socklen_t *length);

/// The credentials of the process on the other end of a connected Unix socket (SO_PEERCRED).
int drawbridge_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/// The peer's supplementary groups (SO_PEERGROUPS, Linux 4.13+) into `groups`, which holds `*count` entries.
/// Returns 0 and sets `*count` to the number written; -1 with errno on failure (ERANGE: `*count` is then the number
/// needed). Never reports groups it did not read.
int drawbridge_peer_groups(int fd, gid_t *groups, size_t *count);

/// Gives memory freed after a large load back to the system (glibc's malloc_trim).
void drawbridge_release_free_memory(void);

/// Makes every allocation of 128 KiB or more a mapping of its own, returned to the system when freed (glibc's
/// mallopt M_MMAP_THRESHOLD, which also stops glibc from raising that threshold after such a block is freed).
void drawbridge_map_large_blocks(void);

/// Bytes of heap the process has allocated and not freed (glibc's mallinfo2: uordblks + hblkhd).
size_t drawbridge_heap_in_use(void);

/// O_PATH, which glibc only declares under _GNU_SOURCE.
int drawbridge_open_path_flag(void);

/// fallocate(FALLOC_FL_KEEP_SIZE): reserves blocks past the end of a file without changing its size, so later
/// appends into them cannot fail for lack of space.
int drawbridge_reserve_space(int fd, off_t offset, off_t length);

/// Makes a netlink socket drop (in the kernel, before it is queued) every message whose nlmsg_pid is `port`: for the
/// nf_tables notification group, the transactions the socket of that port committed. 0, or -1 with errno.
int drawbridge_ignore_netlink_port(int fd, uint32_t port);

/// Arms a CLOCK_REALTIME timerfd far in the future with TFD_TIMER_CANCEL_ON_SET: reads fail with ECANCELED when the
/// wall clock is set (stepped), which is how the agent learns of clock steps without polling.
int drawbridge_arm_clock_step_timer(int fd);

/// Gives up every capability of the process for good: ambient set cleared, effective, permitted and inheritable
/// sets emptied, and no new privileges from exec. For a process that needed CAP_NET_ADMIN only to bind a socket.
/// Returns 0, or -1 with errno.
int drawbridge_drop_capabilities(void);

/// Whether the process holds any effective capability (1), none (0), or -1 with errno.
int drawbridge_has_capabilities(void);

#endif
