/* test_fetch.c: spes_fetch and spes_fetch_put against a real HTTP server on loopback.
 * Each test starts tests/fetch/server.py (fork/exec) in a fresh temp dir, reads its
 * request log to prove what went over the wire, and kills it at the end. */
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"
#include "fetch/fetch.h"

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SPES_FETCH_SERVER
#define SPES_FETCH_SERVER "tests/fetch/server.py"
#endif

static char tmp[256], root[320], logp[320];
static pid_t srv = -1;
static int port;

/* ---- server ---- */

static void server_stop(void)
{
    if (srv > 0) {
        kill(srv, SIGTERM);
        int st;
        ck_assert_int_eq(waitpid(srv, &st, 0), srv);
        srv = -1;
    }
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void server_start(const char *cert)
{
    const char *src = getenv("SPES_SOURCE_DIR");
    char script[512];
    if (src)
        snprintf(script, sizeof script, "%s/tests/fetch/server.py", src);
    else
        snprintf(script, sizeof script, "%s", SPES_FETCH_SERVER);
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    srv = fork();
    ck_assert_int_ge(srv, 0);
    if (srv == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        /* without a certificate the argument list ends before "--cert" */
        execl("/usr/bin/python3", "python3", script, "--root", root, "--log", logp, "--max-seconds", "120",
              cert ? "--cert" : (char *)NULL, cert, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char line[32] = {0};
    size_t n = 0;
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    while (n < sizeof line - 1 && !memchr(line, '\n', n) && poll(&pf, 1, 10000) == 1) {
        ssize_t r = read(p[0], line + n, sizeof line - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(p[0]);
    port = atoi(line);
    if (port <= 0) { /* teardown does not run after a failed setup: clean up here */
        server_stop();
        nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        ck_abort_msg("%s did not print its port (got \"%s\")", script, line);
    }
}

static void setup(void)
{
    spes_log_set_level(SPES_LOG_WARN);
    snprintf(tmp, sizeof tmp, "/tmp/spes-fetch-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
    snprintf(root, sizeof root, "%s/root", tmp);
    snprintf(logp, sizeof logp, "%s/requests.log", tmp);
    ck_assert_int_eq(mkdir(root, 0755), 0);
    server_start(NULL);
}

static void teardown(void)
{
    server_stop();
    nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- helpers ---- */

static const char *url(const char *path)
{
    static char bufs[8][256];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 256, "http://127.0.0.1:%d/%s", port, path);
    return b;
}

static char *tpath(const char *name)
{
    static char bufs[8][400];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 400, "%s/%s", tmp, name);
    return b;
}

/* make_file writes a deterministic file of len bytes into the server root and returns its digest. */
static unsigned char *make_file(const char *name, size_t len, unsigned seed, char hex[65])
{
    unsigned char *d = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(d);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1664525u + 1013904223u;
        d[i] = (unsigned char)(x >> 24);
    }
    char p[400];
    snprintf(p, sizeof p, "%s/%s", root, name);
    ck_assert_int_eq(spes_write_file_atomic(p, d, len), 0);
    uint8_t h[32];
    spes_sha256(d, len, h);
    spes_hex_encode(h, 32, hex);
    return d;
}

static int same_bytes(const char *path, const unsigned char *want, size_t len)
{
    char *got;
    size_t n;
    if (spes_read_file(path, 1 << 30, &got, &n) != 0)
        return 0;
    int ok = n == len && memcmp(got, want, len) == 0;
    free(got);
    return ok;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

typedef struct req {
    char method[8], path[128], range[64];
    int inflight;
} req;

/* read_log parses the server's request log; returns the number of requests. */
static int read_log(req *out, int max)
{
    FILE *f = fopen(logp, "r");
    if (!f)
        return 0;
    int n = 0;
    char line[512];
    while (fgets(line, sizeof line, f) && n < max) {
        req *r = &out[n];
        if (sscanf(line, "%7[^\t]\t%127[^\t]\t%63[^\t]\t%d", r->method, r->path, r->range, &r->inflight) == 4)
            n++;
    }
    fclose(f);
    return n;
}

static void clear_log(void)
{
    unlink(logp);
}

typedef struct seen {
    int calls;
    spes_fetch_progress last;
    int *cancel;
} seen;

static void on_progress(void *arg, const spes_fetch_progress *p)
{
    seen *s = arg;
    s->calls++;
    s->last = *p;
    if (s->cancel && p->done > 0)
        *s->cancel = 1;
}

static spes_fetch_opts quick(seen *s)
{
    spes_fetch_opts o;
    spes_fetch_opts_init(&o);
    o.max_attempts = 3;
    o.retry_base_ms = 10;
    o.retry_max_ms = 50;
    o.connect_timeout_ms = 2000;
    o.low_speed_bytes = 1000;
    o.low_speed_secs = 1;
    if (s) {
        o.progress = on_progress;
        o.progress_arg = s;
    }
    return o;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- downloads ---- */

START_TEST(test_plain_download_verified)
{
    char hex[65];
    size_t len = 1 << 20;
    unsigned char *d = make_file("a.bin", len, 1, hex);
    seen s = {0};
    spes_fetch_opts o = quick(&s);
    spes_fetch_item it = {url("a.bin"), tpath("out/sub/a.bin"), (int64_t)len, hex};
    int rc = spes_fetch(&it, 1, &o);
    ck_assert_msg(rc == 0, "fetch failed: %s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, len));
    ck_assert(!exists(tpath("out/sub/a.bin.part")));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 1);
    ck_assert_str_eq(r[0].method, "GET");
    ck_assert_str_eq(r[0].path, "/a.bin");
    ck_assert_str_eq(r[0].range, "-");
    ck_assert_int_ge(s.calls, 1);
    ck_assert_int_eq(s.last.all_done, (int64_t)len);
    ck_assert_int_eq(s.last.all_total, (int64_t)len);
    ck_assert_uint_eq(s.last.files_done, 1);
    free(d);
}
END_TEST

START_TEST(test_unknown_size_no_hash)
{
    char hex[65];
    unsigned char *d = make_file("u.bin", 70000, 2, hex);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("u.bin"), tpath("u.bin"), -1, NULL};
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, 70000));
    free(d);
}
END_TEST

START_TEST(test_resume_after_drop)
{
    char hex[65];
    size_t len = 1 << 20;
    unsigned char *d = make_file("a.bin", len, 3, hex);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("drop/a.bin"), tpath("a.bin"), (int64_t)len, hex};
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, len));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 2);
    ck_assert_str_eq(r[0].range, "-");
    char want[64];
    snprintf(want, sizeof want, "bytes=%zu-", len / 2);
    ck_assert_str_eq(r[1].range, want);
    free(d);
}
END_TEST

