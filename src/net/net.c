/* net.c: request/reply endpoints on nng (rep0 server with a context pool, req0
 * client with reconnect backoff), over the spes TLS engine or, only when asked
 * explicitly, plain tcp. Callbacks run on nng threads (see net.h); nothing here
 * touches a libuv loop. Never trusts a message's sender without its verified
 * identity, and never accepts a message larger than the endpoint's limit.
 * A server bounds what one connection can hold: its requests run on their
 * lane's contexts only, a reply it does not take within the send deadline or
 * one request too many quarantines it, and a guard thread closes quarantined
 * and idle connections and ends accepted sockets that stay half-open or exceed
 * the connection caps (guard.c; docs/security.md lists every limit). */
#include "net/net_internal.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <time.h>

enum { ST_RECV = 0, ST_WAIT, ST_HANDLER, ST_SEND };

/* pipe_reg tracks a client's live TLS connections and their peers, so that a
 * reloaded revocation list can close those it now revokes (nng 1.5 cannot list pipes). */
typedef struct peer_pipe {
    nng_pipe p;
    spes_pki_identity id;
} peer_pipe;

typedef struct pipe_reg {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled when a connection is added */
    peer_pipe *v;
    size_t n, cap;
    uint64_t added; /* connections ever added (plain ones too) */
    int live;       /* connections up now (plain ones too) */
} pipe_reg;

/* srv_conn is one of a server's connections (an nng pipe), with what its limits need. */
typedef struct srv_conn {
    nng_pipe p;
    uint32_t id;
    spes_pki_identity peer;
    int has_peer;
    spes__addr local, remote;
    uint64_t last_ms; /* added, or its last request or reply */
    int inflight;     /* requests received and not yet answered */
    const char *kill; /* set: quarantined (no more replies); the guard closes it, saying why */
    uint64_t kill_ms; /* when it was quarantined */
} srv_conn;

struct spes_net_request {
    spes_net_server *srv;
    nng_ctx ctx;
    nng_aio *aio;
    nng_msg *msg;
    nng_msg *rep; /* spes_net_reply_alloc's reply, not sent yet */
    spes_pki_identity peer;
    uint32_t pipe; /* the connection it came on (0: none) */
    int lane;
    int state;
    spes_net_class cls;     /* for the byte counters */
    size_t rep_len;         /* the reply being sent, counted once it is out */
    spes__deadline send_dl; /* of the reply being sent */
    spes_net_request *next; /* in its lane's wait queue, or a thread's run list */
};

typedef struct srv_lane {
    spes_net_lane l;
    int busy;
    spes_net_request *head, *tail; /* waiting */
} srv_lane;

struct spes_net_server {
    nng_socket sock;
    nng_listener l;
    spes__tls_bind *bind; /* the listener's TLS binding: its count of SP headers heard */
    size_t max_msg;
    uint64_t adds; /* atomic: connections that reached the pipe-add event (kept or refused) */
    /* the listener watchdog (guard thread only): see listener_watch */
    uint64_t watch_adds, watch_heard_base, watch_since, watch_last;
    char relisten_url[300]; /* set while listening again has failed */
    int port;
    int plain;
    unsigned peer_roles;
    int nlanes;
    srv_lane lanes[SPES_NET_MAX_LANES];
    spes_net_classify classify;
    void *classify_arg;
    int nreq;
    spes_net_request *reqs;
    spes_net_tls *tls;
    char url[256];
    /* limits */
    int queue, send_timeout_ms, max_inflight, handshake_ms, idle_ms, max_conns, max_per_addr;
    /* connections, lanes and counters, under mu */
    pthread_mutex_t mu;
    srv_conn *conns;
    int nconns, cap_conns;
    int waiting;
    int closing; /* atomic: set by spes_net_server_close; callbacks then start nothing */
    /* op_mu makes "not closing, so start an operation on a context" one step: the close sets
     * closing under it, so no operation starts once the close has begun (start_op) */
    pthread_mutex_t op_mu;
    spes_net_server_stats st;
    /* the guard thread (see guard_main) */
    pthread_t guard;
    int guard_started, guard_stop;
    struct pend *pend; /* accepted sockets seen before, with when */
    int npend, cap_pend;
};

struct acall;

struct spes_net_client {
    nng_socket sock;
    nng_dialer d;
    spes_net_tls *tls;
    pipe_reg reg;
    char url[256];
    spes_net_client_opts o; /* as opened (url, peer_name: ours), for a redial */
    char peer_name[SPES_PKI_NAME_MAX + 1];
    pthread_mutex_t calls_mu; /* guards calls, abort_gen, steps_seen and redials */
    struct acall *calls;      /* async calls in flight */
    unsigned abort_gen;       /* calls started before the last abort have an older one */
    unsigned long steps_seen; /* spes__clock_steps when last looked at */
};

int spes__nng_err(int rv, const char *what, const char *url)
{
    int code = SPES_ENET;
    if (rv == NNG_ETIMEDOUT)
        code = SPES_ETIMEDOUT;
    else if (rv == NNG_ENOMEM)
        code = SPES_ENOMEM;
    else if (rv == NNG_EPEERAUTH || rv == NNG_ECRYPTO)
        code = SPES_EAUTH;
    else if (rv == NNG_EINVAL || rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP)
        code = SPES_EINVAL;
    return spes_errf(code, "%s%s%s: %s", url ? url : "", url ? ": " : "", what, nng_strerror(rv));
}

int spes_net_pipe_peer(nng_pipe p, spes_pki_identity *out)
{
    bool v = false;
    spes__tls_peer_tl_set = 0;
    memset(&spes__tls_peer_tl, 0, sizeof spes__tls_peer_tl);
    int rv = nng_pipe_get_bool(p, NNG_OPT_TLS_VERIFIED, &v);
    if (rv)
        return spes_errf(SPES_ENOENT, "pipe has no TLS peer: %s", nng_strerror(rv));
    if (!v || !spes__tls_peer_tl_set)
        return spes_errf(SPES_EAUTH, "pipe's peer is not verified by the spes TLS engine");
    *out = spes__tls_peer_tl;
    return 0;
}

static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    pipe_reg *r = arg;
    spes_pki_identity id;
    if (ev == NNG_PIPE_EV_ADD_POST) {
        int tls = spes_net_pipe_peer(p, &id) == 0;
        pthread_mutex_lock(&r->mu);
        r->added++;
        r->live++;
        pthread_cond_broadcast(&r->cv);
        if (!tls) {
            pthread_mutex_unlock(&r->mu);
            return;
        }
        if (r->n == r->cap) {
            size_t nc = r->cap ? r->cap * 2 : 16;
            peer_pipe *nv = realloc(r->v, nc * sizeof *nv);
            if (nv) {
                r->v = nv;
                r->cap = nc;
            }
        }
        if (r->n < r->cap)
            r->v[r->n++] = (peer_pipe){p, id};
        pthread_mutex_unlock(&r->mu);
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        pthread_mutex_lock(&r->mu);
        if (r->live > 0)
            r->live--;
        for (size_t i = 0; i < r->n; i++) {
            if (nng_pipe_id(r->v[i].p) == nng_pipe_id(p)) {
                r->v[i] = r->v[--r->n];
                break;
            }
        }
        pthread_mutex_unlock(&r->mu);
    }
}

