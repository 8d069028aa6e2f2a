/* test_net.c: spes_net over real loopback sockets with a real run PKI: mutual TLS
 * accepted for a good certificate and refused (with the server's reason recorded)
 * for no certificate, another CA, an expired or revoked certificate, and the wrong
 * role; CRL reload; IPv6; plain tcp only on request; sync and async round trips;
 * byte counters against the bytes a relay saw on the wire. */
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "net/net.h"
#include "net/net_internal.h"
#include "pki/pki.h"

#include <arpa/inet.h>
#include <check.h>
#include <nng/protocol/pair0/pair.h>
#include <nng/supplemental/util/platform.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* This executable's clock_gettime stands in for libc's, for nng too (it calls it through
 * the PLT): CLOCK_REALTIME reads wall_offset_s seconds off, the way a stepped wall clock
 * would; nng 1.5.2 as Debian builds it keeps its timers on that clock (net/deadline.c). */
static long long wall_offset_s;

int clock_gettime(clockid_t id, struct timespec *ts)
{
    int rc = (int)syscall(SYS_clock_gettime, id, ts);
    if (rc == 0 && id == CLOCK_REALTIME)
        ts->tv_sec += (time_t)__atomic_load_n(&wall_offset_s, __ATOMIC_RELAXED);
    return rc;
}

static char tmp[256];
static char ca_a[300], ca_b[300], certs[300], crl_a[300];

static void path(char *out, size_t n, const char *a, const char *b)
{
    snprintf(out, n, "%s/%s", a, b);
}

static void issue(const char *ca, const char *name, int role, int days)
{
    spes_pki_validity v;
    spes_pki_validity_days(&v, days);
    ck_assert_msg(spes_pki_cert_issue(ca, name, role, &v, certs) == 0, "issue %s: %s", name, spes_errmsg());
}

static void setup_pki(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/spes-test-net-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
    path(ca_a, sizeof ca_a, tmp, "ca-a");
    path(ca_b, sizeof ca_b, tmp, "ca-b");
    path(certs, sizeof certs, tmp, "certs");
    path(crl_a, sizeof crl_a, tmp, "crl-a.pem");
    ck_assert_msg(spes_pki_ca_init(ca_a, "run-a", NULL) == 0, "%s", spes_errmsg());
    ck_assert_msg(spes_pki_ca_init(ca_b, "run-b", NULL) == 0, "%s", spes_errmsg());
    issue(ca_a, "node-1", SPES_ROLE_NODE, 30);
    issue(ca_a, "node-2", SPES_ROLE_NODE, 30);
    issue(ca_a, "alice", SPES_ROLE_OPERATOR, 30);
    issue(ca_a, "old", SPES_ROLE_NODE, -1);
    issue(ca_a, "gone", SPES_ROLE_NODE, 30);
    issue(ca_a, "late", SPES_ROLE_NODE, 30);
    issue(ca_b, "node-9", SPES_ROLE_NODE, 30);
    ck_assert(spes_pki_cert_revoke(ca_a, "gone", NULL) == 0);
    ck_assert_msg(spes_pki_crl_write(ca_a, 30, crl_a) == 0, "%s", spes_errmsg());
    spes_log_set_level(getenv("SPES_DEBUG") ? SPES_LOG_DEBUG : SPES_LOG_WARN);
}

static void teardown_pki(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    ck_assert_int_eq(system(cmd), 0);
}

/* tls_for loads NAME's certificate from the certs dir, trusting CA dir ca. */
static spes_net_tls *tls_for(const char *ca, const char *name, int with_crl)
{
    char cap[400], crt[400], key[400];
    snprintf(cap, sizeof cap, "%s/ca.crt", ca);
    snprintf(crt, sizeof crt, "%s/%s.crt", certs, name);
    snprintf(key, sizeof key, "%s/%s.key", certs, name);
    spes_net_tls_files f = {cap, crt, key, with_crl ? crl_a : NULL};
    spes_net_tls *t = NULL;
    ck_assert_msg(spes_net_tls_alloc(&t, &f) == 0, "tls %s: %s", name, spes_errmsg());
    return t;
}

/* echo_handler answers "<peer>/<role>:" + request bytes. */
static void echo_handler(void *arg, spes_net_request *req)
{
    (void)arg;
    size_t len = 0;
    const void *data = spes_net_request_data(req, &len);
    const spes_pki_identity *p = spes_net_request_peer(req);
    if (len >= 4 && memcmp(data, "slow", 4) == 0)
        usleep(100 * 1000); /* a reply that takes a while */
    if (len >= 5 && memcmp(data, "sleep", 5) == 0)
        usleep((useconds_t)atoi((const char *)data + 5) * 1000); /* "sleepMS": one that takes MS */
    char head[128];
    int n = snprintf(head, sizeof head, "%s/%s:", p->name[0] ? p->name : "-", spes_pki_role_name(p->role));
    char *out = malloc((size_t)n + len);
    memcpy(out, head, (size_t)n);
    memcpy(out + n, data, len);
    spes_net_reply(req, out, (size_t)n + len);
    free(out);
}

typedef struct server_fx {
    spes_net_tls *tls;
    spes_net_server *srv;
    char url[128];
} server_fx;

static int server_start(server_fx *fx, const char *host, unsigned roles)
{
    fx->tls = tls_for(ca_a, "node-1", 1);
    char lurl[128];
    snprintf(lurl, sizeof lurl, "tls+tcp://%s:0", host);
    spes_net_server_opts o = {.url = lurl, .tls = fx->tls, .peer_roles = roles, .handler = echo_handler};
    int rc = spes_net_server_open(&fx->srv, &o);
    if (rc)
        return rc;
    snprintf(fx->url, sizeof fx->url, "tls+tcp://%s:%d", host, spes_net_server_port(fx->srv));
    return 0;
}

static void server_stop(server_fx *fx)
{
    spes_net_server_close(fx->srv);
    spes_net_tls_free(fx->tls);
}

