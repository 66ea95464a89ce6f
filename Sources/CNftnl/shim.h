// glibc's socket and in headers must come before any <linux/...> header: with them first, linux/libc-compat.h
// suppresses the kernel's own in_addr/in6_addr, which would otherwise clash with SwiftGlibc's.
#include <sys/socket.h>
#include <netinet/in.h>
// libnftnl/batch.h only forward-declares struct iovec; without this it imports as OpaquePointer.
#include <sys/uio.h>
#include <stdint.h>

#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>

#include <libnftnl/batch.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/gen.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>