static int reg_watch(pipe_reg *r, nng_socket sock, const char *url)
{
    int rv = nng_pipe_notify(sock, NNG_PIPE_EV_ADD_POST, pipe_event, r);
    if (rv == 0)
        rv = nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, pipe_event, r);
    return rv ? spes__nng_err(rv, "cannot watch connections", url) : 0;
}

static int reg_drop_revoked(pipe_reg *r, spes_net_tls *t, const char *url)
{
    if (!t)
        return 0;
    pthread_mutex_lock(&r->mu);
    size_t n = r->n;
    peer_pipe *copy = n ? malloc(n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, r->v, n * sizeof *copy);
    pthread_mutex_unlock(&r->mu);
    int dropped = 0;
    for (size_t i = 0; copy && i < n; i++) {
        if (!spes__tls_is_revoked(t, copy[i].id.serial))
            continue;
        log_warnx("%s: closing the connection of '%s': its certificate (serial %s) is revoked", url,
                  copy[i].id.name, copy[i].id.serial);
        nng_pipe_close(copy[i].p); /* its REM_POST event unregisters it */
        dropped++;
    }
    free(copy);
    return dropped;
}

/* check_url enforces: tls+tcp needs TLS material, tcp needs the explicit plain flag. */
static int check_url(const char *url, int plain, const spes_net_tls *tls)
{
    if (!url)
        return spes_errf(SPES_EINVAL, "no URL given");
    int is_tls = strncmp(url, "tls+tcp://", 10) == 0 || strncmp(url, "tls+tcp4://", 11) == 0 ||
                 strncmp(url, "tls+tcp6://", 11) == 0;
    int is_tcp =
        strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tcp4://", 7) == 0 || strncmp(url, "tcp6://", 7) == 0;
    if (is_tls && plain)
        return spes_errf(SPES_EINVAL, "%s: plain mode wants a tcp:// URL", url);
    if (is_tls && !tls)
        return spes_errf(SPES_EINVAL, "%s: tls+tcp needs the run CA, a certificate and a key", url);
    if (is_tcp && !plain)
        return spes_errf(SPES_EINVAL, "%s: plain tcp without TLS is refused unless explicitly requested",
                         url);
    if (!is_tls && !is_tcp)
        return spes_errf(SPES_EINVAL, "%s: URL must be tls+tcp://HOST:PORT (or [IPv6]:PORT)", url);
    return 0;
}

/* ---- server ---- */

/* Every guard sleeps on one condition variable: an accepted connection
 * (spes__guard_kick, from the TLS engine) or a connection to close wakes them. */
static pthread_mutex_t guard_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t guard_cv;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static uint64_t guard_kicks;

static void guard_init(void)
{
    spes_cond_init_mono(&guard_cv);
}

void spes__guard_kick(void)
{
    pthread_once(&guard_once, guard_init);
    pthread_mutex_lock(&guard_mu);
    guard_kicks++;
    pthread_cond_broadcast(&guard_cv);
    pthread_mutex_unlock(&guard_mu);
}

/* find_conn returns the connection with pipe id (NULL if gone); under s->mu. */
static srv_conn *find_conn(spes_net_server *s, uint32_t id)
{
    for (int i = 0; i < s->nconns; i++)
        if (s->conns[i].id == id)
            return &s->conns[i];
    return NULL;
}

/* kill_conn_locked quarantines a connection (under s->mu): it gets no more
 * replies and its requests are dropped; the guard closes it once nothing of it
 * is in flight. Never closed while a reply may be on its way into it: nng
 * 1.5.2 can strand a TLS pipe closed while its protocol hands it a message,
 * and the stranded teardown then blocks nng's reaper for every socket of the
 * process (see close.c). */
static void kill_conn_locked(spes_net_server *s, uint32_t id, const char *why)
{
    srv_conn *c = find_conn(s, id);
    if (c && !c->kill) {
        c->kill = why;
        c->kill_ms = spes_mono_ms();
        spes__guard_kick();
    }
}

/* QUARANTINE_MS is how long a quarantined connection with nothing in flight
 * waits before it is closed (a reply handed to its transport is on its way). */
#define QUARANTINE_MS 100

static int count_addr_locked(spes_net_server *s, const spes__addr *a)
{
    int n = 0;
    for (int i = 0; i < s->nconns; i++)
        n += memcmp(s->conns[i].remote.ip, a->ip, 16) == 0;
    return n;
}

/* server_pipe_event registers connections (refusing those over a cap, before
 * any request) and forgets them when they close. */
