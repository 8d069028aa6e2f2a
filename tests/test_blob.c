/* test_blob.c: the blob store, its request handler, and fetches over mutual
 * TLS on loopback with fresh ports: a round trip, a large blob from three
 * peers while one is killed halfway and another serves corrupted chunks
 * (byte-identical result, bounded peak RSS), a resumed fetch that asks only
 * for the missing chunks, peers that lie about the manifest, and the byte
 * counters of a fetch.
 * SPES_BLOB_TEST_MB sets the large blob's size (default 256, at least 32). */
#include "blob/blob.h"
#include "core/error.h"
#include "core/log.h"
#include "pki/pki.h"
#include "proto/proto.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static char tmp[256], ca[300], certs[300];
static int plain; /* SPES_BLOB_TEST_PLAIN=1: tcp:// without TLS, to tell transport from TLS problems */

static void setup_pki(void)
{
    snprintf(tmp, sizeof tmp, "/tmp/spes-test-blob-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
    snprintf(ca, sizeof ca, "%s/ca", tmp);
    snprintf(certs, sizeof certs, "%s/certs", tmp);
    ck_assert_msg(spes_pki_ca_init(ca, "run-blob", NULL) == 0, "%s", spes_errmsg());
    const char *names[] = {"node-a", "node-b", "node-c", "node-f"};
    for (int i = 0; i < 4; i++)
        ck_assert_msg(spes_pki_cert_issue(ca, names[i], SPES_ROLE_NODE, NULL, certs) == 0, "%s",
                      spes_errmsg());
    spes_log_set_level(getenv("SPES_DEBUG") ? SPES_LOG_DEBUG : SPES_LOG_ERROR);
    plain = getenv("SPES_BLOB_TEST_PLAIN") && atoi(getenv("SPES_BLOB_TEST_PLAIN"));
}

static void teardown_pki(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    ck_assert_int_eq(system(cmd), 0);
}

static spes_net_tls *tls_for(const char *name)
{
    char cap[400], crt[400], key[400];
    snprintf(cap, sizeof cap, "%s/ca.crt", ca);
    snprintf(crt, sizeof crt, "%s/%s.crt", certs, name);
    snprintf(key, sizeof key, "%s/%s.key", certs, name);
    spes_net_tls_files f = {cap, crt, key, NULL};
    spes_net_tls *t = NULL;
    ck_assert_msg(spes_net_tls_alloc(&t, &f) == 0, "tls %s: %s", name, spes_errmsg());
    return t;
}

static spes_blob_store *store_at(const char *name, uint32_t chunk_size)
{
    char dir[400];
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    spes_blob_store_opts o = {.chunk_size = chunk_size};
    spes_blob_store *s = NULL;
    ck_assert_msg(spes_blob_store_open(&s, dir, &o) == 0, "%s", spes_errmsg());
    return s;
}

/* fill writes n pseudo-random bytes (xorshift64*, seeded) into buf. */
static void fill(uint8_t *buf, size_t n, uint64_t *x)
{
    for (size_t i = 0; i < n; i += 8) {
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        uint64_t v = *x * 2685821657736338717ull;
        memcpy(buf + i, &v, n - i < 8 ? n - i : 8);
    }
}

static void gen_file(const char *path, uint64_t size, uint64_t seed)
{
    uint8_t *buf = malloc(1u << 20);
    FILE *fp = fopen(path, "wb");
    ck_assert(buf && fp);
    uint64_t x = seed | 1;
    for (uint64_t off = 0; off < size;) {
        size_t n = size - off < (1u << 20) ? (size_t)(size - off) : (1u << 20);
        fill(buf, n, &x);
        ck_assert_uint_eq(fwrite(buf, 1, n, fp), n);
        off += n;
    }
    ck_assert_int_eq(fclose(fp), 0);
    free(buf);
}

/* same_file compares two files byte by byte, streaming. */
static int same_file(const char *a, const char *b)
{
    FILE *x = fopen(a, "rb"), *y = fopen(b, "rb");
    static uint8_t p[1 << 16], q[1 << 16];
    int same = x && y;
    while (same) {
        size_t n = fread(p, 1, sizeof p, x), m = fread(q, 1, sizeof q, y);
        if (n != m || memcmp(p, q, n) != 0)
            same = 0;
        if (n == 0)
            break;
    }
    if (x)
        fclose(x);
    if (y)
        fclose(y);
    return same;
}

static void blob_file(spes_blob_store *s, const uint8_t h[32], char *out, size_t n)
{
    ck_assert(spes_blob_path(s, h, out, n) == 0);
}

/* ---- store ---- */

START_TEST(test_store_put_read_delete)
{
    setup_pki();
    spes_blob_store *s = store_at("s1", 4096);
    size_t len = 4096 * 3 + 1000;
    uint8_t *data = malloc(len), *buf = malloc(4096);
    uint64_t x = 7;
    fill(data, len, &x);
    uint8_t h[32], h2[32], want[32];
    spes_sha256(data, len, want);
    ck_assert_int_eq(spes_blob_has(s, want), 0);
    ck_assert_msg(spes_blob_put(s, data, len, h) == 0, "%s", spes_errmsg());
    ck_assert_mem_eq(h, want, 32);
    ck_assert_int_eq(spes_blob_has(s, h), 1);
    ck_assert_int_eq(spes_blob_put(s, data, len, h2), 0); /* idempotent */
    spes_manifest m;
    ck_assert(spes_blob_manifest_get(s, h, &m) == 0);
    ck_assert_uint_eq(m.chunk_count, 4);
    ck_assert_uint_eq(m.total_size, len);
    spes_chunk_header ch;
    ck_assert(spes_blob_chunk_read(s, h, 3, buf, 4096, &ch) == 0);
    ck_assert_uint_eq(ch.length, 1000);
    ck_assert_mem_eq(buf, data + 3 * 4096, 1000);
    ck_assert_mem_eq(ch.chunk_hash, m.chunk_hashes[3], 32);
    ck_assert_int_eq(spes_blob_chunk_read(s, h, 4, buf, 4096, &ch), SPES_ERANGE);
    spes_manifest_fini(&m);
    /* put_file of the same bytes names the same blob; a file that differs does not */
    char path[400], held[4096];
    snprintf(path, sizeof path, "%s/in.bin", tmp);
    FILE *fp = fopen(path, "wb");
    fwrite(data, 1, len, fp);
    fclose(fp);
    ck_assert(spes_blob_put_file(s, path, h2) == 0);
    ck_assert_mem_eq(h2, h, 32);
    blob_file(s, h, held, sizeof held);
    ck_assert(same_file(path, held));
    ck_assert(spes_blob_delete(s, h) == 0);
    ck_assert_int_eq(spes_blob_has(s, h), 0);
    ck_assert_int_eq(access(held, F_OK), -1);
    ck_assert_int_eq(spes_blob_delete(s, h), SPES_ENOENT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "not held"));
    ck_assert_int_eq(spes_blob_put_file(s, "/nonexistent/x", h2), SPES_ENOENT);
    free(data);
    free(buf);
    spes_blob_store_close(s);
    teardown_pki();
}
END_TEST

static int keep_first(void *arg, const uint8_t hash[32])
{
    return memcmp(hash, arg, 32) == 0;
}

