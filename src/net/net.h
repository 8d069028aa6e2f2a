/* net.h: spes transport: nng request/reply over mutual TLS with the run's CA.
 *
 * Why a TLS engine of our own: nng 1.5.2 (Debian) exposes nothing of the peer's
 * certificate (only NNG_OPT_TLS_VERIFIED; NNG_OPT_TLS_PEER_CN arrived in 1.6),
 * and its mbedtls engine cannot check a role. nng 1.5 does export a TLS engine
 * interface (<nng/supplemental/tls/engine.h>), so spes_net registers one built
 * on OpenSSL 3 (src/net/tls_engine.c). It enforces, on every connection, in the
 * handshake itself:
 *   - TLS 1.2 minimum (1.3 preferred), mutual authentication always required;
 *   - the run CA as the only trust anchor (no system roots), chain and dates;
 *   - the revocation list, if one is configured (full handshake every time:
 *     no session resumption, so a revoked certificate fails at its next connection);
 *   - EKU by direction (a server must have serverAuth: operator certificates
 *     cannot serve; a client must have clientAuth);
 *   - the peer's role (subject OU) against the endpoint's accepted roles, and
 *     optionally the peer's name (subject CN) for a dialer.
 * The peer identity of a connection is then read with spes_net_pipe_peer().
 * Every refusal is logged (log_warnx) with its reason and counted.
 *
 * Threads: every callback here (request handlers, async replies) runs on an
 * nng thread, never on the caller's libuv loop. A libuv daemon must copy what
 * it needs and hand it to its loop with uv_async_send; replies may be sent later
 * from any thread with spes_net_reply. spes_net_call blocks: never call it on the
 * loop thread.
 *
 * Plain tcp:// (no TLS, no identities) is only allowed with the explicit `plain`
 * flag, for tests. This module never does anything but transport: message
 * contents are the proto/ codec's business. */
#ifndef SPES_NET_NET_H
#define SPES_NET_NET_H

#include "pki/pki.h"

#include <nng/nng.h>
#include <stddef.h>
#include <stdint.h>

/* SPES_NET_MAX_MSG_DEFAULT caps a received message unless an endpoint says otherwise. */
#define SPES_NET_MAX_MSG_DEFAULT (64u << 20)

/* Server limits, defaults of spes_net_server_opts (docs/security.md says why
 * each value): */
/* SPES_NET_SEND_TIMEOUT_MS: a reply not taken by its connection within this closes
 * the connection (a caller's own request timeout is as long: it gave up by then). */
#define SPES_NET_SEND_TIMEOUT_MS 30000
/* SPES_NET_MAX_INFLIGHT: requests one connection may have unanswered; one more
 * closes it (a blob fetch keeps at most this many in flight per connection). */
#define SPES_NET_MAX_INFLIGHT 16
/* SPES_NET_HANDSHAKE_TIMEOUT_MS: a connection not through TLS and SP negotiation
 * within this is closed. */
#define SPES_NET_HANDSHAKE_TIMEOUT_MS 5000
/* SPES_NET_IDLE_TIMEOUT_MS: a connection with nothing in flight that sent no request
 * for this long is closed (nodes send heartbeats far more often). */
#define SPES_NET_IDLE_TIMEOUT_MS 60000
/* SPES_NET_MAX_CONNS / _PER_ADDR: connections at once (in any state), in all and
 * from one IP address. */
#define SPES_NET_MAX_CONNS 512
#define SPES_NET_MAX_CONNS_PER_ADDR 64
/* SPES_NET_QUEUE: requests that may wait for a lane whose contexts are all busy. */
#define SPES_NET_QUEUE 256
/* SPES_NET_MAX_LANES bounds spes_net_server_opts.lanes. */
#define SPES_NET_MAX_LANES 4

/* spes_net_init registers the OpenSSL TLS engine with nng (idempotent, thread-safe). */
int spes_net_init(void);