static void server_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    spes_net_server *s = arg;
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        __atomic_add_fetch(&s->adds, 1, __ATOMIC_RELEASE);
        srv_conn c = {.p = p, .id = (uint32_t)nng_pipe_id(p), .last_ms = spes_mono_ms()};
        nng_sockaddr sa;
        if (nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) == 0)
            spes__addr_from_nng(&c.remote, &sa);
        if (nng_pipe_get_addr(p, NNG_OPT_LOCADDR, &sa) == 0)
            spes__addr_from_nng(&c.local, &sa);
        c.has_peer = !s->plain && spes_net_pipe_peer(p, &c.peer) == 0;
        char ip[64];
        const char *refuse = NULL;
        pthread_mutex_lock(&s->mu);
        if (s->nconns >= s->max_conns)
            refuse = "the server has as many connections as it takes";
        else if (c.remote.ok && count_addr_locked(s, &c.remote) >= s->max_per_addr)
            refuse = "its address has as many connections as one address may";
        if (!refuse && s->nconns == s->cap_conns) {
            int nc = s->cap_conns ? 2 * s->cap_conns : 16;
            srv_conn *nv = realloc(s->conns, (size_t)nc * sizeof *nv);
            if (nv) {
                s->conns = nv;
                s->cap_conns = nc;
            }
        }
        if (!refuse && s->nconns == s->cap_conns)
            refuse = "out of memory";
        if (!refuse)
            s->conns[s->nconns++] = c;
        else
            s->st.conns_refused++;
        pthread_mutex_unlock(&s->mu);
        if (refuse) {
            log_warnx("%s: connection from %s ('%s') refused: %s", s->url,
                      spes__addr_str(&c.remote, ip, sizeof ip), c.has_peer ? c.peer.name : "-", refuse);
            nng_pipe_close(p);
        }
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < s->nconns; i++) {
            if (s->conns[i].id == (uint32_t)nng_pipe_id(p)) {
                s->conns[i] = s->conns[--s->nconns];
                break;
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
}

/* start_op starts a receive (m NULL) or the send of m on r's context, unless the server is
 * closing: then it starts nothing and frees m. Returns 1 if it started. nng 1.5.2 panics on an
 * operation started on a context while its socket closes, and a callback may be between its
 * check of closing and its start when the close begins; op_mu closes that window. */
static int start_op(spes_net_request *r, nng_msg *m)
{
    spes_net_server *s = r->srv;
    pthread_mutex_lock(&s->op_mu);
    int closing = __atomic_load_n(&s->closing, __ATOMIC_ACQUIRE);
    if (closing)
        nng_msg_free(m);
    else if (m)
        nng_ctx_send(r->ctx, r->aio);
    else
        nng_ctx_recv(r->ctx, r->aio);
    pthread_mutex_unlock(&s->op_mu);
    return !closing;
}

static void post_recv(spes_net_request *r)
{
    if (__atomic_load_n(&r->srv->closing, __ATOMIC_ACQUIRE))
        return; /* closing: no new operation on any context */
    r->state = ST_RECV;
    r->cls = SPES_NET_CONTROL;
    r->pipe = 0;
    nng_aio_set_timeout(r->aio, NNG_DURATION_INFINITE);
    start_op(r, NULL);
}

static int request_peer(spes_net_request *r)
{
    spes_net_server *s = r->srv;
    memset(&r->peer, 0, sizeof r->peer);
    if (s->plain)
        return 0;
    if (spes_net_pipe_peer(nng_msg_get_pipe(r->msg), &r->peer) != 0) {
        log_warnx("%s: request dropped: %s", s->url, spes_errmsg());
        return -1;
    }
    if (!(s->peer_roles & SPES_ROLE_MASK(r->peer.role))) {
        log_warnx("%s: request from '%s' dropped: a %s may not call here", s->url, r->peer.name,
                  spes_pki_role_name(r->peer.role));
        return -1;
    }
    return 0;
}

/* run_handler calls the handler of r's lane. A handler may answer at once, and
 * an answer may start a waiting request: those run from the outermost call on
 * this thread, one after another, never nested. */
static _Thread_local spes_net_request *tl_run_head, *tl_run_tail;
static _Thread_local int tl_running;

static void run_handler(spes_net_request *r)
{
    r->next = NULL;
    if (tl_run_tail)
        tl_run_tail->next = r;
    else
        tl_run_head = r;
    tl_run_tail = r;
    if (tl_running)
        return;
    tl_running = 1;
    while ((r = tl_run_head) != NULL) {
        tl_run_head = r->next;
        if (!tl_run_head)
            tl_run_tail = NULL;
        r->next = NULL;
        r->state = ST_HANDLER;
        srv_lane *ln = &r->srv->lanes[r->lane];
        ln->l.handler(ln->l.arg, r);
    }
    tl_running = 0;
}

/* request_done ends r's use of its lane and connection (the reply went out, timed
 * out, or there is none) and starts the next request waiting for that lane. */
static void request_done(spes_net_request *r)
{
    spes_net_server *s = r->srv;
    spes_net_request *next = NULL;
    if (__atomic_load_n(&s->closing, __ATOMIC_ACQUIRE))
        return; /* closing: nothing waiting is started */
    pthread_mutex_lock(&s->mu);
    srv_conn *c = r->pipe ? find_conn(s, r->pipe) : NULL;
    if (c) {
        c->inflight--;
        c->last_ms = spes_mono_ms();
        if (c->kill && c->inflight == 0)
            spes__guard_kick(); /* nothing of it in flight: it can be closed */
    }
    srv_lane *ln = &s->lanes[r->lane];
    if ((next = ln->head) != NULL) {
        ln->head = next->next;
        if (!ln->head)
            ln->tail = NULL;
        s->waiting--;
    } else {
        ln->busy--;
    }
    pthread_mutex_unlock(&s->mu);
    post_recv(r);
    if (next)
        run_handler(next);
}

/* admit counts a request received on its connection and in its lane: 1 run it
 * now, 0 it waits for its lane, -1 refused (its connection over its cap, the queue full). */
static int admit(spes_net_request *r)
{
    spes_net_server *s = r->srv;
    size_t len = nng_msg_len(r->msg);
    int lane = s->classify ? s->classify(s->classify_arg, nng_msg_body(r->msg), len) : 0;
    int rc = -1;
    r->pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(r->msg));
    pthread_mutex_lock(&s->mu);
    srv_conn *c = find_conn(s, r->pipe);
    if (!c || c->kill || lane < 0 || lane >= s->nlanes) {
        /* gone already, quarantined, or no lane takes it */
    } else if (c->inflight >= s->max_inflight) {
        s->st.inflight_exceeded++;
        kill_conn_locked(s, r->pipe, "more requests in flight than a connection may have");
    } else if (s->lanes[lane].busy < s->lanes[lane].l.contexts) {
        s->lanes[lane].busy++;
        rc = 1;
    } else if (s->waiting < s->queue) {
        srv_lane *ln = &s->lanes[lane];
        r->next = NULL;
        if (ln->tail)
            ln->tail->next = r;
        else
            ln->head = r;
        ln->tail = r;
        s->waiting++;
        rc = 0;
    } else {
        s->st.queue_full++;
    }
    if (rc >= 0) {
        c->inflight++;
        c->last_ms = spes_mono_ms();
        r->lane = lane;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static void server_cb(void *arg)
{
    spes_net_request *r = arg;
    spes_net_server *s = r->srv;
    int rv = nng_aio_result(r->aio);
    if (r->state == ST_SEND) {
        spes__deadline_disarm(&r->send_dl);
        if (rv)
            nng_msg_free(nng_aio_get_msg(r->aio));
        else
            spes__net_count(r->cls, SPES__NET_SENT, r->rep_len);
        if (rv == NNG_ECLOSED || __atomic_load_n(&s->closing, __ATOMIC_ACQUIRE))
            return;
        if (rv == NNG_ETIMEDOUT) {
            pthread_mutex_lock(&s->mu);
            s->st.send_timeouts++;
            kill_conn_locked(s, r->pipe, "it took no reply within the send deadline");
            pthread_mutex_unlock(&s->mu);
        }
        request_done(r);
        return;
    }
    if (rv) {
        if (rv != NNG_ECLOSED && rv != NNG_ECANCELED)
            post_recv(r);
        return;
    }
    r->msg = nng_aio_get_msg(r->aio);
    if (__atomic_load_n(&s->closing, __ATOMIC_ACQUIRE))
        return; /* the close frees r->msg */
    int adm = request_peer(r) != 0 ? -1 : admit(r);
    if (adm < 0) {
        spes__net_count(SPES_NET_CONTROL, SPES__NET_RECEIVED, nng_msg_len(r->msg));
        nng_msg_free(r->msg);
        r->msg = NULL;
        post_recv(r);
        return;
    }
    if (adm == 0) {
        r->state = ST_WAIT;
        return;
    }
    run_handler(r);
}

const void *spes_net_request_data(const spes_net_request *r, size_t *len)
{
    *len = r->msg ? nng_msg_len(r->msg) : 0;
    return r->msg ? nng_msg_body(r->msg) : NULL;
}

const spes_pki_identity *spes_net_request_peer(const spes_net_request *r)
{
    return &r->peer;
}

void spes_net_request_set_class(spes_net_request *r, spes_net_class cls)
{
    r->cls = cls;
}

/* request_release counts the request's bytes as received, in the class its
 * handler gave it (so here and not on arrival), and frees them. */
static void request_release(spes_net_request *r)
{
    if (r->msg)
        spes__net_count(r->cls, SPES__NET_RECEIVED, nng_msg_len(r->msg));
    nng_msg_free(r->msg);
    r->msg = NULL;
}

void *spes_net_reply_alloc(spes_net_request *r, size_t len)
{
    nng_msg_free(r->rep);
    r->rep = NULL;
    if (nng_msg_alloc(&r->rep, len) != 0) {
        r->rep = NULL;
        return NULL;
    }
    return nng_msg_body(r->rep);
}

int spes_net_reply_send(spes_net_request *r)
{
    nng_msg *m = r->rep;
    if (!m) {
        spes_net_request_drop(r);
        return spes_errf(SPES_EINVAL, "%s: no reply to send", r->srv->url);
    }
    r->rep = NULL;
    request_release(r);
    r->rep_len = nng_msg_len(m);
    spes_net_server *s = r->srv;
    pthread_mutex_lock(&s->mu);
    srv_conn *c = find_conn(s, r->pipe);
    int quarantined = c && c->kill;
    pthread_mutex_unlock(&s->mu);
    if (quarantined) { /* no more replies into it */
        nng_msg_free(m);
        request_done(r);
        return 0;
    }
    r->state = ST_SEND;
    nng_aio_set_msg(r->aio, m);
    spes__deadline_arm(&r->send_dl, r->aio, r->srv->send_timeout_ms);
    if (!start_op(r, m)) {
        nng_aio_set_msg(r->aio, NULL); /* freed: the server is closing */
        spes__deadline_disarm(&r->send_dl);
    }
    return 0;
}

int spes_net_reply(spes_net_request *r, const void *data, size_t len)
{
    void *body = spes_net_reply_alloc(r, len);
    if (!body) {
        spes_net_request_drop(r);
        return spes__nng_err(NNG_ENOMEM, "reply", r->srv->url);
    }
    if (len)
        memcpy(body, data, len);
    return spes_net_reply_send(r);
}

void spes_net_request_drop(spes_net_request *r)
{
    request_release(r);
    nng_msg_free(r->rep);
    r->rep = NULL;
    request_done(r);
}

/* ---- the guard: deadlines and caps on connections ---- */

/* pend is an accepted socket the guard has seen, and since when. */
typedef struct pend {
    unsigned long long ino;
    uint64_t first_ms;
    int seen;
    int ended; /* shut down already: nng closes it */
} pend;

static pend *pend_find(spes_net_server *s, unsigned long long ino)
{
    for (int i = 0; i < s->npend; i++)
        if (s->pend[i].ino == ino)
            return &s->pend[i];
    return NULL;
}

static int is_conn_locked(spes_net_server *s, const spes__sock *k)
{
    for (int i = 0; i < s->nconns; i++) {
        const srv_conn *c = &s->conns[i];
        if (c->remote.port == k->remote.port && memcmp(c->remote.ip, k->remote.ip, 16) == 0 &&
            c->local.port == k->local.port)
            return 1;
    }
    return 0;
}

/* newest_first orders socket indices by when the guard first saw them, newest
 * first (sort_since: the guard thread's own array; one guard sorts at a time per thread). */
static _Thread_local const uint64_t *sort_since;

static int newest_first(const void *a, const void *b)
{
    uint64_t x = sort_since[*(const int *)a], y = sort_since[*(const int *)b];
    return x > y ? -1 : x < y;
}

/* guard_sockets ends accepted sockets that are not through negotiation within
 * the handshake deadline, and the newest of them beyond the connection caps. */
static void guard_sockets(spes_net_server *s, uint64_t now)
{
    spes__sock *v = NULL;
    int n = 0;
    if (spes__sock_list(s->port, &v, &n) != 0)
        return;
    for (int i = 0; i < s->npend; i++)
        s->pend[i].seen = 0;
    int *pending = calloc((size_t)(n ? n : 1), sizeof *pending);
    int *order = calloc((size_t)(n ? n : 1), sizeof *order);
    int *ended = calloc((size_t)(n ? n : 1), sizeof *ended);
    uint64_t *since = calloc((size_t)(n ? n : 1), sizeof *since);
    if (!pending || !order || !ended || !since)
        goto done;
    for (int i = 0; i < n; i++) {
        pend *p = pend_find(s, v[i].ino);
        if (!p && s->npend == s->cap_pend) {
            int nc = s->cap_pend ? 2 * s->cap_pend : 64;
            pend *nv = realloc(s->pend, (size_t)nc * sizeof *nv);
            if (!nv)
                goto done;
            s->pend = nv;
            s->cap_pend = nc;
        }
        if (!p) {
            p = &s->pend[s->npend++];
            *p = (pend){.ino = v[i].ino, .first_ms = now};
        }
        p->seen = 1;
        since[i] = p->first_ms;
        ended[i] = p->ended;
    }
    for (int i = 0; i < s->npend;) /* forget sockets that are gone */
        if (!s->pend[i].seen)
            s->pend[i] = s->pend[--s->npend];
        else
            i++;
    pthread_mutex_lock(&s->mu);
    int npending = 0, total = s->nconns;
    for (int i = 0; i < n; i++) {
        pending[i] = !ended[i] && !is_conn_locked(s, &v[i]);
        npending += pending[i];
        total += pending[i];
    }
    s->st.pending = npending;
    pthread_mutex_unlock(&s->mu);
    /* the caps end the newest pending sockets first */
    for (int i = 0; i < n; i++)
        order[i] = i;
    sort_since = since;
    qsort(order, (size_t)n, sizeof *order, newest_first);
    for (int pass = 0; pass < 2; pass++) {
        for (int j = 0; j < n; j++) {
            int i = order[j];
            if (!pending[i])
                continue;
            char ip[64];
            const char *why = NULL;
            if (pass == 0 && now - since[i] >= (uint64_t)s->handshake_ms) {
                why = "not through the TLS handshake within the deadline";
            } else if (pass == 1) {
                int same = 0;
                pthread_mutex_lock(&s->mu);
                same = count_addr_locked(s, &v[i].remote);
                pthread_mutex_unlock(&s->mu);
                for (int k = 0; k < n; k++)
                    same += pending[k] && memcmp(v[k].remote.ip, v[i].remote.ip, 16) == 0;
                if (total > s->max_conns)
                    why = "over the server's connection cap";
                else if (same > s->max_per_addr)
                    why = "over the connection cap of its address";
            }
            if (!why)
                continue;
            pend *pe = pend_find(s, v[i].ino);
            if (pe)
                pe->ended = 1;
            if (spes__sock_end(v[i].fd, v[i].ino)) {
                log_warnx("%s: connection from %s closed: %s", s->url,
                          spes__addr_str(&v[i].remote, ip, sizeof ip), why);
                pthread_mutex_lock(&s->mu);
                if (pass == 0)
                    s->st.handshakes_expired++;
                else
                    s->st.conns_refused++;
                pthread_mutex_unlock(&s->mu);
            }
            pending[i] = 0;
            total--;
        }
    }
done:
    free(pending);
    free(order);
    free(ended);
    free(since);
    free(v);
}

/* guard_conns closes the connections marked for it and those idle too long. */
static void guard_conns(spes_net_server *s, uint64_t now)
{
    enum { BATCH = 64 };
    nng_pipe close[BATCH];
    const char *why[BATCH];
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->nconns && n < BATCH; i++) {
        srv_conn *c = &s->conns[i];
        if (!c->kill && c->inflight == 0 && now - c->last_ms >= (uint64_t)s->idle_ms) {
            c->kill = "no request within the idle deadline";
            c->kill_ms = now;
            s->st.idle_closed++;
        }
        if (c->kill == NULL || c->kill[0] == '\0' || c->inflight > 0 || now - c->kill_ms < QUARANTINE_MS)
            continue;
        close[n] = c->p;
        why[n++] = c->kill;
        c->kill = ""; /* closing: marked, not again */
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++) {
        log_warnx("%s: closing connection %u: %s", s->url, nng_pipe_id(close[i]), why[i]);
        nng_pipe_close(close[i]);
    }
}

static void listener_watch(spes_net_server *s, uint64_t now);

static void *guard_main(void *arg)
{
    spes_net_server *s = arg;
    int period = s->handshake_ms / 4;
    period = period < 20 ? 20 : period > 500 ? 500 : period;
    pthread_mutex_lock(&guard_mu);
    while (!s->guard_stop) {
        uint64_t kicks = guard_kicks;
        pthread_mutex_unlock(&guard_mu);
        uint64_t now = spes_mono_ms();
        guard_conns(s, now);
        guard_sockets(s, now);
        listener_watch(s, now);
        struct timespec ts;
        spes_mono_deadline(&ts, period);
        pthread_mutex_lock(&guard_mu);
        if (!s->guard_stop && kicks == guard_kicks)
            pthread_cond_timedwait(&guard_cv, &guard_mu, &ts);
        if (!s->guard_stop && guard_kicks != kicks) { /* scan at most every 10 ms */
            pthread_mutex_unlock(&guard_mu);
            usleep(10000);
            pthread_mutex_lock(&guard_mu);
        }
    }
    pthread_mutex_unlock(&guard_mu);
    return NULL;
}

static void guard_stop(spes_net_server *s)
{
    if (!s->guard_started)
        return;
    pthread_mutex_lock(&guard_mu);
    s->guard_stop = 1;
    pthread_cond_broadcast(&guard_cv);
    pthread_mutex_unlock(&guard_mu);
    pthread_join(s->guard, NULL);
    s->guard_started = 0;
}

/* server_listen starts s's listener on url (s->tls, s->plain, s->max_msg set). */
static int server_listen(spes_net_server *s, const char *url)
{
    int rv = nng_listener_create(&s->l, s->sock, url);
    if (rv)
        return spes__nng_err(rv, "cannot create listener", url);
    if (!s->plain) {
        nng_tls_config *cfg = NULL;
        spes__tls_bind *b = NULL;
        int rc = spes__tls_config_alloc(&cfg, s->tls, 1, s->peer_roles, NULL, &b);
        if (rc)
            return rc;
        rv = nng_listener_set_ptr(s->l, NNG_OPT_TLS_CONFIG, cfg);
        nng_tls_config_free(cfg); /* the listener holds it */
        if (rv) {
            spes__tls_bind_release(b);
            return spes__nng_err(rv, "cannot set TLS config", url);
        }
        spes__tls_bind_release(s->bind);
        s->bind = b;
    }
    if ((rv = nng_listener_set_size(s->l, NNG_OPT_RECVMAXSZ, s->max_msg)) != 0 ||
        (rv = nng_listener_start(s->l, 0)) != 0)
        return spes__nng_err(rv, "cannot listen", url);
    if ((rv = nng_listener_get_int(s->l, NNG_OPT_TCP_BOUND_PORT, &s->port)) != 0)
        return spes__nng_err(rv, "cannot read bound port", url);
    return 0;
}

/* WATCH_MS: how long peers' SP headers may go unanswered by any pipe before the listener
 * counts as dead. nng 1.5.2 (fixed upstream in 1.6.0, nanomsg/nng#1518) stops accepting
 * for good when a connection's negotiation ends with NNG_ECLOSED or NNG_ECANCELED, which
 * happens when the socket is ended between two negotiation steps (our caps and handshake
 * deadline end such sockets). The listener then still completes TLS and reads each
 * peer's SP header but never adds a pipe: the node is deaf until restarted. */
#define WATCH_MS 3000
#define WATCH_GAP_MS 30000

/* listener_watch restarts s's listener on its bound port when at least two peers' valid SP
 * headers arrived, none followed by a pipe, for WATCH_MS. After reading a valid header nng
 * does no more I/O before it adds the pipe (or our caps refuse it), so neither a peer that
 * stalls nor one that sends garbage or hangs up can trigger it; and it restarts at most once
 * per WATCH_GAP_MS whatever happens. Guard thread only. */
static void listener_watch(spes_net_server *s, uint64_t now)
{
    if (!s->bind)
        return;
    if (s->relisten_url[0]) { /* the last try to listen again failed: once a second until one works */
        if (now - s->watch_last < 1000)
            return;
        s->watch_last = now;
        nng_listener_close(s->l); /* the one whose start failed */
        if (server_listen(s, s->relisten_url) != 0)
            return;
        log_warnx("%s: listening again on %s", s->url, s->relisten_url);
        s->relisten_url[0] = '\0';
    } else {
        uint64_t adds = __atomic_load_n(&s->adds, __ATOMIC_ACQUIRE);
        uint64_t heard = __atomic_load_n(&s->bind->heard, __ATOMIC_ACQUIRE);
        if (adds != s->watch_adds || heard < s->watch_heard_base + 2) {
            if (adds != s->watch_adds) {
                s->watch_adds = adds;
                s->watch_heard_base = heard;
            }
            s->watch_since = 0;
            return;
        }
        if (!s->watch_since) {
            s->watch_since = now;
            return;
        }
        if (now - s->watch_since < WATCH_MS || (s->watch_last && now - s->watch_last < WATCH_GAP_MS))
            return;
        s->watch_last = now;
        const char *colon = strrchr(s->url, ':');
        snprintf(s->relisten_url, sizeof s->relisten_url, "%.*s:%d",
                 colon ? (int)(colon - s->url) : (int)strlen(s->url), s->url, s->port);
        log_warnx("%s: the listener took no connection for %llu peers' handshakes in %d ms (nng 1.5.2 stops "
                  "accepting after some failed handshakes); listening again on %s",
                  s->url, (unsigned long long)(heard - s->watch_heard_base), WATCH_MS, s->relisten_url);
        nng_listener_close(s->l);
        if (server_listen(s, s->relisten_url) != 0) {
            log_warnx("%s: cannot listen again: %s; trying once a second", s->url, spes_errmsg());
            return;
        }
        s->relisten_url[0] = '\0';
    }
    pthread_mutex_lock(&s->mu);
    s->st.listener_restarts++;
    pthread_mutex_unlock(&s->mu);
    s->watch_adds = __atomic_load_n(&s->adds, __ATOMIC_ACQUIRE);
    s->watch_heard_base = __atomic_load_n(&s->bind->heard, __ATOMIC_ACQUIRE);
    s->watch_since = 0;
}

#define OR_DEFAULT(v, d) ((v) > 0 ? (v) : (d))

/* server_config copies the options' lanes and limits into s. */
static int server_config(spes_net_server *s, const spes_net_server_opts *o)
{
    if (o->nlanes > SPES_NET_MAX_LANES || (o->nlanes > 0 && !o->classify))
        return spes_errf(SPES_EINVAL, "%s: %d lanes (at most %d, with a classifier)", o->url, o->nlanes,
                         SPES_NET_MAX_LANES);
    s->nlanes = o->nlanes > 0 ? o->nlanes : 1;
    s->classify = o->nlanes > 0 ? o->classify : NULL;
    s->classify_arg = o->classify_arg;
    s->nreq = 0;
    for (int i = 0; i < s->nlanes; i++) {
        s->lanes[i].l = o->nlanes > 0 ? o->lanes[i] : (spes_net_lane){o->handler, o->arg, o->contexts};
        s->lanes[i].l.contexts = OR_DEFAULT(s->lanes[i].l.contexts, 8);
        if (!s->lanes[i].l.handler)
            return spes_errf(SPES_EINVAL, "%s: lane %d has no request handler", o->url, i);
        s->nreq += s->lanes[i].l.contexts;
    }
    s->queue = OR_DEFAULT(o->queue, SPES_NET_QUEUE);
    s->nreq += s->queue; /* every waiting request holds a context: the lanes' own stay free */
    s->send_timeout_ms = OR_DEFAULT(o->send_timeout_ms, SPES_NET_SEND_TIMEOUT_MS);
    s->max_inflight = OR_DEFAULT(o->max_inflight, SPES_NET_MAX_INFLIGHT);
    s->handshake_ms = OR_DEFAULT(o->handshake_timeout_ms, SPES_NET_HANDSHAKE_TIMEOUT_MS);
    s->idle_ms = OR_DEFAULT(o->idle_timeout_ms, SPES_NET_IDLE_TIMEOUT_MS);
    s->max_conns = OR_DEFAULT(o->max_conns, SPES_NET_MAX_CONNS);
    s->max_per_addr = OR_DEFAULT(o->max_conns_per_addr, SPES_NET_MAX_CONNS_PER_ADDR);
    return 0;
}

int spes_net_server_open(spes_net_server **out, const spes_net_server_opts *o)
{
    int rc = check_url(o->url, o->plain, o->tls);
    if (rc)
        return rc;
    if (!o->handler && o->nlanes <= 0)
        return spes_errf(SPES_EINVAL, "%s: a server needs a request handler", o->url);
    if (!o->plain && (rc = spes_net_init()) != 0)
        return rc;
    pthread_once(&guard_once, guard_init);
    spes_net_server *s = calloc(1, sizeof *s);
    if (!s)
        return SPES_ENOMEM;
    snprintf(s->url, sizeof s->url, "%s", o->url);
    s->plain = o->plain;
    s->peer_roles =
        o->peer_roles ? o->peer_roles : SPES_ROLE_MASK(SPES_ROLE_NODE) | SPES_ROLE_MASK(SPES_ROLE_OPERATOR);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->op_mu, NULL);
    if ((rc = server_config(s, o)) != 0) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        return rc;
    }
    int rv = nng_rep0_open(&s->sock);
    if (rv) {
        pthread_mutex_destroy(&s->mu);
        free(s);
        return spes__nng_err(rv, "cannot open rep socket", o->url);
    }
    if (!o->plain) {
        spes__tls_hold(o->tls);
        s->tls = o->tls;
    }
    if ((rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_PRE, server_pipe_event, s)) != 0 ||
        (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, server_pipe_event, s)) != 0) {
        rc = spes__nng_err(rv, "cannot watch connections", o->url);
        goto fail;
    }
    if (!(s->reqs = calloc((size_t)s->nreq, sizeof *s->reqs))) {
        rc = SPES_ENOMEM;
        goto fail;
    }
    for (int i = 0; i < s->nreq; i++) {
        spes_net_request *r = &s->reqs[i];
        r->srv = s;
        if ((rv = nng_aio_alloc(&r->aio, server_cb, r)) != 0 || (rv = nng_ctx_open(&r->ctx, s->sock)) != 0) {
            rc = spes__nng_err(rv, "cannot make request contexts", o->url);
            goto fail;
        }
    }
    s->max_msg = o->max_msg ? o->max_msg : SPES_NET_MAX_MSG_DEFAULT;
    if ((rc = server_listen(s, o->url)) != 0)
        goto fail;
    if (pthread_create(&s->guard, NULL, guard_main, s) != 0) {
        rc = spes_errf(SPES_ENOMEM, "%s: cannot start the connection guard", o->url);
        goto fail;
    }
    s->guard_started = 1;
    for (int i = 0; i < s->nreq; i++)
        post_recv(&s->reqs[i]);
    *out = s;
    return 0;