START_TEST(test_store_gc)
{
    setup_pki();
    uint8_t h[4][32];
    spes_blob_store *s = store_at("gc", 4096);
    for (int i = 0; i < 4; i++) {
        uint8_t data[10000];
        uint64_t x = (uint64_t)i + 100;
        fill(data, sizeof data, &x);
        ck_assert(spes_blob_put(s, data, sizeof data, h[i]) == 0);
        char p[4096];
        blob_file(s, h[i], p, sizeof p);
        struct timespec ts[2] = {{1000000 + i * 10, 0}, {1000000 + i * 10, 0}};
        ck_assert(utimensat(AT_FDCWD, p, ts, 0) == 0); /* blob i is older than i+1 */
    }
    uint64_t bytes;
    uint32_t n;
    ck_assert(spes_blob_store_usage(s, &bytes, &n) == 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_ge(bytes, 40000);
    spes_blob_store_close(s);
    /* blob 0 is kept by the hook, so blobs 1 and 2 (the next oldest) go */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/gc", tmp);
    spes_blob_store_opts o = {.chunk_size = 4096, .keep = keep_first, .keep_arg = h[0]};
    ck_assert(spes_blob_store_open(&s, dir, &o) == 0);
    int deleted = 0;
    ck_assert_msg(spes_blob_gc(s, 25000, NULL, &deleted) == 0, "%s", spes_errmsg());
    ck_assert_int_eq(deleted, 2);
    ck_assert(spes_blob_has(s, h[0]) && !spes_blob_has(s, h[1]) && !spes_blob_has(s, h[2]) &&
              spes_blob_has(s, h[3]));
    ck_assert_int_eq(spes_blob_gc(s, 1000, h[3], &deleted), SPES_ERANGE);
    ck_assert_int_eq(deleted, 0);
    /* partial fetches: a stopped one (a peer that went away mid-blob) is collected
     * oldest first like a blob; one whose fetch still runs (its map locked) is not */
    uint8_t stopped[32] = {1, 2, 3}, running[32] = {4, 5, 6};
    char base[4096], f[4200];
    int lockfd = -1;
    for (int k = 0; k < 2; k++) {
        blob_file(s, k ? running : stopped, base, sizeof base);
        static const char *const suffix[] = {".part", ".part.map", ".part.manifest"};
        for (int i = 0; i < 3; i++) {
            snprintf(f, sizeof f, "%s%s", base, suffix[i]);
            FILE *fp = fopen(f, "wb");
            ck_assert_ptr_nonnull(fp);
            static uint8_t zeros[30000];
            fwrite(zeros, 1, i == 0 ? sizeof zeros : 16, fp);
            fclose(fp);
            struct timespec ts[2] = {{999000 + k, 0}, {999000 + k, 0}}; /* older than every blob */
            ck_assert(utimensat(AT_FDCWD, f, ts, 0) == 0);
            if (k == 1 && i == 1) {
                lockfd = open(f, O_RDWR);
                ck_assert(lockfd >= 0 && flock(lockfd, LOCK_EX | LOCK_NB) == 0);
            }
        }
    }
    ck_assert_msg(spes_blob_gc(s, 55000, NULL, &deleted) == 0, "%s", spes_errmsg());
    ck_assert_int_eq(deleted, 1);
    blob_file(s, stopped, base, sizeof base);
    snprintf(f, sizeof f, "%s.part", base);
    ck_assert_int_eq(access(f, F_OK), -1);
    snprintf(f, sizeof f, "%s.part.map", base);
    ck_assert_int_eq(access(f, F_OK), -1);
    blob_file(s, running, base, sizeof base);
    snprintf(f, sizeof f, "%s.part", base);
    ck_assert_int_eq(access(f, F_OK), 0);
    ck_assert(spes_blob_has(s, h[0]) && spes_blob_has(s, h[3])); /* the blobs above the partials stay */
    close(lockfd);
    spes_blob_store_close(s);
    teardown_pki();
}
END_TEST

/* ---- handler ---- */

static uint8_t *want_req(const uint8_t h[32], int manifest, size_t *len)
{
    Spes__Wire__BlobWant w = SPES__WIRE__BLOB_WANT__INIT;
    uint8_t *out = NULL;
    w.blob_hash.data = (uint8_t *)h;
    w.blob_hash.len = 32;
    w.want_manifest = manifest;
    ck_assert(spes_proto_encode(SPES_MSG_BLOB_WANT, &w.base, &out, len) == 0);
    return out;
}

static uint8_t *chunk_req(const uint8_t h[32], uint32_t first, uint32_t count, size_t *len)
{
    Spes__Wire__ChunkRequest c = SPES__WIRE__CHUNK_REQUEST__INIT;
    uint8_t *out = NULL;
    c.blob_hash.data = (uint8_t *)h;
    c.blob_hash.len = 32;
    c.first_chunk = first;
    c.chunk_count = count;
    ck_assert(spes_proto_encode(SPES_MSG_CHUNK_REQUEST, &c.base, &out, len) == 0);
    return out;
}

/* expect_refusal runs one request and checks it is refused with code and a message containing text. */
static void expect_refusal(spes_blob_store *s, const uint8_t *req, size_t len, Spes__Wire__ErrorCode code,
                           const char *text)
{
    uint8_t *rep = NULL;
    size_t rl = 0;
    int type = 0;
    ProtobufCMessage *msg = NULL;
    ck_assert_int_ne(spes_blob_handle(s, req, len, &rep, &rl), 0);
    ck_assert_msg(spes_proto_decode(rep, rl, &type, &msg) == 0, "%s", spes_errmsg());
    ck_assert_int_eq(type, SPES_MSG_ERROR);
    Spes__Wire__Error *e = (Spes__Wire__Error *)msg;
    ck_assert_int_eq(e->code, code);
    ck_assert_msg(strstr(e->message, text) != NULL, "'%s' lacks '%s'", e->message, text);
    spes_proto_free(msg);
    free(rep);
}

START_TEST(test_handle)
{
    setup_pki();
    spes_blob_store *s = store_at("h", 4096);
    uint8_t data[9000], h[32], other[32] = {1}, *rep = NULL, *req;
    uint64_t x = 3;
    size_t len, rl;
    fill(data, sizeof data, &x);
    ck_assert(spes_blob_put(s, data, sizeof data, h) == 0);
    /* manifest */
    req = want_req(h, 1, &len);
    ck_assert(spes_blob_handle(s, req, len, &rep, &rl) == 0);
    spes_manifest m, ref;
    ck_assert(spes_manifest_decode(rep, rl, &m) == 0);
    ck_assert(spes_manifest_build(data, sizeof data, 4096, &ref) == 0);
    ck_assert_mem_eq(m.blob_hash, h, 32);
    ck_assert_mem_eq(m.chunk_hashes, ref.chunk_hashes, 32 * 3);
    free(rep);
    free(req);
    /* chunk 2 (the short last one) */
    req = chunk_req(h, 2, 1, &len);
    ck_assert(spes_blob_handle(s, req, len, &rep, &rl) == 0);
    spes_chunk_header ch;
    const uint8_t *cd;
    ck_assert(spes_chunk_decode(rep, rl, &ch, &cd) == 0);
    ck_assert(spes_chunk_matches_manifest(&ch, &m) == 0);
    ck_assert_uint_eq(ch.length, 9000 - 8192);
    ck_assert_mem_eq(cd, data + 8192, ch.length);
    free(rep);
    free(req);
    /* BlobWant without manifest: BlobHave with size and manifest hash */
    req = want_req(h, 0, &len);
    ck_assert(spes_blob_handle(s, req, len, &rep, &rl) == 0);
    int type;
    ProtobufCMessage *msg;
    ck_assert(spes_proto_decode(rep, rl, &type, &msg) == 0);
    ck_assert_int_eq(type, SPES_MSG_BLOB_HAVE);
    Spes__Wire__BlobHave *have = (Spes__Wire__BlobHave *)msg;
    uint8_t mh[32];
    spes_manifest_hash(&m, mh);
    ck_assert_uint_eq(have->n_blobs, 1);
    ck_assert_uint_eq(have->blobs[0]->size, sizeof data);
    ck_assert_mem_eq(have->blobs[0]->manifest_hash.data, mh, 32);
    spes_proto_free(msg);
    free(rep);
    free(req);
    /* refusals */
    req = want_req(other, 1, &len);
    expect_refusal(s, req, len, SPES__WIRE__ERROR_CODE__ERROR_NOT_FOUND, "not held here");
    free(req);
    req = chunk_req(h, 3, 1, &len);
    expect_refusal(s, req, len, SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE, "chunk 3 does not exist");
    free(req);
    req = chunk_req(h, 0, 2, &len);
    expect_refusal(s, req, len, SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE, "one chunk per request");
    free(req);
    const uint8_t junk[] = "GET / HTTP/1.0\r\n\r\n";
    expect_refusal(s, junk, sizeof junk, SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE, "");
    Spes__Wire__Heartbeat hb = SPES__WIRE__HEARTBEAT__INIT;
    ck_assert(spes_proto_encode(SPES_MSG_HEARTBEAT, &hb.base, &req, &len) == 0);
    expect_refusal(s, req, len, SPES__WIRE__ERROR_CODE__ERROR_BAD_MESSAGE, "not a blob request");
    free(req);
    spes_blob_serve_stats st;
    spes_blob_store_stats(s, &st);
    ck_assert_uint_eq(st.manifests_served, 1);
    ck_assert_uint_eq(st.chunks_served, 1);
    ck_assert_uint_eq(st.refused, 5);
    spes_manifest_fini(&m);
    spes_manifest_fini(&ref);
    spes_blob_store_close(s);
    teardown_pki();
}
END_TEST

/* ---- network ---- */

enum { F_CORRUPT = 1, F_LIE = 2 };

/* faulty is a real blob server that misbehaves on purpose: F_CORRUPT sends
 * its first chunk intact and flips a byte in every later one; F_LIE answers for blob `claim` with the
 * manifest and chunks of the blob it really holds (`real`), renamed. */
typedef struct faulty {
    spes_net_server *srv;
    spes_blob_store *store;
    int mode;
    atomic_int served;
    uint8_t claim[32], real[32];
} faulty;

static uint8_t *rename_req(faulty *fz, const void *data, size_t len, size_t *out_len)
{
    int type = 0;
    ProtobufCMessage *msg = NULL;
    uint8_t *out = NULL;
    if (spes_proto_decode(data, len, &type, &msg) != 0)
        return NULL;
    if (type == SPES_MSG_BLOB_WANT)
        out = want_req(fz->real, ((Spes__Wire__BlobWant *)msg)->want_manifest, out_len);
    else if (type == SPES_MSG_CHUNK_REQUEST)
        out = chunk_req(fz->real, ((Spes__Wire__ChunkRequest *)msg)->first_chunk, 1, out_len);
    spes_proto_free(msg);
    return out;
}

static void faulty_handler(void *arg, spes_net_request *req)
{
    faulty *fz = arg;
    size_t len = 0, rl = 0, ml = 0;
    uint8_t *rep = NULL, *renamed = NULL;
    const void *data = spes_net_request_data(req, &len);
    if (fz->mode == F_LIE && (renamed = rename_req(fz, data, len, &ml)) != NULL) {
        data = renamed;
        len = ml;
    }
    spes_blob_handle(fz->store, data, len, &rep, &rl);
    if (rep && rl > SPES_CHUNK_HEADER_LEN && memcmp(rep, "SPCK", 4) == 0) {
        uint32_t index = (uint32_t)rep[40] << 24 | (uint32_t)rep[41] << 16 | (uint32_t)rep[42] << 8 | rep[43];
        if (fz->mode == F_CORRUPT && atomic_fetch_add(&fz->served, 1) > 0)
            rep[SPES_CHUNK_HEADER_LEN + index % 97] ^= 0x40;
        if (fz->mode == F_LIE)
            memcpy(rep + 8, fz->claim, 32);
    } else if (rep && fz->mode == F_LIE && rl > 40 && memcmp(rep, "SPMF", 4) == 0) {
        memcpy(rep + 8, fz->claim, 32);
    }
    spes_net_reply(req, rep, rl);
    free(rep);
    free(renamed);
}

static void faulty_open(faulty *fz, spes_net_tls *t)
{
    spes_net_server_opts so = {.url = plain ? "tcp://127.0.0.1:0" : "tls+tcp://127.0.0.1:0",
                               .tls = t,
                               .plain = plain,
                               .contexts = 16,
                               .handler = faulty_handler,
                               .arg = fz};
    ck_assert_msg(spes_net_server_open(&fz->srv, &so) == 0, "%s", spes_errmsg());
}

static spes_blob_server *serve(spes_blob_store *s, spes_net_tls *t)
{
    spes_net_server_opts so = {
        .url = plain ? "tcp://127.0.0.1:0" : "tls+tcp://127.0.0.1:0", .tls = t, .plain = plain};
    spes_blob_server *b = NULL;
    ck_assert_msg(spes_blob_server_open(&b, s, &so) == 0, "%s", spes_errmsg());
    return b;
}

static void url_of(int port, char *out, size_t n)
{
    snprintf(out, n, "%s://127.0.0.1:%d", plain ? "tcp" : "tls+tcp", port);
}

/* link_blob makes store `to` hold the blob `from` holds, without copying. */
static void link_blob(spes_blob_store *from, spes_blob_store *to, const uint8_t h[32])
{
    char a[4096], b[4096], am[4200], bm[4200];
    blob_file(from, h, a, sizeof a);
    blob_file(to, h, b, sizeof b);
    snprintf(am, sizeof am, "%s.manifest", a);
    snprintf(bm, sizeof bm, "%s.manifest", b);
    ck_assert(link(am, bm) == 0 && link(a, b) == 0);
    ck_assert(spes_blob_has(to, h));
}

static uint64_t proc_kb(const char *field)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t v = 0;
    size_t n = strlen(field);
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, field, n) == 0)
            v = strtoull(line + n + 1, NULL, 10);
    if (fp)
        fclose(fp);
    return v;
}

