/* guard.c: finds the TCP connections a server's listener accepted, including
 * those that nng 1.5.2 keeps to itself before they become pipes (a TCP
 * connection that never sends a byte, a TLS handshake left half done), and
 * ends one without touching nng's state. nng exposes no accepted connection
 * before its TLS and SP negotiation finish, and its own 10 s negotiation
 * timeout never fires while the TLS layer waits for the peer's first bytes
 * (tls_cancel aborts a TCP send that is not running), so such a connection
 * would stay for ever. The guard lists the process's established sockets
 * (/proc/self/fd) whose local port is the listener's, and ends one with shutdown(2) on a
 * duplicate of its descriptor, checked to be the same socket (inode) first:
 * nng then sees the connection fail and closes it itself. Never closes a
 * descriptor it does not own. */
#include "net/net_internal.h"

#include "core/error.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

void spes__addr_from_sockaddr(spes__addr *a, const struct sockaddr *sa)
{
    memset(a, 0, sizeof *a);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        a->ip[10] = a->ip[11] = 0xff; /* v4-mapped form, so that both families compare */
        memcpy(a->ip + 12, &in->sin_addr, 4);
        a->port = ntohs(in->sin_port);
        a->ok = 1;
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(a->ip, &in6->sin6_addr, 16);
        a->port = ntohs(in6->sin6_port);
        a->ok = 1;
    }
}

void spes__addr_from_nng(spes__addr *a, const nng_sockaddr *sa)
{
    memset(a, 0, sizeof *a);
    if (sa->s_family == NNG_AF_INET) {
        a->ip[10] = a->ip[11] = 0xff;
        memcpy(a->ip + 12, &sa->s_in.sa_addr, 4);
        a->port = ntohs(sa->s_in.sa_port);
        a->ok = 1;
    } else if (sa->s_family == NNG_AF_INET6) {
        memcpy(a->ip, sa->s_in6.sa_addr, 16);
        a->port = ntohs(sa->s_in6.sa_port);
        a->ok = 1;
    }
}

const char *spes__addr_str(const spes__addr *a, char *out, size_t n)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!a->ok)
        snprintf(out, n, "?");
    else if (memcmp(a->ip, mapped, 12) == 0)
        inet_ntop(AF_INET, a->ip + 12, out, (socklen_t)n);
    else
        inet_ntop(AF_INET6, a->ip, out, (socklen_t)n);
    return out;
}

int spes__sock_list(int port, spes__sock **out, int *n)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return spes_errf_errno(SPES_EIO, "/proc/self/fd: cannot list");
    spes__sock *v = NULL;
    int cap = 0, k = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || e->d_name[0] == '\0' || fd == dirfd(d))
            continue;
        char link[64], lpath[64];
        snprintf(lpath, sizeof lpath, "/proc/self/fd/%ld", fd);
        ssize_t ln = readlink(lpath, link, sizeof link - 1);
        if (ln <= 8 || strncmp(link, "socket:[", 8) != 0)
            continue;
        link[ln] = '\0';
        struct sockaddr_storage ls, rs;
        socklen_t ll = sizeof ls, rl = sizeof rs;
        int listening = 0;
        socklen_t il = sizeof listening;
        if (getsockname((int)fd, (struct sockaddr *)&ls, &ll) != 0 ||
            (ls.ss_family != AF_INET && ls.ss_family != AF_INET6))
            continue;
        spes__addr la, ra;
        spes__addr_from_sockaddr(&la, (struct sockaddr *)&ls);
        if (la.port != port)
            continue;
        if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &il) != 0 || listening)
            continue;
        if (getpeername((int)fd, (struct sockaddr *)&rs, &rl) != 0)
            continue; /* not connected (any more) */
        struct tcp_info ti;
        socklen_t tl = sizeof ti;
        if (getsockopt((int)fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0 || ti.tcpi_state != TCP_ESTABLISHED)
            continue; /* its peer closed it: nng is tearing it down */
        spes__addr_from_sockaddr(&ra, (struct sockaddr *)&rs);
        if (k == cap) {
            cap = cap ? 2 * cap : 64;
            spes__sock *nv = realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) {
                rc = SPES_ENOMEM;
                break;
            }
            v = nv;
        }
        v[k++] = (spes__sock){.fd = (int)fd, .ino = strtoull(link + 8, NULL, 10), .local = la, .remote = ra};
    }
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n = k;
    return 0;
}

int spes__sock_end(int fd, unsigned long long ino)
{
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0)
        return 0; /* closed meanwhile */
    struct stat st;
    int ended = 0;
    if (fstat(dup_fd, &st) == 0 && S_ISSOCK(st.st_mode) && (unsigned long long)st.st_ino == ino)
        ended = shutdown(dup_fd, SHUT_RDWR) == 0; /* the same socket, whatever its descriptor number now */
    close(dup_fd);
    return ended;
}