fail:
    spes_net_server_close(s);
    return rc;
}

int spes_net_server_port(const spes_net_server *s)
{
    return s->port;
}

void spes_net_server_get_stats(spes_net_server *s, spes_net_server_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    out->conns = s->nconns;
    pthread_mutex_unlock(&s->mu);
}

void spes_net_server_close(spes_net_server *s)
{
    if (!s)
        return;
    guard_stop(s);
    pthread_mutex_lock(&s->op_mu);
    __atomic_store_n(&s->closing, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->op_mu);
    if (spes__nng_close_bounded(s->sock, s->url))
        return; /* still closing inside nng: its request aios and pipe callbacks stay valid */
    /* every callback finishes before any aio is freed: one that was running
     * when the close began could otherwise touch another request's aio. Twice:
     * a callback still running during the first pass may have started a waiting
     * request (request_done) whose aio that pass had already stopped; nng then
     * dispatches that aio's completion, and the second pass waits for it. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; s->reqs && i < s->nreq; i++)
            if (s->reqs[i].aio)
                nng_aio_stop(s->reqs[i].aio);
    for (int i = 0; s->reqs && i < s->nreq; i++) {
        spes_net_request *r = &s->reqs[i];
        spes__deadline_disarm(&r->send_dl); /* a reply stopped in flight */
        nng_aio_free(r->aio);
        nng_msg_free(r->msg);
        nng_msg_free(r->rep);
    }
    free(s->reqs);
    free(s->conns);
    free(s->pend);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->op_mu);
    spes__tls_bind_release(s->bind);
    spes_net_tls_free(s->tls);
    free(s);
}