START_TEST(test_resume_stalled_server)
{
    char hex[65];
    size_t len = 1 << 20;
    unsigned char *d = make_file("a.bin", len, 4, hex);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("slow/a.bin"), tpath("a.bin"), (int64_t)len, hex};
    double t0 = now_s();
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert_msg(now_s() - t0 < 15.0, "the stall was not detected by the low-speed limit");
    ck_assert(same_bytes(it.dest, d, len));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 2);
    char want[64];
    snprintf(want, sizeof want, "bytes=%zu-", len / 2);
    ck_assert_str_eq(r[1].range, want);
    free(d);
}
END_TEST

START_TEST(test_resume_part_from_earlier_run)
{
    char hex[65];
    size_t len = 300000;
    unsigned char *d = make_file("a.bin", len, 5, hex);
    ck_assert_int_eq(spes_write_file_atomic(tpath("a.bin.part"), d, 100000), 0);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("a.bin"), tpath("a.bin"), (int64_t)len, hex};
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, len));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 1);
    ck_assert_str_eq(r[0].range, "bytes=100000-");
    free(d);
}
END_TEST

START_TEST(test_server_ignoring_range_restarts_from_zero)
{
    char hex[65];
    size_t len = 300000;
    unsigned char *d = make_file("a.bin", len, 6, hex);
    unsigned char junk[1000];
    memset(junk, 0xEE, sizeof junk); /* a stale .part that must not survive */
    ck_assert_int_eq(spes_write_file_atomic(tpath("a.bin.part"), junk, sizeof junk), 0);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("norange/a.bin"), tpath("a.bin"), (int64_t)len, hex};
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, len));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 1);
    ck_assert_str_eq(r[0].range, "bytes=1000-");
    free(d);
}
END_TEST

START_TEST(test_wrong_bytes_detected)
{
    char hex[65];
    size_t len = 200000;
    unsigned char *d = make_file("a.bin", len, 7, hex);
    spes_fetch_opts o = quick(NULL);
    const char *u = url("corrupt/a.bin");
    spes_fetch_item it = {u, tpath("a.bin"), (int64_t)len, hex};
    int rc = spes_fetch(&it, 1, &o);
    ck_assert_int_eq(rc, SPES_EFORMAT);
    const char *m = spes_errmsg();
    ck_assert_msg(strstr(m, u) && strstr(m, "sha256 mismatch") && strstr(m, hex), "message: %s", m);
    ck_assert(!exists(it.dest));
    ck_assert(!exists(tpath("a.bin.part")));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 3); /* fetched again from zero each time */
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(r[i].range, "-");
    free(d);
}
END_TEST