/* reset_hwm restarts VmHWM from the current RSS (Linux clear_refs "5"). */
static int reset_hwm(void)
{
    FILE *fp = fopen("/proc/self/clear_refs", "w");
    if (!fp)
        return 0;
    int ok = fputs("5", fp) >= 0;
    return fclose(fp) == 0 && ok;
}

START_TEST(test_fetch_roundtrip)
{
    setup_pki();
    spes_net_tls *ta = tls_for("node-a"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 4096), *f = store_at("f", 4096);
    uint8_t data[4096 * 5 + 17], h[32], nohash[32] = {9};
    uint64_t x = 11;
    fill(data, sizeof data, &x);
    ck_assert(spes_blob_put(a, data, sizeof data, h) == 0);
    spes_blob_server *sa = serve(a, ta);
    char url[64];
    url_of(spes_blob_server_port(sa), url, sizeof url);
    spes_blob_peer peer = {url, "node-a"};
    spes_blob_fetch_opts o = {.tls = tf, .plain = plain, .timeout_ms = 5000};
    spes_blob_fetch_stats st;
    /* an unknown blob: refused by the only peer, with its reason */
    ck_assert_int_eq(spes_blob_fetch(f, nohash, &peer, 1, &o, &st), SPES_ENOENT);
    ck_assert_msg(strstr(spes_errmsg(), "no peer offered it") && strstr(spes_errmsg(), "not held here"), "%s",
                  spes_errmsg());
    /* a manifest hash that does not match what the peer offers */
    uint8_t wrong_mh[32] = {1};
    o.manifest_hash = wrong_mh;
    ck_assert_int_eq(spes_blob_fetch(f, h, &peer, 1, &o, &st), SPES_ENOENT);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "not the announced one"));
    ck_assert_int_eq(spes_blob_has(f, h), 0);
    /* without a manifest hash, a size limit still bounds what a peer may claim */
    o.manifest_hash = NULL;
    o.max_size = sizeof data - 1;
    ck_assert_int_eq(spes_blob_fetch(f, h, &peer, 1, &o, &st), SPES_ENOENT);
    ck_assert_msg(strstr(spes_errmsg(), "more than the 20496 expected"), "%s", spes_errmsg());
    ck_assert_int_eq(spes_blob_has(f, h), 0);
    o.max_size = sizeof data;
    /* the right one */
    spes_manifest m;
    uint8_t mh[32];
    ck_assert(spes_blob_manifest_get(a, h, &m) == 0 && spes_manifest_hash(&m, mh) == 0);
    spes_manifest_fini(&m);
    o.manifest_hash = mh;
    ck_assert_msg(spes_blob_fetch(f, h, &peer, 1, &o, &st) == 0, "%s", spes_errmsg());
    ck_assert_uint_eq(st.chunks_fetched, 6);
    ck_assert_uint_eq(st.chunk_requests, 6);
    ck_assert_int_eq(st.peers_used, 1);
    char pa[4096], pf[4096], part[4200];
    blob_file(a, h, pa, sizeof pa);
    blob_file(f, h, pf, sizeof pf);
    ck_assert(same_file(pa, pf));
    snprintf(part, sizeof part, "%s.part", pf);
    ck_assert_int_eq(access(part, F_OK), -1);
    /* held already: nothing is asked */
    ck_assert(spes_blob_fetch(f, h, &peer, 1, &o, &st) == 0);
    ck_assert_uint_eq(st.chunk_requests, 0);
    /* an empty blob travels too */
    uint8_t eh[32];
    ck_assert(spes_blob_put(a, "", 0, eh) == 0);
    ck_assert_msg(spes_blob_fetch(f, eh, &peer, 1, &(spes_blob_fetch_opts){.tls = tf, .plain = plain}, &st) ==
                      0,
                  "%s", spes_errmsg());
    ck_assert_int_eq(spes_blob_has(f, eh), 1);
    ck_assert_uint_eq(st.chunk_requests, 0);
    spes_blob_server_close(sa);
    spes_blob_store_close(a);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