int spes_net_server_drop_revoked(spes_net_server *s)
{
    if (!s->tls)
        return 0;
    pthread_mutex_lock(&s->mu);
    int n = s->nconns;
    srv_conn *copy = n ? malloc((size_t)n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, s->conns, (size_t)n * sizeof *copy);
    pthread_mutex_unlock(&s->mu);
    int dropped = 0;
    for (int i = 0; copy && i < n; i++) {
        if (!copy[i].has_peer || !spes__tls_is_revoked(s->tls, copy[i].peer.serial))
            continue;
        log_warnx("%s: closing the connection of '%s': its certificate (serial %s) is revoked", s->url,
                  copy[i].peer.name, copy[i].peer.serial);
        nng_pipe_close(copy[i].p); /* its REM_POST event unregisters it */
        dropped++;
    }
    free(copy);
    return dropped;
}

/* ---- client ---- */

/* wait_first waits for the first connection, a TLS refusal, or connect_timeout_ms. */
static int wait_first(spes_net_client *c, const spes_net_client_opts *o)
{
    spes_net_stats st0 = {0}, st = {0};
    if (c->tls)
        spes_net_tls_stats(c->tls, &st0);
    int limit = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000;
    for (int waited = 0;; waited += 10) {
        struct timespec ts;
        spes_mono_deadline(&ts, 10);
        pthread_mutex_lock(&c->reg.mu);
        if (!c->reg.added)
            pthread_cond_timedwait(&c->reg.cv, &c->reg.mu, &ts);
        int up = c->reg.added > 0;
        pthread_mutex_unlock(&c->reg.mu);
        if (up)
            return 0;
        if (c->tls)
            spes_net_tls_stats(c->tls, &st);
        if (st.refused > st0.refused)
            return spes_errf(SPES_EAUTH, "%s: cannot connect: %s", o->url, st.last_refusal);
        if (waited >= limit)
            return spes_errf(SPES_ETIMEDOUT, "%s: no connection within %d ms%s%s", o->url, limit,
                             st.refused ? "; last TLS refusal: " : "", st.refused ? st.last_refusal : "");
    }
}