START_TEST(test_size_mismatch)
{
    char hex[65];
    size_t len = 50000;
    unsigned char *d = make_file("a.bin", len, 8, hex);
    spes_fetch_opts o = quick(NULL);
    o.max_attempts = 1;
    spes_fetch_item big = {url("a.bin"), tpath("a.bin"), (int64_t)len + 10, NULL};
    ck_assert_int_eq(spes_fetch(&big, 1, &o), SPES_EFORMAT);
    ck_assert_msg(strstr(spes_errmsg(), "size mismatch"), "%s", spes_errmsg());
    spes_fetch_item small = {url("a.bin"), tpath("a.bin"), (int64_t)len - 10, NULL};
    ck_assert_int_eq(spes_fetch(&small, 1, &o), SPES_EFORMAT);
    ck_assert_msg(strstr(spes_errmsg(), "more than the expected"), "%s", spes_errmsg());
    ck_assert(!exists(tpath("a.bin")));
    ck_assert(!exists(tpath("a.bin.part")));
    free(d);
}
END_TEST

START_TEST(test_404_not_retried)
{
    spes_fetch_opts o = quick(NULL);
    o.retry_base_ms = 2000; /* a retry would show in the elapsed time and the log */
    o.retry_max_ms = 2000;
    const char *u = url("nothing-here.bin");
    spes_fetch_item it = {u, tpath("x.bin"), 10, NULL};
    double t0 = now_s();
    ck_assert_int_eq(spes_fetch(&it, 1, &o), SPES_ENOENT);
    ck_assert(now_s() - t0 < 1.5);
    const char *m = spes_errmsg();
    ck_assert_msg(strstr(m, u) && strstr(m, "HTTP 404"), "message: %s", m);
    req r[4];
    ck_assert_int_eq(read_log(r, 4), 1);
    ck_assert(!exists(it.dest));
    ck_assert(!exists(tpath("x.bin.part")));
}
END_TEST

START_TEST(test_500_then_ok_recovers)
{
    char hex[65];
    unsigned char *d = make_file("a.bin", 4096, 9, hex);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("500-then-ok/a.bin"), tpath("a.bin"), 4096, hex};
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, 4096));
    req r[4];
    ck_assert_int_eq(read_log(r, 4), 2);
    free(d);
}
END_TEST

START_TEST(test_503_gives_up_naming_url)
{
    char hex[65];
    unsigned char *d = make_file("a.bin", 4096, 10, hex);
    spes_fetch_opts o = quick(NULL);
    const char *u = url("503/a.bin");
    spes_fetch_item it = {u, tpath("a.bin"), 4096, hex};
    ck_assert_int_eq(spes_fetch(&it, 1, &o), SPES_ENET);
    const char *m = spes_errmsg();
    ck_assert_msg(strstr(m, u) && strstr(m, "HTTP 503") && strstr(m, "3 attempts"), "message: %s", m);
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 3);
    free(d);
}
END_TEST

START_TEST(test_verified_file_not_fetched_again)
{
    char hex[65];
    size_t len = 100000;
    unsigned char *d = make_file("a.bin", len, 11, hex);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {url("a.bin"), tpath("a.bin"), (int64_t)len, hex};
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    clear_log();
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    req r[4];
    ck_assert_int_eq(read_log(r, 4), 0);
    /* a damaged copy is noticed and replaced */
    d[5] ^= 1;
    ck_assert_int_eq(spes_write_file_atomic(it.dest, d, len), 0);
    d[5] ^= 1;
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert_int_eq(read_log(r, 4), 1);
    ck_assert(same_bytes(it.dest, d, len));
    free(d);
}
END_TEST

START_TEST(test_parallel_downloads)
{
    enum { N = 6 };
    char hex[N][65], name[N][32], path[N][32], dest[N][400];
    unsigned char *d[N];
    spes_fetch_item it[N];
    for (int i = 0; i < N; i++) {
        snprintf(name[i], 32, "f%d.bin", i);
        snprintf(path[i], 32, "wait/f%d.bin", i);
        snprintf(dest[i], 400, "%s/f%d.bin", tmp, i);
        d[i] = make_file(name[i], 50000 + (size_t)i * 1000, 20 + (unsigned)i, hex[i]);
        it[i] = (spes_fetch_item){url(path[i]), dest[i], 50000 + i * 1000, hex[i]};
    }
    spes_fetch_opts o = quick(NULL); /* default progress logger */
    o.parallel = 3;
    ck_assert_msg(spes_fetch(it, N, &o) == 0, "%s", spes_errmsg());
    req r[16];
    ck_assert_int_eq(read_log(r, 16), N);
    int most = 0;
    for (int i = 0; i < N; i++)
        most = r[i].inflight > most ? r[i].inflight : most;
    ck_assert_int_eq(most, 3); /* three at once, never more */
    for (int i = 0; i < N; i++) {
        ck_assert(same_bytes(dest[i], d[i], 50000 + (size_t)i * 1000));
        free(d[i]);
    }
}
END_TEST