/* spes_net_tls is a node's or operator's TLS material: the run CA, its own
 * certificate and key, and optionally a revocation list. Reference counted;
 * endpoints keep it alive. */
typedef struct spes_net_tls spes_net_tls;

/* spes_net_tls_files names the PEM files of a spes_net_tls (crl may be NULL). */
typedef struct spes_net_tls_files {
    const char *ca;
    const char *cert;
    const char *key;
    const char *crl;
} spes_net_tls_files;

/* spes_net_stats counts handshakes of every endpoint using one spes_net_tls. */
typedef struct spes_net_stats {
    uint64_t accepted;
    uint64_t refused;
    char last_refusal[256]; /* "listener: 'node-3' refused: certificate revoked" */
} spes_net_stats;

/* spes_net_tls_alloc loads and checks the files (key matches certificate, certificate
 * verifies against the CA and CRL); on success the caller owns one reference. */
int spes_net_tls_alloc(spes_net_tls **out, const spes_net_tls_files *files);

/* spes_net_tls_reload_crl re-reads the revocation list (crl_path, or the configured one
 * if NULL) and applies it to every later handshake; existing connections stay up (call
 * from the daemon's SIGHUP). On failure the old list stays in force. */
int spes_net_tls_reload_crl(spes_net_tls *t, const char *crl_path);

/* spes_net_tls_identity returns this side's own identity (from its certificate). */
const spes_pki_identity *spes_net_tls_identity(const spes_net_tls *t);

/* spes_net_tls_stats copies the handshake counters. */
void spes_net_tls_stats(spes_net_tls *t, spes_net_stats *out);

/* spes_net_tls_free drops one reference. */
void spes_net_tls_free(spes_net_tls *t);

/* spes_net_pipe_peer returns the verified peer identity of an nng pipe made through
 * spes_net (SPES_ENOENT for a plain-tcp pipe). */
int spes_net_pipe_peer(nng_pipe p, spes_pki_identity *out);

/* ---- byte counters ---- */

/* spes_net_class says what a message carries, for the byte counters. */
typedef enum spes_net_class {
    SPES_NET_CONTROL = 0, /* control plane: join, heartbeat, announce, status, ... */
    SPES_NET_BLOB,        /* blob manifests and chunks, and the requests for them */
    SPES_NET_NCLASS
} spes_net_class;

/* spes_net_counters is what this process has exchanged with peers since it
 * started, per class: payload bytes (nng message bodies: spes envelopes and
 * bulk replies, without nng's 12 bytes of framing per message or TLS's
 * records) and messages, counted once nng has sent or delivered a message,
 * on every endpoint of spes_net and spes_blob. docs/counters.md has the exact rules. */
typedef struct spes_net_counters {
    uint64_t sent_bytes[SPES_NET_NCLASS];
    uint64_t received_bytes[SPES_NET_NCLASS];
    uint64_t sent_msgs[SPES_NET_NCLASS];
    uint64_t received_msgs[SPES_NET_NCLASS];
} spes_net_counters;

/* spes_net_counters_get copies this process's counters (thread-safe, any thread). */
void spes_net_counters_get(spes_net_counters *out);

/* spes_net_counters_sent returns the payload bytes sent, all classes together. */
uint64_t spes_net_counters_sent(const spes_net_counters *c);

/* spes_net_counters_received returns the payload bytes received, all classes together. */
uint64_t spes_net_counters_received(const spes_net_counters *c);

/* ---- server: a rep0 socket answering requests with a pool of contexts ---- */

typedef struct spes_net_server spes_net_server;
typedef struct spes_net_request spes_net_request;

/* spes_net_handler is called on an nng thread for each request; it must eventually
 * answer with spes_net_reply or spes_net_request_drop (possibly from another thread).
 * The context stays busy until then. */
typedef void (*spes_net_handler)(void *arg, spes_net_request *req);