START_TEST(test_fetch_imposter)
{
    /* a peer whose certificate name is not the expected one is refused at the handshake and
     * nothing is fetched from it (TLS only). Its own case (ctest test_blob_refused): nng
     * 1.5.2 can keep a dialled connection whose handshake was refused (tests/lsan-tls-refused.supp) */
    if (plain)
        return;
    setup_pki();
    spes_net_tls *ta = tls_for("node-a"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 4096), *f = store_at("f", 4096);
    uint8_t data[4096 * 2 + 5], h[32];
    uint64_t x = 12;
    fill(data, sizeof data, &x);
    ck_assert(spes_blob_put(a, data, sizeof data, h) == 0);
    spes_blob_server *sa = serve(a, ta);
    char url[64];
    url_of(spes_blob_server_port(sa), url, sizeof url);
    spes_blob_peer imposter = {url, "node-b"};
    spes_blob_fetch_opts o = {.tls = tf, .timeout_ms = 1000};
    spes_blob_fetch_stats st;
    ck_assert_int_ne(spes_blob_fetch(f, h, &imposter, 1, &o, &st), 0);
    ck_assert_int_eq(spes_blob_has(f, h), 0);
    spes_blob_peer honest = {url, "node-a"};
    ck_assert_msg(spes_blob_fetch(f, h, &honest, 1, &o, &st) == 0, "%s", spes_errmsg());
    spes_blob_server_close(sa);
    spes_blob_store_close(a);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

/* exchange_len adds to *total the bytes of one request and of the store's answer to it. */
static void exchange_len(spes_blob_store *s, uint8_t *req, size_t len, uint64_t *total, uint64_t *reply)
{
    uint8_t *rep = NULL;
    size_t rl = 0;
    ck_assert(spes_blob_handle(s, req, len, &rep, &rl) == 0);
    *total += len + rl;
    *reply += rl;
    free(rep);
    free(req);
}

/* A fetch's bytes are counted as blob traffic, exactly the bodies of its
 * requests and of the answers (manifest, chunk headers and chunk bytes), on
 * both ends (both are in this process); a blob already held costs nothing. */
START_TEST(test_fetch_counted)
{
    setup_pki();
    spes_net_tls *ta = tls_for("node-a"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 4096), *f = store_at("f", 4096);
    uint8_t data[4096 * 5 + 17], h[32];
    uint64_t x = 5;
    fill(data, sizeof data, &x);
    ck_assert(spes_blob_put(a, data, sizeof data, h) == 0);
    uint64_t want = 0, replies = 0;
    size_t len;
    uint8_t *req = want_req(h, 1, &len);
    exchange_len(a, req, len, &want, &replies);
    for (uint32_t i = 0; i < 6; i++) {
        req = chunk_req(h, i, 1, &len);
        exchange_len(a, req, len, &want, &replies);
    }
    spes_manifest m;
    ck_assert(spes_blob_manifest_get(a, h, &m) == 0);
    uint8_t *menc = NULL;
    size_t mlen = 0;
    ck_assert(spes_manifest_encode(&m, &menc, &mlen) == 0);
    spes_manifest_fini(&m);
    free(menc);
    ck_assert_uint_eq(replies, sizeof data + 6 * SPES_CHUNK_HEADER_LEN + mlen);
    spes_blob_server *sa = serve(a, ta);
    char url[64];
    url_of(spes_blob_server_port(sa), url, sizeof url);
    spes_blob_peer peer = {url, "node-a"};
    spes_blob_fetch_opts o = {.tls = tf, .plain = plain, .timeout_ms = 5000, .window = 1};
    spes_blob_fetch_stats st;
    spes_net_counters c0, c1;
    spes_net_counters_get(&c0);
    ck_assert_msg(spes_blob_fetch(f, h, &peer, 1, &o, &st) == 0, "%s", spes_errmsg());
    ck_assert_uint_eq(st.chunk_requests, 6);
    for (int i = 0; i < 300; i++) { /* the server counts its last reply on its own thread */
        spes_net_counters_get(&c1);
        if (c1.sent_msgs[SPES_NET_BLOB] - c0.sent_msgs[SPES_NET_BLOB] >= 14)
            break;
        usleep(10000);
    }
    ck_assert_uint_eq(c1.sent_msgs[SPES_NET_BLOB] - c0.sent_msgs[SPES_NET_BLOB], 14);
    ck_assert_uint_eq(c1.received_msgs[SPES_NET_BLOB] - c0.received_msgs[SPES_NET_BLOB], 14);
    ck_assert_uint_eq(c1.sent_bytes[SPES_NET_BLOB] - c0.sent_bytes[SPES_NET_BLOB], want);
    ck_assert_uint_eq(c1.received_bytes[SPES_NET_BLOB] - c0.received_bytes[SPES_NET_BLOB], want);
    ck_assert_uint_eq(c1.sent_bytes[SPES_NET_CONTROL], c0.sent_bytes[SPES_NET_CONTROL]);
    ck_assert_uint_eq(c1.received_bytes[SPES_NET_CONTROL], c0.received_bytes[SPES_NET_CONTROL]);
    ck_assert(spes_blob_fetch(f, h, &peer, 1, &o, &st) == 0);
    spes_net_counters_get(&c0);
    ck_assert_uint_eq(spes_net_counters_sent(&c0), spes_net_counters_sent(&c1));
    spes_blob_server_close(sa);
    spes_blob_store_close(a);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

START_TEST(test_fetch_lying_manifest)
{
    setup_pki();
    spes_net_tls *tb = tls_for("node-b"), *tf = tls_for("node-f");
    spes_blob_store *b = store_at("b", 4096), *f = store_at("f", 4096);
    uint8_t wanted[20000], other[20000];
    uint64_t x = 5, y = 6;
    fill(wanted, sizeof wanted, &x);
    fill(other, sizeof other, &y);
    faulty fz = {.store = b, .mode = F_LIE};
    spes_sha256(wanted, sizeof wanted, fz.claim);
    ck_assert(spes_blob_put(b, other, sizeof other, fz.real) == 0);
    faulty_open(&fz, tb);
    char url[64];
    url_of(spes_net_server_port(fz.srv), url, sizeof url);
    spes_blob_peer peer = {url, NULL};
    spes_blob_fetch_opts o = {.tls = tf, .plain = plain, .timeout_ms = 5000};
    spes_blob_fetch_stats st;
    /* every chunk matches the lying manifest; only the whole-blob hash catches it */
    ck_assert_int_eq(spes_blob_fetch(f, fz.claim, &peer, 1, &o, &st), SPES_EFORMAT);
    ck_assert_msg(strstr(spes_errmsg(), "manifest was false"), "%s", spes_errmsg());
    ck_assert_uint_eq(st.bad_chunks, 0);
    ck_assert_int_eq(spes_blob_has(f, fz.claim), 0);
    char pf[4096], part[4200];
    blob_file(f, fz.claim, pf, sizeof pf);
    snprintf(part, sizeof part, "%s.part", pf);
    ck_assert_int_eq(access(part, F_OK), -1);
    spes_net_server_close(fz.srv);
    spes_blob_store_close(b);
    spes_blob_store_close(f);
    spes_net_tls_free(tb);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

/* A lone peer is fetched from over two connections: when it corrupts chunks,
 * both are dropped, the fetch fails naming it once, and the stats count one peer. */
START_TEST(test_fetch_lone_corrupt_peer)
{
    setup_pki();
    spes_net_tls *tc = tls_for("node-c"), *tf = tls_for("node-f");
    spes_blob_store *c = store_at("c", 4096), *f = store_at("f", 4096);
    uint8_t data[4096 * 12], h[32];
    uint64_t x = 9;
    fill(data, sizeof data, &x);
    ck_assert(spes_blob_put(c, data, sizeof data, h) == 0);
    faulty fz = {.store = c, .mode = F_CORRUPT};
    faulty_open(&fz, tc);
    char url[64];
    url_of(spes_net_server_port(fz.srv), url, sizeof url);
    spes_blob_peer peer = {url, "node-c"};
    spes_blob_fetch_opts o = {.tls = tf, .plain = plain, .timeout_ms = 5000};
    spes_blob_fetch_stats st;
    ck_assert_int_eq(spes_blob_fetch(f, h, &peer, 1, &o, &st), SPES_ENET);
    const char *msg = spes_errmsg();
    ck_assert_msg(strstr(msg, "no peer left") && strstr(msg, url), "%s", msg);
    ck_assert_msg(strstr(strstr(msg, url) + strlen(url), url) == NULL, "the peer is named twice: %s", msg);
    ck_assert_int_eq(st.peers_used, 1);
    ck_assert_int_eq(st.peers_dropped, 1);
    ck_assert_uint_ge(st.bad_chunks, 2);
    ck_assert_int_eq(spes_blob_has(f, h), 0);
    spes_net_server_close(fz.srv);
    spes_blob_store_close(c);
    spes_blob_store_close(f);
    spes_net_tls_free(tc);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

static double now_s(void);

/* closed_port returns a loopback port where nothing listens (connections are refused). */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    ck_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    ck_assert(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A peer that went away (its port refuses connections) is dropped after connect_ms, not after its
 * requests' timeout: alone, the fetch fails at once with the reason; beside a live peer, the blob
 * comes from that one. */
START_TEST(test_fetch_unreachable_peer)
{
    setup_pki();
    spes_net_tls *ta = tls_for("node-a"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 4096), *f = store_at("f", 4096);
    uint8_t data[4096 * 6], h[32];
    uint64_t x = 5;
    fill(data, sizeof data, &x);
    ck_assert(spes_blob_put(a, data, sizeof data, h) == 0);
    char dead[64], live[64];
    url_of(closed_port(), dead, sizeof dead);
    spes_blob_fetch_opts o = {.tls = tf, .plain = plain, .timeout_ms = 20000, .connect_ms = 500};
    spes_blob_fetch_stats st;
    spes_blob_peer gone = {dead, "node-a"};
    double t0 = now_s();
    ck_assert_int_eq(spes_blob_fetch(f, h, &gone, 1, &o, &st), SPES_ENOENT);
    double took = now_s() - t0;
    ck_assert_msg(strstr(spes_errmsg(), "no connection within 500 ms"), "%s", spes_errmsg());
    ck_assert_msg(took < 5.0, "an unreachable peer cost %.1f s (its requests' timeout is 20 s)", took);
    spes_blob_server *sa = serve(a, ta);
    url_of(spes_blob_server_port(sa), live, sizeof live);
    spes_blob_peer both[2] = {{dead, "node-a"}, {live, "node-a"}};
    o.connect_ms = 3000; /* room for the live peer's handshake on a loaded machine */
    t0 = now_s();
    ck_assert_msg(spes_blob_fetch(f, h, both, 2, &o, &st) == 0, "%s", spes_errmsg());
    took = now_s() - t0;
    ck_assert_int_eq(spes_blob_has(f, h), 1);
    ck_assert_int_eq(st.peers_dropped, 0); /* the live peer had it all before the dead one's deadline */
    ck_assert_msg(took < 8.0,
                  "the fetch waited %.1f s for the unreachable peer (its requests' timeout is 20 s)", took);
    spes_blob_server_close(sa);
    spes_blob_store_close(a);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

typedef struct killer {
    pid_t victim;
    uint32_t at;
    int killed;
    atomic_int *cancel;
} killer;

static void on_progress(void *arg, const spes_blob_progress *p)
{
    killer *k = arg;
    if (!k->killed && p->chunks_done >= k->at) {
        k->killed = 1;
        if (k->victim > 0) {
            kill(k->victim, SIGKILL);
            waitpid(k->victim, NULL, 0);
        }
        if (k->cancel)
            atomic_store(k->cancel, 1);
    }
}

/* spawn_server serves store `name` as `cert` from a child process (so that it
 * can be killed like a crashed peer) and returns its pid and port. It forks
 * before this process has used nng. */
static pid_t spawn_server(const char *name, const char *cert, int *port)
{
    int p[2];
    ck_assert(pipe(p) == 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        spes_net_tls *t = tls_for(cert);
        spes_blob_store *s = store_at(name, 0);
        spes_blob_server *b = serve(s, t);
        int port_ = spes_blob_server_port(b);
        if (write(p[1], &port_, sizeof port_) != sizeof port_)
            _exit(1);
        for (;;)
            pause();
    }
    close(p[1]);
    ck_assert_int_eq(read(p[0], port, sizeof *port), sizeof *port);
    close(p[0]);
    return pid;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* no_fork says (and prints) that test cannot run: its peer runs in a forked child, which needs a
 * process where nng has not started, and CK_FORK=no runs every test in one process. */
static int no_fork(const char *test)
{
    const char *fork_mode = getenv("CK_FORK");
    if (!fork_mode || strcmp(fork_mode, "no"))
        return 0;
    printf("%s: skipped under CK_FORK=no\n", test);
    return 1;
}

START_TEST(test_fetch_three_peers_kill_corrupt)
{
    if (no_fork("test_fetch_three_peers_kill_corrupt"))
        return;
    setup_pki();
    const char *env = getenv("SPES_BLOB_TEST_MB");
    uint64_t mb = env ? strtoull(env, NULL, 10) : 256;
    if (mb < 32)
        mb = 32; /* so that the killed peer still has chunks to serve when it dies */
    uint64_t size = mb << 20;
    spes_blob_store *a = store_at("a", 0), *b = store_at("b", 0), *c = store_at("c", 0),
                    *f = store_at("f", 0);
    char src[400];
    uint8_t h[32];
    snprintf(src, sizeof src, "%s/big.bin", tmp);
    gen_file(src, size + 12345, 42);
    ck_assert_msg(spes_blob_put_file(a, src, h) == 0, "%s", spes_errmsg());
    link_blob(a, b, h);
    link_blob(a, c, h);
    int port_b = 0;
    pid_t pid_b = spawn_server("b", "node-b", &port_b); /* before this process starts nng */
    spes_net_tls *ta = tls_for("node-a"), *tc = tls_for("node-c"), *tf = tls_for("node-f");
    spes_blob_server *sa = serve(a, ta);
    faulty fc = {.store = c, .mode = F_CORRUPT};
    faulty_open(&fc, tc);
    char ua[64], ub[64], uc[64];
    url_of(spes_blob_server_port(sa), ua, sizeof ua);
    url_of(port_b, ub, sizeof ub);
    url_of(spes_net_server_port(fc.srv), uc, sizeof uc);
    spes_blob_peer peers[3] = {{ua, "node-a"}, {ub, "node-b"}, {uc, "node-c"}};
    uint32_t count = (uint32_t)((size + 12345 + SPES_CHUNK_SIZE_DEFAULT - 1) / SPES_CHUNK_SIZE_DEFAULT);
    killer k = {.victim = pid_b, .at = count / 2};
    spes_blob_fetch_opts o = {.tls = tf,
                              .plain = plain,
                              .window = 4,
                              .timeout_ms = 3000,
                              .max_peer_errors = 1,
                              .progress = on_progress,
                              .progress_arg = &k};
    spes_blob_fetch_stats st;
    uint64_t rss0 = proc_kb("VmRSS:"), hwm0 = proc_kb("VmHWM:");
    int reset = reset_hwm();
    double t0 = now_s();
    int rc = spes_blob_fetch(f, h, peers, 3, &o, &st);
    double dt = now_s() - t0;
    uint64_t hwm1 = proc_kb("VmHWM:");
    ck_assert_msg(rc == 0, "%s", spes_errmsg());
    uint64_t growth_kb = hwm1 - (reset ? rss0 : hwm0 > rss0 ? hwm0 : rss0);
    if (hwm1 < rss0)
        growth_kb = 0;
    printf("blob fetch: %llu MiB from 3 peers in %.2f s; peak RSS growth %llu KiB (RSS before %llu KiB); "
           "%u chunks fetched, %u bad, %u transport errors, %d peers dropped\n",
           (unsigned long long)mb, dt, (unsigned long long)growth_kb, (unsigned long long)rss0,
           st.chunks_fetched, st.bad_chunks, st.transport_errors, st.peers_dropped);
    ck_assert(k.killed);
    ck_assert_int_eq(st.peers_used, 3);
    ck_assert_int_eq(st.peers_dropped, 2);
    ck_assert_uint_ge(st.bad_chunks, 1);
    ck_assert_uint_ge(st.transport_errors, 1);
    ck_assert_uint_eq(st.chunks_fetched, count);
    char pf[4096];
    blob_file(f, h, pf, sizeof pf);
    ck_assert_msg(same_file(src, pf), "fetched blob differs from the source");
    /* bound: 3 peers x window 4 x 1 MiB in flight on each side, plus TLS buffers;
     * never anything near the blob's size */
    if (!UNDER_ASAN)
        ck_assert_msg(growth_kb < 64 * 1024, "peak RSS grew by %llu KiB during a %llu MiB fetch",
                      (unsigned long long)growth_kb, (unsigned long long)mb);
    spes_blob_server_close(sa);
    spes_net_server_close(fc.srv);
    spes_blob_store_close(a);
    spes_blob_store_close(b);
    spes_blob_store_close(c);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tc);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

/* A peer killed halfway (its connection came up, then went): with no other peer the fetch ends
 * once it has had no connection for connect_ms, naming that, not at its requests' timeout, which
 * nng's req would otherwise wait out for a pipe that never comes back. */
START_TEST(test_fetch_peer_dies_after_connecting)
{
    if (no_fork("test_fetch_peer_dies_after_connecting"))
        return;
    setup_pki();
    spes_blob_store *b = store_at("b", 65536), *f = store_at("f", 65536);
    char src[400];
    uint8_t h[32];
    snprintf(src, sizeof src, "%s/dies.bin", tmp);
    gen_file(src, 256 * 65536 + 7, 11);
    ck_assert(spes_blob_put_file(b, src, h) == 0);
    int port_b = 0;
    pid_t pid_b = spawn_server("b", "node-b", &port_b); /* before this process starts nng */
    spes_net_tls *tf = tls_for("node-f");
    char ub[64];
    url_of(port_b, ub, sizeof ub);
    spes_blob_peer peer = {ub, "node-b"};
    killer k = {.victim = pid_b, .at = 8};
    spes_blob_fetch_opts o = {.tls = tf,
                              .plain = plain,
                              .window = 2,
                              .timeout_ms = 600000, /* the loss, not a timeout, must end it */
                              .max_peer_errors = 1000,
                              .connect_ms = 1000,
                              .progress = on_progress,
                              .progress_arg = &k};
    spes_blob_fetch_stats st;
    int rc = spes_blob_fetch(f, h, &peer, 1, &o, &st);
    ck_assert(k.killed);
    ck_assert_int_ne(rc, 0);
    ck_assert_msg(strstr(spes_errmsg(), "connection lost for") != NULL, "%s", spes_errmsg());
    ck_assert_uint_ge(st.chunks_fetched, 8);
    ck_assert_uint_lt(st.chunks_fetched, 257);
    ck_assert_int_eq(spes_blob_has(f, h), 0);
    spes_blob_store_close(b);
    spes_blob_store_close(f);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

START_TEST(test_fetch_resume)
{
    setup_pki();
    spes_net_tls *ta = tls_for("node-a"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 65536), *f = store_at("f", 65536);
    char src[400];
    uint8_t h[32];
    snprintf(src, sizeof src, "%s/mid.bin", tmp);
    gen_file(src, 64 * 65536 + 123, 9);
    ck_assert(spes_blob_put_file(a, src, h) == 0);
    spes_blob_server *sa = serve(a, ta);
    char url[64];
    url_of(spes_blob_server_port(sa), url, sizeof url);
    spes_blob_peer peer = {url, "node-a"};
    atomic_int cancel = 0;
    killer k = {.at = 20, .cancel = &cancel};
    spes_blob_fetch_opts o = {.tls = tf,
                              .plain = plain,
                              .window = 2,
                              .timeout_ms = 5000,
                              .cancel = &cancel,
                              .progress = on_progress,
                              .progress_arg = &k};
    spes_blob_fetch_stats st1, st2;
    ck_assert_int_eq(spes_blob_fetch(f, h, &peer, 1, &o, &st1), SPES_EINTR);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "cancelled"));
    ck_assert_int_eq(spes_blob_has(f, h), 0);
    ck_assert_uint_ge(st1.chunks_fetched, 20);
    ck_assert_uint_lt(st1.chunks_fetched, 65);
    /* damage one chunk the bitmap says is written: it must be re-fetched, not trusted */
    char pf[4096], part[4200], map[4200];
    blob_file(f, h, pf, sizeof pf);
    snprintf(part, sizeof part, "%s.part", pf);
    snprintf(map, sizeof map, "%s.part.map", pf);
    ck_assert_int_eq(access(map, F_OK), 0);
    FILE *fp = fopen(map, "rb");
    int first = fgetc(fp);
    fclose(fp);
    ck_assert_int_ne(first, EOF);
    int damaged = -1;
    for (int i = 0; i < 8 && damaged < 0; i++)
        if (first & (1 << i))
            damaged = i;
    ck_assert_int_ge(damaged, 0);
    int fd = open(part, O_RDWR);
    uint8_t byte = 0x5a;
    ck_assert(pwrite(fd, &byte, 1, (off_t)damaged * 65536 + 100) == 1);
    close(fd);
    spes_blob_serve_stats before, after;
    spes_blob_store_stats(a, &before);
    cancel = 0;
    o.progress = NULL;
    ck_assert_msg(spes_blob_fetch(f, h, &peer, 1, &o, &st2) == 0, "%s", spes_errmsg());
    spes_blob_store_stats(a, &after);
    /* only the missing chunks were asked for, and the server saw exactly those */
    ck_assert_uint_eq(st2.chunks_resumed, st1.chunks_fetched - 1);
    ck_assert_uint_eq(st2.chunks_resumed + st2.chunks_fetched, 65);
    ck_assert_uint_eq(st2.chunk_requests, st2.chunks_fetched);
    ck_assert_uint_eq(after.chunks_served - before.chunks_served, st2.chunk_requests);
    ck_assert_uint_eq(after.manifests_served - before.manifests_served, 1);
    ck_assert(same_file(src, pf));
    ck_assert_int_eq(access(part, F_OK), -1);
    ck_assert_int_eq(access(map, F_OK), -1);
    spes_blob_server_close(sa);
    spes_blob_store_close(a);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

/* ---- a daemon's endpoint against hostile connections ---- */

/* hostile is a member's connection driven by hand: TLS with a node certificate
 * and SP negotiation done, then raw SP request frames. */
typedef struct hostile {
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
} hostile;

static void hostile_open(hostile *h, int port)
{
    char cap[400], crt[400], key[400];
    snprintf(cap, sizeof cap, "%s/ca.crt", ca);
    snprintf(crt, sizeof crt, "%s/node-c.crt", certs);
    snprintf(key, sizeof key, "%s/node-c.key", certs);
    h->ctx = SSL_CTX_new(TLS_client_method());
    ck_assert(SSL_CTX_load_verify_locations(h->ctx, cap, NULL) == 1);
    ck_assert(SSL_CTX_use_certificate_file(h->ctx, crt, SSL_FILETYPE_PEM) == 1);
    ck_assert(SSL_CTX_use_PrivateKey_file(h->ctx, key, SSL_FILETYPE_PEM) == 1);
    h->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(h->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(h->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* a write never blocks the test for ever */
    setsockopt(h->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    h->ssl = SSL_new(h->ctx);
    SSL_set_fd(h->ssl, h->fd);
    ck_assert_int_eq(SSL_connect(h->ssl), 1);
    static const unsigned char sp_req[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
    unsigned char in[8];
    ck_assert_int_eq(SSL_write(h->ssl, sp_req, 8), 8);
    ck_assert_int_eq(SSL_read(h->ssl, in, 8), 8);
    ck_assert(memcmp(in, "\0SP\0\0\x31", 6) == 0);
}

/* hostile_send writes one SP request frame (length, request id, body). */
static int hostile_send(hostile *h, uint32_t id, const void *body, size_t len)
{
    uint8_t *f = malloc(12 + len);
    uint64_t n = 4 + len;
    for (int i = 0; i < 8; i++)
        f[i] = (uint8_t)(n >> (56 - 8 * i));
    id |= 0x80000000u;
    for (int i = 0; i < 4; i++)
        f[8 + i] = (uint8_t)(id >> (24 - 8 * i));
    memcpy(f + 12, body, len);
    int ok = SSL_write(h->ssl, f, (int)(12 + len)) == (int)(12 + len);
    free(f);
    return ok;
}

static void hostile_close(hostile *h)
{
    SSL_free(h->ssl);
    close(h->fd);
    SSL_CTX_free(h->ctx);
    ERR_clear_error();
}

/* control_echo stands in for the daemon's handler of every other request. */
static void control_echo(void *arg, spes_net_request *req)
{
    (void)arg;
    size_t len = 0;
    const void *d = spes_net_request_data(req, &len);
    spes_net_reply(req, d, len);
}

static double since_s(double t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9 - t0;
}

START_TEST(test_endpoint_slow_reader)
{
    /* the attack of issue 14: connections that ask for chunks and never read the
     * replies. One asks for 20 (more than a connection may have in flight: it is
     * closed), one for 12 of 4 MiB each (the replies block its connection: closed
     * at the send deadline). Meanwhile an honest member's other requests are
     * answered at once and its fetch of the same blob completes. */
    setup_pki();
    signal(SIGPIPE, SIG_IGN);
    spes_net_tls *ta = tls_for("node-a"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 4u << 20), *f = store_at("f", 4u << 20);
    char src[400];
    snprintf(src, sizeof src, "%s/big", tmp);
    gen_file(src, 32u << 20, 77);
    uint8_t h[32];
    ck_assert(spes_blob_put_file(a, src, h) == 0);
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {
        .url = "tls+tcp://127.0.0.1:0", .tls = ta, .handler = control_echo, .send_timeout_ms = 2000};
    ck_assert_msg(spes_blob_endpoint_open(&srv, a, NULL, &so) == 0, "%s", spes_errmsg());
    int port = spes_net_server_port(srv);
    hostile h1, h2;
    hostile_open(&h1, port);
    hostile_open(&h2, port);
    for (uint32_t i = 0; i < 20; i++) {
        size_t len;
        uint8_t *req = chunk_req(h, i % 8, 1, &len);
        hostile_send(&h1, i + 1, req, len);
        if (i < 12)
            ck_assert(hostile_send(&h2, i + 1, req, len));
        free(req);
    }
    usleep(300 * 1000);
    char url[64];
    url_of(port, url, sizeof url);
    spes_net_client *c = NULL;
    spes_net_client_opts co = {.url = url, .tls = tf, .wait_connect = 1};
    ck_assert_msg(spes_net_client_open(&c, &co) == 0, "%s", spes_errmsg());
    for (int i = 0; i < 5; i++) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        double t0 = (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
        void *rep = NULL;
        size_t rl = 0;
        ck_assert_msg(spes_net_call(c, "status?", 7, 5000, &rep, &rl) == 0, "control request %d: %s", i,
                      spes_errmsg());
        ck_assert(rl == 7 && memcmp(rep, "status?", 7) == 0);
        free(rep);
        ck_assert_msg(since_s(t0) < 3.0, "control request %d answered after %.3f s", i, since_s(t0));
    }
    spes_blob_peer peer = {url, NULL};
    spes_blob_fetch_opts o = {.tls = tf, .timeout_ms = 10000};
    spes_blob_fetch_stats st;
    ck_assert_msg(spes_blob_fetch(f, h, &peer, 1, &o, &st) == 0, "honest fetch: %s", spes_errmsg());
    char got[4096];
    blob_file(f, h, got, sizeof got);
    ck_assert(same_file(src, got));
    spes_net_server_stats ss;
    for (int i = 0; i < 100; i++) {
        spes_net_server_get_stats(srv, &ss);
        if (ss.send_timeouts > 0 && ss.inflight_exceeded > 0)
            break;
        usleep(50 * 1000);
    }
    ck_assert_uint_ge(ss.inflight_exceeded, 1);
    ck_assert_uint_ge(ss.send_timeouts, 1);
    spes_net_client_close(c);
    hostile_close(&h1);
    hostile_close(&h2);
    spes_net_server_close(srv);
    spes_blob_store_close(a);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

START_TEST(test_endpoint_request_size)
{
    /* a request announcing 256 MiB: the connection is dropped at its header,
     * and the endpoint's memory does not grow by what the peer then sends */
    setup_pki();
    signal(SIGPIPE, SIG_IGN);
    spes_net_tls *ta = tls_for("node-a");
    spes_blob_store *a = store_at("a", 0);
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {.url = "tls+tcp://127.0.0.1:0", .tls = ta, .handler = control_echo};
    ck_assert_msg(spes_blob_endpoint_open(&srv, a, NULL, &so) == 0, "%s", spes_errmsg());
    hostile hs;
    hostile_open(&hs, spes_net_server_port(srv));
    uint64_t rss0 = proc_kb("VmRSS:");
    uint8_t hdr[8] = {0, 0, 0, 0, 0x10, 0, 0, 0}; /* 256 MiB */
    ck_assert_int_eq(SSL_write(hs.ssl, hdr, 8), 8);
    uint8_t *junk = calloc(1, 1u << 20);
    size_t sent = 0;
    while (sent < (64u << 20) && SSL_write(hs.ssl, junk, 1 << 20) == 1 << 20)
        sent += 1u << 20;
    usleep(200 * 1000);
    uint64_t rss1 = proc_kb("VmRSS:");
    ck_assert_msg(sent < (64u << 20), "the endpoint took all %zu MiB of a 256 MiB request", sent >> 20);
    ck_assert_msg(rss1 < rss0 + 16 * 1024, "RSS grew from %llu to %llu KiB", (unsigned long long)rss0,
                  (unsigned long long)rss1);
    free(junk);
    hostile_close(&hs);
    spes_net_server_close(srv);
    spes_blob_store_close(a);
    spes_net_tls_free(ta);
    teardown_pki();
}
END_TEST

/* gone_from_store says whether no file of blob h (held, manifest or partial) is in s. */
static int gone_from_store(spes_blob_store *s, const uint8_t h[32])
{
    static const char *const suffix[] = {"", ".manifest", ".part", ".part.map", ".part.manifest"};
    char base[4096], p[4200];
    blob_file(s, h, base, sizeof base);
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s%s", base, suffix[i]);
        if (access(p, F_OK) == 0)
            return 0;
    }
    return 1;
}

START_TEST(test_fetch_oversize_cut_off)
{
    /* a peer serving a blob far larger than announced is cut off at the bound
     * (its manifest, before any chunk), and nothing of the blob stays on disk */
    setup_pki();
    spes_net_tls *tb = tls_for("node-b"), *tf = tls_for("node-f");
    spes_blob_store *b = store_at("b", 1u << 20), *f = store_at("f", 1u << 20);
    char src[400];
    snprintf(src, sizeof src, "%s/huge", tmp);
    gen_file(src, 24u << 20, 5);
    uint8_t h[32], mh[32];
    ck_assert(spes_blob_put_file(b, src, h) == 0);
    spes_manifest m;
    ck_assert(spes_blob_manifest_get(b, h, &m) == 0);
    ck_assert(spes_manifest_hash(&m, mh) == 0); /* the announcer names its own manifest */
    spes_manifest_fini(&m);
    spes_blob_server *bs = serve(b, tb);
    char url[64];
    url_of(spes_blob_server_port(bs), url, sizeof url);
    spes_blob_peer peer = {url, NULL};
    spes_blob_fetch_opts o = {
        .tls = tf, .plain = plain, .timeout_ms = 5000, .manifest_hash = mh, .max_size = 2u << 20};
    spes_blob_fetch_stats st;
    ck_assert_int_ne(spes_blob_fetch(f, h, &peer, 1, &o, &st), 0);
    ck_assert_msg(strstr(spes_errmsg(), "more than the 2097152 expected"), "%s", spes_errmsg());
    ck_assert_uint_eq(st.chunk_requests, 0);
    ck_assert(gone_from_store(f, h));
    /* without a bound from the caller, the store's quota bounds it */
    spes_blob_store_close(f);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/f", tmp);
    spes_blob_store_opts q = {.chunk_size = 1u << 20, .max_bytes = 8u << 20};
    ck_assert(spes_blob_store_open(&f, dir, &q) == 0);
    o.max_size = 0;
    ck_assert_int_ne(spes_blob_fetch(f, h, &peer, 1, &o, &st), 0);
    ck_assert_msg(strstr(spes_errmsg(), "quota"), "%s", spes_errmsg());
    ck_assert_uint_eq(st.chunk_requests, 0);
    ck_assert(gone_from_store(f, h));
    /* a refused blob that was fetched is deleted with everything of it */
    spes_blob_store_close(f);
    f = store_at("f", 1u << 20);
    ck_assert(spes_blob_fetch(f, h, &peer, 1, &o, &st) == 0);
    ck_assert(spes_blob_delete(f, h) == 0);
    ck_assert(gone_from_store(f, h));
    spes_blob_server_close(bs);
    spes_blob_store_close(b);
    spes_blob_store_close(f);
    spes_net_tls_free(tb);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

/* ---- pushed blobs (push.c) ---- */

/* push_reply decodes a push reply: the Ack's text, or "error: " and the Error's. */
static void push_reply(const uint8_t *rep, size_t len, char *out, size_t n)
{
    int type = 0;
    ProtobufCMessage *m = NULL;
    ck_assert_msg(rep && spes_proto_decode(rep, len, &type, &m) == 0, "push reply: %s", spes_errmsg());
    if (type == SPES_MSG_ACK)
        snprintf(out, n, "%s", ((Spes__Wire__Ack *)m)->message);
    else if (type == SPES_MSG_ERROR)
        snprintf(out, n, "error: %s", ((Spes__Wire__Error *)m)->message);
    else
        ck_abort_msg("push reply of type %d", type);
    spes_proto_free(m);
}

/* push_call sends one BlobPush (manifest m) or BlobPiece (data at off) as `who` and returns the reply's text. */
static const char *push_call(spes_blob_push_rx *rx, const char *who, int role, const spes_manifest *m,
                             const uint8_t *data, uint64_t off, size_t len)
{
    static char text[1200];
    spes_pki_identity id = {.role = role};
    snprintf(id.name, sizeof id.name, "%s", who);
    uint8_t *req = NULL, *rep = NULL, *menc = NULL;
    size_t rl = 0, pl = 0, ml = 0;
    if (!data) {
        ck_assert(spes_manifest_encode(m, &menc, &ml) == 0);
        Spes__Wire__BlobPush bp = SPES__WIRE__BLOB_PUSH__INIT;
        bp.manifest = (ProtobufCBinaryData){ml, menc};
        ck_assert(spes_proto_encode(SPES_MSG_BLOB_PUSH, &bp.base, &req, &rl) == 0);
    } else {
        Spes__Wire__BlobPiece pc = SPES__WIRE__BLOB_PIECE__INIT;
        pc.blob_hash = (ProtobufCBinaryData){32, (uint8_t *)m->blob_hash};
        pc.offset = off;
        pc.data = (ProtobufCBinaryData){len, (uint8_t *)data + off};
        ck_assert_msg(spes_proto_encode(SPES_MSG_BLOB_PIECE, &pc.base, &req, &rl) == 0, "%s", spes_errmsg());
    }
    spes_blob_push_handle(rx, &id, req, rl, &rep, &pl);
    push_reply(rep, pl, text, sizeof text);
    free(req);
    free(rep);
    free(menc);
    return text;
}

/* push_files counts the unfinished pushes (.push-XXXXXX files) in dir. */
static int push_files(const char *dir)
{
    DIR *dp = opendir(dir);
    ck_assert_ptr_nonnull(dp);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL)
        n += strncmp(de->d_name, ".push-", 6) == 0;
    closedir(dp);
    return n;
}

START_TEST(test_push_receive)
{
    /* the receiving side, request by request: what is refused and why, pieces out of order,
     * a lying pusher, the per-name slot and the bound on names, leftovers after a crash */
    setup_pki();
    spes_blob_store *a = store_at("a", 4096);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/a", tmp);
    const size_t P = SPES_PROTO_PUSH_PIECE, N = 3 * P + 1000;
    uint8_t *blob = malloc(N);
    uint64_t x = 5;
    fill(blob, N, &x);
    spes_manifest m;
    ck_assert(spes_manifest_build(blob, N, 4096, &m) == 0);
    char junk[500];
    snprintf(junk, sizeof junk, "%s/.push-left", dir); /* what a killed daemon left */
    FILE *jf = fopen(junk, "w");
    fclose(jf);
    spes_blob_push_rx *rx = NULL;
    ck_assert(spes_blob_push_rx_open(&rx, a, 2) == 0);
    ck_assert_int_eq(push_files(dir), 0);
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, NULL, 0, 0),
                     "error: this daemon takes no pushed blob before it knows the run's model");
    spes_blob_push_rx_limit(rx, N - 1);
    ck_assert_ptr_nonnull(
        strstr(push_call(rx, "node-b", SPES_ROLE_NODE, &m, NULL, 0, 0), "this daemon takes 1 to"));
    spes_blob_push_rx_limit(rx, 1u << 20);
    ck_assert_ptr_nonnull(strstr(push_call(rx, "op", SPES_ROLE_OPERATOR, &m, NULL, 0, 0), "operator"));
    ck_assert_ptr_nonnull(strstr(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, 0, P), "no push of"));
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, NULL, 0, 0), "ok");
    ck_assert_int_eq(push_files(dir), 1);
    ck_assert_ptr_nonnull(
        strstr(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, 100, P - 100), "not a piece"));
    ck_assert_ptr_nonnull(strstr(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, P, P - 1), "expected"));
    ck_assert_ptr_nonnull(strstr(push_call(rx, "node-c", SPES_ROLE_NODE, &m, blob, P, P), "no push of"));
    /* out of order, one piece twice; the last one completes it */
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, 3 * P, 1000), "ok");
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, P, P), "ok");
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, P, P), "ok");
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, 0, P), "ok");
    ck_assert(!spes_blob_has(a, m.blob_hash));
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, blob, 2 * P, P), "complete");
    ck_assert(spes_blob_has(a, m.blob_hash));
    ck_assert_int_eq(push_files(dir), 0);
    uint8_t *back = malloc(N);
    int fd;
    ck_assert(spes_blob_open(a, m.blob_hash, &fd) == 0);
    ck_assert(pread(fd, back, N, 0) == (ssize_t)N && memcmp(back, blob, N) == 0);
    close(fd);
    ck_assert_str_eq(push_call(rx, "node-b", SPES_ROLE_NODE, &m, NULL, 0, 0), "held");
    /* a pusher whose bytes do not match its manifest: refused at the end, nothing held or left */
    uint8_t *lie = malloc(N);
    memcpy(lie, blob, N);
    lie[N - 1] ^= 1;
    spes_manifest m2;
    ck_assert(spes_manifest_build(lie, N, 4096, &m2) == 0);
    lie[5] ^= 1; /* what it sends differs from what its manifest says */
    ck_assert_str_eq(push_call(rx, "node-c", SPES_ROLE_NODE, &m2, NULL, 0, 0), "ok");
    for (int i = 0; i < 3; i++)
        ck_assert_str_eq(push_call(rx, "node-c", SPES_ROLE_NODE, &m2, lie, (uint64_t)i * P, P), "ok");
    ck_assert_ptr_nonnull(strstr(push_call(rx, "node-c", SPES_ROLE_NODE, &m2, lie, 3 * P, 1000),
                                 "does not match its manifest"));
    ck_assert(!spes_blob_has(a, m2.blob_hash));
    ck_assert_int_eq(push_files(dir), 0);
    /* two names at once at most; a name's new push replaces its unfinished one */
    ck_assert_str_eq(push_call(rx, "node-c", SPES_ROLE_NODE, &m2, NULL, 0, 0), "ok");
    ck_assert_str_eq(push_call(rx, "node-f", SPES_ROLE_NODE, &m2, NULL, 0, 0), "ok");
    ck_assert_ptr_nonnull(
        strstr(push_call(rx, "node-a", SPES_ROLE_NODE, &m2, NULL, 0, 0), "2 blob pushes at once"));
    lie[5] ^= 1; /* now honest */
    spes_manifest m3;
    ck_assert(spes_manifest_build(blob, 2 * P, 4096, &m3) == 0);
    ck_assert_str_eq(push_call(rx, "node-c", SPES_ROLE_NODE, &m3, NULL, 0, 0), "ok");
    ck_assert_int_eq(push_files(dir), 2);
    spes_blob_push_stats st;
    spes_blob_push_rx_stats(rx, &st);
    ck_assert_uint_eq(st.completed, 1);
    ck_assert_uint_eq(st.in_progress, 2);
    ck_assert_uint_ge(st.refused, 8);
    spes_blob_push_rx_close(rx); /* unfinished pushes go with it */
    ck_assert_int_eq(push_files(dir), 0);
    spes_manifest_fini(&m);
    spes_manifest_fini(&m2);
    spes_manifest_fini(&m3);
    free(blob);
    free(back);
    free(lie);
    spes_blob_store_close(a);
    teardown_pki();
}
END_TEST