START_TEST(test_cancel)
{
    char hex[65];
    size_t len = 1 << 20;
    unsigned char *d = make_file("a.bin", len, 12, hex);
    int cancel = 0;
    seen s = {.cancel = &cancel};
    spes_fetch_opts o = quick(&s);
    o.low_speed_secs = 30; /* the stall must end by the cancel, not by a retry */
    o.cancel = &cancel;
    spes_fetch_item it = {url("slow/a.bin"), tpath("a.bin"), (int64_t)len, hex};
    double t0 = now_s();
    ck_assert_int_eq(spes_fetch(&it, 1, &o), SPES_EINTR);
    ck_assert(now_s() - t0 < 10.0);
    ck_assert(!exists(it.dest));
    struct stat st;
    ck_assert_int_eq(stat(tpath("a.bin.part"), &st), 0);
    ck_assert_int_gt(st.st_size, 0); /* kept for a later resume */
    /* a flag already set stops an upload before it is stored */
    char src[400], got[400];
    snprintf(src, sizeof src, "%s/a.bin", root);
    snprintf(got, sizeof got, "%s/uploads/c.bin", root);
    ck_assert_int_eq(spes_fetch_put(url("upload/c.bin"), src, &o), SPES_EINTR);
    ck_assert(!exists(got));
    free(d);
}
END_TEST

START_TEST(test_schemes_and_redirects)
{
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item f = {"file:///etc/passwd", tpath("p"), -1, NULL};
    ck_assert_int_eq(spes_fetch(&f, 1, &o), SPES_EINVAL);
    ck_assert_msg(strstr(spes_errmsg(), "file:///etc/passwd") &&
                      strstr(spes_errmsg(), "only http:// and https://"),
                  "%s", spes_errmsg());
    ck_assert_int_eq(spes_fetch_put("ftp://127.0.0.1/x", "/etc/hostname", &o), SPES_EINVAL);
    /* a redirect to file:// is refused as well */
    spes_fetch_item rf = {url("redirfile"), tpath("p"), -1, NULL};
    ck_assert_int_ne(spes_fetch(&rf, 1, &o), 0);
    ck_assert_msg(strstr(spes_errmsg(), url("redirfile")), "%s", spes_errmsg());
    ck_assert(!exists(tpath("p")));
    req r[16];
    ck_assert_int_eq(read_log(r, 16), 1); /* not retried */
    spes_fetch_item loop = {url("redirloop"), tpath("p"), -1, NULL};
    ck_assert_int_ne(spes_fetch(&loop, 1, &o), 0);
    ck_assert_int_eq(read_log(r, 16), 1 + 6); /* the request and 5 redirects, once */
    char hex[65];
    unsigned char *d = make_file("a.bin", 1000, 13, hex);
    spes_fetch_item ok = {url("redir/a.bin"), tpath("a.bin"), 1000, hex};
    ck_assert_msg(spes_fetch(&ok, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(ok.dest, d, 1000));
    free(d);
}
END_TEST

START_TEST(test_bad_lists_refused)
{
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item shorthash = {url("a.bin"), tpath("a.bin"), 10, "abcd"};
    ck_assert_int_eq(spes_fetch(&shorthash, 1, &o), SPES_EINVAL);
    ck_assert_msg(strstr(spes_errmsg(), "64 hex digits"), "%s", spes_errmsg());
    spes_fetch_item twice[2] = {{url("a.bin"), tpath("a.bin"), 10, NULL},
                                {url("b.bin"), tpath("a.bin"), 10, NULL}};
    ck_assert_int_eq(spes_fetch(twice, 2, &o), SPES_EINVAL);
    ck_assert_msg(strstr(spes_errmsg(), "listed twice"), "%s", spes_errmsg());
    o.parallel = 0;
    ck_assert_int_eq(spes_fetch(twice, 1, &o), SPES_EINVAL);
    req r[4];
    ck_assert_int_eq(read_log(r, 4), 0);
}
END_TEST

START_TEST(test_https_verified_and_untrusted_refused)
{
    char cmd[2400], pem[400];
    snprintf(pem, sizeof pem, "%s/server.pem", tmp);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/k.pem -out %s/c.pem -days 1 "
             "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 && "
             "cat %s/c.pem %s/k.pem > %s",
             tmp, tmp, tmp, tmp, pem);
    ck_assert_int_eq(system(cmd), 0);
    server_stop();
    server_start(pem);
    char hex[65];
    unsigned char *d = make_file("a.bin", 1000, 15, hex);
    char u[256];
    snprintf(u, sizeof u, "https://127.0.0.1:%d/a.bin", port);
    spes_fetch_opts o = quick(NULL);
    spes_fetch_item it = {u, tpath("a.bin"), 1000, hex};
    ck_assert_int_eq(spes_fetch(&it, 1, &o), SPES_ENET);
    const char *m = spes_errmsg();
    ck_assert_msg(strstr(m, u) && strstr(m, "certificate") && strstr(m, "1 attempt:"), "%s", m);
    ck_assert(!exists(it.dest));
    req r[4];
    ck_assert_int_eq(read_log(r, 4), 0); /* refused in the handshake, before any request */
    /* trusting the server's certificate explicitly, the same download works */
    char ca[400];
    snprintf(ca, sizeof ca, "%s/c.pem", tmp);
    o.ca_file = ca;
    ck_assert_msg(spes_fetch(&it, 1, &o) == 0, "%s", spes_errmsg());
    ck_assert(same_bytes(it.dest, d, 1000));
    ck_assert_int_eq(read_log(r, 4), 1);
    free(d);
}
END_TEST