/* spes_net_lane is one class of requests: its handler and how many of its
 * requests are handled at once. A lane whose requests are all busy (a slow
 * handler, replies its peers do not read) holds only its own contexts, never
 * another lane's; its next requests wait in the server's queue. */
typedef struct spes_net_lane {
    spes_net_handler handler;
    void *arg;
    int contexts; /* default 8 */
} spes_net_lane;

/* spes_net_classify returns the lane of a request (an index >= nlanes drops it). */
typedef int (*spes_net_classify)(void *arg, const void *data, size_t len);

/* spes_net_server_opts configures spes_net_server_open. Limits left 0 take the
 * SPES_NET_* defaults above. */
typedef struct spes_net_server_opts {
    const char *url;     /* tls+tcp://127.0.0.1:0, tls+tcp://[::1]:7000, tcp://... */
    spes_net_tls *tls;   /* required unless plain */
    unsigned peer_roles; /* SPES_ROLE_MASK(SPES_ROLE_NODE) | ...; 0 = node and operator */
    int plain;           /* 1 allows tcp:// without TLS (tests only) */
    int contexts;        /* concurrent requests in flight (default 8) */
    size_t max_msg;      /* largest request accepted (default SPES_NET_MAX_MSG_DEFAULT) */
    spes_net_handler handler;
    void *arg;
    /* lanes: with nlanes > 0, classify picks each request's lane and
     * handler, arg and contexts above are not used */
    int nlanes;
    spes_net_lane lanes[SPES_NET_MAX_LANES];
    spes_net_classify classify;
    void *classify_arg;
    int queue;                /* requests waiting for a busy lane; one more is dropped */
    int send_timeout_ms;      /* see SPES_NET_SEND_TIMEOUT_MS */
    int max_inflight;         /* see SPES_NET_MAX_INFLIGHT */
    int handshake_timeout_ms; /* see SPES_NET_HANDSHAKE_TIMEOUT_MS */
    int idle_timeout_ms;      /* see SPES_NET_IDLE_TIMEOUT_MS */
    int max_conns;            /* see SPES_NET_MAX_CONNS */
    int max_conns_per_addr;   /* see SPES_NET_MAX_CONNS_PER_ADDR */
} spes_net_server_opts;

/* spes_net_server_stats counts what a server's limits refused or ended. */
typedef struct spes_net_server_stats {
    uint64_t conns_refused;      /* connections over a cap */
    uint64_t handshakes_expired; /* not through TLS and SP negotiation in time */
    uint64_t idle_closed;        /* no request within the idle deadline */
    uint64_t send_timeouts;      /* a reply not taken in time: connection closed */
    uint64_t inflight_exceeded;  /* too many requests unanswered: connection closed */
    uint64_t queue_full;         /* requests dropped: lane busy and queue full */
    uint64_t listener_restarts;  /* the listener stopped taking connections and was restarted */
    int conns;                   /* connections through negotiation, now */
    int pending;                 /* accepted connections not through it, at the last look */
} spes_net_server_stats;

/* spes_net_server_open listens and starts answering; port 0 binds a free port. */
int spes_net_server_open(spes_net_server **out, const spes_net_server_opts *o);

/* spes_net_server_port returns the bound TCP port. */
int spes_net_server_port(const spes_net_server *s);

/* spes_net_server_close stops listening, closes connections and waits until no handler
 * runs; requests not yet answered are dropped. */
void spes_net_server_close(spes_net_server *s);

/* spes_net_server_get_stats copies the server's counters. */
void spes_net_server_get_stats(spes_net_server *s, spes_net_server_stats *out);

/* spes_net_server_drop_revoked closes the live connections whose peer certificate the
 * revocation list now in force revokes (call after spes_net_tls_reload_crl); returns
 * how many it closed. Without it a revoked peer is refused at its next connection. */
int spes_net_server_drop_revoked(spes_net_server *s);