/* call_as dials url with NAME's certificate (from CA dir ca) and makes one call. */
static int call_as(const char *url, const char *ca, const char *name, const char *msg, int timeout_ms,
                   char **rep)
{
    spes_net_tls *t = tls_for(ca, name, 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = url, .tls = t, .reconnect_min_ms = 50, .reconnect_max_ms = 200};
    int rc = spes_net_client_open(&c, &o);
    ck_assert_msg(rc == 0, "client open: %s", spes_errmsg());
    void *r = NULL;
    size_t rl = 0;
    rc = spes_net_call(c, msg, strlen(msg), timeout_ms, &r, &rl);
    if (rc == 0) {
        *rep = malloc(rl + 1);
        memcpy(*rep, r, rl);
        (*rep)[rl] = '\0';
        free(r);
    }
    spes_net_client_close(c);
    spes_net_tls_free(t);
    return rc;
}

/* wait_refusal waits (up to 3 s) until the server counted a refusal containing what. */
static void wait_refusal(server_fx *fx, const char *what)
{
    spes_net_stats st;
    for (int i = 0; i < 300; i++) {
        spes_net_tls_stats(fx->tls, &st);
        if (st.refused > 0)
            break;
        usleep(10000);
    }
    ck_assert_msg(st.refused > 0, "server recorded no refusal (wanted '%s')", what);
    ck_assert_msg(strstr(st.last_refusal, what) != NULL, "refusal '%s' does not mention '%s'",
                  st.last_refusal, what);
}

START_TEST(test_roundtrip_node)
{
    server_fx fx;
    ck_assert_msg(server_start(&fx, "127.0.0.1", 0) == 0, "%s", spes_errmsg());
    char *rep = NULL;
    ck_assert_msg(call_as(fx.url, ca_a, "node-2", "hello", 5000, &rep) == 0, "%s", spes_errmsg());
    ck_assert_str_eq(rep, "node-2/node:hello");
    free(rep);
    spes_net_stats st;
    spes_net_tls_stats(fx.tls, &st);
    ck_assert_uint_eq(st.refused, 0);
    ck_assert_uint_ge(st.accepted, 1);
    server_stop(&fx);
}
END_TEST

START_TEST(test_roundtrip_large_payload)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t, .peer_name = "node-1", .wait_connect = 1};
    ck_assert_msg(spes_net_client_open(&c, &o) == 0, "%s", spes_errmsg());
    size_t n = 3u << 20; /* several TLS records and nng buffer refills */
    unsigned char *buf = malloc(n);
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)(i * 2654435761u >> 13);
    void *r = NULL;
    size_t rl = 0;
    ck_assert_msg(spes_net_call(c, buf, n, 10000, &r, &rl) == 0, "%s", spes_errmsg());
    const char *head = "node-2/node:";
    ck_assert_uint_eq(rl, n + strlen(head));
    ck_assert(memcmp(r, head, strlen(head)) == 0);
    ck_assert(memcmp((char *)r + strlen(head), buf, n) == 0);
    free(r);
    free(buf);
    spes_net_client_close(c);
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

typedef struct async_box {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, err;
    char rep[128];
} async_box;

static void async_cb(void *arg, int err, const void *rep, size_t len)
{
    async_box *b = arg;
    pthread_mutex_lock(&b->mu);
    b->err = err;
    if (!err)
        snprintf(b->rep, sizeof b->rep, "%.*s", (int)len, (const char *)rep);
    b->done = 1;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

START_TEST(test_async_call)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t};
    ck_assert(spes_net_client_open(&c, &o) == 0);
    async_box b = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    ck_assert(spes_net_call_async(c, "ping", 4, 5000, async_cb, &b) == 0);
    pthread_mutex_lock(&b.mu);
    while (!b.done)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    ck_assert_int_eq(b.err, 0);
    ck_assert_str_eq(b.rep, "node-2/node:ping");
    spes_net_client_close(c);
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

/* step_after moves the wall clock by step_s seconds after ms milliseconds. A real step wakes
 * nng's timer threads (they wait for wall-clock deadlines); this one only changes what they
 * read, so a step forward is made while a short nng sleep on each of them is pending: they
 * wake when it ends and then see the stepped clock. */
typedef struct stepper {
    int ms;
    long long step_s;
} stepper;

static void *step_after(void *arg)
{
    stepper *st = arg;
    usleep((useconds_t)st->ms * 1000);
    nng_aio *kick[16] = {0}; /* nng spreads aios over several timer queues: one for each */
    for (int i = 0; st->step_s > 0 && i < 16; i++)
        if (nng_aio_alloc(&kick[i], NULL, NULL) == 0)
            nng_sleep_aio(50, kick[i]);
    __atomic_store_n(&wall_offset_s, st->step_s, __ATOMIC_RELAXED);
    for (int i = 0; i < 16; i++) {
        if (kick[i])
            nng_aio_wait(kick[i]);
        nng_aio_free(kick[i]);
    }
    return NULL;
}

/* stepped_call makes one call of timeout_ms for msg while the wall clock steps by step_s
 * seconds 100 ms into it; returns its result and how long it took (ms, monotonic). */
static int stepped_call(const char *msg, int timeout_ms, long long step_s, int async, double *took_ms)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t, .wait_connect = 1};
    ck_assert_msg(spes_net_client_open(&c, &o) == 0, "%s", spes_errmsg());
    pthread_t th;
    stepper st = {100, step_s};
    double t0 = spes_mono_s();
    ck_assert(pthread_create(&th, NULL, step_after, &st) == 0);
    int rc;
    if (async) {
        async_box b = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
        ck_assert(spes_net_call_async(c, msg, strlen(msg), timeout_ms, async_cb, &b) == 0);
        pthread_mutex_lock(&b.mu);
        while (!b.done)
            pthread_cond_wait(&b.cv, &b.mu);
        pthread_mutex_unlock(&b.mu);
        rc = b.err;
    } else {
        void *r = NULL;
        size_t rl = 0;
        rc = spes_net_call(c, msg, strlen(msg), timeout_ms, &r, &rl);
        free(r);
    }
    *took_ms = (spes_mono_s() - t0) * 1e3;
    pthread_join(th, NULL);
    __atomic_store_n(&wall_offset_s, 0, __ATOMIC_RELAXED);
    spes_net_client_close(c);
    spes_net_tls_free(t);
    server_stop(&fx);
    return rc;
}

