#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/uio.h>
#include <linux/netlink.h>
#include <libmnl/libmnl.h>
