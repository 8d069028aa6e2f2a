/* fetch.c: gets a blob from several peers at once. The manifest is asked of
 * every peer; the first one naming the wanted blob (and, if given, hashing to
 * the expected manifest hash) becomes the reference, and every peer offering
 * the same manifest serves chunks, `window` requests in flight each (a lone
 * peer is reached over two connections, each a "peer" here). Chunks
 * are verified and written at their offsets into H.part on the nng thread that
 * received them (so nothing is buffered beyond the replies in flight), which
 * also feeds a chunk that comes in order straight into the whole-blob hash; the
 * fetching thread does all bookkeeping: which chunk is where, the bitmap file
 * H.part.map, dropping a peer that served a bad chunk or kept failing, and
 * giving its chunks to others. The finished file is hashed as a whole before
 * it is named H. This file never writes an unverified byte into H.part, never
 * lets a peer's reply size an allocation, and never blocks an nng callback on
 * the fetching thread. */
#include "blob/blob_internal.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/log.h"
#include "proto/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { C_TODO, C_INFLIGHT, C_DONE };
enum { P_WAIT, P_LIVE, P_OUT };
enum { K_MANIFEST, K_CHUNK };
enum { RES_OK, RES_NET, RES_BAD, RES_REFUSED, RES_IO };

typedef struct fetch fetch;

/* fslot is one request slot of a peer (the fetching thread fills it before sending). */
typedef struct fslot {
    int busy, kind;
    uint32_t index;
} fslot;

typedef struct fpeer {
    fetch *f;
    int idx;
    const char *url;
    spes__blob_conn *c;
    fslot *slots; /* (window) */
    int state;
    int inflight;
    int errors; /* transport failures in a row */
    char why[200];
} fpeer;

/* fdone is one finished request, queued by an nng thread for the fetching thread. */
typedef struct fdone {
    int kind, peer, slot, res;
    uint32_t index;
    uint8_t *buf; /* manifest replies only */
    size_t len;
    char why[200];
} fdone;

struct fetch {
    spes_blob_store *s;
    uint8_t hash[32];
    char hex[65];
    const spes_blob_fetch_opts *o;
    int window, timeout_ms, max_errors, connect_ms;
    spes_manifest m; /* the reference manifest, read-only once have_m */
    int have_m, other_manifest;
    uint8_t mhash[32];
    char part[4096], map_path[4096], pman[4096];
    int fd, mapfd;
    uint8_t *cstate; /* (chunk_count) C_* */
    uint8_t *map;    /* (ceil(chunk_count / 8)) */
    uint32_t ndone, scan;
    uint64_t bytes_done;
    fpeer *peers;
    int npeers;
    pthread_mutex_t mu; /* guards q*, outstanding */
    pthread_cond_t cv;
    int outstanding;
    fdone *q;
    int qcap, qhead, qn;
    int io_err;
    int closing;           /* tearing down: late manifests are ignored */
    pthread_mutex_t wmu;   /* guards whole, whole_on, hashed (nng threads feed in-order chunks) */
    spes_sha256_ctx whole; /* over chunks [0, hashed): fed as they arrive, or read back from H.part */
    int whole_on;
    uint32_t hashed;
    uint32_t read_back; /* chunks hashed from H.part, not on arrival */
    uint8_t *hbuf;      /* (chunk_size) read-back buffer */
    spes_blob_fetch_stats st;
};

/* ---- nng side ---- */