START_TEST(test_push_roundtrip)
{
    /* over mutual TLS: node-b pushes a blob it cannot serve to node-a's endpoint, which then
     * serves it to node-f; a second push sends nothing; an endpoint without a receiver refuses */
    setup_pki();
    signal(SIGPIPE, SIG_IGN);
    spes_net_tls *ta = tls_for("node-a"), *tb = tls_for("node-b"), *tf = tls_for("node-f");
    spes_blob_store *a = store_at("a", 0), *b = store_at("b", 64u << 10), *f = store_at("f", 0);
    char src[400];
    snprintf(src, sizeof src, "%s/contrib", tmp);
    gen_file(src, (5u << 20) + 12345, 9);
    uint8_t h[32];
    ck_assert(spes_blob_put_file(b, src, h) == 0);
    spes_blob_push_rx *rx = NULL;
    ck_assert(spes_blob_push_rx_open(&rx, a, 4) == 0);
    spes_blob_push_rx_limit(rx, 8u << 20);
    spes_net_server *srv = NULL;
    spes_net_server_opts so = {.url = plain ? "tcp://127.0.0.1:0" : "tls+tcp://127.0.0.1:0",
                               .tls = ta,
                               .plain = plain,
                               .handler = control_echo};
    ck_assert_msg(spes_blob_endpoint_open(&srv, a, rx, &so) == 0, "%s", spes_errmsg());
    char url[64];
    url_of(spes_net_server_port(srv), url, sizeof url);
    spes_blob_peer to = {url, "node-a"};
    spes_blob_push_opts po = {.tls = tb, .plain = plain, .timeout_ms = 10000};
    spes_blob_push_result r;
    ck_assert_msg(spes_blob_push(b, h, &to, &po, &r) == 0, "push: %s", spes_errmsg());
    ck_assert(!r.held);
    ck_assert_uint_eq(r.bytes, (5u << 20) + 12345);
    char got[4096];
    blob_file(a, h, got, sizeof got);
    ck_assert(same_file(src, got));
    spes_manifest mb, ma;
    ck_assert(spes_blob_manifest_get(b, h, &mb) == 0 && spes_blob_manifest_get(a, h, &ma) == 0);
    ck_assert_uint_eq(ma.chunk_size, 64u << 10); /* the pusher's manifest, so its hash pins the blob */
    uint8_t mha[32], mhb[32];
    ck_assert(spes_manifest_hash(&ma, mha) == 0 && spes_manifest_hash(&mb, mhb) == 0);
    ck_assert(memcmp(mha, mhb, 32) == 0);
    spes_blob_fetch_opts fo = {.tls = tf, .plain = plain, .manifest_hash = mhb};
    ck_assert_msg(spes_blob_fetch(f, h, &to, 1, &fo, NULL) == 0, "fetch after push: %s", spes_errmsg());
    blob_file(f, h, got, sizeof got);
    ck_assert(same_file(src, got));
    ck_assert_msg(spes_blob_push(b, h, &to, &po, &r) == 0 && r.held && r.bytes == 0, "second push");
    spes_net_server_close(srv);
    /* an endpoint that takes no pushes says so */
    ck_assert_msg(spes_blob_endpoint_open(&srv, f, NULL, &so) == 0, "%s", spes_errmsg());
    url_of(spes_net_server_port(srv), url, sizeof url);
    spes_blob_peer to_f = {url, NULL};
    ck_assert(spes_blob_push(b, h, &to_f, &po, &r) != 0);
    ck_assert_msg(strstr(spes_errmsg(), "takes no pushed blobs"), "%s", spes_errmsg());
    spes_net_server_close(srv);
    spes_manifest_fini(&ma);
    spes_manifest_fini(&mb);
    spes_blob_push_rx_close(rx);
    spes_blob_store_close(a);
    spes_blob_store_close(b);
    spes_blob_store_close(f);
    spes_net_tls_free(ta);
    spes_net_tls_free(tb);
    spes_net_tls_free(tf);
    teardown_pki();
}
END_TEST