START_TEST(test_deadline_wall_clock_forward)
{
    /* an hour forward mid-call: nng's wall-clock timeout would fire at once; ours does not */
    for (int async = 0; async < 2; async++) {
        double took = 0;
        int rc = stepped_call("sleep600", 5000, 3600, async, &took);
        ck_assert_msg(rc == 0, "%s call failed after %.0f ms: %s", async ? "async" : "sync", took,
                      spes_errmsg());
        ck_assert_msg(took >= 550, "the reply came after %.0f ms", took);
    }
}
END_TEST

START_TEST(test_deadline_wall_clock_back)
{
    /* an hour back mid-call: nng's wall-clock timeout would wait an hour (here: the 2 s reply) */
    for (int async = 0; async < 2; async++) {
        double took = 0;
        int rc = stepped_call("sleep2000", 500, -3600, async, &took);
        ck_assert_msg(rc == SPES_ETIMEDOUT, "%s call: rc %d after %.0f ms, wanted a timeout",
                      async ? "async" : "sync", rc, took);
        ck_assert_msg(took >= 450 && took < 1500, "%s call timed out after %.0f ms (deadline 500 ms)",
                      async ? "async" : "sync", took);
    }
}
END_TEST

START_TEST(test_redial_after_wall_clock_back)
{
    /* a client waiting to redial a server that is down when the wall clock steps an hour back:
     * nng's reconnect timer would wait that hour; the client's next call dials again */
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    int port = spes_net_server_port(fx.srv);
    server_stop(&fx);
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    char url[128];
    snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", port);
    spes_net_client_opts o = {.url = url, .tls = t, .reconnect_min_ms = 1500, .reconnect_max_ms = 1500};
    ck_assert_msg(spes_net_client_open(&c, &o) == 0, "%s", spes_errmsg());
    usleep(300 * 1000); /* its first dial failed: the next is due in 1.5 s, on nng's timer */
    unsigned long steps = spes__clock_steps();
    __atomic_store_n(&wall_offset_s, -3600, __ATOMIC_RELAXED);
    for (int i = 0; i < 100 && spes__clock_steps() == steps; i++)
        usleep(50 * 1000); /* the deadline thread looks at the wall clock every second */
    ck_assert_uint_gt(spes__clock_steps(), steps);
    fx.tls = tls_for(ca_a, "node-1", 1);
    char lurl[128];
    snprintf(lurl, sizeof lurl, "tls+tcp://127.0.0.1:%d", port);
    spes_net_server_opts so = {.url = lurl, .tls = fx.tls, .handler = echo_handler};
    ck_assert_msg(spes_net_server_open(&fx.srv, &so) == 0, "server again on port %d: %s", port,
                  spes_errmsg());
    void *r = NULL;
    size_t rl = 0;
    double t0 = spes_mono_s();
    int rc = spes_net_call(c, "ping", 4, 5000, &r, &rl);
    double took = spes_mono_s() - t0;
    __atomic_store_n(&wall_offset_s, 0, __ATOMIC_RELAXED);
    ck_assert_msg(rc == 0, "call after the step: %s (%.1f s)", spes_errmsg(), took);
    ck_assert(rl == 16 && memcmp(r, "node-2/node:ping", 16) == 0);
    free(r);
    spes_net_client_close(c);
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

START_TEST(test_operator_accepted_where_required)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", SPES_ROLE_MASK(SPES_ROLE_OPERATOR)) == 0);
    char *rep = NULL;
    ck_assert_msg(call_as(fx.url, ca_a, "alice", "evict node-3", 5000, &rep) == 0, "%s", spes_errmsg());
    ck_assert_str_eq(rep, "alice/operator:evict node-3");
    free(rep);
    server_stop(&fx);
}
END_TEST

START_TEST(test_refuse_node_where_operator_required)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", SPES_ROLE_MASK(SPES_ROLE_OPERATOR)) == 0);
    char *rep = NULL;
    int rc = call_as(fx.url, ca_a, "node-2", "evict node-3", 1000, &rep);
    ck_assert_int_eq(rc, SPES_ETIMEDOUT);
    wait_refusal(&fx, "operator required");
    wait_refusal(&fx, "'node-2'");
    server_stop(&fx);
}
END_TEST

START_TEST(test_refuse_other_ca)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    char *rep = NULL;
    /* node-9's certificate comes from run B; it knows run A's CA and tries anyway */
    ck_assert_int_eq(call_as(fx.url, ca_a, "node-9", "hi", 1000, &rep), SPES_ETIMEDOUT);
    wait_refusal(&fx, "unable to get local issuer certificate");
    server_stop(&fx);
    /* and a run-B node that trusts only run B refuses run A's server itself */
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    spes_net_tls *t = tls_for(ca_b, "node-9", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t, .wait_connect = 1};
    ck_assert_int_ne(spes_net_client_open(&c, &o), 0);
    spes_net_stats cs;
    spes_net_tls_stats(t, &cs);
    ck_assert_msg(strstr(cs.last_refusal, "'node-1' refused: unable to get local issuer certificate"), "%s",
                  cs.last_refusal);
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

START_TEST(test_refuse_expired)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    char *rep = NULL;
    ck_assert_int_eq(call_as(fx.url, ca_a, "old", "hi", 1000, &rep), SPES_ETIMEDOUT);
    wait_refusal(&fx, "certificate has expired");
    server_stop(&fx);
}
END_TEST