static void push(fetch *f, const fdone *d)
{
    pthread_mutex_lock(&f->mu);
    f->q[(f->qhead + f->qn) % f->qcap] = *d;
    f->qn++;
    f->outstanding--;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* refusal_text extracts the message of an Error envelope a peer answered with. */
static void refusal_text(const void *rep, size_t len, char *why, size_t n)
{
    int type = 0;
    ProtobufCMessage *msg = NULL;
    if (spes_proto_decode(rep, len, &type, &msg) == 0 && type == SPES_MSG_ERROR)
        snprintf(why, n, "refused: %s", ((Spes__Wire__Error *)msg)->message);
    else
        snprintf(why, n, "answered with an envelope that is not a blob reply");
    spes_proto_free(msg);
}

static int chunk_accept(fetch *f, uint32_t index, const uint8_t *rep, size_t len, char *why, size_t n)
{
    spes_chunk_header h;
    const uint8_t *data;
    if (len >= 4 && memcmp(rep, SPES_PROTO_MAGIC, 4) == 0) {
        refusal_text(rep, len, why, n);
        return RES_REFUSED;
    }
    if (spes_chunk_decode(rep, len, &h, &data) != 0 || spes_chunk_matches_manifest(&h, &f->m) != 0) {
        snprintf(why, n, "bad chunk %u: %s", index, spes_errmsg());
        return RES_BAD;
    }
    if (h.index != index) {
        snprintf(why, n, "sent chunk %u when asked for chunk %u", h.index, index);
        return RES_BAD;
    }
    if (spes__blob_pwrite_full(f->fd, data, h.length, h.offset, f->part) != 0) {
        snprintf(why, n, "%s", spes_errmsg());
        return RES_IO;
    }
    /* start its writeback now: the fsync before the rename then finds little
     * left to write (it took ~12 % of a 256 MiB fetch) */
    (void)sync_file_range(f->fd, (off_t)h.offset, (off_t)h.length, SYNC_FILE_RANGE_WRITE);
    /* the next chunk of the whole-blob hash: hash it from memory instead of
     * reading it back later (never wait: the fetching thread may be hashing) */
    if (pthread_mutex_trylock(&f->wmu) == 0) {
        if (f->whole_on && f->hashed == index) {
            spes_sha256_update(&f->whole, data, h.length);
            f->hashed++;
        }
        pthread_mutex_unlock(&f->wmu);
    }
    return RES_OK;
}

static void reply_cb(void *arg, int slot, int err, const void *rep, size_t len)
{
    fpeer *p = arg;
    fetch *f = p->f;
    fdone d = {.kind = p->slots[slot].kind,
               .peer = p->idx,
               .slot = slot,
               .index = p->slots[slot].index,
               .res = RES_OK};
    if (err) {
        d.res = RES_NET;
        snprintf(d.why, sizeof d.why, "%s", spes_errmsg());
    } else if (d.kind == K_CHUNK) {
        d.res = chunk_accept(f, d.index, rep, len, d.why, sizeof d.why);
    } else if ((d.buf = malloc(len ? len : 1)) != NULL) {
        memcpy(d.buf, rep, len);
        d.len = len;
    } else {
        d.res = RES_NET;
        snprintf(d.why, sizeof d.why, "out of memory for the manifest");
    }
    push(f, &d);
}

/* ---- requests ---- */

static int send_req(fetch *f, int peer, int kind, uint32_t index)
{
    uint8_t *req = NULL;
    size_t len = 0;
    int rc;
    if (kind == K_MANIFEST) {
        Spes__Wire__BlobWant w = SPES__WIRE__BLOB_WANT__INIT;
        w.blob_hash.data = f->hash;
        w.blob_hash.len = 32;
        w.want_manifest = 1;
        rc = spes_proto_encode(SPES_MSG_BLOB_WANT, &w.base, &req, &len);
    } else {
        Spes__Wire__ChunkRequest c = SPES__WIRE__CHUNK_REQUEST__INIT;
        c.blob_hash.data = f->hash;
        c.blob_hash.len = 32;
        c.first_chunk = index;
        c.chunk_count = 1;
        rc = spes_proto_encode(SPES_MSG_CHUNK_REQUEST, &c.base, &req, &len);
    }
    fpeer *p = &f->peers[peer];
    int sl = 0;
    while (sl < f->window && p->slots[sl].busy)
        sl++;
    if (rc || sl == f->window) {
        free(req);
        return rc ? rc : spes_errf(SPES_ESTATE, "%s: no idle request slot", p->url);
    }
    p->slots[sl] = (fslot){.busy = 1, .kind = kind, .index = index};
    pthread_mutex_lock(&f->mu);
    f->outstanding++;
    pthread_mutex_unlock(&f->mu);
    rc = spes__blob_conn_send(p->c, sl, req, len, f->timeout_ms);
    free(req);
    if (rc) {
        p->slots[sl].busy = 0;
        pthread_mutex_lock(&f->mu);
        f->outstanding--;
        pthread_mutex_unlock(&f->mu);
    }
    return rc;
}

static void drop_peer(fetch *f, int i, const char *why)
{
    fpeer *p = &f->peers[i];
    if (p->state == P_OUT)
        return;
    if (p->state == P_LIVE)
        f->st.peers_dropped++;
    p->state = P_OUT;
    snprintf(p->why, sizeof p->why, "%s", why);
    log_warnx("blob %.16s: peer %s dropped: %s", f->hex, p->url, why);
    /* its connection stays open until the fetch ends: its requests in flight come
     * back by reply or timeout, and their chunks go to other peers */
}

static int next_todo(fetch *f, uint32_t *index)
{
    for (uint32_t i = f->scan; i < f->m.chunk_count; i++)
        if (f->cstate[i] == C_TODO) {
            f->scan = i + 1;
            *index = i;
            return 1;
        }
    f->scan = f->m.chunk_count;
    return 0;
}

/* assign hands out chunks round-robin, at most `window` in flight per peer. */
static void assign(fetch *f)
{
    for (int more = 1; more;) {
        more = 0;
        for (int i = 0; i < f->npeers; i++) {
            fpeer *p = &f->peers[i];
            uint32_t idx;
            if (p->state != P_LIVE || p->inflight >= f->window)
                continue;
            if (!next_todo(f, &idx))
                return;
            if (send_req(f, i, K_CHUNK, idx) != 0) {
                f->cstate[idx] = C_TODO;
                f->scan = idx < f->scan ? idx : f->scan;
                drop_peer(f, i, spes_errmsg());
                continue;
            }
            f->cstate[idx] = C_INFLIGHT;
            p->inflight++;
            f->st.chunk_requests++;
            more = 1;
        }
    }
}

/* ---- partial state on disk ---- */

static void discard_partial(fetch *f)
{
    unlink(f->part);
    unlink(f->map_path);
    unlink(f->pman);
}

static void map_set(fetch *f, uint32_t i, int on)
{
    if (on)
        f->map[i / 8] |= (uint8_t)(1u << (i % 8));
    else
        f->map[i / 8] &= (uint8_t) ~(1u << (i % 8));
    if (spes__blob_pwrite_full(f->mapfd, &f->map[i / 8], 1, i / 8, f->map_path) != 0)
        log_warnx("%s", spes_errmsg()); /* only costs a re-fetch after a crash */
}

/* whole_start allocates the read-back buffer and starts the whole-blob hash. */
static int whole_start(fetch *f)
{
    if (f->whole_on)
        return 0;
    if ((!f->hbuf && !(f->hbuf = malloc(f->m.chunk_size ? f->m.chunk_size : 1))) ||
        spes_sha256_init(&f->whole) != 0)
        return SPES_ENOMEM;
    f->whole_on = 1;
    return 0;
}

/* resume_verify re-hashes the chunks the bitmap says are written: the bitmap
 * is written without fsync, so it is a hint that a crash may have made wrong.
 * The verified prefix also goes into the whole-blob hash, so it is read once. */
static int resume_verify(fetch *f)
{
    int rc = whole_start(f);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < f->m.chunk_count; i++) {
        if (!(f->map[i / 8] & (1u << (i % 8))))
            continue;
        spes_chunk_header h;
        uint8_t d[32];
        if (spes_chunk_header_for(&f->m, i, &h) != 0 ||
            spes__blob_pread_full(f->fd, f->hbuf, h.length, h.offset, f->part) != 0 ||
            spes_sha256(f->hbuf, h.length, d) != 0 || memcmp(d, h.chunk_hash, 32) != 0) {
            map_set(f, i, 0);
            continue;
        }
        if (i == f->hashed) {
            spes_sha256_update(&f->whole, f->hbuf, h.length);
            f->hashed++;
        }
        f->cstate[i] = C_DONE;
        f->ndone++;
        f->bytes_done += h.length;
    }
    f->st.chunks_resumed = f->ndone;
    return 0;
}

