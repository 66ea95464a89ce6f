// gate-blast SOURCE DESTINATION PORT COUNT: sends COUNT 16-byte UDP datagrams from SOURCE with sendmmsg and prints
// the wall time per datagram in ns. Used by gate-packets.sh inside its own namespaces.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
int main(int argc, char **argv) {
  int fam = strchr(argv[1], ':') ? AF_INET6 : AF_INET;
  int fd = socket(fam, SOCK_DGRAM, 0);
  struct sockaddr_storage src = {0}, dst = {0}; socklen_t len;
  if (fam == AF_INET6) {
    struct sockaddr_in6 *s = (void *)&src, *d = (void *)&dst;
    s->sin6_family = d->sin6_family = AF_INET6; inet_pton(AF_INET6, argv[1], &s->sin6_addr);
    inet_pton(AF_INET6, argv[2], &d->sin6_addr); d->sin6_port = htons(atoi(argv[3])); len = sizeof *s;
  } else {
    struct sockaddr_in *s = (void *)&src, *d = (void *)&dst;
    s->sin_family = d->sin_family = AF_INET; inet_pton(AF_INET, argv[1], &s->sin_addr);
    inet_pton(AF_INET, argv[2], &d->sin_addr); d->sin_port = htons(atoi(argv[3])); len = sizeof *s;
  }
  if (bind(fd, (void *)&src, len)) { perror("bind"); return 1; }
  if (connect(fd, (void *)&dst, len)) { perror("connect"); return 1; }
  long count = atol(argv[4]);
  char payload[16] = {0};
  struct mmsghdr msgs[64]; struct iovec iov = {payload, sizeof payload};
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < 64; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  long sent = 0;
  while (sent < count) { int n = sendmmsg(fd, msgs, 64, 0); if (n < 0) { perror("sendmmsg"); return 1; } sent += n; }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / sent);
  return 0;
}
