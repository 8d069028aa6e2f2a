/* bench_blob.c: blob fetch throughput on loopback against a plain nng tls+tcp
 * pair sending the same bytes (same message sizes: one 96-byte header plus one
 * chunk per message) in the same run, with the same TLS engine and
 * certificates; and the peak RSS growth of the fetching process for the blob
 * (default 1 GiB). Both ends run in this process, as in the test.
 * usage: bench_blob [MiB] [window]   (defaults 1024, and the fetch's own default window:
 * 16 requests in flight over all peers); temp files in $TMPDIR or /tmp. */
#include "blob/blob.h"
#include "core/error.h"
#include "core/log.h"
#include "net/net_internal.h"
#include "pki/pki.h"

#include <fcntl.h>
#include <nng/nng.h>
#include <nng/protocol/pair0/pair.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static char tmp[256];

static void die(const char *what)
{
    fprintf(stderr, "bench_blob: %s: %s\n", what, spes_errmsg());
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t proc_kb(const char *field)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t v = 0;
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, field, strlen(field)) == 0)
            v = strtoull(line + strlen(field) + 1, NULL, 10);
    if (fp)
        fclose(fp);
    return v;
}

/* cpu_s is this process's user + system CPU seconds so far. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* busy records the CPUs kept busy by the last measured phase (CPU time / wall time). */
static double busy[5];
static int nbusy;

static void reset_hwm(void)
{
    FILE *fp = fopen("/proc/self/clear_refs", "w");
    if (fp) {
        fputs("5", fp);
        fclose(fp);
    }
}

static spes_net_tls *tls_for(const char *name)
{
    char ca[400], crt[400], key[400];
    snprintf(ca, sizeof ca, "%s/ca/ca.crt", tmp);
    snprintf(crt, sizeof crt, "%s/certs/%s.crt", tmp, name);
    snprintf(key, sizeof key, "%s/certs/%s.key", tmp, name);
    spes_net_tls_files f = {ca, crt, key, NULL};
    spes_net_tls *t = NULL;
    if (spes_net_tls_alloc(&t, &f) != 0)
        die(name);
    return t;
}

static void gen_file(const char *path, uint64_t size)
{
    uint8_t *buf = malloc(1u << 20);
    FILE *fp = fopen(path, "wb");
    uint64_t x = 0x9e3779b97f4a7c15ull;
    if (!buf || !fp)
        die(path);
    for (uint64_t off = 0; off < size; off += 1u << 20) {
        for (size_t i = 0; i < (1u << 20); i += 8) {
            x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
            uint64_t v = x * 2685821657736338717ull;
            memcpy(buf + i, &v, 8);
        }
        size_t n = size - off < (1u << 20) ? (size_t)(size - off) : (1u << 20);
        if (fwrite(buf, 1, n, fp) != n)
            die(path);
    }
    fclose(fp);
    free(buf);
}

/* ---- baseline: raw nng pair over tls+tcp ---- */

typedef struct sender {
    nng_socket s;
    uint64_t nmsg;
    size_t msg;
} sender;

static void *send_all(void *arg)
{
    sender *sd = arg;
    for (uint64_t i = 0; i < sd->nmsg; i++) {
        nng_msg *m;
        if (nng_msg_alloc(&m, sd->msg) != 0)
            break;
        memset(nng_msg_body(m), (int)i, 64); /* touch it like a reader would */
        if (nng_sendmsg(sd->s, m, 0) != 0) {
            nng_msg_free(m);
            break;
        }
    }
    return NULL;
}

/* raw_pair streams nmsg messages of msg bytes over one pair0 tls+tcp
 * connection; with sink_fd >= 0 the receiver also hashes each message and
 * writes it at its offset (the work any verifying, spilling fetch must do). */