static int open_part_files(fetch *f)
{
    size_t mapn = (f->m.chunk_count + 7) / 8;
    struct stat st;
    if ((f->fd = open(f->part, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0 ||
        (f->mapfd = open(f->map_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot open partial blob", f->part);
    if (flock(f->mapfd, LOCK_EX | LOCK_NB) != 0)
        return spes_errf(SPES_EEXIST, "blob %s: another fetch of it is running in this store", f->hex);
    if (fstat(f->fd, &st) != 0 ||
        ((uint64_t)st.st_size != f->m.total_size && ftruncate(f->fd, (off_t)f->m.total_size) != 0))
        return spes_errf_errno(SPES_EIO, "%s: cannot size to %llu bytes", f->part,
                               (unsigned long long)f->m.total_size);
    if (!(f->map = calloc(mapn ? mapn : 1, 1)) || !(f->cstate = calloc(f->m.chunk_count + 1, 1)))
        return SPES_ENOMEM;
    if (fstat(f->mapfd, &st) == 0 && (uint64_t)st.st_size == mapn)
        return spes__blob_pread_full(f->mapfd, f->map, mapn, 0, f->map_path);
    if (ftruncate(f->mapfd, 0) != 0 || ftruncate(f->mapfd, (off_t)mapn) != 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot reset", f->map_path);
    return 0;
}

/* adopt makes m (owned by f afterwards) the reference manifest and opens the
 * partial state that follows it. */
static int adopt(fetch *f, spes_manifest *m, int stored)
{
    f->m = *m;
    memset(m, 0, sizeof *m);
    f->have_m = 1;
    int rc = spes_manifest_hash(&f->m, f->mhash);
    if (!rc && !stored) {
        uint8_t *enc = NULL;
        size_t len = 0;
        discard_partial(f); /* any old partial state followed another manifest */
        if ((rc = spes_manifest_encode(&f->m, &enc, &len)) == 0)
            rc = spes_write_file_atomic(f->pman, enc, len);
        free(enc);
    }
    if (!rc)
        rc = open_part_files(f);
    if (!rc)
        rc = resume_verify(f);
    return rc;
}

static int manifest_acceptable(fetch *f, const spes_manifest *m, char *why, size_t n)
{
    uint8_t mh[32];
    if (memcmp(m->blob_hash, f->hash, 32) != 0) {
        snprintf(why, n, "offered the manifest of another blob");
        return 0;
    }
    if (f->o->max_size && m->total_size > f->o->max_size) {
        snprintf(why, n, "offered a manifest of %llu bytes, more than the %llu expected",
                 (unsigned long long)m->total_size, (unsigned long long)f->o->max_size);
        return 0;
    }
    if (f->s->max_bytes && m->total_size > f->s->max_bytes) {
        snprintf(why, n, "offered a manifest of %llu bytes, more than the store's quota of %llu",
                 (unsigned long long)m->total_size, (unsigned long long)f->s->max_bytes);
        return 0;
    }
    if (spes_manifest_hash(m, mh) != 0 || (f->o->manifest_hash && memcmp(mh, f->o->manifest_hash, 32) != 0)) {
        snprintf(why, n, "offered a manifest whose hash is not the announced one");
        return 0;
    }
    if (f->have_m && memcmp(mh, f->mhash, 32) != 0) {
        f->other_manifest = 1;
        snprintf(why, n, "offered a manifest that differs from the one this fetch follows");
        return 0;
    }
    return 1;
}

/* load_stored adopts the manifest of an earlier interrupted fetch, if usable. */
static int load_stored(fetch *f)
{
    char *buf = NULL, why[200];
    size_t len = 0;
    spes_manifest m;
    if (spes_read_file(f->pman, SPES_MANIFEST_HEADER_LEN + 32u * SPES_MANIFEST_MAX_CHUNKS, &buf, &len) != 0)
        return 0;
    int ok = spes_manifest_decode((uint8_t *)buf, len, &m) == 0;
    free(buf);
    if (ok && !manifest_acceptable(f, &m, why, sizeof why)) {
        spes_manifest_fini(&m);
        ok = 0;
    }
    if (!ok) {
        log_warnx("%s: unusable, starting the fetch afresh", f->pman);
        discard_partial(f);
        return 0;
    }
    return adopt(f, &m, 1);
}

/* ---- completions (fetching thread) ---- */

static int on_manifest(fetch *f, fdone *d)
{
    fpeer *p = &f->peers[d->peer];
    spes_manifest m;
    char why[200];
    if (f->closing)
        return 0;
    if (d->res != RES_OK) {
        drop_peer(f, d->peer, d->why);
        return 0;
    }
    if (d->len >= 4 && memcmp(d->buf, SPES_PROTO_MAGIC, 4) == 0) {
        refusal_text(d->buf, d->len, why, sizeof why);
        drop_peer(f, d->peer, why);
        return 0;
    }
    if (spes_manifest_decode(d->buf, d->len, &m) != 0) {
        snprintf(why, sizeof why, "bad manifest: %s", spes_errmsg());
        drop_peer(f, d->peer, why);
        return 0;
    }
    if (!manifest_acceptable(f, &m, why, sizeof why)) {
        spes_manifest_fini(&m);
        drop_peer(f, d->peer, why);
        return 0;
    }
    p->state = P_LIVE;
    f->st.peers_used++;
    if (f->have_m) {
        spes_manifest_fini(&m);
        return 0;
    }
    int rc = adopt(f, &m, 0);
    spes_manifest_fini(&m);
    return rc;
}

static void on_chunk(fetch *f, fdone *d)
{
    fpeer *p = &f->peers[d->peer];
    uint32_t i = d->index;
    p->inflight--;
    if (d->res == RES_OK && f->cstate[i] == C_INFLIGHT) {
        spes_chunk_header h;
        spes_chunk_header_for(&f->m, i, &h);
        f->cstate[i] = C_DONE;
        f->ndone++;
        f->bytes_done += h.length;
        f->st.chunks_fetched++;
        p->errors = 0;
        map_set(f, i, 1);
        return;
    }
    if (f->cstate[i] == C_INFLIGHT) {
        f->cstate[i] = C_TODO;
        f->scan = i < f->scan ? i : f->scan;
    }
    if (d->res == RES_IO) {
        f->io_err = spes_errf(SPES_EIO, "%s", d->why);
    } else if (d->res == RES_BAD || d->res == RES_REFUSED) {
        f->st.bad_chunks += d->res == RES_BAD;
        drop_peer(f, d->peer, d->why);
    } else if (d->res == RES_NET && p->state == P_LIVE) {
        f->st.transport_errors++;
        if (++p->errors >= f->max_errors)
            drop_peer(f, d->peer, d->why);
    }
}

/* drain waits up to wait_ms for completions and handles all that are queued. */
static int drain(fetch *f, int wait_ms)
{
    fdone batch[64];
    int n = 0, rc = 0;
    pthread_mutex_lock(&f->mu);
    if (f->qn == 0 && wait_ms > 0) {
        struct timespec ts;
        spes_mono_deadline(&ts, wait_ms);
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    }
    while (f->qn > 0 && n < 64) {
        batch[n++] = f->q[f->qhead];
        f->qhead = (f->qhead + 1) % f->qcap;
        f->qn--;
    }
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < n; i++) {
        f->peers[batch[i].peer].slots[batch[i].slot].busy = 0;
        if (batch[i].kind == K_MANIFEST) {
            int r = on_manifest(f, &batch[i]);
            rc = rc ? rc : r;
        } else if (f->have_m) {
            on_chunk(f, &batch[i]);
        }
        free(batch[i].buf);
    }
    return rc;
}

static int count_peers(const fetch *f, int state)
{
    int n = 0;
    for (int i = 0; i < f->npeers; i++)
        n += f->peers[i].state == state;
    return n;
}

static void report(fetch *f)
{
    if (!f->o->progress || !f->have_m)
        return;
    spes_blob_progress p = {.chunk_count = f->m.chunk_count,
                            .chunks_done = f->ndone,
                            .bytes_done = f->bytes_done,
                            .total_size = f->m.total_size,
                            .peers_live = count_peers(f, P_LIVE)};
    f->o->progress(f->o->progress_arg, &p);
}

static int no_peer_error(fetch *f)
{
    char why[600] = "";
    size_t o = 0;
    for (int i = 0; i < f->npeers && o < sizeof why; i++) {
        if (i && !strcmp(f->peers[i].url, f->peers[i - 1].url))
            continue; /* the second connection to the same peer: its first reason says it */
        o += (size_t)snprintf(why + o, sizeof why - o, "%s%s: %s", o ? "; " : "", f->peers[i].url,
                              f->peers[i].why);
    }
    if (!f->have_m)
        return spes_errf(SPES_ENOENT, "blob %s: no peer offered it (%s)", f->hex, why);
    return spes_errf(SPES_ENET, "blob %s: %u of %u chunks missing and no peer left (%s)", f->hex,
                     f->m.chunk_count - f->ndone, f->m.chunk_count, why);
}

static int hash_ahead(fetch *f, uint32_t max);

/* unreachable drops every peer without a connection for connect_ms, whether
 * it never came up or went away (a peer killed or off the network: nng would
 * redial it until each request's timeout, 30 s and more), and closes its
 * connection: with no pipe, nothing can be stranded, and its requests come
 * back at once. */
static void unreachable(fetch *f)
{
    for (int i = 0; i < f->npeers; i++) {
        fpeer *p = &f->peers[i];
        if ((p->state != P_WAIT && p->state != P_LIVE) || !p->c)
            continue;
        int ever = 0;
        uint64_t down = spes__blob_conn_down_ms(p->c, &ever);
        if (down < (uint64_t)f->connect_ms)
            continue;
        char why[80];
        if (ever)
            snprintf(why, sizeof why, "connection lost for %llu ms", (unsigned long long)down);
        else
            snprintf(why, sizeof why, "no connection within %d ms", f->connect_ms);
        drop_peer(f, i, why);
        spes__blob_conn_close(p->c);
        p->c = NULL;
    }
}

/* run drives the fetch until every chunk is written, or it cannot go on. */
static int run(fetch *f)
{
    for (;;) {
        unreachable(f);
        if (f->o->cancel && atomic_load(f->o->cancel))
            return spes_errf(SPES_EINTR, "blob %s: fetch cancelled after %u chunks", f->hex, f->ndone);
        if (f->io_err)
            return f->io_err;
        if (f->have_m && f->ndone == f->m.chunk_count)
            return 0;
        if (f->have_m)
            assign(f);
        pthread_mutex_lock(&f->mu);
        int idle = f->outstanding == 0 && f->qn == 0;
        pthread_mutex_unlock(&f->mu);
        if (idle && count_peers(f, P_LIVE) == 0)
            return no_peer_error(f);
        int rc = drain(f, 50);
        if (!rc && f->have_m)
            rc = hash_ahead(f, 2);
        if (rc)
            return rc;
        report(f);
    }
}

/* ---- finish ---- */

/* hash_ahead feeds up to max more chunks of the finished prefix of H.part
 * that no nng thread hashed on arrival (they came out of order), read back
 * from the file, into the whole-blob hash: the check of the whole file runs
 * while later chunks are still in flight instead of after them. */
static int hash_ahead(fetch *f, uint32_t max)
{
    int rc = 0;
    pthread_mutex_lock(&f->wmu);
    rc = whole_start(f);
    for (uint32_t k = 0; !rc && k < max && f->hashed < f->m.chunk_count && f->cstate[f->hashed] == C_DONE;
         k++) {
        spes_chunk_header h;
        rc = spes_chunk_header_for(&f->m, f->hashed, &h);
        if (!rc)
            rc = spes__blob_pread_full(f->fd, f->hbuf, h.length, h.offset, f->part);
        if (rc)
            break;
        spes_sha256_update(&f->whole, f->hbuf, h.length);
        f->hashed++;
        f->read_back++;
    }
    pthread_mutex_unlock(&f->wmu);
    return rc;
}

static int finish(fetch *f)
{
    uint8_t whole[32];
    double t0 = spes_mono_s();
    if (fdatasync(f->fd) != 0)
        return spes_errf_errno(SPES_EIO, "%s: fsync failed", f->part);
    double t1 = spes_mono_s();
    int rc = hash_ahead(f, UINT32_MAX);
    if (!rc) {
        pthread_mutex_lock(&f->wmu);
        spes_sha256_final(&f->whole, whole);
        f->whole_on = 0;
        pthread_mutex_unlock(&f->wmu);
    }
    log_debug(
        "blob %.16s: fsync %.3f s, rest of the whole-blob hash %.3f s, %u of %u chunks read back to hash",
        f->hex, t1 - t0, spes_mono_s() - t1, f->read_back, f->m.chunk_count);
    if (rc)
        return rc;
    if (memcmp(whole, f->hash, 32) != 0) {
        discard_partial(f);
        return spes_errf(
            SPES_EFORMAT,
            "blob %s: every chunk matched the peers' manifest but the whole does not hash to the "
            "blob's name: the manifest was false; partial fetch discarded",
            f->hex);
    }
    if ((rc = spes__blob_install(f->s, f->part, &f->m)) != 0)
        return rc;
    unlink(f->map_path);
    unlink(f->pman);
    return 0;
}

/* ---- set-up and tear-down ---- */

static int fetch_init(fetch *f, spes_blob_store *s, const uint8_t hash[32], const spes_blob_peer *peers,
                      int npeers, const spes_blob_fetch_opts *o)
{
    memset(f, 0, sizeof *f);
    f->s = s;
    f->o = o;
    f->fd = f->mapfd = -1;
    memcpy(f->hash, hash, 32);
    spes__blob_hex(hash, f->hex);
    if (o->window > 0) { /* a server closes a connection with more in flight */
        f->window = o->window < SPES_NET_MAX_INFLIGHT ? o->window : SPES_NET_MAX_INFLIGHT;
    } else { /* 16 requests in flight in all, at least 2 per peer */
        f->window = npeers > 0 ? SPES_BLOB_WINDOW_TOTAL / npeers : SPES_BLOB_WINDOW_TOTAL;
        f->window = f->window < 2 ? 2 : f->window;
    }
    f->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 30000;
    f->max_errors = o->max_peer_errors > 0 ? o->max_peer_errors : 2;
    f->connect_ms = o->connect_ms > 0 ? o->connect_ms : 10000;
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->wmu, NULL);
    spes_cond_init_mono(&f->cv);
    int rc;
    if ((rc = spes__blob_file(s, hash, ".part", f->part, sizeof f->part)) != 0 ||
        (rc = spes__blob_file(s, hash, ".part.map", f->map_path, sizeof f->map_path)) != 0 ||
        (rc = spes__blob_file(s, hash, ".part.manifest", f->pman, sizeof f->pman)) != 0)
        return rc;
    f->npeers = npeers;
    f->qcap = npeers * (f->window + 1);
    if (!(f->peers = calloc((size_t)npeers, sizeof *f->peers)) ||
        !(f->q = calloc((size_t)f->qcap, sizeof *f->q)))
        return SPES_ENOMEM;
    for (int i = 0; i < npeers; i++) {
        if (!(f->peers[i].slots = calloc((size_t)f->window, sizeof *f->peers[i].slots)))
            return SPES_ENOMEM;
        f->peers[i].f = f;
        f->peers[i].idx = i;
        f->peers[i].url = peers[i].url;
        f->peers[i].state = P_OUT;
        snprintf(f->peers[i].why, sizeof f->peers[i].why, "not reached");
    }
    return 0;
}

/* open_peers dials every peer and asks each for the manifest. */
static void open_peers(fetch *f, const spes_blob_peer *peers)
{
    for (int i = 0; i < f->npeers; i++) {
        fpeer *p = &f->peers[i];
        /* the largest reply is one chunk of the largest size (a manifest is smaller),
         * so a peer cannot make us hold more than that per request in flight */
        size_t max_msg = SPES_CHUNK_HEADER_LEN + (size_t)SPES_CHUNK_SIZE_MAX;
        if (spes__blob_conn_open(&p->c, peers[i].url, peers[i].name, f->o->tls, f->o->plain, f->window,
                                 max_msg, reply_cb, p) != 0 ||
            send_req(f, i, K_MANIFEST, 0) != 0) {
            snprintf(p->why, sizeof p->why, "%s", spes_errmsg());
            log_warnx("blob %.16s: peer %s: %s", f->hex, p->url, p->why);
            spes__blob_conn_close(p->c);
            p->c = NULL;
            continue;
        }
        p->state = P_WAIT;
    }
}

/* fetch_fini closes the peers that never connected, waits for the other
 * requests in flight to come back (by reply or timeout; chunks that arrive
 * meanwhile are still recorded), closes every peer and frees everything. */
static void fetch_fini(fetch *f)
{
    f->closing = 1;
    for (int i = 0; f->peers && i < f->npeers; i++) {
        f->peers[i].state = P_OUT;
        if (f->peers[i].c && !spes__blob_conn_connected(f->peers[i].c)) {
            /* none up now, so nothing to strand: its requests come back at once, not at their timeout */
            spes__blob_conn_close(f->peers[i].c);
            f->peers[i].c = NULL;
        }
    }
    for (;;) {
        pthread_mutex_lock(&f->mu);
        int busy = f->outstanding > 0 || f->qn > 0;
        pthread_mutex_unlock(&f->mu);
        if (!busy)
            break;
        if (drain(f, 50) != 0)
            log_warnx("%s", spes_errmsg());
    }
    for (int i = 0; f->peers && i < f->npeers; i++) {
        spes__blob_conn_close(f->peers[i].c);
        free(f->peers[i].slots);
    }
    if (f->fd >= 0)
        close(f->fd);
    if (f->mapfd >= 0)
        close(f->mapfd); /* releases the flock */
    if (f->whole_on) {
        uint8_t unused[32];
        spes_sha256_final(&f->whole, unused);
    }
    free(f->hbuf);
    spes_manifest_fini(&f->m);
    free(f->cstate);
    free(f->map);
    free(f->peers);
    free(f->q);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->wmu);
}

int spes_blob_fetch(spes_blob_store *s, const uint8_t hash[32], const spes_blob_peer *peers, int npeers,
                    const spes_blob_fetch_opts *o, spes_blob_fetch_stats *st)
{
    spes_blob_fetch_opts def = {0};
    fetch f;
    if (!o)
        o = &def;
    if (st)
        memset(st, 0, sizeof *st);
    if (spes_blob_has(s, hash))
        return 0;
    if (npeers <= 0)
        return spes_errf(SPES_EINVAL, "blob fetch: no peers given");
    /* one peer, default window: two connections to it, so that its TLS
     * encryption and ours run on two streams in parallel, not one */
    spes_blob_peer lanes[2];
    int nlanes = 1;
    if (npeers == 1 && o->window <= 0) {
        lanes[0] = lanes[1] = peers[0];
        peers = lanes;
        npeers = nlanes = 2;
    }
    int rc = fetch_init(&f, s, hash, peers, npeers, o);
    if (!rc)
        rc = load_stored(&f);
    if (!rc) {
        double t0 = spes_mono_s();
        open_peers(&f, peers);
        rc = run(&f);
        log_debug("blob %.16s: %u chunks moved in %.3f s", f.hex, f.st.chunks_fetched, spes_mono_s() - t0);
    }
    if (!rc)
        rc = finish(&f);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", spes_errmsg());
    if (rc && !f.st.peers_used && f.other_manifest)
        discard_partial(&f); /* the stored manifest is one no peer serves: start over next time */
    fetch_fini(&f);
    if (nlanes > 1) { /* the stats count peers, not connections: dropped means every lane was */
        f.st.peers_used = f.st.peers_used > 0;
        f.st.peers_dropped = f.st.peers_dropped == nlanes;
    }
    if (st)
        *st = f.st;
    if (rc)
        spes_errf(rc, "%s", msg);
    return rc;
}
