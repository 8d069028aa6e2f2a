/* conn.c: the fetching side's connection to one peer: an nng req0 socket over
 * mutual TLS (spes_net's TLS configuration and engine) with a fixed set of
 * request slots, each an nng context and aio that live as long as the
 * connection. Why not spes_net_call_async: it opens and closes a context per
 * call from inside nng callbacks, and nng 1.5.2 can then deadlock in
 * nng_close (seen here at the end of large fetches; cf. nng issues #1219,
 * #1543). Here every context is stopped and closed by the closing thread
 * before the socket, the order nng expects, and the socket is closed with
 * spes__nng_close_bounded (net/close.c: nng 1.5.2 can strand a TLS pipe whose
 * peer died). This file never interprets reply bytes (the callback does) and
 * never lets a slot run two requests at once. It counts the bytes of its
 * requests and replies as blob traffic (net.h, spes_net_counters). */
#include "blob/blob_internal.h"

#include "core/clock.h"
#include "core/error.h"
#include "net/net_internal.h"

#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONN_PIPES_MAX 4 /* connections of one dialer followed at once */

typedef struct slot {
    spes__blob_conn *c;
    int idx;
    nng_ctx ctx;
    nng_aio *aio;
    int ctx_open;
    int sending;
    int busy;          /* a request is out and its callback has not run (see spes__blob_conn_close) */
    size_t len;        /* of the request, counted once it is out */
    spes__deadline dl; /* spans the request and its reply */
} slot;

struct spes__blob_conn {
    nng_socket sock;
    int sock_open;
    nng_dialer d;
    char url[256];
    int nslots;
    slot *slots;
    spes__blob_conn_cb cb;
    void *arg;
    pthread_mutex_t mu;                /* guards what follows (nng's pipe notifications write it) */
    uint32_t pipe_ids[CONN_PIPES_MAX]; /* the connections up now */
    int npipes, ever;                  /* up now; ever came up */
    uint64_t down_since_ms;            /* monotonic: when the last one went (or the dial, before any came) */
};

/* pipe_event follows the connections that are up: only those nng added count,
 * so a pipe it refused before adding (ADD_PRE) cannot make the count wrong. */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    spes__blob_conn *c = arg;
    uint32_t id = (uint32_t)nng_pipe_id(p);
    pthread_mutex_lock(&c->mu);
    if (ev == NNG_PIPE_EV_ADD_POST) {
        if (c->npipes < CONN_PIPES_MAX) /* one dialer: one pipe at a time, a redial's overlap at most */
            c->pipe_ids[c->npipes++] = id;
        c->ever = 1;
    } else {
        for (int i = 0; i < c->npipes; i++)
            if (c->pipe_ids[i] == id) {
                c->pipe_ids[i] = c->pipe_ids[--c->npipes];
                if (c->npipes == 0)
                    c->down_since_ms = spes_mono_ms();
                break;
            }
    }
    pthread_mutex_unlock(&c->mu);
}

int spes__blob_conn_connected(spes__blob_conn *c)
{
    pthread_mutex_lock(&c->mu);
    int up = c->npipes > 0;
    pthread_mutex_unlock(&c->mu);
    return up;
}

uint64_t spes__blob_conn_down_ms(spes__blob_conn *c, int *ever)
{
    uint64_t now = spes_mono_ms();
    pthread_mutex_lock(&c->mu);
    uint64_t down = c->npipes > 0 || now < c->down_since_ms ? 0 : now - c->down_since_ms;
    if (ever)
        *ever = c->ever;
    pthread_mutex_unlock(&c->mu);
    return down;
}

static void slot_cb(void *arg)
{
    slot *s = arg;
    spes__blob_conn *c = s->c;
    int rv = nng_aio_result(s->aio);
    if (s->sending && rv == 0) {
        s->sending = 0;
        spes__net_count(SPES_NET_BLOB, SPES__NET_SENT, s->len);
        nng_ctx_recv(s->ctx, s->aio);
        return;
    }
    spes__deadline_disarm(&s->dl); /* before the callback: it may send the slot's next request */
    s->busy = 0;
    nng_msg *m = nng_aio_get_msg(s->aio);
    nng_aio_set_msg(s->aio, NULL);
    if (rv) {
        if (s->sending)
            nng_msg_free(m);
        c->cb(c->arg, s->idx, spes__nng_err(rv, "request failed", c->url), NULL, 0);
        return;
    }
    spes__net_count(SPES_NET_BLOB, SPES__NET_RECEIVED, nng_msg_len(m));
    c->cb(c->arg, s->idx, 0, nng_msg_body(m), nng_msg_len(m));
    nng_msg_free(m); /* a local: the slot may already carry its next request */
}

static int conn_dial(spes__blob_conn *c, const char *name, spes_net_tls *tls, int plain, size_t max_msg)
{
    int rv = nng_dialer_create(&c->d, c->sock, c->url);
    if (rv)
        return spes__nng_err(rv, "cannot create dialer", c->url);
    if (!plain) {
        nng_tls_config *cfg = NULL;
        int rc = spes__tls_config_alloc(&cfg, tls, 0, SPES_ROLE_MASK(SPES_ROLE_NODE), name, NULL);
        if (rc)
            return rc;
        rv = nng_dialer_set_ptr(c->d, NNG_OPT_TLS_CONFIG, cfg);
        nng_tls_config_free(cfg); /* the dialer holds it */
        if (rv)
            return spes__nng_err(rv, "cannot set TLS config", c->url);
    }
    if ((rv = nng_dialer_set_ms(c->d, NNG_OPT_RECONNMINT, 100)) != 0 ||
        (rv = nng_dialer_set_ms(c->d, NNG_OPT_RECONNMAXT, 5000)) != 0 ||
        (rv = nng_dialer_set_size(c->d, NNG_OPT_RECVMAXSZ, max_msg)) != 0 ||
        (rv = nng_dialer_start(c->d, NNG_FLAG_NONBLOCK)) != 0)
        return spes__nng_err(rv, "cannot dial", c->url);
    return 0;
}