START_TEST(test_refuse_revoked)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    char *rep = NULL;
    ck_assert_int_eq(call_as(fx.url, ca_a, "gone", "hi", 1000, &rep), SPES_ETIMEDOUT);
    wait_refusal(&fx, "certificate revoked");
    wait_refusal(&fx, "'gone'");
    /* a client that waits for its first connection learns at once */
    spes_net_tls *t = tls_for(ca_a, "gone", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t, .wait_connect = 1, .connect_timeout_ms = 15000};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_ne(spes_net_client_open(&c, &o), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "revoked: dial refused after %.0f ms: %s\n",
            (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6, spes_errmsg());
    /* the alert names the reason unless the reset overtook it (test_refusal_without_alert) */
    ck_assert_msg(strstr(spes_errmsg(), "certificate revoked") || strstr(spes_errmsg(), "without a word"),
                  "%s", spes_errmsg());
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

/* tcp_listen_any listens on a free loopback port, returned in *port. */
static int tcp_listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 1) == 0);
    ck_assert(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* mute_server: a TLS 1.3 server (node-1's certificate) that completes each handshake and
 * then resets the connection without an alert, as a refusal looks to a client when the
 * alert and the reset arrive together. */
typedef struct mute_server {
    int fd, port, stop, handshakes;
    pthread_t th;
} mute_server;

static void *mute_serve(void *arg)
{
    mute_server *m = arg;
    char cap[400], crt[400], key[400];
    snprintf(cap, sizeof cap, "%s/ca.crt", ca_a);
    snprintf(crt, sizeof crt, "%s/node-1.crt", certs);
    snprintf(key, sizeof key, "%s/node-1.key", certs);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (SSL_CTX_load_verify_locations(ctx, cap, NULL) != 1 ||
        SSL_CTX_use_certificate_file(ctx, crt, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    while (!__atomic_load_n(&m->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd pf = {.fd = m->fd, .events = POLLIN};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        int cfd = accept(m->fd, NULL, NULL);
        if (cfd < 0)
            continue;
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, cfd);
        if (SSL_accept(ssl) == 1) {
            __atomic_add_fetch(&m->handshakes, 1, __ATOMIC_RELEASE);
            usleep(50 * 1000); /* the client's SP header is unread here: close() resets */
        }
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        SSL_free(ssl);
        close(cfd);
    }
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
}

START_TEST(test_refusal_without_alert)
{
    mute_server m = {0};
    m.fd = tcp_listen_any(&m.port);
    ck_assert(pthread_create(&m.th, NULL, mute_serve, &m) == 0);
    char url[64];
    snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", m.port);
    /* the client waiting for its first connection learns of the refusal, not a timeout */
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = url, .tls = t, .wait_connect = 1, .connect_timeout_ms = 8000};
    int rc = spes_net_client_open(&c, &o);
    __atomic_store_n(&m.stop, 1, __ATOMIC_RELEASE);
    pthread_join(m.th, NULL);
    close(m.fd);
    ck_assert_int_ge(m.handshakes, 1);
    ck_assert_msg(rc == SPES_EAUTH, "rc %d: %s", rc, spes_errmsg());
    ck_assert_msg(strstr(spes_errmsg(), "'node-1' refused: it ended the connection after the TLS handshake"),
                  "%s", spes_errmsg());
    spes_net_tls_free(t);
}
END_TEST

START_TEST(test_crl_reload_refuses_next_connection)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    char *rep = NULL;
    ck_assert_msg(call_as(fx.url, ca_a, "late", "before", 5000, &rep) == 0, "%s", spes_errmsg());
    ck_assert_str_eq(rep, "late/node:before");
    free(rep);
    /* 'late' keeps a connection open while it is revoked */
    spes_net_tls *t = tls_for(ca_a, "late", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t, .wait_connect = 1, .reconnect_min_ms = 20};
    ck_assert(spes_net_client_open(&c, &o) == 0);
    void *r = NULL;
    size_t rl = 0;
    ck_assert(spes_net_call(c, "x", 1, 5000, &r, &rl) == 0);
    free(r);
    char crl2[400];
    snprintf(crl2, sizeof crl2, "%s/crl-late.pem", tmp);
    ck_assert(spes_pki_cert_revoke(ca_a, "late", NULL) == 0);
    ck_assert(spes_pki_crl_write(ca_a, 30, crl2) == 0);
    ck_assert_int_eq(spes_net_server_drop_revoked(fx.srv), 0); /* old list: nothing to drop */
    ck_assert_msg(spes_net_tls_reload_crl(fx.tls, crl2) == 0, "%s", spes_errmsg());
    /* a new connection is refused ... */
    ck_assert_int_eq(call_as(fx.url, ca_a, "late", "after", 1000, &rep), SPES_ETIMEDOUT);
    wait_refusal(&fx, "certificate revoked");
    /* ... the live one still works until the daemon drops it, then it cannot come back */
    ck_assert(spes_net_call(c, "y", 1, 5000, &r, &rl) == 0);
    free(r);
    spes_net_stats before, after;
    spes_net_tls_stats(fx.tls, &before);
    ck_assert_int_eq(spes_net_server_drop_revoked(fx.srv), 1);
    /* its dialer comes back at once and is refused (no request is left outstanding here:
     * see the README's note on nng 1.5.2 and closing a socket with a stranded request) */
    for (int i = 0; i < 300; i++) {
        spes_net_tls_stats(fx.tls, &after);
        if (after.refused > before.refused)
            break;
        usleep(10000);
    }
    ck_assert_uint_gt(after.refused, before.refused);
    ck_assert_msg(strstr(after.last_refusal, "'late' refused: certificate revoked"), "%s",
                  after.last_refusal);
    spes_net_client_close(c);
    spes_net_tls_free(t);
    /* a bad file leaves the loaded list in force */
    char junk[400];
    snprintf(junk, sizeof junk, "%s/junk.pem", tmp);
    FILE *f = fopen(junk, "w");
    fputs("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", f);
    fclose(f);
    ck_assert_int_ne(spes_net_tls_reload_crl(fx.tls, junk), 0);
    ck_assert_int_eq(call_as(fx.url, ca_a, "late", "again", 1000, &rep), SPES_ETIMEDOUT);
    ck_assert_msg(call_as(fx.url, ca_a, "node-2", "still", 5000, &rep) == 0, "%s", spes_errmsg());
    free(rep);
    server_stop(&fx);
}
END_TEST

/* raw_client connects with plain OpenSSL, trusting the run CA, presenting NAME's
 * certificate (none if NULL), offering TLS versions up to max_version. Returns 1 if a
 * whole SP exchange got an answer, 0 if the server ended it; *version gets the protocol. */
static int raw_client(int port, const char *name, int max_version, char *version, size_t vlen)
{
    char cap[400], crt[400], key[400];
    snprintf(cap, sizeof cap, "%s/ca.crt", ca_a);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    ck_assert(SSL_CTX_load_verify_locations(ctx, cap, NULL) == 1);
    SSL_CTX_set_security_level(ctx, 0); /* let this client offer old versions at all */
    SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(ctx, max_version);
    if (name) {
        snprintf(crt, sizeof crt, "%s/%s.crt", certs, name);
        snprintf(key, sizeof key, "%s/%s.key", certs, name);
        ck_assert(SSL_CTX_use_certificate_file(ctx, crt, SSL_FILETYPE_PEM) == 1);
        ck_assert(SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    int answered = 0;
    snprintf(version, vlen, "none");
    if (SSL_connect(ssl) == 1) {
        snprintf(version, vlen, "%s", SSL_get_version(ssl));
        /* TLS 1.3: the server judges our certificate after our Finished, so talk SP */
        static const unsigned char sp_hdr[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0}; /* req0 */
        unsigned char in[8];
        answered = SSL_write(ssl, sp_hdr, sizeof sp_hdr) == 8 && SSL_read(ssl, in, sizeof in) == 8 &&
                   memcmp(in, "\0SP\0\0\x31", 6) == 0; /* rep0 answers */
    }
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return answered;
}

START_TEST(test_tls_versions)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    char v[32];
    ck_assert_int_eq(raw_client(spes_net_server_port(fx.srv), "node-2", TLS1_2_VERSION, v, sizeof v), 1);
    ck_assert_str_eq(v, "TLSv1.2");
    ck_assert_int_eq(raw_client(spes_net_server_port(fx.srv), "node-2", TLS1_3_VERSION, v, sizeof v), 1);
    ck_assert_str_eq(v, "TLSv1.3");
    ck_assert_int_eq(raw_client(spes_net_server_port(fx.srv), "node-2", TLS1_1_VERSION, v, sizeof v), 0);
    ck_assert_str_eq(v, "none");
    wait_refusal(&fx, "unsupported protocol");
    server_stop(&fx);
}
END_TEST

START_TEST(test_refuse_no_client_certificate)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    char v[32];
    ck_assert_int_eq(raw_client(spes_net_server_port(fx.srv), NULL, TLS1_3_VERSION, v, sizeof v), 0);
    wait_refusal(&fx, "certificate");
    spes_net_stats st;
    spes_net_tls_stats(fx.tls, &st);
    ck_assert_uint_eq(st.accepted, 0);
    server_stop(&fx);
}
END_TEST

START_TEST(test_client_refuses_wrong_server)
{
    /* the server presents an operator certificate: no serverAuth, so no client accepts it */
    spes_net_tls *st = tls_for(ca_a, "alice", 0);
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {.url = "tls+tcp://127.0.0.1:0", .tls = st, .handler = echo_handler};
    ck_assert(spes_net_server_open(&srv, &so) == 0);
    char url[128];
    snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", spes_net_server_port(srv));
    spes_net_tls *ct = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts co = {.url = url, .tls = ct, .wait_connect = 1};
    int rc = spes_net_client_open(&c, &co);
    ck_assert_int_ne(rc, 0);
    spes_net_stats cs;
    spes_net_tls_stats(ct, &cs);
    ck_assert_uint_ge(cs.refused, 1);
    ck_assert_msg(strstr(cs.last_refusal, "purpose") || strstr(cs.last_refusal, "not accepted"), "%s",
                  cs.last_refusal);
    spes_net_server_close(srv);
    spes_net_tls_free(st);
    /* a node server with the wrong name for what the client expects */
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    co.url = fx.url;
    co.peer_name = "node-7";
    ck_assert_int_ne(spes_net_client_open(&c, &co), 0);
    spes_net_tls_stats(ct, &cs);
    ck_assert_msg(strstr(cs.last_refusal, "expected peer 'node-7', got 'node-1'"), "%s", cs.last_refusal);
    spes_net_tls_free(ct);
    server_stop(&fx);
}
END_TEST

START_TEST(test_ipv6_loopback)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    if (!ok) {
        fprintf(stderr, "test_ipv6_loopback: skipped, ::1 is not available here\n");
        return;
    }
    server_fx fx;
    ck_assert_msg(server_start(&fx, "[::1]", 0) == 0, "%s", spes_errmsg());
    char *rep = NULL;
    ck_assert_msg(call_as(fx.url, ca_a, "node-2", "v6", 5000, &rep) == 0, "%s", spes_errmsg());
    ck_assert_str_eq(rep, "node-2/node:v6");
    free(rep);
    server_stop(&fx);
}
END_TEST

START_TEST(test_plain_tcp_only_on_request)
{
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {.url = "tcp://127.0.0.1:0", .handler = echo_handler};
    ck_assert_int_eq(spes_net_server_open(&srv, &so), SPES_EINVAL);
    ck_assert(strstr(spes_errmsg(), "explicitly") != NULL);
    so.plain = 1;
    ck_assert(spes_net_server_open(&srv, &so) == 0);
    char url[128];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", spes_net_server_port(srv));
    spes_net_client *c = NULL;
    spes_net_client_opts co = {.url = url};
    ck_assert_int_eq(spes_net_client_open(&c, &co), SPES_EINVAL);
    co.plain = 1;
    ck_assert(spes_net_client_open(&c, &co) == 0);
    void *r = NULL;
    size_t rl = 0;
    ck_assert(spes_net_call(c, "x", 1, 5000, &r, &rl) == 0);
    ck_assert_uint_eq(rl, strlen("-/none:x"));
    ck_assert(memcmp(r, "-/none:x", rl) == 0);
    free(r);
    /* a timeout of 0 means the default, not "give up at once" */
    ck_assert_msg(spes_net_call(c, "slow", 4, 0, &r, &rl) == 0, "%s", spes_errmsg());
    ck_assert(rl == strlen("-/none:slow") && memcmp(r, "-/none:slow", rl) == 0);
    free(r);
    spes_net_client_close(c);
    spes_net_server_close(srv);
    /* tls+tcp without TLS material is refused too */
    so.plain = 0;
    so.url = "tls+tcp://127.0.0.1:0";
    ck_assert_int_eq(spes_net_server_open(&srv, &so), SPES_EINVAL);
}
END_TEST

START_TEST(test_reconnect_after_server_restart)
{
    server_fx fx;
    ck_assert(server_start(&fx, "127.0.0.1", 0) == 0);
    int port = spes_net_server_port(fx.srv);
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c = NULL;
    spes_net_client_opts o = {.url = fx.url, .tls = t, .reconnect_min_ms = 20, .reconnect_max_ms = 100};
    ck_assert(spes_net_client_open(&c, &o) == 0);
    void *r = NULL;
    size_t rl = 0;
    ck_assert(spes_net_call(c, "a", 1, 5000, &r, &rl) == 0);
    free(r);
    spes_net_server_close(fx.srv);
    char lurl[128];
    snprintf(lurl, sizeof lurl, "tls+tcp://127.0.0.1:%d", port);
    spes_net_server_opts so = {.url = lurl, .tls = fx.tls, .handler = echo_handler};
    ck_assert_msg(spes_net_server_open(&fx.srv, &so) == 0, "%s", spes_errmsg());
    ck_assert_msg(spes_net_call(c, "b", 1, 5000, &r, &rl) == 0, "%s", spes_errmsg());
    ck_assert(rl == strlen("node-2/node:b") && memcmp(r, "node-2/node:b", rl) == 0);
    free(r);
    spes_net_client_close(c);
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

/* spes__run_bounded: a call that returns in time reports 0; one that blocks
 * reports 1 after about the timeout and still runs to its end afterwards
 * (what spes__nng_close_bounded relies on when nng 1.5.2 strands a pipe). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int release, finished;
} blocker;

static void block_until_released(void *arg)
{
    blocker *b = arg;
    pthread_mutex_lock(&b->mu);
    while (!b->release)
        pthread_cond_wait(&b->cv, &b->mu);
    b->finished = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void set_flag(void *arg)
{
    *(int *)arg = 1;
}

START_TEST(test_bounded_close_helper)
{
    int flag = 0;
    ck_assert_int_eq(spes__run_bounded(set_flag, &flag, 5000), 0);
    ck_assert_int_eq(flag, 1);
    blocker b = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(spes__run_bounded(block_until_released, &b, 300), 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    ck_assert_msg(dt >= 0.29 && dt < 5.0, "waited %.3f s for a 300 ms bound", dt);
    pthread_mutex_lock(&b.mu);
    ck_assert_int_eq(b.finished, 0);
    b.release = 1;
    pthread_cond_broadcast(&b.cv);
    while (!b.finished)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    /* a healthy socket closes well within the bound */
    nng_socket s;
    ck_assert_int_eq(nng_pair0_open(&s), 0);
    ck_assert_int_eq(spes__nng_close_bounded(s, "test socket"), 0);
}
END_TEST

/* ---- byte counters ---- */

/* tap is a TCP relay between one client and one server that counts the bytes
 * it forwards each way: what actually crossed the wire. */
typedef struct tap {
    int lfd, port, target;
    pthread_t th;
    uint64_t up, down; /* client -> server, server -> client (read after join) */
} tap;

static void *tap_main(void *arg)
{
    tap *t = arg;
    int c = accept(t->lfd, NULL, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->target)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c < 0 || s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        goto done;
    struct pollfd pf[2] = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    char buf[65536];
    for (;;) {
        if (poll(pf, 2, -1) < 0)
            break;
        int from = (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) ? 0 : 1;
        if (!(pf[from].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        ssize_t n = read(pf[from].fd, buf, sizeof buf);
        if (n <= 0)
            break; /* either side closed: the relay ends */
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(pf[1 - from].fd, buf + off, (size_t)(n - off));
            if (w <= 0)
                goto done;
            off += w;
        }
        *(from == 0 ? &t->up : &t->down) += (uint64_t)n;
    }
done:
    if (c >= 0)
        close(c);
    if (s >= 0)
        close(s);
    return NULL;
}

static void tap_start(tap *t, int target)
{
    memset(t, 0, sizeof *t);
    t->target = target;
    t->lfd = tcp_listen_any(&t->port);
    ck_assert(pthread_create(&t->th, NULL, tap_main, t) == 0);
}

static void tap_join(tap *t)
{
    pthread_join(t->th, NULL);
    close(t->lfd);
}

/* counters_delta returns now - before, per field. */
static spes_net_counters counters_delta(const spes_net_counters *before)
{
    spes_net_counters now, d;
    spes_net_counters_get(&now);
    for (int c = 0; c < SPES_NET_NCLASS; c++) {
        d.sent_bytes[c] = now.sent_bytes[c] - before->sent_bytes[c];
        d.received_bytes[c] = now.received_bytes[c] - before->received_bytes[c];
        d.sent_msgs[c] = now.sent_msgs[c] - before->sent_msgs[c];
        d.received_msgs[c] = now.received_msgs[c] - before->received_msgs[c];
    }
    return d;
}

/* wait_counted waits (up to 3 s) until both sides counted `msgs` messages sent
 * (a server's send completes on its own thread, maybe after the client has its reply). */
static spes_net_counters wait_counted(const spes_net_counters *before, int cls, uint64_t msgs)
{
    spes_net_counters d;
    for (int i = 0; i < 300; i++) {
        d = counters_delta(before);
        if (d.sent_msgs[cls] >= msgs && d.received_msgs[cls] >= msgs)
            break;
        usleep(10000);
    }
    return d;
}

/* Plain tcp through a tap: the counted payload bytes are the message bodies
 * exactly, and the wire carries them plus nng's framing: an 8-byte SP header
 * per connection and direction, and per message an 8-byte length and the
 * 4-byte request id of req/rep. */
START_TEST(test_counters_match_the_wire)
{
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {.url = "tcp://127.0.0.1:0", .plain = 1, .handler = echo_handler};
    ck_assert(spes_net_server_open(&srv, &so) == 0);
    tap t;
    tap_start(&t, spes_net_server_port(srv));
    char url[128];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", t.port);
    spes_net_counters before;
    spes_net_counters_get(&before);
    spes_net_client *c = NULL;
    spes_net_client_opts co = {.url = url, .plain = 1, .wait_connect = 1};
    ck_assert_msg(spes_net_client_open(&c, &co) == 0, "%s", spes_errmsg());
    const char *reqs[] = {"hello", "", "a somewhat longer request of the control plane"};
    uint64_t up = 0, down = 0;
    void *r = NULL;
    size_t rl = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(spes_net_call(c, reqs[i], strlen(reqs[i]), 5000, &r, &rl) == 0, "%s", spes_errmsg());
        free(r);
        up += strlen(reqs[i]);
        down += rl;
        ck_assert_uint_eq(rl, strlen("-/none:") + strlen(reqs[i]));
    }
    async_box b = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    ck_assert(spes_net_call_async(c, "ping", 4, 5000, async_cb, &b) == 0);
    pthread_mutex_lock(&b.mu);
    while (!b.done)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    ck_assert_int_eq(b.err, 0);
    up += 4;
    down += strlen(b.rep);
    /* both ends are in this process: each message is counted once sent and once received */
    spes_net_counters d = wait_counted(&before, SPES_NET_CONTROL, 8);
    ck_assert_uint_eq(d.sent_msgs[SPES_NET_CONTROL], 8);
    ck_assert_uint_eq(d.received_msgs[SPES_NET_CONTROL], 8);
    ck_assert_uint_eq(d.sent_bytes[SPES_NET_CONTROL], up + down);
    ck_assert_uint_eq(d.received_bytes[SPES_NET_CONTROL], up + down);
    ck_assert_uint_eq(d.sent_bytes[SPES_NET_BLOB] + d.received_bytes[SPES_NET_BLOB], 0);
    spes_net_client_close(c);
    tap_join(&t);
    spes_net_server_close(srv);
    ck_assert_uint_eq(t.up, 8 + 4 * 12 + up);
    ck_assert_uint_eq(t.down, 8 + 4 * 12 + down);
}
END_TEST

/* Over TLS the same payload bytes are counted, on both ends, and a request
 * the handler classes as blob traffic is counted as such, with its reply. */
static void classing_handler(void *arg, spes_net_request *req)
{
    size_t len = 0;
    const char *data = spes_net_request_data(req, &len);
    if (len >= 4 && !memcmp(data, "blob", 4))
        spes_net_request_set_class(req, SPES_NET_BLOB);
    echo_handler(arg, req);
}

START_TEST(test_counters_tls_and_classes)
{
    spes_net_tls *ts = tls_for(ca_a, "node-1", 0), *tc = tls_for(ca_a, "node-2", 0);
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {.url = "tls+tcp://127.0.0.1:0", .tls = ts, .handler = classing_handler};
    ck_assert(spes_net_server_open(&srv, &so) == 0);
    char url[128];
    snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", spes_net_server_port(srv));
    spes_net_client *c = NULL;
    spes_net_client_opts co = {.url = url, .tls = tc, .wait_connect = 1};
    ck_assert_msg(spes_net_client_open(&c, &co) == 0, "%s", spes_errmsg());
    spes_net_counters before;
    spes_net_counters_get(&before);
    void *r = NULL;
    size_t rl = 0;
    ck_assert(spes_net_call(c, "status?", 7, 5000, &r, &rl) == 0);
    free(r);
    ck_assert_uint_eq(rl, strlen("node-2/node:status?"));
    ck_assert(spes_net_call(c, "blob 17", 7, 5000, &r, &rl) == 0);
    free(r);
    spes_net_counters d = wait_counted(&before, SPES_NET_CONTROL, 3);
    d = wait_counted(&before, SPES_NET_BLOB, 1);
    /* the client sent both requests as control (it does not know); the server
     * received and answered the second one as blob traffic */
    ck_assert_uint_eq(d.sent_msgs[SPES_NET_CONTROL], 3);
    ck_assert_uint_eq(d.sent_bytes[SPES_NET_CONTROL], 7 + 7 + rl);
    ck_assert_uint_eq(d.received_bytes[SPES_NET_CONTROL], 7 + rl + rl);
    ck_assert_uint_eq(d.sent_bytes[SPES_NET_BLOB], rl);
    ck_assert_uint_eq(d.received_bytes[SPES_NET_BLOB], 7);
    ck_assert_uint_eq(spes_net_counters_sent(&d), spes_net_counters_received(&d));
    spes_net_client_close(c);
    spes_net_server_close(srv);
    spes_net_tls_free(ts);
    spes_net_tls_free(tc);
}
END_TEST

/* ---- limits: what a connection may hold ---- */

/* raw_tcp connects to 127.0.0.1:port from source address src (127.0.0.x). */
static int raw_tcp(int port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in me = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &me.sin_addr);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&me, sizeof me), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* is_closed says whether the server ended the connection (EOF or reset) within wait_ms. */
static int is_closed(int fd, int wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0)
        return 0;
    char b[256];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n <= 0;
}