/* ---- uploads ---- */

START_TEST(test_put_upload)
{
    char hex[65];
    size_t len = 3 << 20;
    unsigned char *d = make_file("src.bin", len, 14, hex);
    char src[400], got[400];
    snprintf(src, sizeof src, "%s/src.bin", root);
    spes_fetch_opts o = quick(NULL);
    ck_assert_msg(spes_fetch_put(url("upload/ck.bin"), src, &o) == 0, "%s", spes_errmsg());
    snprintf(got, sizeof got, "%s/uploads/ck.bin", root);
    ck_assert(same_bytes(got, d, len));
    /* a 500 is retried, and the retry sends the whole file again */
    ck_assert_msg(spes_fetch_put(url("upload-500-then-ok/ck2.bin"), src, &o) == 0, "%s", spes_errmsg());
    snprintf(got, sizeof got, "%s/uploads/ck2.bin", root);
    ck_assert(same_bytes(got, d, len));
    req r[8];
    ck_assert_int_eq(read_log(r, 8), 3);
    ck_assert_str_eq(r[0].method, "PUT");
    /* a 403 is not retried, and the store's explanation is shown */
    const char *u = url("upload-403/ck3.bin");
    ck_assert_int_eq(spes_fetch_put(u, src, &o), SPES_EAUTH);
    const char *m = spes_errmsg();
    ck_assert_msg(strstr(m, u) && strstr(m, "HTTP 403") && strstr(m, "SignatureDoesNotMatch"), "%s", m);
    ck_assert_int_eq(read_log(r, 8), 4);
    ck_assert_int_eq(spes_fetch_put(url("upload/x"), tpath("missing"), &o), SPES_ENOENT);
    free(d);
}
END_TEST

static Suite *fetch_suite(void)
{
    Suite *s = suite_create("fetch");
    TCase *tc = tcase_create("http");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_plain_download_verified);
    tcase_add_test(tc, test_unknown_size_no_hash);
    tcase_add_test(tc, test_resume_after_drop);
    tcase_add_test(tc, test_resume_stalled_server);
    tcase_add_test(tc, test_resume_part_from_earlier_run);
    tcase_add_test(tc, test_server_ignoring_range_restarts_from_zero);
    tcase_add_test(tc, test_wrong_bytes_detected);
    tcase_add_test(tc, test_size_mismatch);
    tcase_add_test(tc, test_404_not_retried);
    tcase_add_test(tc, test_500_then_ok_recovers);
    tcase_add_test(tc, test_503_gives_up_naming_url);
    tcase_add_test(tc, test_verified_file_not_fetched_again);
    tcase_add_test(tc, test_parallel_downloads);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_schemes_and_redirects);
    tcase_add_test(tc, test_bad_lists_refused);
    tcase_add_test(tc, test_https_verified_and_untrusted_refused);
    tcase_add_test(tc, test_put_upload);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    spes_fetch_global_init();
    SRunner *sr = srunner_create(fetch_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
