/* ckpt.c: the resume checkpoint format (see checkpoint.h for the byte layout).
 * Saving checks the state against the layout of its own config, then streams
 * through a spes_atomic_file while hashing. Loading trusts nothing: sizes are
 * bounded before the header digest is checked, the header digest is checked
 * before any size is used for an allocation, the file size must match the
 * header exactly, and the whole-file digest is checked before success is
 * reported. This file must never make a partial checkpoint visible, never
 * allocate from an unverified length, and never assert on file bytes. */
#include "checkpoint/checkpoint.h"
#include "checkpoint/ckpt_priv.h"

#include "core/error.h"
#include "core/le.h"
#include "core/fileio.h"
#include "core/log.h"
#include "core/sha256.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the checkpoint's float arrays are stored little-endian as in memory"
#endif

#define HDR_LEN 128
#define MAX_E 65536
#define CHUNK (8u << 20)
static const char MAGIC[8] = {'S', 'P', 'E', 'S', 'C', 'K', 'P', 'T'};

struct spes_ckpt_reader {
    FILE *fp;           /* file source, or NULL */
    const uint8_t *mem; /* memory source, or NULL */
    uint64_t size, pos;
    char *origin;
    spes_sha256_ctx all, head; /* whole file; header section only */
    int live;                  /* bit 0: all, bit 1: head still open */
    uint32_t flags;
    uint64_t nparams, nmoments;
};

static uint64_t pad8(uint64_t n)
{
    return (8 - n % 8) % 8;
}

/* check_layout compares the sizes of a checkpoint with the layout of its config JSON. */
static int check_layout(const char *origin, const char *json, int E, const uint8_t *trained, uint64_t nparams,
                        int has_moments, uint64_t nmoments)
{
    spes_run_config rc;
    spes_layout lo = {0};
    char *what = NULL;
    if (asprintf(&what, "%s (embedded config)", origin) < 0)
        return SPES_ENOMEM;
    spes_config_defaults(&rc);
    int err = spes_config_parse_json(&rc, json, what);
    free(what);
    if (err || (err = spes_layout_build(&lo, &rc.model)) != 0)
        goto out;
    int ntrained = 0;
    for (int e = 0; e < E; e++) {
        if (trained[e] > 1) {
            err = spes_errf(SPES_EFORMAT, "%s: trained[%d] is %u, not 0 or 1", origin, e, trained[e]);
            goto out;
        }
        ntrained += trained[e];
    }
    uint64_t want_m = (uint64_t)lo.shared_numel + (uint64_t)ntrained * lo.column_numel;
    if (rc.model.num_experts != E)
        err = spes_errf(SPES_EFORMAT, "%s: the config has %d experts but the trained mask has %d", origin,
                        rc.model.num_experts, E);
    else if (nparams != lo.total_numel)
        err = spes_errf(SPES_EFORMAT, "%s: %" PRIu64 " parameters, but the config's layout has %zu", origin,
                        nparams, lo.total_numel);
    else if (has_moments && nmoments != want_m)
        err =
            spes_errf(SPES_EFORMAT,
                      "%s: %" PRIu64 " AdamW moments, but the layout with %d trained columns needs %" PRIu64,
                      origin, nmoments, ntrained, want_m);
out:
    spes_layout_fini(&lo);
    spes_config_fini(&rc);
    return err;
}

/* ---- writing ---- */

static int write_hashed(spes_atomic_file *af, spes_sha256_ctx *sha, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        size_t k = n < CHUNK ? n : CHUNK;
        int rc = spes_atomic_write(af, b, k);
        if (rc)
            return rc;
        spes_sha256_update(sha, b, k);
        b += k;
        n -= k;
    }
    return 0;
}

static void encode_header(uint8_t h[HDR_LEN], const spes_ckpt *ck, uint64_t clen, int has_m)
{
    memset(h, 0, HDR_LEN);
    memcpy(h, MAGIC, 8);
    spes_le_put32(h + 8, SPES_CKPT_VERSION);
    spes_le_put32(h + 12, has_m ? 1u : 0u);
    spes_le_put64(h + 16, clen);
    spes_le_put32(h + 24, (uint32_t)ck->E);
    spes_le_put64(h + 32, ck->nparams);
    spes_le_put64(h + 40, has_m ? ck->nmoments : 0);
    spes_le_put64(h + 48, (uint64_t)ck->adam_t);
    spes_le_put64(h + 56, (uint64_t)ck->step);
    spes_le_put64(h + 64, (uint64_t)ck->round);
    spes_le_put64(h + 72, ck->data_pos);
    spes_le_put64(h + 80, ck->data_file);
    for (int i = 0; i < 4; i++)
        spes_le_put64(h + 88 + 8 * i, ck->rng[i]);
}