static double raw_pair(spes_net_tls *ts, spes_net_tls *tc, uint64_t nmsg, size_t msg, int sink_fd)
{
    nng_socket a = NNG_SOCKET_INITIALIZER, b = NNG_SOCKET_INITIALIZER;
    nng_listener l;
    nng_dialer d;
    nng_tls_config *cs = NULL, *cc = NULL;
    int port = 0;
    if (nng_pair0_open(&a) || nng_pair0_open(&b) || nng_listener_create(&l, a, "tls+tcp://127.0.0.1:0") ||
        spes__tls_config_alloc(&cs, ts, 1, SPES_ROLE_MASK(SPES_ROLE_NODE), NULL, NULL) ||
        nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, cs) ||
        nng_listener_set_size(l, NNG_OPT_RECVMAXSZ, 64u << 20) || nng_listener_start(l, 0) ||
        nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port))
        die("raw listener");
    char url[64];
    snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", port);
    if (nng_dialer_create(&d, b, url) ||
        spes__tls_config_alloc(&cc, tc, 0, SPES_ROLE_MASK(SPES_ROLE_NODE), NULL, NULL) ||
        nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cc) || nng_dialer_start(d, 0))
        die("raw dialer");
    nng_tls_config_free(cs);
    nng_tls_config_free(cc);
    sender sd = {b, nmsg, msg};
    pthread_t th;
    double t0 = now_s(), c0 = cpu_s();
    pthread_create(&th, NULL, send_all, &sd);
    uint64_t got = 0;
    for (uint64_t i = 0; i < nmsg; i++) {
        nng_msg *m;
        if (nng_recvmsg(a, &m, 0) != 0)
            die("raw recv");
        if (sink_fd >= 0) {
            uint8_t d[32];
            spes_sha256(nng_msg_body(m), nng_msg_len(m), d);
            if (pwrite(sink_fd, nng_msg_body(m), nng_msg_len(m), (off_t)got) != (ssize_t)nng_msg_len(m))
                die("raw sink write");
        }
        got += nng_msg_len(m);
        nng_msg_free(m);
    }
    double dt = now_s() - t0;
    busy[nbusy++] = (cpu_s() - c0) / dt;
    pthread_join(th, NULL);
    nng_close(b);
    nng_close(a);
    return (double)got / dt / 1e6;
}

/* ---- blob fetch ---- */

static double fetch_once(spes_blob_store *f, const uint8_t h[32], spes_blob_peer *peers, int n,
                         spes_net_tls *tf, int window, uint64_t size, uint64_t *growth_kb)
{
    spes_blob_fetch_opts o = {.tls = tf, .window = window, .timeout_ms = 30000};
    spes_blob_fetch_stats st;
    spes_blob_delete(f, h);
    uint64_t rss0 = proc_kb("VmRSS:");
    reset_hwm();
    double t0 = now_s(), c0 = cpu_s();
    if (spes_blob_fetch(f, h, peers, n, &o, &st) != 0)
        die("fetch");
    double dt = now_s() - t0;
    busy[nbusy++] = (cpu_s() - c0) / dt;
    *growth_kb = proc_kb("VmHWM:") - rss0;
    return (double)size / dt / 1e6;
}

static spes_blob_server *serve(spes_blob_store *s, spes_net_tls *t)
{
    spes_net_server_opts so = {.url = "tls+tcp://127.0.0.1:0", .tls = t};
    spes_blob_server *b = NULL;
    if (spes_blob_server_open(&b, s, &so) != 0)
        die("server");
    return b;
}