/* spes_net_request_data returns the request bytes (valid until reply/drop). */
const void *spes_net_request_data(const spes_net_request *r, size_t *len);

/* spes_net_request_peer returns the sender's verified identity (role NONE on plain tcp). */
const spes_pki_identity *spes_net_request_peer(const spes_net_request *r);

/* spes_net_request_set_class says what a request carries (SPES_NET_CONTROL
 * until set): its bytes and its reply's are counted in that class. */
void spes_net_request_set_class(spes_net_request *r, spes_net_class cls);

/* spes_net_reply sends the answer and releases the request (any thread). */
int spes_net_reply(spes_net_request *r, const void *data, size_t len);

/* spes_net_reply_alloc returns a reply body of len bytes to fill in place (a
 * large reply then costs no copy), or NULL if out of memory; send it with
 * spes_net_reply_send. The request's bytes stay valid until then. A later
 * spes_net_reply or spes_net_request_drop discards the buffer. */
void *spes_net_reply_alloc(spes_net_request *r, size_t len);

/* spes_net_reply_send sends the buffer of spes_net_reply_alloc and releases the request. */
int spes_net_reply_send(spes_net_request *r);

/* spes_net_request_drop releases the request without an answer (the caller times out). */
void spes_net_request_drop(spes_net_request *r);

/* ---- client: a req0 socket dialing one peer, reconnecting with backoff ---- */

typedef struct spes_net_client spes_net_client;

/* spes_net_client_opts configures spes_net_client_open. */
typedef struct spes_net_client_opts {
    const char *url;
    spes_net_tls *tls;     /* required unless plain */
    const char *peer_name; /* expected server CN, NULL accepts any name */
    unsigned peer_roles;   /* 0 = node (only nodes serve) */
    int plain;
    int reconnect_min_ms;   /* default 100 */
    int reconnect_max_ms;   /* default 10000 (exponential backoff between) */
    int wait_connect;       /* 1: open fails unless the first connection succeeds */
    int connect_timeout_ms; /* how long wait_connect waits (default 5000) */
    size_t max_msg;         /* largest reply accepted */
} spes_net_client_opts;

/* spes_net_client_open creates the socket and starts dialing. */
int spes_net_client_open(spes_net_client **out, const spes_net_client_opts *o);

/* SPES_NET_CALL_TIMEOUT_MS is the timeout of a call given timeout_ms <= 0. */
#define SPES_NET_CALL_TIMEOUT_MS 30000

/* spes_net_call sends a request and waits up to timeout_ms (<= 0: the default) for
 * the reply, which is returned in a malloc'd buffer (*rep, caller frees). Blocks: not
 * for the loop thread. SPES_ETIMEDOUT if no reply came (including when the peer
 * refused our certificate). */
int spes_net_call(spes_net_client *c, const void *req, size_t len, int timeout_ms, void **rep,
                  size_t *rep_len);

/* spes_net_reply_cb receives an async reply (err 0) or failure, on an nng thread;
 * rep is valid only during the call. */
typedef void (*spes_net_reply_cb)(void *arg, int err, const void *rep, size_t len);

/* spes_net_call_async sends a request (timeout_ms <= 0: the default); cb runs exactly
 * once, on an nng thread. */
int spes_net_call_async(spes_net_client *c, const void *req, size_t len, int timeout_ms, spes_net_reply_cb cb,
                        void *arg);

/* spes_net_client_abort_calls makes every async call in flight complete now
 * with an error (its callback still runs once, on an nng thread); calls
 * started afterwards are not affected. For a shutdown that must not wait out
 * the timeouts of calls to a peer that is gone. */
void spes_net_client_abort_calls(spes_net_client *c);

/* spes_net_client_drop_revoked is spes_net_server_drop_revoked for a client's connection. */
int spes_net_client_drop_revoked(spes_net_client *c);

/* spes_net_client_close closes the socket; outstanding async calls complete with an error. */
void spes_net_client_close(spes_net_client *c);

#endif