static int check_url(const char *url, int plain, const spes_net_tls *tls)
{
    if (strncmp(url, "tls+tcp://", 10) == 0)
        return tls ? 0 : spes_errf(SPES_EINVAL, "%s: a tls+tcp peer needs TLS material", url);
    if (strncmp(url, "tcp://", 6) == 0 && plain)
        return 0;
    return spes_errf(SPES_EINVAL, "%s: peer URL must be tls+tcp://HOST:PORT (tcp:// only when plain)", url);
}

int spes__blob_conn_open(spes__blob_conn **out, const char *url, const char *name, spes_net_tls *tls,
                         int plain, int nslots, size_t max_msg, spes__blob_conn_cb cb, void *arg)
{
    int rc = check_url(url, plain, tls);
    if (rc)
        return rc;
    if (!plain && (rc = spes_net_init()) != 0)
        return rc;
    spes__blob_conn *c = calloc(1, sizeof *c);
    if (!c || !(c->slots = calloc((size_t)nslots, sizeof *c->slots))) {
        free(c);
        return SPES_ENOMEM;
    }
    snprintf(c->url, sizeof c->url, "%s", url);
    pthread_mutex_init(&c->mu, NULL);
    c->down_since_ms = spes_mono_ms();
    c->nslots = nslots;
    c->cb = cb;
    c->arg = arg;
    int rv = nng_req0_open(&c->sock);
    if (rv) {
        rc = spes__nng_err(rv, "cannot open req socket", url);
        goto fail;
    }
    c->sock_open = 1;
    if ((rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_ADD_POST, pipe_event, c)) != 0 ||
        (rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, pipe_event, c)) != 0) {
        rc = spes__nng_err(rv, "cannot watch connections", url);
        goto fail;
    }
    /* re-sent only when its connection breaks, not on a timer (an hour, not infinite:
     * see spes_net_client_open on nng 1.5.2) */
    if ((rv = nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME, 3600 * 1000)) != 0) {
        rc = spes__nng_err(rv, "cannot configure req socket", url);
        goto fail;
    }
    for (int i = 0; i < nslots; i++) {
        slot *s = &c->slots[i];
        *s = (slot){.c = c, .idx = i};
        if ((rv = nng_aio_alloc(&s->aio, slot_cb, s)) != 0 || (rv = nng_ctx_open(&s->ctx, c->sock)) != 0) {
            rc = spes__nng_err(rv, "cannot make request contexts", url);
            goto fail;
        }
        s->ctx_open = 1;
    }
    if ((rc = conn_dial(c, name, tls, plain, max_msg)) != 0)
        goto fail;
    *out = c;
    return 0;
fail:
    spes__blob_conn_close(c);
    return rc;
}

int spes__blob_conn_send(spes__blob_conn *c, int idx, const void *req, size_t len, int timeout_ms)
{
    slot *s = &c->slots[idx];
    nng_msg *m = NULL;
    int rv = nng_msg_alloc(&m, len);
    if (rv)
        return spes__nng_err(rv, "cannot make request", c->url);
    memcpy(nng_msg_body(m), req, len);
    s->sending = 1;
    s->busy = 1;
    s->len = len;
    spes__deadline_arm(&s->dl, s->aio, timeout_ms);
    nng_aio_set_msg(s->aio, m);
    nng_ctx_send(s->ctx, s->aio);
    return 0;
}

void spes__blob_conn_close(spes__blob_conn *c)
{
    if (!c)
        return;
    for (int i = 0; c->slots && i < c->nslots; i++) {
        slot *s = &c->slots[i];
        if (!s->aio)
            continue;
        nng_aio_stop(s->aio); /* aborts a request in flight, waits for its callback */
        if (s->busy) {
            /* stopped between the request's send and its receive: slot_cb had just started the
             * receive, which nng refuses on a stopped aio without a callback. Its owner still
             * waits for one, so it gets it here (nothing of nng's can run for this slot now). */
            s->busy = 0;
            spes__deadline_disarm(&s->dl);
            nng_msg *m = nng_aio_get_msg(s->aio);
            nng_aio_set_msg(s->aio, NULL);
            if (m)
                nng_msg_free(m);
            c->cb(c->arg, s->idx,
                  spes_errf(SPES_EINTR, "%s: request abandoned: the connection closed", c->url), NULL, 0);
        }
    }
    for (int i = 0; c->slots && i < c->nslots; i++)
        if (c->slots[i].ctx_open)
            nng_ctx_close(c->slots[i].ctx);
    /* every slot is stopped and every context closed: nng holds none of ours */
    int stranded = c->sock_open && spes__nng_close_bounded(c->sock, c->url) != 0;
    for (int i = 0; c->slots && i < c->nslots; i++) {
        spes__deadline_disarm(&c->slots[i].dl);
        nng_aio_free(c->slots[i].aio);
    }
    free(c->slots);
    c->slots = NULL;
    if (stranded)
        return; /* the close goes on in the background and reports its pipes to c: c stays */
    pthread_mutex_destroy(&c->mu);
    free(c);
}
