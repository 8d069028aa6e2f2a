/* ops_conn.c: spesctl's transport to a daemon: one request envelope over the
 * unix control socket (write it, read exactly one reply envelope) or over
 * mutual TLS with spes_net_call, then the codec's checks on the reply. It
 * must never trust the reply: header, length and type are checked before the
 * payload is decoded, and a reply of the wrong type is an error. It follows
 * at most one "not the coordinator" redirect. */
#include "client/ops.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "net/net.h"
#include "proto/proto.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* last_error copies spes_errmsg(): spes_errf must not read its own buffer. */
static const char *last_error(char *buf, size_t n)
{
    snprintf(buf, n, "%s", spes_errmsg());
    return buf;
}

static const char *env_or(const char *flag, const char *env)
{
    if (flag)
        return flag;
    const char *v = getenv(env);
    return v && *v ? v : NULL;
}

void spesctl_conn_resolve(spesctl_conn *c)
{
    c->ca = env_or(c->ca, "SPES_CA");
    c->cert = env_or(c->cert, "SPES_CERT");
    c->key = env_or(c->key, "SPES_KEY");
    if (c->socket_from_flag || c->url_from_flag)
        return; /* an explicit flag decides the route; env only fills TLS material */
    c->socket = env_or(NULL, "SPES_SOCKET");
    if (!c->socket)
        c->url = env_or(NULL, "SPES_URL");
    if (!c->socket && !c->url)
        c->socket = SPESCTL_DEFAULT_SOCKET;
}

/* io_wait waits until fd is ready for events or the deadline passes. */
static int io_wait(int fd, short events, long long deadline, const char *path)
{
    for (;;) {
        long long left = deadline - (long long)spes_mono_ms();
        if (left <= 0)
            return spes_errf(SPES_ETIMEDOUT, "%s: no reply from the daemon in time", path);
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return spes_errf_errno(SPES_EIO, "%s: poll", path);
    }
}