/* dialer_start creates and starts c's dialer from the options it was opened with. */
static int dialer_start(spes_net_client *c)
{
    const spes_net_client_opts *o = &c->o;
    int rv = nng_dialer_create(&c->d, c->sock, o->url);
    if (rv)
        return spes__nng_err(rv, "cannot create dialer", o->url);
    if (!o->plain) {
        nng_tls_config *cfg = NULL;
        unsigned roles = o->peer_roles ? o->peer_roles : SPES_ROLE_MASK(SPES_ROLE_NODE);
        int rc = spes__tls_config_alloc(&cfg, o->tls, 0, roles, o->peer_name, NULL);
        if (rc)
            return rc;
        rv = nng_dialer_set_ptr(c->d, NNG_OPT_TLS_CONFIG, cfg);
        nng_tls_config_free(cfg);
        if (rv)
            return spes__nng_err(rv, "cannot set TLS config", o->url);
    }
    int lo = o->reconnect_min_ms > 0 ? o->reconnect_min_ms : 100;
    int hi = o->reconnect_max_ms > 0 ? o->reconnect_max_ms : 10000;
    size_t max = o->max_msg ? o->max_msg : SPES_NET_MAX_MSG_DEFAULT;
    if ((rv = nng_dialer_set_ms(c->d, NNG_OPT_RECONNMINT, lo)) != 0 ||
        (rv = nng_dialer_set_ms(c->d, NNG_OPT_RECONNMAXT, hi < lo ? lo : hi)) != 0 ||
        (rv = nng_dialer_set_size(c->d, NNG_OPT_RECVMAXSZ, max)) != 0)
        return spes__nng_err(rv, "cannot configure dialer", o->url);
    /* Always start in the background: nng 1.5.2's blocking first dial could hang when
     * the TLS peer refused us; wait_connect waits for our own connection event instead. */
    if ((rv = nng_dialer_start(c->d, NNG_FLAG_NONBLOCK)) != 0)
        return spes__nng_err(rv, "cannot dial", o->url);
    return 0;
}