/* write_body writes every section after the atomic file is open; `all` hashes the whole file,
 * `head` only the header section (header, config, mask, padding). */
static int write_body(spes_atomic_file *af, const spes_ckpt *ck, int has_m)
{
    spes_sha256_ctx all, head;
    uint8_t h[HDR_LEN], digest[SPES_SHA256_LEN], zeros[8] = {0};
    size_t clen = strlen(ck->config_json);
    const void *part[4] = {h, ck->config_json, ck->trained, zeros};
    size_t plen[4] = {HDR_LEN, clen, (size_t)ck->E, (size_t)pad8(HDR_LEN + clen + (uint64_t)ck->E)};
    int rc = spes_sha256_init(&all);
    if (rc)
        return rc;
    if ((rc = spes_sha256_init(&head)) != 0) {
        spes_sha256_final(&all, digest);
        return rc;
    }
    encode_header(h, ck, clen, has_m);
    for (int i = 0; i < 4 && !rc; i++) {
        spes_sha256_update(&head, part[i], plen[i]);
        rc = write_hashed(af, &all, part[i], plen[i]);
    }
    spes_sha256_final(&head, digest);
    if (!rc)
        rc = write_hashed(af, &all, digest, sizeof digest);
    if (!rc)
        rc = write_hashed(af, &all, ck->params, ck->nparams * sizeof(float));
    if (!rc && has_m)
        rc = write_hashed(af, &all, ck->adam_m, ck->nmoments * sizeof(float));
    if (!rc && has_m)
        rc = write_hashed(af, &all, ck->adam_v, ck->nmoments * sizeof(float));
    spes_sha256_final(&all, digest);
    return rc ? rc : spes_atomic_write(af, digest, sizeof digest);
}

int spes__ckpt_make_dir(const char *dir)
{
    char *parent = spes_path_join(dir, "..");
    int rc = parent ? spes_mkdir_p(dir, 0) : SPES_ENOMEM;
    if (!rc) /* a new directory's own name must be durable too, not only the file inside it */
        rc = spes_fsync_dir(parent);
    free(parent);
    return rc;
}

/* remove_stale_temps deletes spes.ckpt.tmp.PID files left by processes that no longer exist. */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    const char *prefix = SPES_CKPT_FILE ".tmp.";
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, strlen(prefix)))
            continue;
        char *end;
        long pid = strtol(de->d_name + strlen(prefix), &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char *p = spes_path_join(dir, de->d_name);
        if (p && unlink(p) == 0)
            log_info("%s: removed a temporary file left by an interrupted save", p);
        free(p);
    }
    closedir(d);
}

static int check_ckpt_args(const char *dir, const spes_ckpt *ck)
{
    if (!ck->config_json || !ck->trained || !ck->params || ck->E <= 0 || ck->E > MAX_E)
        return spes_errf(SPES_EINVAL, "%s: checkpoint state lacks config, mask or parameters, or has E=%d",
                         dir, ck->E);
    if (!ck->adam_m != !ck->adam_v)
        return spes_errf(SPES_EINVAL, "%s: only one of the two AdamW moment arrays is present", dir);
    if (strlen(ck->config_json) > SPES_CKPT_MAX_CONFIG)
        return spes_errf(SPES_EINVAL, "%s: config JSON is longer than %u bytes", dir, SPES_CKPT_MAX_CONFIG);
    return check_layout(dir, ck->config_json, ck->E, ck->trained, ck->nparams, ck->adam_m != NULL,
                        ck->nmoments);
}

