/* dmetrics_http.c: the metrics listener, libmicrohttpd on its own thread.
 * It never touches the loop's state: it serves the texts the loop last
 * rendered (spes_dmetrics_get) and the dashboard's embedded files. GET and
 * HEAD only; every answer is no-store and nosniff; the page may load only its
 * own files (Content-Security-Policy), so it works without internet. */
#include "core/error.h"
#include "daemon/dmetrics.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CSP                                                                                                  \
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned status, const void *buf, size_t len,
                                enum MHD_ResponseMemoryMode mode, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)buf, mode);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Content-Security-Policy", CSP);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_len, void **state)
{
    (void)version;
    (void)upload;
    spes_dmetrics *m = cls;
    if (!*state) { /* first call: headers only; answer on the second */
        *state = (void *)1;
        return MHD_YES;
    }
    if (*upload_len)
        return MHD_NO;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        static const char msg[] = "only GET\n";
        return send_buf(c, MHD_HTTP_METHOD_NOT_ALLOWED, msg, sizeof msg - 1, MHD_RESPMEM_PERSISTENT,
                        "text/plain; charset=utf-8");
    }
    size_t len = 0;
    const char *type = NULL;
    const unsigned char *file = spes_dashboard_file(url, &len, &type);
    if (file)
        return send_buf(c, MHD_HTTP_OK, file, len, MHD_RESPMEM_PERSISTENT, type);
    char *text = NULL;
    int rc = spes_dmetrics_get(m, url, &text, &len);
    if (rc == 0)
        return send_buf(c, MHD_HTTP_OK, text, len, MHD_RESPMEM_MUST_FREE,
                        !strcmp(url, "/metrics") ? "text/plain; version=0.0.4; charset=utf-8"
                                                 : "application/json");
    static const char nf[] = "not found: /metrics, /api/status, / (dashboard)\n";
    static const char oom[] = "out of memory\n";
    if (rc == SPES_ENOENT)
        return send_buf(c, MHD_HTTP_NOT_FOUND, nf, sizeof nf - 1, MHD_RESPMEM_PERSISTENT,
                        "text/plain; charset=utf-8");
    return send_buf(c, MHD_HTTP_INTERNAL_SERVER_ERROR, oom, sizeof oom - 1, MHD_RESPMEM_PERSISTENT,
                    "text/plain; charset=utf-8");
}

/* split_addr splits "HOST:PORT" or "[V6]:PORT" into host and port. */
static int split_addr(const char *addr, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || end[1] != ':')
            return spes_errf(SPES_EINVAL, "metrics address \"%s\" is not [HOST]:PORT", addr);
        snprintf(host, hn, "%.*s", (int)(end - addr - 1), addr + 1);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || colon == addr)
            return spes_errf(SPES_EINVAL, "metrics address \"%s\" is not HOST:PORT (e.g. 127.0.0.1:9464)",
                             addr);
        snprintf(host, hn, "%.*s", (int)(colon - addr), addr);
    }
    snprintf(port, pn, "%s", colon + 1);
    char *end;
    long p = strtol(port, &end, 10);
    if (!port[0] || *end || p < 0 || p > 65535)
        return spes_errf(SPES_EINVAL, "metrics address \"%s\": port must be 0..65535", addr);
    return 0;
}

int spes_dmetrics_http_start(spes_dmetrics *m, const char *addr, void **handle, int *port)
{
    char host[256], ps[16];
    int rc = split_addr(addr, host, sizeof host, ps, sizeof ps);
    if (rc)
        return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g != 0)
        return spes_errf(SPES_EINVAL, "metrics address \"%s\": %s", addr, gai_strerror(g));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *h = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m, MHD_OPTION_SOCK_ADDR,
                                            ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h)
        return spes_errf(SPES_EIO,
                         "metrics: cannot listen on %s (in use, or not an address of this machine?)", addr);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : atoi(ps);
    *handle = h;
    return 0;
}

void spes_dmetrics_http_stop(void *handle)
{
    MHD_stop_daemon(handle);
}