/* redial_after_step: a dialer that was waiting to redial when the wall clock stepped back waits
 * on an nng timer that now lies the step ahead (deadline.c); once the wall clock has stepped, a
 * client that has no connection starts a new dialer. Called with calls_mu held. */
static void redial_after_step(spes_net_client *c)
{
    unsigned long n = spes__clock_steps();
    if (n == c->steps_seen)
        return;
    c->steps_seen = n;
    pthread_mutex_lock(&c->reg.mu);
    int up = c->reg.live > 0;
    pthread_mutex_unlock(&c->reg.mu);
    if (up)
        return;
    nng_dialer_close(c->d);
    if (dialer_start(c) != 0)
        log_warnx("%s: cannot dial again after the wall clock's step: %s", c->url, spes_errmsg());
    else
        log_info("%s: dialing again after the wall clock's step", c->url);
}

int spes_net_client_open(spes_net_client **out, const spes_net_client_opts *o)
{
    int rc = check_url(o->url, o->plain, o->tls);
    if (rc)
        return rc;
    if (!o->plain && (rc = spes_net_init()) != 0)
        return rc;
    spes_net_client *c = calloc(1, sizeof *c);
    if (!c)
        return SPES_ENOMEM;
    snprintf(c->url, sizeof c->url, "%s", o->url);
    pthread_mutex_init(&c->reg.mu, NULL);
    pthread_mutex_init(&c->calls_mu, NULL);
    spes_cond_init_mono(&c->reg.cv);
    int rv = nng_req0_open(&c->sock);
    if (rv) {
        pthread_mutex_destroy(&c->reg.mu);
        pthread_mutex_destroy(&c->calls_mu);
        pthread_cond_destroy(&c->reg.cv);
        free(c);
        return spes__nng_err(rv, "cannot open req socket", o->url);
    }
    if (!o->plain) {
        spes__tls_hold(o->tls);
        c->tls = o->tls;
    }
    if ((rc = reg_watch(&c->reg, c->sock, o->url)) != 0)
        goto fail;
    /* A request whose connection breaks is re-sent on the next connection (so RPCs must
     * be idempotent); the timer itself is an hour, i.e. no timed re-sends. Not infinite:
     * nng 1.5.2's "no resend" path (ECONNRESET) can leave nng_close() hanging. */
    if ((rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, 3600 * 1000)) != 0) {
        rc = spes__nng_err(rv, "cannot configure req socket", o->url);
        goto fail;
    }
    c->o = *o;
    c->o.url = c->url;
    if (o->peer_name) {
        snprintf(c->peer_name, sizeof c->peer_name, "%s", o->peer_name);
        c->o.peer_name = c->peer_name;
    }
    c->steps_seen = spes__clock_steps();
    if ((rc = dialer_start(c)) != 0 || (o->wait_connect && (rc = wait_first(c, o)) != 0))
        goto fail;
    *out = c;
    return 0;