int spes_ckpt_save(const char *dir, const spes_ckpt *ck)
{
    int rc = check_ckpt_args(dir, ck);
    if (rc || (rc = spes__ckpt_make_dir(dir)) != 0)
        return rc;
    remove_stale_temps(dir);
    char *path = spes_path_join(dir, SPES_CKPT_FILE);
    if (!path)
        return SPES_ENOMEM;
    spes_atomic_file af;
    if ((rc = spes_atomic_open(&af, path)) == 0) {
        if ((rc = write_body(&af, ck, ck->adam_m != NULL)) != 0)
            spes_atomic_abort(&af);
        else
            rc = spes_atomic_commit(&af);
    }
    free(path);
    return rc;
}

/* ---- reading ---- */

/* src_read reads exactly n bytes into dst, hashing them into the open digests. */
static int src_read(spes_ckpt_reader *r, void *dst, uint64_t n)
{
    if (n > r->size - r->pos)
        return spes_errf(SPES_EFORMAT,
                         "%s: truncated: %" PRIu64 " bytes needed at offset %" PRIu64
                         ", the file has %" PRIu64,
                         r->origin, n, r->pos, r->size);
    uint8_t *b = dst;
    while (n > 0) {
        size_t k = n < CHUNK ? (size_t)n : CHUNK;
        if (r->mem)
            memcpy(b, r->mem + r->pos, k);
        else if (fread(b, 1, k, r->fp) != k)
            return spes_errf_errno(SPES_EIO, "%s: short read at offset %" PRIu64, r->origin, r->pos);
        if (r->live & 1)
            spes_sha256_update(&r->all, b, k);
        if (r->live & 2)
            spes_sha256_update(&r->head, b, k);
        r->pos += k;
        b += k;
        n -= k;
    }
    return 0;
}

/* check_digest reads a stored digest and compares it with ctx (which it finishes). */
static int check_digest(spes_ckpt_reader *r, spes_sha256_ctx *ctx, int bit, const char *what)
{
    uint8_t want[SPES_SHA256_LEN], got[SPES_SHA256_LEN];
    spes_sha256_final(ctx, got);
    r->live &= ~bit;
    int rc = src_read(r, want, sizeof want);
    if (rc)
        return rc;
    if (memcmp(want, got, sizeof want))
        return spes_errf(SPES_EFORMAT, "%s: %s checksum mismatch: the file is corrupted", r->origin, what);
    return 0;
}

/* parse_fixed checks magic, version and the bounds that must hold before the header digest is read. */
static int parse_fixed(spes_ckpt_reader *r, const uint8_t *h, spes_ckpt *meta, uint64_t *clen)
{
    if (memcmp(h, MAGIC, 8))
        return spes_errf(SPES_EFORMAT, "%s: not a spes checkpoint (bad magic)", r->origin);
    uint32_t version = spes_le_get32(h + 8);
    if (version != SPES_CKPT_VERSION)
        return spes_errf(SPES_EFORMAT, "%s: checkpoint format version %u, this build reads version %u",
                         r->origin, version, SPES_CKPT_VERSION);
    *clen = spes_le_get64(h + 16);
    uint32_t E = spes_le_get32(h + 24);
    if (*clen == 0 || *clen > SPES_CKPT_MAX_CONFIG || E == 0 || E > MAX_E)
        return spes_errf(SPES_EFORMAT,
                         "%s: header has config length %" PRIu64 " and %u experts, out of range "
                         "(corrupted?)",
                         r->origin, *clen, E);
    r->flags = spes_le_get32(h + 12);
    r->nparams = spes_le_get64(h + 32);
    r->nmoments = spes_le_get64(h + 40);
    meta->E = (int)E;
    meta->adam_t = (int64_t)spes_le_get64(h + 48);
    meta->step = (int64_t)spes_le_get64(h + 56);
    meta->round = (int64_t)spes_le_get64(h + 64);
    meta->data_pos = spes_le_get64(h + 72);
    meta->data_file = spes_le_get64(h + 80);
    for (int i = 0; i < 4; i++)
        meta->rng[i] = spes_le_get64(h + 88 + 8 * i);
    return 0;
}