static int count_closed(const int *fd, int n, int wait_ms)
{
    int closed = 0;
    for (int i = 0; i < n; i++)
        closed += is_closed(fd[i], i == 0 ? wait_ms : 1);
    return closed;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

START_TEST(test_limits_raw_connections)
{
    /* half-open connections (no byte, or half a TLS handshake) end at the handshake
     * deadline; those beyond the per-address cap end at once; an honest client from
     * another address is answered throughout */
    server_fx fx;
    fx.tls = tls_for(ca_a, "node-1", 1);
    spes_net_server_opts o = {.url = "tls+tcp://127.0.0.1:0",
                              .tls = fx.tls,
                              .handler = echo_handler,
                              .handshake_timeout_ms = 1500,
                              .max_conns_per_addr = 8,
                              .max_conns = 64};
    ck_assert_msg(spes_net_server_open(&fx.srv, &o) == 0, "%s", spes_errmsg());
    int port = spes_net_server_port(fx.srv);
    snprintf(fx.url, sizeof fx.url, "tls+tcp://127.0.0.1:%d", port);
    int fd[20];
    for (int i = 0; i < 20; i++)
        fd[i] = raw_tcp(port, "127.0.0.2");
    /* half a ClientHello: a record header announcing 512 bytes, then 16 of them */
    static const unsigned char half[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                                         1,    2,    3,    4,    5,    6,    7,    8,    9,    10};
    int hs = raw_tcp(port, "127.0.0.3");
    ck_assert_int_eq(write(hs, half, sizeof half), (ssize_t)sizeof half);
    double t0 = now_s();
    usleep(800 * 1000); /* before the deadline: only the cap has acted */
    int early = count_closed(fd, 20, 10);
    ck_assert_msg(early == 12,
                  "%d of 20 connections from one address closed before the deadline, want 12 (cap 8)", early);
    ck_assert_int_eq(is_closed(hs, 1), 0);
    char *rep = NULL;
    double c0 = now_s();
    ck_assert_msg(call_as(fx.url, ca_a, "node-2", "hello", 5000, &rep) == 0, "honest call: %s",
                  spes_errmsg());
    ck_assert_str_eq(rep, "node-2/node:hello");
    free(rep);
    ck_assert_msg(now_s() - c0 < 4.0, "honest call took %.3f s", now_s() - c0);
    /* every half-open one ends at the deadline */
    int closed = 0;
    for (int k = 0; k < 40 && closed < 21; k++) {
        usleep(100 * 1000);
        closed = 0;
        for (int i = 0; i < 20; i++)
            closed += is_closed(fd[i], 0) || fcntl(fd[i], F_GETFD) < 0;
        closed += is_closed(hs, 0);
    }
    double t = now_s() - t0;
    ck_assert_msg(t >= 1.4 && t < 6.0, "half-open connections ended after %.2f s (deadline 1.5 s)", t);
    spes_net_server_stats st;
    spes_net_server_get_stats(fx.srv, &st);
    ck_assert_uint_ge(st.conns_refused, 12);
    ck_assert_uint_ge(st.handshakes_expired, 9);
    for (int i = 0; i < 20; i++)
        close(fd[i]);
    close(hs);
    server_stop(&fx);
}
END_TEST

START_TEST(test_limits_idle_and_total)
{
    server_fx fx;
    fx.tls = tls_for(ca_a, "node-1", 1);
    spes_net_server_opts o = {.url = "tls+tcp://127.0.0.1:0",
                              .tls = fx.tls,
                              .handler = echo_handler,
                              .idle_timeout_ms = 1000,
                              .max_conns = 3,
                              .max_conns_per_addr = 8};
    ck_assert_msg(spes_net_server_open(&fx.srv, &o) == 0, "%s", spes_errmsg());
    snprintf(fx.url, sizeof fx.url, "tls+tcp://127.0.0.1:%d", spes_net_server_port(fx.srv));
    spes_net_tls *t = tls_for(ca_a, "node-2", 0);
    spes_net_client *c[4];
    for (int i = 0; i < 4; i++) {
        spes_net_client_opts co = {.url = fx.url,
                                   .tls = t,
                                   .wait_connect = i < 3,
                                   .reconnect_min_ms = 2000,
                                   .reconnect_max_ms = 2000};
        ck_assert_msg(spes_net_client_open(&c[i], &co) == 0, "client %d: %s", i, spes_errmsg());
    }
    usleep(300 * 1000);
    spes_net_server_stats st;
    spes_net_server_get_stats(fx.srv, &st);
    ck_assert_int_eq(st.conns, 3); /* the fourth was refused: total cap 3 */
    ck_assert_uint_ge(st.conns_refused, 1);
    /* none sends a request: each is closed at the idle deadline */
    double t0 = now_s();
    while (now_s() - t0 < 4.0) {
        spes_net_server_get_stats(fx.srv, &st);
        if (st.idle_closed >= 3)
            break;
        usleep(50 * 1000);
    }
    ck_assert_msg(st.idle_closed >= 3, "%llu idle connections closed", (unsigned long long)st.idle_closed);
    ck_assert_msg(now_s() - t0 > 0.4, "idle connections closed after %.2f s (deadline 1 s)",
                  now_s() - t0 + 0.3);
    for (int i = 0; i < 4; i++)
        spes_net_client_close(c[i]);
    /* an honest client still gets in and is answered */
    char *rep = NULL;
    /* 15 s: under AddressSanitizer on a loaded 2-core machine a new TLS connection can take seconds */
    ck_assert_msg(call_as(fx.url, ca_a, "node-2", "again", 15000, &rep) == 0, "%s", spes_errmsg());
    free(rep);
    spes_net_tls_free(t);
    server_stop(&fx);
}
END_TEST

static Suite *net_suite(void)
{
    Suite *s = suite_create("net");
    TCase *tc = tcase_create("tls");
    tcase_add_unchecked_fixture(tc, setup_pki, teardown_pki);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_limits_raw_connections);
    tcase_add_test(tc, test_limits_idle_and_total);
    tcase_add_test(tc, test_roundtrip_node);
    tcase_add_test(tc, test_bounded_close_helper);
    tcase_add_test(tc, test_roundtrip_large_payload);
    tcase_add_test(tc, test_async_call);
    tcase_add_test(tc, test_deadline_wall_clock_forward);
    tcase_add_test(tc, test_deadline_wall_clock_back);
    tcase_add_test(tc, test_redial_after_wall_clock_back);
    tcase_add_test(tc, test_operator_accepted_where_required);
    tcase_add_test(tc, test_refuse_node_where_operator_required);
    tcase_add_test(tc, test_refuse_other_ca);
    tcase_add_test(tc, test_refuse_expired);
    tcase_add_test(tc, test_refuse_revoked);
    tcase_add_test(tc, test_refusal_without_alert);
    tcase_add_test(tc, test_crl_reload_refuses_next_connection);
    tcase_add_test(tc, test_refuse_no_client_certificate);
    tcase_add_test(tc, test_tls_versions);
    tcase_add_test(tc, test_client_refuses_wrong_server);
    tcase_add_test(tc, test_ipv6_loopback);
    tcase_add_test(tc, test_plain_tcp_only_on_request);
    tcase_add_test(tc, test_reconnect_after_server_restart);
    tcase_add_test(tc, test_counters_match_the_wire);
    tcase_add_test(tc, test_counters_tls_and_classes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    /* raw_client writes through OpenSSL's socket BIO (plain write(2)) to servers
     * that may already have hung up: that must be a failed write, not a signal */
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(net_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