int main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int window = argc > 2 ? atoi(argv[2]) : 0; /* 0: the fetch's default */
    uint64_t size = mib << 20;
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(tmp, sizeof tmp, "%s/spes-bench-blob-XXXXXX", base);
    if (!mkdtemp(tmp))
        die("mkdtemp");
    spes_log_set_level(getenv("SPES_DEBUG") ? SPES_LOG_DEBUG : SPES_LOG_ERROR);
    char ca[300], certs[300], src[300], d[4][300];
    snprintf(ca, sizeof ca, "%s/ca", tmp);
    snprintf(certs, sizeof certs, "%s/certs", tmp);
    snprintf(src, sizeof src, "%s/src.bin", tmp);
    const char *names[] = {"node-a", "node-b", "node-c", "node-f"};
    if (spes_pki_ca_init(ca, "bench", NULL))
        die("ca");
    for (int i = 0; i < 4; i++)
        if (spes_pki_cert_issue(ca, names[i], SPES_ROLE_NODE, NULL, certs))
            die("cert");
    spes_blob_store *st[4];
    for (int i = 0; i < 4; i++) {
        snprintf(d[i], sizeof d[i], "%s/store-%d", tmp, i);
        if (spes_blob_store_open(&st[i], d[i], NULL))
            die("store");
    }
    gen_file(src, size);
    uint8_t h[32];
    double t0 = now_s();
    if (spes_blob_put_file(st[0], src, h))
        die("put");
    double put_s = now_s() - t0;
    unlink(src);
    char p0[4096], pl[4096], m0[4200], ml[4200];
    spes_blob_path(st[0], h, p0, sizeof p0);
    snprintf(m0, sizeof m0, "%s.manifest", p0);
    for (int i = 1; i < 3; i++) { /* peers B and C hold the same files */
        spes_blob_path(st[i], h, pl, sizeof pl);
        snprintf(ml, sizeof ml, "%s.manifest", pl);
        if (link(p0, pl) || link(m0, ml))
            die("link");
    }
    spes_net_tls *t[4];
    for (int i = 0; i < 4; i++)
        t[i] = tls_for(names[i]);
    spes_blob_server *srv[3];
    char url[3][64];
    spes_blob_peer peers[3];
    for (int i = 0; i < 3; i++) {
        srv[i] = serve(st[i], t[i]);
        snprintf(url[i], sizeof url[i], "tls+tcp://127.0.0.1:%d", spes_blob_server_port(srv[i]));
        peers[i] = (spes_blob_peer){url[i], names[i]};
    }
    uint64_t nmsg = (size + SPES_CHUNK_SIZE_DEFAULT - 1) / SPES_CHUNK_SIZE_DEFAULT;
    size_t msg = SPES_CHUNK_HEADER_LEN + SPES_CHUNK_SIZE_DEFAULT;
    uint64_t g1, g3;
    char sink[300];
    snprintf(sink, sizeof sink, "%s/sink.bin", tmp);
    int sfd = open(sink, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (sfd < 0)
        die(sink);
    double raw1 = raw_pair(t[0], t[3], nmsg, msg, -1);
    double f1 = fetch_once(st[3], h, peers, 1, t[3], window, size, &g1);
    double rawv = raw_pair(t[0], t[3], nmsg, msg, sfd);
    double f3 = fetch_once(st[3], h, peers, 3, t[3], window, size, &g3);
    double raw2 = raw_pair(t[0], t[3], nmsg, msg, -1);
    double raw = (raw1 + raw2) / 2;
    close(sfd);
    unlink(sink);
    char wdesc[64];
    if (window > 0)
        snprintf(wdesc, sizeof wdesc, "window %d per peer", window);
    else
        snprintf(wdesc, sizeof wdesc, "default window (%d in flight over all peers)", SPES_BLOB_WINDOW_TOTAL);
    printf("bench_blob: %llu MiB blob, 1 MiB chunks, %s, loopback tls+tcp, %ld CPUs\n",
           (unsigned long long)mib, wdesc, sysconf(_SC_NPROCESSORS_ONLN));
    printf("  put (hash + copy into store)   %8.1f MB/s\n", (double)size / put_s / 1e6);
    /* busy: raw1, fetch 1 peer, raw+verify, fetch 3 peers, raw2 */
    printf("  raw nng pair tls+tcp           %8.1f MB/s  (runs: %.1f, %.1f; %.2f and %.2f CPUs busy)\n", raw,
           raw1, raw2, busy[0], busy[4]);
    printf("  raw pair + sha256 + pwrite     %8.1f MB/s  = %5.1f %% of raw (the verify+spill floor; %.2f "
           "CPUs)\n",
           rawv, 100 * rawv / raw, busy[2]);
    printf("  blob fetch, 1 peer             %8.1f MB/s  = %5.1f %% of raw (goal >= 80 %%; %.2f CPUs)\n", f1,
           100 * f1 / raw, busy[1]);
    printf("  blob fetch, 3 peers            %8.1f MB/s  = %5.1f %% of raw (%.2f CPUs)\n", f3, 100 * f3 / raw,
           busy[3]);
    printf("  peak RSS growth during fetch   %8.1f MiB (1 peer), %.1f MiB (3 peers) for a %llu MiB blob\n",
           g1 / 1024.0, g3 / 1024.0, (unsigned long long)mib);
    for (int i = 0; i < 3; i++)
        spes_blob_server_close(srv[i]);
    for (int i = 0; i < 4; i++) {
        spes_blob_store_close(st[i]);
        spes_net_tls_free(t[i]);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : 1;
}