/* check_sizes runs after the header digest: flags, exact file size, then the config's layout. */
static int check_sizes(spes_ckpt_reader *r, spes_ckpt *meta, uint64_t clen)
{
    if (r->flags & ~1u)
        return spes_errf(SPES_EFORMAT, "%s: unknown flags 0x%x", r->origin, r->flags);
    if (!(r->flags & 1u) && r->nmoments)
        return spes_errf(SPES_EFORMAT, "%s: %" PRIu64 " moments but no moments flag", r->origin, r->nmoments);
    uint64_t need = r->pos, arrays = 0, m2 = 0;
    int bad = __builtin_mul_overflow(r->nparams, 4, &arrays) || __builtin_mul_overflow(r->nmoments, 8, &m2) ||
              __builtin_add_overflow(arrays, m2, &arrays) || __builtin_add_overflow(need, arrays, &need) ||
              __builtin_add_overflow(need, SPES_SHA256_LEN, &need);
    if (bad || need > r->size)
        return spes_errf(SPES_EFORMAT,
                         "%s: truncated: the header describes %s%" PRIu64 " bytes, the file has %" PRIu64,
                         r->origin, bad ? "more than " : "", bad ? UINT64_MAX : need, r->size);
    if (need < r->size)
        return spes_errf(SPES_EFORMAT, "%s: %" PRIu64 " unexpected bytes after the end of the checkpoint",
                         r->origin, r->size - need);
    if (strlen(meta->config_json) != clen)
        return spes_errf(SPES_EFORMAT, "%s: the embedded config contains a NUL byte", r->origin);
    return check_layout(r->origin, meta->config_json, meta->E, meta->trained, r->nparams, r->flags & 1u,
                        r->nmoments);
}

/* read_head reads and verifies everything up to the arrays and fills meta. */
static int read_head(spes_ckpt_reader *r, spes_ckpt *meta)
{
    uint8_t h[HDR_LEN], zeros[8];
    uint64_t clen = 0;
    if (r->size < HDR_LEN + 2 * SPES_SHA256_LEN)
        return spes_errf(SPES_EFORMAT,
                         "%s: file is %" PRIu64 " bytes, too short for a checkpoint (truncated?)", r->origin,
                         r->size);
    int rc = src_read(r, h, HDR_LEN);
    if (rc || (rc = parse_fixed(r, h, meta, &clen)) != 0)
        return rc;
    uint64_t padn = pad8(HDR_LEN + clen + (uint64_t)meta->E);
    if (HDR_LEN + clen + (uint64_t)meta->E + padn + SPES_SHA256_LEN > r->size)
        return spes_errf(SPES_EFORMAT, "%s: truncated inside the header section (%" PRIu64 " bytes)",
                         r->origin, r->size);
    meta->config_json = malloc(clen + 1);
    meta->trained = malloc((size_t)meta->E);
    if (!meta->config_json || !meta->trained)
        return SPES_ENOMEM;
    meta->config_json[clen] = '\0';
    if ((rc = src_read(r, meta->config_json, clen)) || (rc = src_read(r, meta->trained, (uint64_t)meta->E)) ||
        (rc = src_read(r, zeros, padn)) || (rc = check_digest(r, &r->head, 2, "header")))
        return rc;
    for (uint64_t i = 0; i < padn; i++)
        if (zeros[i])
            return spes_errf(SPES_EFORMAT, "%s: non-zero padding after the trained mask", r->origin);
    rc = check_sizes(r, meta, clen);
    if (!rc) {
        meta->nparams = (size_t)r->nparams;
        meta->nmoments = (size_t)r->nmoments;
    }
    return rc;
}

/* reader_new makes a reader over a file or a buffer and verifies its header section. */
static int reader_new(spes_ckpt_reader **out, FILE *fp, const uint8_t *mem, uint64_t size, const char *origin,
                      spes_ckpt *meta)
{
    memset(meta, 0, sizeof *meta);
    *out = NULL;
    spes_ckpt_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->origin = strdup(origin))) {
        free(r);
        if (fp)
            fclose(fp);
        return SPES_ENOMEM;
    }
    r->fp = fp;
    r->mem = mem;
    r->size = size;
    int rc = spes_sha256_init(&r->all);
    if (!rc) {
        r->live = 1;
        if ((rc = spes_sha256_init(&r->head)) == 0)
            r->live |= 2;
    }
    if (!rc)
        rc = read_head(r, meta);
    if (rc) {
        spes_ckpt_reader_close(r);
        spes_ckpt_fini(meta);
        return rc;
    }
    *out = r;
    return 0;
}