static int write_all(int fd, const uint8_t *p, size_t len, long long deadline, const char *path)
{
    while (len > 0) {
        int rc = io_wait(fd, POLLOUT, deadline, path);
        if (rc)
            return rc;
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return spes_errf_errno(SPES_ENET, "%s: cannot send the request", path);
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* read_full reads exactly len bytes; an early EOF is a truncated reply. */
static int read_full(int fd, uint8_t *p, size_t len, long long deadline, const char *path)
{
    size_t got = 0;
    while (got < len) {
        int rc = io_wait(fd, POLLIN, deadline, path);
        if (rc)
            return rc;
        ssize_t n = recv(fd, p + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return spes_errf_errno(SPES_ENET, "%s: cannot read the reply", path);
        if (n == 0)
            return spes_errf(SPES_EFORMAT,
                             "%s: the daemon closed the connection after %zu of %zu reply bytes", path, got,
                             len);
        got += (size_t)n;
    }
    return 0;
}

static int unix_connect(const char *path, int *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return spes_errf(SPES_EINVAL, "control socket path %s is longer than %zu bytes", path,
                         sizeof sa.sun_path - 1);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return spes_errf_errno(SPES_EIO, "socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        if (e == EACCES || e == EPERM)
            return spes_errf(SPES_EAUTH,
                             "cannot connect to control socket %s: %s (is this user in the daemon's group?)",
                             path, strerror(e));
        return spes_errf(SPES_ENET, "cannot connect to control socket %s: %s (the daemon may not be running)",
                         path, strerror(e));
    }
    *out = fd;
    return 0;
}

/* unix_call sends one envelope and reads back exactly one envelope. */
static int unix_call(const char *path, const uint8_t *req, size_t len, int timeout_ms, uint8_t **rep,
                     size_t *rep_len)
{
    int fd = -1, rc = unix_connect(path, &fd);
    if (rc)
        return rc;
    long long deadline = (long long)spes_mono_ms() + timeout_ms;
    uint8_t head[SPES_PROTO_HEADER_LEN];
    uint8_t *buf = NULL;
    spes_proto_header h;
    if ((rc = write_all(fd, req, len, deadline, path)) != 0 ||
        (rc = read_full(fd, head, sizeof head, deadline, path)) != 0)
        goto out;
    if ((rc = spes_proto_header_decode(head, sizeof head, &h)) != 0) {
        char e[512];
        rc = spes_errf(rc, "%s: bad reply envelope: %s", path, last_error(e, sizeof e));
        goto out;
    }
    if (!(buf = malloc(sizeof head + h.length))) {
        rc = SPES_ENOMEM;
        goto out;
    }
    memcpy(buf, head, sizeof head);
    if ((rc = read_full(fd, buf + sizeof head, h.length, deadline, path)) != 0)
        goto out;
    *rep = buf;
    *rep_len = sizeof head + h.length;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

static int tls_call(const spesctl_conn *c, const char *url, const uint8_t *req, size_t len, uint8_t **rep,
                    size_t *rep_len)
{
    if (!c->ca || !c->cert || !c->key)
        return spes_errf(SPES_EINVAL,
                         "%s: TLS needs --ca, --cert and --key (or SPES_CA, SPES_CERT, SPES_KEY) "
                         "naming the run CA and an operator certificate",
                         url);
    spes_log_set_level(SPES_LOG_ERROR); /* spes_net's handshake warnings repeat what we print */
    spes_net_tls_files f = {c->ca, c->cert, c->key, NULL};
    spes_net_tls *tls = NULL;
    spes_net_client *cl = NULL;
    int rc = spes_net_tls_alloc(&tls, &f);
    if (rc)
        return rc;
    spes_net_client_opts o = {
        .url = url, .tls = tls, .wait_connect = 1, .max_msg = SPES_PROTO_LARGE_LIMIT + 64};
    if ((rc = spes_net_client_open(&cl, &o)) != 0) {
        char e[512];
        last_error(e, sizeof e);
        rc = rc == SPES_EAUTH ? spes_errf(rc, "%s (is %s an operator certificate of this run?)", e, c->cert)
                              : spes_errf(rc, "%s (the daemon may not be running)", e);
        goto out;
    }
    void *r = NULL;
    if ((rc = spes_net_call(cl, req, len, c->timeout_ms, &r, rep_len)) == 0)
        *rep = r;
    else if (rc == SPES_ETIMEDOUT)
        rc = spes_errf(rc,
                       "%s: no reply in %d ms (the daemon may have refused this certificate: "
                       "membership and checkpoint changes need an operator certificate)",
                       url, c->timeout_ms);
out:
    if (cl)
        spes_net_client_close(cl);
    spes_net_tls_free(tls);
    return rc;
}

/* redirect_url extracts URL from "...not the coordinator; it is at URL"; NULL if absent. */
static int redirect_url(const Spes__Wire__Error *e, char *out, size_t n)
{
    if (!e->message || (e->code != SPES__WIRE__ERROR_CODE__ERROR_NOT_COORDINATOR &&
                        !strstr(e->message, "not the coordinator")))
        return 0;
    const char *p = strstr(e->message, "tls+tcp://");
    if (!p)
        p = strstr(e->message, "tcp://");
    if (!p)
        return 0;
    size_t len = strcspn(p, " \t\r\n,;\"'()");
    while (len > 0 && (p[len - 1] == '.' || p[len - 1] == ')'))
        len--;
    if (len == 0 || len >= n)
        return 0;
    memcpy(out, p, len);
    out[len] = '\0';
    return 1;
}

static int decode_reply(const char *where, const uint8_t *buf, size_t len, int want, int *type,
                        ProtobufCMessage **msg)
{
    int t = 0;
    ProtobufCMessage *m = NULL;
    char e[512];
    int rc = spes_proto_decode(buf, len, &t, &m);
    if (rc)
        return spes_errf(rc, "%s: bad reply: %s", where, last_error(e, sizeof e));
    if (t != want && t != SPES_MSG_ERROR && t != SPES_MSG_ACK) {
        spes_proto_free(m);
        const char *tn = spes_proto_type_name(t), *wn = spes_proto_type_name(want);
        return spes_errf(SPES_EFORMAT, "%s: unexpected reply %s (expected %s)", where, tn ? tn : "?",
                         wn ? wn : "?");
    }
    *type = t;
    *msg = m;
    return 0;
}

static int call_once(const spesctl_conn *c, const char *url, const uint8_t *req, size_t len, int want,
                     int *type, ProtobufCMessage **msg)
{
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    const char *where = url ? url : c->socket;
    int rc = url ? tls_call(c, url, req, len, &rep, &rep_len)
                 : unix_call(c->socket, req, len, c->timeout_ms, &rep, &rep_len);
    if (rc == 0)
        rc = decode_reply(where, rep, rep_len, want, type, msg);
    free(rep);
    return rc;
}

int spesctl_ops_call(const spesctl_conn *c, int req_type, const ProtobufCMessage *msg, int want_type,
                     int *rep_type, ProtobufCMessage **rep)
{
    uint8_t *req = NULL;
    size_t len = 0;
    int rc = spes_proto_encode(req_type, msg, &req, &len);
    if (rc)
        return rc;
    rc = call_once(c, c->socket ? NULL : c->url, req, len, want_type, rep_type, rep);
    char url[SPES_PROTO_MAX_URL + 1];
    if (rc == 0 && *rep_type == SPES_MSG_ERROR &&
        redirect_url((const Spes__Wire__Error *)*rep, url, sizeof url) && c->ca && c->cert && c->key) {
        spes_proto_free(*rep);
        *rep = NULL;
        rc = call_once(c, url, req, len, want_type, rep_type, rep);
    }
    free(req);
    return rc;
}
