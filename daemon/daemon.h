/* daemon.h: the spesd daemon (`spesd run`): one libuv loop owns all state.
 * Other threads (nng callbacks, the training worker) never touch that state:
 * they post a spes_event with spes_daemon_post, which wakes the loop through
 * uv_async_send. Requests arrive on the TLS server (peers, remote operators)
 * and on the unix control socket (local operator); both are decoded and
 * answered on the loop. The coordinator part exists only on the coordinator;
 * the node part (training and syncing) exists on every daemon. */
#ifndef SPES_DAEMON_DAEMON_H
#define SPES_DAEMON_DAEMON_H

#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "core/clock.h"
#include "daemon/dconfig.h"
#include "net/net.h"

struct spes_coord;
struct spes_node;

/* spes_event_kind says what a posted event carries. */
enum spes_event_kind {
    SPES_EV_REQUEST = 1, /* a network request: req, data, peer */
    SPES_EV_CALLBACK,    /* run fn(arg) on the loop (async replies, worker results) */
};

/* spes_event is one unit of work handed to the loop. */
typedef struct spes_event {
    int kind;
    spes_net_request *req; /* SPES_EV_REQUEST: answer with spes_net_reply */
    uint8_t *data;         /* SPES_EV_REQUEST: a copy of the request bytes */
    size_t len;
    spes_pki_identity peer; /* SPES_EV_REQUEST: verified sender */
    void (*fn)(void *arg);  /* SPES_EV_CALLBACK */
    void *arg;
    struct spes_event *next;
} spes_event;

/* spes_reply_fn sends a reply envelope back to whoever asked (TLS peer or control socket). */
typedef void (*spes_reply_fn)(void *ctx, const uint8_t *data, size_t len);

/* spes_daemon is the whole daemon's state. */
typedef struct spes_daemon {
    spes_dconfig cfg;
    char config_path[512]; /* re-read on SIGHUP for what can change (log level) */
    uv_loop_t loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t tick;
    uv_async_t wake;
    uv_pipe_t control;
    int control_open;
    struct spes_control_conn *control_conns; /* control.c's open connections */
    pthread_mutex_t mu;
    spes_event *head, *tail; /* inbox, guarded by mu */
    spes_net_tls *tls;
    spes_net_server *server;        /* NULL for a daemon with no listen URL (outbound only) */
    struct spes_blob_push_rx *push; /* the coordinator's: blobs pushed by nodes nobody can dial */
    int lock_fd;
    int stopping;
    int exit_code;
    uint64_t started_ms;
    struct spes_coord *coord; /* NULL unless this daemon coordinates */
    struct spes_node *node;
    struct spes_dmetrics *metrics; /* NULL unless the config sets "metrics" (dmetrics.h) */
} spes_daemon;

/* spes_daemon_post hands an event to the loop; callable from any thread. */
void spes_daemon_post(spes_daemon *d, spes_event *ev);

/* spes_daemon_call_on_loop runs fn(arg) on the loop soon; callable from any thread. */
int spes_daemon_call_on_loop(spes_daemon *d, void (*fn)(void *), void *arg);

/* spes_daemon_handle answers one decoded request (envelope bytes) from peer;
 * reply is called exactly once, on the loop, with the reply envelope. */
void spes_daemon_handle(spes_daemon *d, const uint8_t *data, size_t len, const spes_pki_identity *peer,
                        spes_reply_fn reply, void *ctx);

/* spes_daemon_reply_error encodes an Error envelope and passes it to reply. */
void spes_daemon_reply_error(spes_reply_fn reply, void *ctx, int err, int in_reply_to, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* spes_daemon_stopped is called by the node once it has left the run: the loop ends. */
void spes_daemon_stopped(spes_daemon *d);

/* spes_daemon_tick_ms is the period of the daemon's tick (heartbeats, the polls
 * for an awaited commit, failure detection, round deadlines). */
uint64_t spes_daemon_tick_ms(const spes_dconfig *cfg);

/* spes_control_open starts the unix control socket (mode 0660). */
int spes_control_open(spes_daemon *d);

/* spes_control_close stops it and removes the socket file. */
void spes_control_close(spes_daemon *d);

#endif
