#define _GNU_SOURCE
#include "CDrawbridgeLinux.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/filter.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <time.h>
#include <sys/timerfd.h>
#include <linux/falloc.h>
#include <malloc.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int drawbridge_parse_netlink_error(const void *message, size_t length, drawbridge_netlink_error *out) {
    const struct nlmsghdr *nlh = message;
    memset(out, 0, sizeof(*out));
    if (length < NLMSG_HDRLEN || nlh->nlmsg_len > length || nlh->nlmsg_type != NLMSG_ERROR) return -1;
    if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return -1;
    const struct nlmsgerr *err = NLMSG_DATA(nlh);
    // The kernel sends 0 or a negative errno. INT_MIN has no positive counterpart (negating it is undefined and left
    // it negative, an "errno" no code path expects): no kernel sends it, so the reply is malformed.
    if (err->error == INT_MIN) return -1;
    out->error = err->error < 0 ? -err->error : err->error;
    out->sequence = err->msg.nlmsg_seq;
    out->request_type = err->msg.nlmsg_type;

    if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS)) return 0;
    // The TLVs follow the echoed request: only its header when the request was capped (NETLINK_CAP_ACK) or the
    // reply is a plain ACK, the whole request otherwise.
    size_t offset = NLMSG_HDRLEN + sizeof(struct nlmsgerr);
    if (!(nlh->nlmsg_flags & NLM_F_CAPPED) && err->error != 0) {
        offset = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(int)) + NLMSG_ALIGN(err->msg.nlmsg_len);
    }
    while (offset + NLA_HDRLEN <= nlh->nlmsg_len) {
        const struct nlattr *attr = (const void *)((const char *)nlh + offset);
        if (attr->nla_len < NLA_HDRLEN || offset + attr->nla_len > nlh->nlmsg_len) break;
        const void *payload = (const char *)attr + NLA_HDRLEN;
        size_t payload_length = attr->nla_len - NLA_HDRLEN;
        switch (attr->nla_type & NLA_TYPE_MASK) {
        case NLMSGERR_ATTR_MSG: {
            size_t n = payload_length < sizeof(out->message) - 1 ? payload_length : sizeof(out->message) - 1;
            memcpy(out->message, payload, n);
            out->message[n] = 0;
            break;
        }
        case NLMSGERR_ATTR_OFFS:
            if (payload_length >= sizeof(uint32_t)) {
                memcpy(&out->attribute_offset, payload, sizeof(uint32_t));
                out->has_offset = 1;
            }
            break;
        default:
            break;
        }
        offset += NLA_ALIGN(attr->nla_len);
    }
    return 0;
}

const void *drawbridge_next_message(const void *buffer, size_t *remaining, size_t *message_length,
                                    uint16_t *type, uint16_t *flags, uint32_t *sequence) {
    const struct nlmsghdr *nlh = buffer;
    int left = (int)*remaining;
    if (!NLMSG_OK(nlh, left)) return NULL;
    *message_length = nlh->nlmsg_len;
    *type = nlh->nlmsg_type;
    *flags = nlh->nlmsg_flags;
    *sequence = nlh->nlmsg_seq;
    size_t advance = NLMSG_ALIGN(nlh->nlmsg_len);
    *remaining = advance >= *remaining ? 0 : *remaining - advance;
    return nlh;
}

int drawbridge_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int drawbridge_unshare_net(void) { return unshare(CLONE_NEWNET); }

int drawbridge_unix_address(const char *path, struct sockaddr_un *address, socklen_t *length) {
    size_t size = strlen(path);
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    if (size == 0 || size >= sizeof(address->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(address->sun_path, path, size);
    if (path[0] == '@') {
        address->sun_path[0] = 0;
        *length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + size);
    } else {
        *length = (socklen_t)sizeof(*address);
    }
    return 0;
}

int drawbridge_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

int drawbridge_peer_groups(int fd, gid_t *groups, size_t *count) {
    socklen_t length = (socklen_t)(*count * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &length) != 0) {
        if (errno == ERANGE) *count = length / sizeof(gid_t);
        return -1;
    }
    *count = length / sizeof(gid_t);
    return 0;
}

int drawbridge_reserve_space(int fd, off_t offset, off_t length) {
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length);
}

int drawbridge_arm_clock_step_timer(int fd) {
    struct itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    // Far in the future (absolute): it never fires, it only gets cancelled by a clock step.
    spec.it_value.tv_sec = (time_t)1 << 40;
    return timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &spec, NULL);
}

int drawbridge_open_path_flag(void) { return O_PATH; }

void drawbridge_release_free_memory(void) { malloc_trim(0); }

void drawbridge_map_large_blocks(void) { mallopt(M_MMAP_THRESHOLD, 128 * 1024); }

size_t drawbridge_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/capability.h>

int drawbridge_drop_capabilities(void) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0) return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return 0;
}

int drawbridge_has_capabilities(void) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    return (data[0].effective | data[1].effective | data[0].permitted | data[1].permitted) != 0;
}

int drawbridge_ignore_netlink_port(int fd, uint32_t port) {
    // Classic BPF on the subscribed socket: a message whose nlmsg_pid is `port` (the agent's own commits: nf_tables
    // notifies with the committing socket's port) is dropped in the kernel, so it never wakes the reader. Absolute
    // loads read in network byte order; nlmsg_pid is in host order, hence the comparison with htonl(port).
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct nlmsghdr, nlmsg_pid)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, htonl(port), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
    };
    struct sock_fprog program = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program));
}