START_TEST(test_endpoint_request_limit_fits_requests)
{
    /* every message a daemon's endpoint answers fits its request limit */
    static const int requests[] = {
        SPES_MSG_JOIN,      SPES_MSG_HEARTBEAT,      SPES_MSG_LEAVE,           SPES_MSG_ANNOUNCE,
        SPES_MSG_DIGEST,    SPES_MSG_STATUS_REQUEST, SPES_MSG_MEMBERS_REQUEST, SPES_MSG_CHECKPOINT_REQUEST,
        SPES_MSG_BLOB_WANT, SPES_MSG_CHUNK_REQUEST,  SPES_MSG_BLOB_PUSH,       SPES_MSG_BLOB_PIECE};
    for (size_t i = 0; i < sizeof requests / sizeof *requests; i++)
        ck_assert_uint_le(SPES_PROTO_HEADER_LEN + spes_proto_type_limit(requests[i]), SPES_BLOB_MAX_REQUEST);
}
END_TEST

static Suite *blob_suite(void)
{
    Suite *s = suite_create("blob");
    TCase *tc = tcase_create("store");
    tcase_add_test(tc, test_store_put_read_delete);
    tcase_add_test(tc, test_store_gc);
    tcase_add_test(tc, test_handle);
    tcase_add_test(tc, test_endpoint_request_limit_fits_requests);
    tcase_add_test(tc, test_push_receive);
    suite_add_tcase(s, tc);
    tc = tcase_create("fetch");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_fetch_roundtrip);
    tcase_add_test(tc, test_fetch_counted);
    tcase_add_test(tc, test_fetch_lying_manifest);
    tcase_add_test(tc, test_fetch_lone_corrupt_peer);
    tcase_add_test(tc, test_fetch_unreachable_peer);
    tcase_add_test(tc, test_fetch_resume);
    tcase_add_test(tc, test_fetch_oversize_cut_off);
    tcase_add_test(tc, test_endpoint_slow_reader);
    tcase_add_test(tc, test_endpoint_request_size);
    tcase_add_test(tc, test_push_roundtrip);
    suite_add_tcase(s, tc);
    /* its own case: ctest runs it over plain tcp until the nng_close hang after a
     * TLS peer dies mid-transfer is understood (see README, "Not done yet") */
    tc = tcase_create("peers");
    tcase_set_tags(tc, "peers");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_fetch_three_peers_kill_corrupt);
    tcase_add_test(tc, test_fetch_peer_dies_after_connecting);
    suite_add_tcase(s, tc);
    tc = tcase_create("refused"); /* its own ctest, for the leak suppression it needs */
    tcase_set_tags(tc, "refused");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fetch_imposter);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(blob_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
