/* net_internal.h: what the spes_net files share (not part of the public API). */
#ifndef SPES_NET_INTERNAL_H
#define SPES_NET_INTERNAL_H

#include "net/net.h"

#include <nng/supplemental/tls/tls.h>
#include <openssl/ssl.h>

/* spes__tls_bind is one endpoint's policy: whose TLS material, which peers it accepts. */
typedef struct spes__tls_bind {
    spes_net_tls *tls;
    unsigned peer_roles;
    char peer_name[SPES_PKI_NAME_MAX + 1]; /* "" = any */
    int server;
    int refs; /* atomic */
    /* server side: connections whose peer's first bytes after the TLS handshake (its SP
     * header) arrived; atomic. net.c's listener watchdog compares it with pipes added. */
    uint64_t heard;
} spes__tls_bind;

/* spes__tls_config_alloc makes an nng TLS config bound to t with the endpoint's policy;
 * bind, if not NULL, gets a held reference to the binding (spes__tls_bind_release). */
int spes__tls_config_alloc(nng_tls_config **out, spes_net_tls *t, int server, unsigned peer_roles,
                           const char *peer_name, spes__tls_bind **bind);

/* spes__tls_bind_release drops a reference to a binding. */
void spes__tls_bind_release(spes__tls_bind *b);

/* spes__tls_ctx returns t's current SSL_CTX with a reference the caller frees. */
SSL_CTX *spes__tls_ctx(spes_net_tls *t);

/* spes__tls_is_revoked returns 1 if the list in force revokes that serial (hex). */
int spes__tls_is_revoked(spes_net_tls *t, const char *serial_hex);

/* spes__tls_hold takes a reference on t. */
void spes__tls_hold(spes_net_tls *t);

/* spes__tls_count records a handshake outcome; reason NULL means accepted. */
void spes__tls_count(spes_net_tls *t, int server, const char *peer, const char *reason);

/* spes__tls_peer_tl is the thread-local side channel filled by the engine's verified()
 * hook during nng_pipe_get_bool(NNG_OPT_TLS_VERIFIED) (see spes_net_pipe_peer). */
extern _Thread_local spes_pki_identity spes__tls_peer_tl;
extern _Thread_local int spes__tls_peer_tl_set;

/* spes__net_dir is the direction of a counted message. */
enum spes__net_dir { SPES__NET_SENT = 0, SPES__NET_RECEIVED = 1 };

/* spes__net_count records one message of `bytes` payload bytes that nng has
 * sent or delivered (counters.c); the only place the byte counters move. */
void spes__net_count(spes_net_class cls, int dir, size_t bytes);

/* spes__deadline is one aio's deadline on the monotonic clock (deadline.c says why nng's own
 * timeouts are not used). Owned by the caller, which keeps it valid while armed. */
typedef struct spes__deadline {
    struct spes__deadline *prev, *next;
    nng_aio *aio; /* NULL: not armed */
    uint64_t at;  /* spes_mono_ms */
    int expired;
} spes__deadline;

/* spes__deadline_arm aborts aio with NNG_ETIMEDOUT from timeout_ms from now on, until disarmed;
 * it clears nng's own timeout of aio. The deadline spans every operation the caller starts on
 * aio meanwhile (a request and its reply). */
void spes__deadline_arm(spes__deadline *d, nng_aio *aio, int timeout_ms);

/* spes__deadline_disarm ends it: once it returns, aio is never touched again on its account.
 * Returns 1 if the deadline had passed. Disarming one not armed does nothing. */
int spes__deadline_disarm(spes__deadline *d);

/* spes__clock_steps counts the steps of the wall clock seen since the process began watching. */
unsigned long spes__clock_steps(void);

/* SPES_NNG_CLOSE_MS bounds how long spes__nng_close_bounded waits for nng_close. */
#define SPES_NNG_CLOSE_MS 5000

/* spes__run_bounded runs fn(arg) on a helper thread and waits up to
 * timeout_ms for it: 0 when it returned (the thread is joined), 1 when it is
 * still running (it goes on, detached; arg must stay valid for it). close.c
 * says why. */
int spes__run_bounded(void (*fn)(void *), void *arg, int timeout_ms);

/* spes__nng_close_bounded is nng_close(s) that returns after SPES_NNG_CLOSE_MS
 * at the latest: 0 closed, 1 the close is still blocked inside nng (logged
 * with what; the caller must then leak anything nng may still call into). */
int spes__nng_close_bounded(nng_socket s, const char *what);

/* spes__addr is an IP address (IPv4 in its v4-mapped IPv6 form) and port. */
typedef struct spes__addr {
    uint8_t ip[16];
    uint16_t port;
    int ok;
} spes__addr;

struct sockaddr;

/* spes__addr_from_sockaddr converts an AF_INET or AF_INET6 address (ok = 0 otherwise). */
void spes__addr_from_sockaddr(spes__addr *a, const struct sockaddr *sa);

/* spes__addr_from_nng converts an nng address (ok = 0 unless IPv4 or IPv6). */
void spes__addr_from_nng(spes__addr *a, const nng_sockaddr *sa);

/* spes__addr_str writes the address without its port. */
const char *spes__addr_str(const spes__addr *a, char *out, size_t n);

/* spes__sock is one connected TCP socket of this process (guard.c). */
typedef struct spes__sock {
    int fd;
    unsigned long long ino; /* the socket's inode: its identity while it lives */
    spes__addr local, remote;
} spes__sock;

/* spes__sock_list lists the process's established TCP sockets whose local port is port (a listener's accepted connections) into *out (malloc'd). */
int spes__sock_list(int port, spes__sock **out, int *n);

/* spes__sock_end shuts down the socket behind fd if it is still the socket ino
 * (returns 1), so that nng sees its connection fail; 0 if it is gone. */
int spes__sock_end(int fd, unsigned long long ino);

/* spes__guard_kick wakes every server's guard (a connection was just accepted). */
void spes__guard_kick(void);

/* spes__nng_err maps an nng error to a SPES_E* code with a message naming what failed. */
int spes__nng_err(int rv, const char *what, const char *url);

#endif