int spes_ckpt_reader_open(spes_ckpt_reader **out, const char *dir, spes_ckpt *meta)
{
    memset(meta, 0, sizeof *meta);
    *out = NULL;
    char *path = spes_path_join(dir, SPES_CKPT_FILE);
    if (!path)
        return SPES_ENOMEM;
    FILE *fp = fopen(path, "rb");
    struct stat st;
    int rc = 0;
    if (!fp)
        rc = spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open checkpoint", path);
    else if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode))
        rc = spes_errf(SPES_EIO, "%s: not a regular file", path);
    if (rc) {
        if (fp)
            fclose(fp);
        free(path);
        return rc;
    }
    rc = reader_new(out, fp, NULL, (uint64_t)st.st_size, path, meta);
    free(path);
    return rc;
}

int spes_ckpt_reader_read(spes_ckpt_reader *r, float *params, float *adam_m, float *adam_v)
{
    if (r->pos != r->size - r->nparams * 4 - r->nmoments * 8 - SPES_SHA256_LEN || !(r->live & 1))
        return spes_errf(SPES_ESTATE, "%s: arrays already read", r->origin);
    uint64_t mb = r->nmoments * 4;
    int rc = src_read(r, params, r->nparams * 4);
    if (!rc && (r->flags & 1u)) {
        if (!adam_m || !adam_v) { /* skip the moments but still hash them */
            size_t cap = 2 * mb < CHUNK ? (size_t)(2 * mb) + 1 : CHUNK;
            float *tmp = malloc(cap);
            for (uint64_t left = 2 * mb; !rc && left > 0;) {
                uint64_t k = left < cap ? left : cap;
                rc = tmp ? src_read(r, tmp, k) : SPES_ENOMEM;
                left -= k;
            }
            free(tmp);
        } else if ((rc = src_read(r, adam_m, mb)) == 0) {
            rc = src_read(r, adam_v, mb);
        }
    }
    return rc ? rc : check_digest(r, &r->all, 1, "whole-file");
}

void spes_ckpt_reader_close(spes_ckpt_reader *r)
{
    if (!r)
        return;
    uint8_t junk[SPES_SHA256_LEN];
    if (r->live & 1)
        spes_sha256_final(&r->all, junk);
    if (r->live & 2)
        spes_sha256_final(&r->head, junk);
    if (r->fp)
        fclose(r->fp);
    free(r->origin);
    free(r);
}

void spes_ckpt_fini(spes_ckpt *ck)
{
    free(ck->config_json);
    free(ck->trained);
    free(ck->params);
    free(ck->adam_m);
    free(ck->adam_v);
    memset(ck, 0, sizeof *ck);
}

/* load_all allocates the arrays for an open reader and reads them. */
static int load_all(spes_ckpt_reader *r, spes_ckpt *out)
{
    out->params = malloc(out->nparams ? out->nparams * sizeof(float) : 1);
    int has_m = (r->flags & 1u) != 0;
    if (has_m) {
        out->adam_m = malloc(out->nmoments ? out->nmoments * sizeof(float) : 1);
        out->adam_v = malloc(out->nmoments ? out->nmoments * sizeof(float) : 1);
    }
    if (!out->params || (has_m && (!out->adam_m || !out->adam_v)))
        return SPES_ENOMEM;
    return spes_ckpt_reader_read(r, out->params, out->adam_m, out->adam_v);
}

int spes_ckpt_load(const char *dir, spes_ckpt *out)
{
    spes_ckpt_reader *r;
    int rc = spes_ckpt_reader_open(&r, dir, out);
    if (rc)
        return rc;
    rc = load_all(r, out);
    spes_ckpt_reader_close(r);
    if (rc)
        spes_ckpt_fini(out);
    return rc;
}

int spes_ckpt_parse(spes_ckpt *out, const uint8_t *buf, size_t len, const char *origin)
{
    spes_ckpt_reader *r;
    int rc = reader_new(&r, NULL, buf, len, origin ? origin : "checkpoint", out);
    if (rc)
        return rc;
    rc = load_all(r, out);
    spes_ckpt_reader_close(r);
    if (rc)
        spes_ckpt_fini(out);
    return rc;
}
