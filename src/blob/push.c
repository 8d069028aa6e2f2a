/* push.c: blobs handed to a daemon by nodes that cannot be dialled (docs/design.md,
 * "Reachability"). A node behind NAT publishes its contribution by pushing it to a daemon
 * it can dial, which then serves it like any blob it holds.
 *
 * Receiving: one push at a time per certificate name (a new BlobPush replaces that name's
 * unfinished one), at most max_pushers names at once (an idle one is evicted for a new
 * name), each at most the size the daemon allows (its largest contribution; nothing before
 * it knows the run's model). A push's bytes go to a file .push-XXXXXX in the store at their
 * offsets; once every piece is in, the file is checked against the pushed manifest (every
 * chunk hash and the whole-blob hash) outside the lock and only then named H. So a pusher
 * costs the receiver one contribution of disk, a bitmap and a slot, and can never make it
 * serve bytes that do not match their name.
 *
 * Sending: spes_blob_push reads the blob from the local store and sends it with `window`
 * pieces in flight over one connection (conn.c), waiting for the receiver's "complete". */
#include "blob/blob_internal.h"

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "pki/pki.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PUSH_IDLE_MS 120000 /* an unfinished push this idle may be evicted for another name */

typedef struct rx_slot {
    int used, finishing;
    char name[SPES_PKI_NAME_MAX + 1];
    spes_manifest m;
    char tmp[4096];
    int fd;
    uint8_t *got; /* bit i: piece i written */
    uint32_t npieces, ngot;
    uint64_t last_ms;
} rx_slot;

struct spes_blob_push_rx {
    spes_blob_store *s;
    pthread_mutex_t mu;
    _Atomic uint64_t max_size;
    int nslots;
    rx_slot *slots;
    spes_blob_push_stats st; /* under mu */
};

static void slot_clear(rx_slot *sl)
{
    if (sl->fd >= 0)
        close(sl->fd);
    if (sl->tmp[0])
        unlink(sl->tmp);
    spes_manifest_fini(&sl->m);
    free(sl->got);
    memset(sl, 0, sizeof *sl);
    sl->fd = -1;
}