fail:
    spes_net_client_close(c);
    return rc;
}

void spes_net_client_close(spes_net_client *c)
{
    if (!c)
        return;
    if (spes__nng_close_bounded(c->sock, c->url))
        return; /* still closing inside nng: its pipe callbacks use c->reg */
    free(c->reg.v);
    pthread_mutex_destroy(&c->reg.mu);
    pthread_mutex_destroy(&c->calls_mu);
    pthread_cond_destroy(&c->reg.cv);
    spes_net_tls_free(c->tls);
    free(c);
}

int spes_net_client_drop_revoked(spes_net_client *c)
{
    return reg_drop_revoked(&c->reg, c->tls, c->url);
}

static int make_msg(nng_msg **m, const void *data, size_t len)
{
    int rv = nng_msg_alloc(m, len);
    if (rv == 0 && len)
        memcpy(nng_msg_body(*m), data, len);
    return rv;
}

/* call_timeout: a timeout <= 0 means the default, never "wait for ever" or "fail at once". */
static int call_timeout(int timeout_ms)
{
    return timeout_ms > 0 ? timeout_ms : SPES_NET_CALL_TIMEOUT_MS;
}

int spes_net_call(spes_net_client *c, const void *req, size_t len, int timeout_ms, void **rep,
                  size_t *rep_len)
{
    timeout_ms = call_timeout(timeout_ms);
    pthread_mutex_lock(&c->calls_mu);
    redial_after_step(c);
    pthread_mutex_unlock(&c->calls_mu);
    nng_ctx ctx;
    nng_aio *aio = NULL;
    nng_msg *m = NULL;
    spes__deadline dl = {0};
    int rv = nng_ctx_open(&ctx, c->sock);
    if (rv)
        return spes__nng_err(rv, "cannot open request context", c->url);
    if ((rv = nng_aio_alloc(&aio, NULL, NULL)) != 0 || (rv = make_msg(&m, req, len)) != 0)
        goto done;
    spes__deadline_arm(&dl, aio, timeout_ms); /* spans the request and its reply */
    nng_aio_set_msg(aio, m);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0) {
        nng_msg_free(nng_aio_get_msg(aio));
        goto done;
    }
    spes__net_count(SPES_NET_CONTROL, SPES__NET_SENT, len);
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0)
        goto done;
    m = nng_aio_get_msg(aio);
    *rep_len = nng_msg_len(m);
    spes__net_count(SPES_NET_CONTROL, SPES__NET_RECEIVED, *rep_len);
    *rep = malloc(*rep_len ? *rep_len : 1);
    if (!*rep)
        rv = NNG_ENOMEM;
    else
        memcpy(*rep, nng_msg_body(m), *rep_len);
    nng_msg_free(m);
done:
    spes__deadline_disarm(&dl);
    nng_aio_free(aio);
    nng_ctx_close(ctx);
    return rv ? spes__nng_err(rv, "request failed", c->url) : 0;
}

/* An async call. Its aio is started and cancelled under the client's
 * calls_mu (nng finishes aios on its own threads, never inside those calls,
 * so the callback cannot need the lock we hold). */
typedef struct acall {
    struct acall *prev, *next; /* in the client's calls */
    spes_net_client *c;        /* outlives its calls: closing it ends them first */
    unsigned gen;
    nng_ctx ctx;
    nng_aio *aio;
    int sending;
    size_t len;        /* of the request, counted once it is out */
    spes__deadline dl; /* spans the request and its reply */
    spes_net_reply_cb cb;
    void *arg;
} acall;

static void acall_cb(void *arg)
{
    acall *a = arg;
    spes_net_client *c = a->c;
    int rv = nng_aio_result(a->aio);
    pthread_mutex_lock(&c->calls_mu);
    if (a->sending && rv == 0) {
        a->sending = 0; /* the request is out: wait for the reply, unless aborted meanwhile */
        spes__net_count(SPES_NET_CONTROL, SPES__NET_SENT, a->len);
        if (a->gen == c->abort_gen) {
            nng_ctx_recv(a->ctx, a->aio);
            pthread_mutex_unlock(&c->calls_mu);
            return;
        }
        rv = NNG_ECANCELED;
    }
    spes__deadline_disarm(&a->dl);
    if (a->prev)
        a->prev->next = a->next;
    else
        c->calls = a->next;
    if (a->next)
        a->next->prev = a->prev;
    pthread_mutex_unlock(&c->calls_mu);
    if (rv) {
        if (a->sending)
            nng_msg_free(nng_aio_get_msg(a->aio));
        a->cb(a->arg, spes__nng_err(rv, "request failed", c->url), NULL, 0);
    } else {
        nng_msg *m = nng_aio_get_msg(a->aio);
        spes__net_count(SPES_NET_CONTROL, SPES__NET_RECEIVED, nng_msg_len(m));
        a->cb(a->arg, 0, nng_msg_body(m), nng_msg_len(m));
        nng_msg_free(m);
    }
    nng_ctx_close(a->ctx);
    nng_aio_reap(a->aio); /* we are inside its callback: free it from nng's reaper */
    free(a);
}

int spes_net_call_async(spes_net_client *c, const void *req, size_t len, int timeout_ms, spes_net_reply_cb cb,
                        void *arg)
{
    acall *a = calloc(1, sizeof *a);
    nng_msg *m = NULL;
    if (!a)
        return SPES_ENOMEM;
    int rv = nng_ctx_open(&a->ctx, c->sock);
    if (rv) {
        free(a);
        return spes__nng_err(rv, "cannot open request context", c->url);
    }
    if ((rv = nng_aio_alloc(&a->aio, acall_cb, a)) != 0 || (rv = make_msg(&m, req, len)) != 0) {
        nng_aio_free(a->aio);
        nng_ctx_close(a->ctx);
        free(a);
        return spes__nng_err(rv, "cannot start request", c->url);
    }
    a->cb = cb;
    a->arg = arg;
    a->c = c;
    a->sending = 1;
    a->len = len;
    spes__deadline_arm(&a->dl, a->aio, call_timeout(timeout_ms));
    nng_aio_set_msg(a->aio, m);
    pthread_mutex_lock(&c->calls_mu);
    redial_after_step(c);
    a->gen = c->abort_gen;
    a->next = c->calls;
    if (c->calls)
        c->calls->prev = a;
    c->calls = a;
    nng_ctx_send(a->ctx, a->aio);
    pthread_mutex_unlock(&c->calls_mu);
    return 0;
}

void spes_net_client_abort_calls(spes_net_client *c)
{
    pthread_mutex_lock(&c->calls_mu);
    c->abort_gen++;
    for (acall *a = c->calls; a; a = a->next)
        nng_aio_cancel(a->aio);
    pthread_mutex_unlock(&c->calls_mu);
}
