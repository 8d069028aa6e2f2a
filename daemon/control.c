/* control.c: the local control socket (a unix stream socket, mode 0660): one
 * request envelope in, one reply envelope out, then the connection closes.
 * The socket's file permissions are the access control: a local client is
 * the operator (SPES_COORD_LOCAL_OPERATOR) and may send operator requests only:
 * node messages (Join, Leave, Announce, blob requests...) need a node
 * certificate over TLS (docs/security.md). Lengths are checked before anything is buffered.
 * A client has CONTROL_IDLE_MS to send its whole request. When the daemon
 * stops, every connection is closed, even one whose answer is still on its way
 * (a status forwarded to an unreachable coordinator): its record then waits for
 * that answer, which it drops, so that a late reply never touches freed memory.
 * A client that leaves before its reply costs a failed write (EPIPE: spesd
 * ignores SIGPIPE), nothing more. */
#include "coord/coord.h"
#include "core/error.h"
#include "core/log.h"
#include "daemon/daemon.h"
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONTROL_MAX (1u << 20)
#define CONTROL_IDLE_MS 10000

typedef struct spes_control_conn {
    uv_pipe_t pipe;
    uv_timer_t idle;
    spes_daemon *d;
    uint8_t *buf;
    size_t len, cap, want;
    int dispatched; /* the request went to spes_daemon_handle: its reply comes once */
    int replied;    /* ...and came */
    int closing;    /* conn_close was called */
    int open_handles;
    struct spes_control_conn **prev, *next; /* the daemon's list of connections */
} conn;

/* conn_free frees c once its handles are closed and no reply is owed to it. */
static void conn_free(conn *c)
{
    if (c->open_handles > 0 || (c->dispatched && !c->replied))
        return;
    free(c->buf);
    free(c);
}

static void on_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->open_handles--;
    conn_free(c);
}

/* conn_close unlinks c and closes its handles (once). */
static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->prev) {
        *c->prev = c->next;
        if (c->next)
            c->next->prev = c->prev;
        c->prev = NULL;
    }
    uv_close((uv_handle_t *)&c->idle, on_closed);
    uv_close((uv_handle_t *)&c->pipe, on_closed);
}

static void on_idle(uv_timer_t *t)
{
    conn *c = t->data;
    log_warnx("control socket: a client sent no whole request within %d ms: closed", CONTROL_IDLE_MS);
    conn_close(c);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    conn *c = w->data;
    free(w);
    conn_close(c);
}

static void control_reply(void *ctx, const uint8_t *data, size_t len)
{
    conn *c = ctx;
    c->replied = 1;
    if (c->closing) { /* the daemon is stopping and closed us already */
        conn_free(c);
        return;
    }
    if (!data || !len) {
        conn_close(c);
        return;
    }
    uv_write_t *w = malloc(sizeof *w + len);
    if (!w) {
        conn_close(c);
        return;
    }
    uint8_t *copy = (uint8_t *)(w + 1);
    memcpy(copy, data, len);
    w->data = c;
    uv_buf_t b = uv_buf_init((char *)copy, (unsigned)len);
    if (uv_write(w, (uv_stream_t *)&c->pipe, &b, 1, on_written) != 0) {
        free(w);
        conn_close(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    conn *c = h->data;
    size_t need = c->want ? c->want : SPES_PROTO_HEADER_LEN;
    if (need > c->cap) {
        uint8_t *nb = realloc(c->buf, need);
        if (nb) {
            c->buf = nb;
            c->cap = need;
        }
    }
    *b = uv_buf_init((char *)c->buf + c->len, c->cap > c->len ? (unsigned)(c->cap - c->len) : 0);
}

/* dispatching: no more reading, no idle limit; the reply (exactly one) closes c */
static void begin_dispatch(conn *c)
{
    uv_read_stop((uv_stream_t *)&c->pipe);
    uv_timer_stop(&c->idle);
    c->dispatched = 1;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    conn *c = s->data;
    if (nread < 0) {
        if (!c->dispatched)
            conn_close(c);
        else
            uv_read_stop(s); /* the reply, when it comes, fails to write and closes us */
        return;
    }
    c->len += (size_t)nread;
    if (!c->want && c->len >= SPES_PROTO_HEADER_LEN) {
        uint32_t plen =
            (uint32_t)c->buf[8] << 24 | (uint32_t)c->buf[9] << 16 | (uint32_t)c->buf[10] << 8 | c->buf[11];
        if (plen > CONTROL_MAX) {
            begin_dispatch(c);
            spes_daemon_reply_error(control_reply, c, SPES_ERANGE, 0, "request of %u bytes is too large",
                                    plen);
            return;
        }
        c->want = SPES_PROTO_HEADER_LEN + plen;
    }
    if (c->want && c->len >= c->want) {
        begin_dispatch(c);
        int type = (int)c->buf[6] << 8 | c->buf[7];
        if (type == SPES_MSG_BLOB_WANT || type == SPES_MSG_CHUNK_REQUEST) {
            spes_daemon_reply_error(control_reply, c, SPES_EAUTH, type,
                                    "%s needs a node certificate over TLS: the control socket takes "
                                    "operator requests only",
                                    spes_proto_type_name(type));
            return;
        }
        spes_pki_identity local = SPES_COORD_LOCAL_OPERATOR; /* node verbs are refused by the coordinator */
        spes_daemon_handle(c->d, c->buf, c->want, &local, control_reply, c);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    spes_daemon *d = server->data;
    if (status < 0)
        return;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->d = d;
    uv_pipe_init(&d->loop, &c->pipe, 0);
    uv_timer_init(&d->loop, &c->idle);
    c->pipe.data = c->idle.data = c;
    c->open_handles = 2;
    c->next = d->control_conns;
    if (c->next)
        c->next->prev = &c->next;
    c->prev = &d->control_conns;
    d->control_conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0 ||
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) ||
        uv_timer_start(&c->idle, on_idle, CONTROL_IDLE_MS, 0)) {
        conn_close(c);
        return;
    }
}

int spes_control_open(spes_daemon *d)
{
    const char *path = d->cfg.control_socket;
    unlink(path); /* a stale socket of a dead daemon; the state-dir lock proves it is dead */
    uv_pipe_init(&d->loop, &d->control, 0);
    d->control.data = d;
    int r = uv_pipe_bind(&d->control, path);
    if (!r) {
        chmod(path, 0660);
        r = uv_listen((uv_stream_t *)&d->control, 16, on_connection);
    }
    if (r) {
        uv_close((uv_handle_t *)&d->control, NULL);
        return spes_errf(SPES_EIO, "%s: cannot listen on the control socket: %s", path, uv_strerror(r));
    }
    d->control_open = 1;
    return 0;
}

void spes_control_close(spes_daemon *d)
{
    if (!d->control_open)
        return;
    uv_close((uv_handle_t *)&d->control, NULL);
    unlink(d->cfg.control_socket);
    d->control_open = 0;
    /* every connection goes now: one still owed a reply keeps its record until then */
    for (conn *c = d->control_conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
}