/* remove_leftovers deletes the .push- files a killed daemon left behind. */
static void remove_leftovers(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        if (strncmp(de->d_name, ".push-", 6) != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(dp);
}

int spes_blob_push_rx_open(spes_blob_push_rx **out, spes_blob_store *s, int max_pushers)
{
    if (max_pushers <= 0)
        return spes_errf(SPES_EINVAL, "blob push: max_pushers %d must be positive", max_pushers);
    spes_blob_push_rx *rx = calloc(1, sizeof *rx);
    if (!rx || !(rx->slots = calloc((size_t)max_pushers, sizeof *rx->slots))) {
        free(rx);
        return SPES_ENOMEM;
    }
    rx->s = s;
    rx->nslots = max_pushers;
    for (int i = 0; i < max_pushers; i++)
        rx->slots[i].fd = -1;
    pthread_mutex_init(&rx->mu, NULL);
    remove_leftovers(spes_blob_store_dir(s));
    *out = rx;
    return 0;
}

void spes_blob_push_rx_close(spes_blob_push_rx *rx)
{
    if (!rx)
        return;
    for (int i = 0; i < rx->nslots; i++)
        slot_clear(&rx->slots[i]);
    pthread_mutex_destroy(&rx->mu);
    free(rx->slots);
    free(rx);
}

void spes_blob_push_rx_limit(spes_blob_push_rx *rx, uint64_t max_size)
{
    atomic_store(&rx->max_size, max_size);
}

void spes_blob_push_rx_stats(spes_blob_push_rx *rx, spes_blob_push_stats *out)
{
    pthread_mutex_lock(&rx->mu);
    *out = rx->st;
    for (int i = 0; i < rx->nslots; i++)
        out->in_progress += rx->slots[i].used;
    pthread_mutex_unlock(&rx->mu);
}

static int reply_ack(const char *msg, uint8_t **rep, size_t *rep_len)
{
    Spes__Wire__Ack a = SPES__WIRE__ACK__INIT;
    a.message = (char *)msg;
    return spes_proto_encode(SPES_MSG_ACK, &a.base, rep, rep_len);
}

/* refuse_plain sets *rep to an Error with spes_errmsg()'s text and returns rc. */
static int refuse_plain(int rc, int type, uint8_t **rep, size_t *rep_len)
{
    char why[SPES_PROTO_MAX_TEXT];
    snprintf(why, sizeof why, "%s", spes_errmsg());
    if (spes_proto_encode_error(rc, why, type, rep, rep_len) != 0)
        *rep = NULL;
    return rc;
}

/* refuse is refuse_plain that counts the refusal. */
static int refuse(spes_blob_push_rx *rx, int rc, int type, uint8_t **rep, size_t *rep_len)
{
    pthread_mutex_lock(&rx->mu);
    rx->st.refused++;
    pthread_mutex_unlock(&rx->mu);
    return refuse_plain(rc, type, rep, rep_len);
}

static rx_slot *slot_of(spes_blob_push_rx *rx, const char *name)
{
    for (int i = 0; i < rx->nslots; i++)
        if (rx->slots[i].used && !strcmp(rx->slots[i].name, name))
            return &rx->slots[i];
    return NULL;
}

/* slot_for finds name's slot, a free one, or one idle past PUSH_IDLE_MS (under mu). */
static rx_slot *slot_for(spes_blob_push_rx *rx, const char *name, uint64_t now)
{
    rx_slot *sl = slot_of(rx, name), *idle = NULL;
    if (sl)
        return sl->finishing ? NULL : sl;
    for (int i = 0; i < rx->nslots; i++) {
        rx_slot *x = &rx->slots[i];
        if (!x->used)
            return x;
        if (!x->finishing && now - x->last_ms > PUSH_IDLE_MS && (!idle || x->last_ms < idle->last_ms))
            idle = x;
    }
    if (idle) {
        log_info("blob push: %s's unfinished push was idle %llu s; dropped for %s", idle->name,
                 (unsigned long long)((now - idle->last_ms) / 1000), name);
        slot_clear(idle);
    }
    return idle;
}

static int on_push(spes_blob_push_rx *rx, const char *name, const Spes__Wire__BlobPush *p, uint8_t **rep,
                   size_t *rep_len)
{
    spes_manifest m;
    memset(&m, 0, sizeof m);
    uint64_t max = atomic_load(&rx->max_size);
    if (!max)
        return refuse(
            rx, spes_errf(SPES_ESTATE, "this daemon takes no pushed blob before it knows the run's model"),
            SPES_MSG_BLOB_PUSH, rep, rep_len);
    int rc = spes_manifest_decode(p->manifest.data, p->manifest.len, &m);
    if (rc)
        return refuse(rx, rc, SPES_MSG_BLOB_PUSH, rep, rep_len);
    if (m.total_size == 0 || m.total_size > max) {
        rc = spes_errf(SPES_ERANGE, "pushed blob of %llu bytes refused: this daemon takes 1 to %llu",
                       (unsigned long long)m.total_size, (unsigned long long)max);
        spes_manifest_fini(&m);
        return refuse(rx, rc, SPES_MSG_BLOB_PUSH, rep, rep_len);
    }
    if (spes_blob_has(rx->s, m.blob_hash)) {
        spes_manifest_fini(&m);
        return reply_ack("held", rep, rep_len);
    }
    uint64_t now = spes_mono_ms();
    pthread_mutex_lock(&rx->mu);
    rx_slot *sl = slot_for(rx, name, now);
    if (!sl) {
        pthread_mutex_unlock(&rx->mu);
        spes_manifest_fini(&m);
        return refuse(rx,
                      spes_errf(SPES_ESTATE,
                                "%d blob pushes at once here, or this one is being checked; try again",
                                rx->nslots),
                      SPES_MSG_BLOB_PUSH, rep, rep_len);
    }
    if (sl->used && !memcmp(sl->m.blob_hash, m.blob_hash, 32)) { /* the same blob again: keep its pieces */
        sl->last_ms = now;
        pthread_mutex_unlock(&rx->mu);
        spes_manifest_fini(&m);
        return reply_ack("ok", rep, rep_len);
    }
    slot_clear(sl);
    uint32_t npieces = (uint32_t)((m.total_size + SPES_PROTO_PUSH_PIECE - 1) / SPES_PROTO_PUSH_PIECE);
    snprintf(sl->tmp, sizeof sl->tmp, "%s/.push-XXXXXX", spes_blob_store_dir(rx->s));
    if ((sl->fd = mkstemp(sl->tmp)) < 0) {
        rc = spes_errf_errno(SPES_EIO, "%s: cannot create a file for a pushed blob",
                             spes_blob_store_dir(rx->s));
        sl->tmp[0] = '\0';
    } else if (ftruncate(sl->fd, (off_t)m.total_size) != 0) {
        rc = spes_errf_errno(SPES_EIO, "%s: cannot size a pushed blob's file", sl->tmp);
    } else if (!(sl->got = calloc((npieces + 7) / 8, 1))) {
        rc = SPES_ENOMEM;
    }
    if (rc) {
        slot_clear(sl);
        pthread_mutex_unlock(&rx->mu);
        spes_manifest_fini(&m);
        return refuse(rx, rc, SPES_MSG_BLOB_PUSH, rep, rep_len);
    }
    sl->used = 1;
    snprintf(sl->name, sizeof sl->name, "%s", name);
    sl->m = m;
    sl->npieces = npieces;
    sl->last_ms = now;
    rx->st.started++;
    pthread_mutex_unlock(&rx->mu);
    return reply_ack("ok", rep, rep_len);
}

/* finish checks a fully written push against its manifest and installs it (no lock held). */
static int finish(spes_blob_push_rx *rx, spes_manifest *m, const char *tmp, const char *name)
{
    spes_manifest got;
    int rc = spes_manifest_build_file(tmp, m->chunk_size, &got);
    if (rc)
        return rc;
    int same = got.total_size == m->total_size && got.chunk_count == m->chunk_count &&
               !memcmp(got.blob_hash, m->blob_hash, 32) &&
               (!m->chunk_count || !memcmp(got.chunk_hashes, m->chunk_hashes, (size_t)m->chunk_count * 32));
    spes_manifest_fini(&got);
    if (!same)
        return spes_errf(SPES_EFORMAT, "the blob %s pushed does not match its manifest", name);
    if (spes_blob_has(rx->s, m->blob_hash))
        return 0;
    return spes__blob_install(rx->s, tmp, m);
}

static int on_piece(spes_blob_push_rx *rx, const char *name, const Spes__Wire__BlobPiece *p, uint8_t **rep,
                    size_t *rep_len)
{
    pthread_mutex_lock(&rx->mu);
    rx_slot *sl = slot_of(rx, name);
    int rc = 0;
    if (!sl || sl->finishing || memcmp(sl->m.blob_hash, p->blob_hash.data, 32) != 0) {
        rc = spes_errf(SPES_ESTATE, "a piece of a blob this daemon has no push of (start with BlobPush)");
    } else if (p->offset % SPES_PROTO_PUSH_PIECE || p->offset >= sl->m.total_size) {
        rc = spes_errf(SPES_ERANGE, "piece at offset %llu: not a piece of this %llu-byte blob",
                       (unsigned long long)p->offset, (unsigned long long)sl->m.total_size);
    } else {
        uint64_t want = sl->m.total_size - p->offset;
        want = want < SPES_PROTO_PUSH_PIECE ? want : SPES_PROTO_PUSH_PIECE;
        if (p->data.len != want)
            rc = spes_errf(SPES_ERANGE, "piece at offset %llu holds %zu bytes, expected %llu",
                           (unsigned long long)p->offset, p->data.len, (unsigned long long)want);
    }
    if (!rc)
        rc = spes__blob_pwrite_full(sl->fd, p->data.data, p->data.len, p->offset, sl->tmp);
    if (rc) {
        pthread_mutex_unlock(&rx->mu);
        return refuse(rx, rc, SPES_MSG_BLOB_PIECE, rep, rep_len);
    }
    uint32_t i = (uint32_t)(p->offset / SPES_PROTO_PUSH_PIECE);
    if (!(sl->got[i / 8] & (1u << (i % 8)))) {
        sl->got[i / 8] |= (uint8_t)(1u << (i % 8));
        sl->ngot++;
    }
    sl->last_ms = spes_mono_ms();
    rx->st.bytes += p->data.len;
    if (sl->ngot < sl->npieces) {
        pthread_mutex_unlock(&rx->mu);
        return reply_ack("ok", rep, rep_len);
    }
    /* the last piece: check and install outside the lock (the slot refuses pieces meanwhile) */
    sl->finishing = 1;
    spes_manifest m = sl->m;
    char tmp[4096], who[SPES_PKI_NAME_MAX + 1];
    snprintf(tmp, sizeof tmp, "%s", sl->tmp);
    snprintf(who, sizeof who, "%s", sl->name);
    int fd = sl->fd;
    sl->fd = -1;
    pthread_mutex_unlock(&rx->mu);
    if (fdatasync(fd) != 0)
        rc = spes_errf_errno(SPES_EIO, "%s: fsync failed", tmp);
    close(fd);
    if (!rc)
        rc = finish(rx, &m, tmp, who);
    pthread_mutex_lock(&rx->mu);
    if (!rc) {
        rx->st.completed++;
        sl->tmp[0] = '\0'; /* renamed to its name, or already held */
    }
    slot_clear(sl);
    pthread_mutex_unlock(&rx->mu);
    unlink(tmp); /* a no-op when it was installed */
    if (rc)
        return refuse(rx, rc, SPES_MSG_BLOB_PIECE, rep, rep_len);
    char hex[65];
    spes_hex_encode(m.blob_hash, 32, hex);
    log_info("blob push: %s's blob %.16s (%llu bytes) is held and served here", who, hex,
             (unsigned long long)m.total_size);
    return reply_ack("complete", rep, rep_len);
}

int spes_blob_push_handle(spes_blob_push_rx *rx, const spes_pki_identity *peer, const void *req, size_t len,
                          uint8_t **rep, size_t *rep_len)
{
    *rep = NULL;
    *rep_len = 0;
    int type = 0;
    ProtobufCMessage *msg = NULL;
    int rc = spes_proto_decode(req, len, &type, &msg);
    if (rc) {
        spes_proto_encode_error(rc, spes_errmsg(), type, rep, rep_len);
        return rc;
    }
    const char *name = peer->name;
    if (!rx) {
        rc = refuse_plain(spes_errf(SPES_ESTATE, "this daemon takes no pushed blobs"), type, rep, rep_len);
    } else if (peer->role == SPES_ROLE_OPERATOR) {
        rc = refuse(rx, spes_errf(SPES_EAUTH, "an operator certificate pushes no blobs"), type, rep, rep_len);
    } else if (type == SPES_MSG_BLOB_PUSH) {
        rc = on_push(rx, name, (const Spes__Wire__BlobPush *)msg, rep, rep_len);
    } else if (type == SPES_MSG_BLOB_PIECE) {
        rc = on_piece(rx, name, (const Spes__Wire__BlobPiece *)msg, rep, rep_len);
    } else {
        rc = refuse(rx, spes_errf(SPES_EINVAL, "%s is not a push request", spes_proto_type_name(type)), type,
                    rep, rep_len);
    }
    spes_proto_free(msg);
    return rc;
}

/* ---- sending ---- */

typedef struct push_done {
    int slot, res; /* res: 0 ok, 1 complete, 2 held, <0 error */
    int refused;   /* the receiver said no (no point in trying again) */
    char why[SPES_PROTO_MAX_TEXT];
} push_done;

typedef struct pusher {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    push_done *q; /* (window) */
    int qn;
} pusher;

static void push_cb(void *arg, int slot, int err, const void *rep, size_t len)
{
    pusher *p = arg;
    push_done d = {.slot = slot, .res = 0};
    int type = 0;
    ProtobufCMessage *msg = NULL;
    if (err) {
        d.res = err;
        snprintf(d.why, sizeof d.why, "%s", spes_errmsg());
    } else if (spes_proto_decode(rep, len, &type, &msg) != 0) {
        d.res = SPES_EFORMAT;
        d.refused = 1;
        snprintf(d.why, sizeof d.why, "a bad reply: %s", spes_errmsg());
    } else if (type == SPES_MSG_ERROR) {
        const Spes__Wire__Error *e = (const Spes__Wire__Error *)msg;
        d.res = SPES_ENET;
        d.refused = 1;
        snprintf(d.why, sizeof d.why, "refused: %s", e->message);
    } else if (type == SPES_MSG_ACK) {
        const char *m = ((const Spes__Wire__Ack *)msg)->message;
        d.res = !strcmp(m, "complete") ? 1 : !strcmp(m, "held") ? 2 : 0;
    } else {
        d.res = SPES_EFORMAT;
        d.refused = 1;
        snprintf(d.why, sizeof d.why, "a %s where an Ack was due", spes_proto_type_name(type));
    }
    spes_proto_free(msg);
    pthread_mutex_lock(&p->mu);
    p->q[p->qn++] = d;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* wait_one takes one finished request into *d, waiting up to ms; 0 if none came. */
static int wait_one(pusher *p, int ms, push_done *d)
{
    pthread_mutex_lock(&p->mu);
    if (p->qn == 0) {
        struct timespec ts;
        spes_mono_deadline(&ts, ms);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    int got = p->qn > 0;
    if (got) {
        *d = p->q[0];
        memmove(p->q, p->q + 1, (size_t)--p->qn * sizeof *p->q);
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

static int send_piece(spes__blob_conn *c, int slot, int fd, const char *path, const spes_manifest *m,
                      uint64_t off, uint8_t *buf, int timeout_ms)
{
    uint64_t n = m->total_size - off < SPES_PROTO_PUSH_PIECE ? m->total_size - off : SPES_PROTO_PUSH_PIECE;
    int rc = spes__blob_pread_full(fd, buf, (size_t)n, off, path);
    if (rc)
        return rc;
    Spes__Wire__BlobPiece pc = SPES__WIRE__BLOB_PIECE__INIT;
    pc.blob_hash = (ProtobufCBinaryData){32, (uint8_t *)m->blob_hash};
    pc.offset = off;
    pc.data = (ProtobufCBinaryData){(size_t)n, buf};
    uint8_t *req = NULL;
    size_t len = 0;
    if ((rc = spes_proto_encode(SPES_MSG_BLOB_PIECE, &pc.base, &req, &len)) == 0)
        rc = spes__blob_conn_send(c, slot, req, len, timeout_ms);
    free(req);
    return rc;
}

int spes_blob_push(spes_blob_store *s, const uint8_t hash[32], const spes_blob_peer *to,
                   const spes_blob_push_opts *o, spes_blob_push_result *res)
{
    int window = o->window > 0 ? o->window : 8, timeout = o->timeout_ms > 0 ? o->timeout_ms : 30000;
    spes_blob_push_result r = {0};
    spes_manifest m;
    memset(&m, 0, sizeof m);
    uint8_t *menc = NULL, *req = NULL, *buf = NULL; /* a request is a copy: one piece buffer does */
    size_t mlen = 0, len = 0;
    int fd = -1, rc, inflight = 0;
    char path[4096];
    spes__blob_conn *c = NULL;
    pusher p = {.qn = 0};
    pthread_mutex_init(&p.mu, NULL);
    spes_cond_init_mono(&p.cv);
    if ((rc = spes_blob_manifest_get(s, hash, &m)) != 0 ||
        (rc = spes_blob_path(s, hash, path, sizeof path)) != 0 || (rc = spes_blob_open(s, hash, &fd)) != 0 ||
        (rc = spes_manifest_encode(&m, &menc, &mlen)) != 0)
        goto out;
    if (mlen > SPES_PROTO_PUSH_LIMIT - 16) {
        rc = spes_errf(SPES_ERANGE, "blob of %llu bytes in %u chunks: its manifest is too long to push",
                       (unsigned long long)m.total_size, m.chunk_count);
        goto out;
    }
    Spes__Wire__BlobPush bp = SPES__WIRE__BLOB_PUSH__INIT;
    bp.manifest = (ProtobufCBinaryData){mlen, menc};
    if (!(p.q = calloc((size_t)window, sizeof *p.q)) || !(buf = malloc(SPES_PROTO_PUSH_PIECE))) {
        rc = SPES_ENOMEM;
        goto out;
    }
    if ((rc = spes_proto_encode(SPES_MSG_BLOB_PUSH, &bp.base, &req, &len)) != 0 ||
        (rc = spes__blob_conn_open(&c, to->url, to->name, o->tls, o->plain, window,
                                   SPES_PROTO_HEADER_LEN + SPES_PROTO_SMALL_LIMIT, push_cb, &p)) != 0 ||
        (rc = spes__blob_conn_send(c, 0, req, len, timeout)) != 0)
        goto out;
    push_done d;
    while (!wait_one(&p, 500, &d))
        if (o->cancel && atomic_load(o->cancel)) {
            rc = spes_errf(SPES_EINTR, "push to %s stopped", to->url);
            goto out;
        }
    if (d.res < 0) {
        rc = spes_errf(d.res, "%s: %s", to->url, d.why);
        goto out;
    }
    if (d.res == 2) {
        r.held = 1;
        goto out;
    }
    uint64_t next = 0, *off = calloc((size_t)window, sizeof *off);
    int *tries = calloc((size_t)window, sizeof *tries), complete = 0;
    if (!off || !tries)
        rc = SPES_ENOMEM;
    while (!rc) {
        for (int sl = 0; !rc && sl < window && next < m.total_size; sl++) {
            if (off[sl]) /* busy: off holds its piece's offset + 1 */
                continue;
            if ((rc = send_piece(c, sl, fd, path, &m, next, buf, timeout)) == 0) {
                off[sl] = next + 1;
                tries[sl] = 1;
                inflight++;
                next += SPES_PROTO_PUSH_PIECE;
            }
        }
        if (rc || inflight == 0)
            break;
        if (o->cancel && atomic_load(o->cancel)) {
            rc = spes_errf(SPES_EINTR, "push to %s stopped", to->url);
            break;
        }
        if (!wait_one(&p, 500, &d))
            continue;
        inflight--;
        uint64_t at = off[d.slot] - 1;
        off[d.slot] = 0;
        if (d.res >= 0) {
            complete |= d.res == 1;
            r.bytes += m.total_size - at < SPES_PROTO_PUSH_PIECE ? m.total_size - at : SPES_PROTO_PUSH_PIECE;
        } else if (!d.refused && tries[d.slot] < 3) { /* a transport failure: that piece again */
            if ((rc = send_piece(c, d.slot, fd, path, &m, at, buf, timeout)) == 0) {
                off[d.slot] = at + 1;
                tries[d.slot]++;
                inflight++;
            }
        } else {
            rc = spes_errf(d.res, "push to %s, piece at offset %llu: %s", to->url, (unsigned long long)at,
                           d.why);
        }
    }
    if (!rc && !complete)
        rc = spes_errf(SPES_ENET, "push to %s: every piece was taken but the blob was never complete there",
                       to->url);
    free(off);
    free(tries);
out:
    if (c)
        spes__blob_conn_close(c);
    if (fd >= 0)
        close(fd);
    free(buf);
    free(p.q);
    free(req);
    free(menc);
    spes_manifest_fini(&m);
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
    if (res)
        *res = r;
    return rc;
}
