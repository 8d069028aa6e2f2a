/* dataset.c: concatenated token files, the vocabulary scan, parts and batches.
 * It must never hand the trainer an id outside [0, vocab_size): every token is
 * checked once at open, so batches are plain copies afterwards. */
#include "data/dataset.h"
#include "core/error.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum {
    SCAN_BLOCK = 1 << 20, /* tokens per parallel work item */
    SCAN_READ = 1 << 16   /* tokens per read of the scan */
};

typedef struct scan_ctx {
    const spes_tokfile *f;
    uint32_t limit;      /* first invalid unsigned value */
    uint64_t *first_bad; /* (threads) first bad (or unreadable) token index per worker, UINT64_MAX if none */
    int nomem;           /* a worker could not allocate its read buffer */
} scan_ctx;

/* scan_range returns the first token in [lo, hi) at or above limit (or that cannot
 * be read), else UINT64_MAX; it reads through buf (SCAN_READ tokens). */
static uint64_t scan_range(const spes_tokfile *f, uint32_t limit, uint64_t lo, uint64_t hi, uint32_t *buf)
{
    for (uint64_t at = lo; at < hi; at += SCAN_READ) {
        uint64_t n = hi - at < SCAN_READ ? hi - at : SCAN_READ;
        if (spes_tokfile_read_ids(f, at, n, buf) != 0)
            return at;
        uint32_t mx = 0;
        for (uint64_t i = 0; i < n; i++)
            mx = buf[i] > mx ? buf[i] : mx;
        for (uint64_t i = 0; mx >= limit && i < n; i++)
            if (buf[i] >= limit)
                return at + i;
    }
    return UINT64_MAX;
}

static void scan_fn(void *arg, size_t begin, size_t end, int tid)
{
    scan_ctx *c = arg;
    uint64_t n = c->f->hdr.ntokens;
    uint32_t *buf = malloc(SCAN_READ * sizeof *buf);
    if (!buf) {
        c->nomem = 1;
        return;
    }
    for (size_t b = begin; b < end; b++) {
        uint64_t lo = (uint64_t)b * SCAN_BLOCK, hi = lo + SCAN_BLOCK < n ? lo + SCAN_BLOCK : n;
        uint64_t bad = scan_range(c->f, c->limit, lo, hi, buf);
        if (bad != UINT64_MAX) {
            c->first_bad[tid] = bad;
            break; /* blocks of a worker are contiguous and ascending: this is its first */
        }
    }
    free(buf);
}

static int scan_file(const spes_tokfile *f, uint32_t vocab, spes_pool *pool)
{
    if (f->hdr.ntokens == 0)
        return 0;
    uint32_t limit = vocab;
    uint32_t sign_bit = f->hdr.dtype == SPES_TOK_U16 ? 0x8000u : 0x80000000u;
    if (f->hdr.is_signed && limit > sign_bit)
        limit = sign_bit;
    if (f->hdr.dtype == SPES_TOK_U16 && !f->hdr.is_signed && limit > UINT16_MAX)
        return 0; /* every uint16 fits */
    int nt = pool ? spes_pool_threads(pool) : 1;
    uint64_t first_bad[256];
    if (nt > 256 || nt < 1)
        nt = 1; /* more workers than slots: scan on the caller */
    for (int i = 0; i < nt; i++)
        first_bad[i] = UINT64_MAX;
    scan_ctx c = {f, limit, first_bad, 0};
    size_t nblocks = (size_t)((f->hdr.ntokens + SCAN_BLOCK - 1) / SCAN_BLOCK);
    spes_parallel_for(nt > 1 ? pool : NULL, nblocks, scan_fn, &c);
    if (c.nomem)
        return SPES_ENOMEM;
    uint64_t bad = UINT64_MAX;
    for (int i = 0; i < nt; i++)
        bad = first_bad[i] < bad ? first_bad[i] : bad;
    if (bad == UINT64_MAX)
        return 0;
    uint32_t v;
    int rc = spes_tokfile_read_ids(f, bad, 1, &v); /* unreadable: the message names the file */
    if (rc)
        return rc;
    if (f->hdr.is_signed && v >= sign_bit)
        return spes_errf(SPES_ERANGE, "%s: token %" PRIu64 " is negative (%" PRId64 ")", f->path, bad,
                         (int64_t)v - (int64_t)sign_bit * 2);
    return spes_errf(SPES_ERANGE, "%s: token %" PRIu64 " has id %" PRIu32 ", not below vocab_size %" PRIu32,
                     f->path, bad, v, vocab);
}

void spes_dataset_close(spes_dataset *ds)
{
    for (int i = 0; ds->files && i < ds->nfiles; i++)
        spes_tokfile_close(&ds->files[i]);
    free(ds->files);
    free(ds->starts);
    memset(ds, 0, sizeof *ds);
}

int spes_dataset_open(spes_dataset *ds, const char *const *paths, int n, spes_tok_dtype dtype,
                      spes_tok_format format, uint32_t vocab_size, spes_pool *pool)
{
    memset(ds, 0, sizeof *ds);
    if (n < 1)
        return spes_errf(SPES_EINVAL, "dataset: no token files given");
    if (vocab_size < 1 || vocab_size > INT32_MAX)
        return spes_errf(SPES_EINVAL, "dataset: vocab_size %" PRIu32 " is outside [1, %d]", vocab_size,
                         INT32_MAX);
    ds->files = calloc((size_t)n, sizeof *ds->files);
    ds->starts = calloc((size_t)n + 1, sizeof *ds->starts);
    if (!ds->files || !ds->starts) {
        spes_dataset_close(ds);
        return SPES_ENOMEM;
    }
    ds->vocab_size = vocab_size;
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if ((rc = spes_tokfile_open(&ds->files[i], paths[i], format, dtype)) != 0)
            goto fail;
        ds->nfiles = i + 1;
        if ((rc = scan_file(&ds->files[i], vocab_size, pool)) != 0)
            goto fail;
        ds->starts[i + 1] = ds->starts[i] + ds->files[i].hdr.ntokens;
    }
    ds->total = ds->starts[n];
    if (ds->total == 0) {
        rc = spes_errf(SPES_EFORMAT, "dataset: the %d token file%s (first %s) hold no tokens", n,
                       n == 1 ? "" : "s", paths[0]);
        goto fail;
    }
    ds->part_index = 0;
    ds->part_count = 1;
    ds->part_len = ds->total;
    return 0;
fail:
    spes_dataset_close(ds);
    return rc;
}

uint64_t spes_dataset_total(const spes_dataset *ds)
{
    return ds->total;
}

int spes_dataset_set_part(spes_dataset *ds, int index, int count)
{
    if (count < 1 || index < 0 || index >= count)
        return spes_errf(SPES_EINVAL, "dataset: part %d of %d does not exist", index, count);
    uint64_t base = ds->total / (uint64_t)count;
    if (base == 0)
        return spes_errf(SPES_ERANGE, "dataset: %" PRIu64 " tokens cannot be split into %d parts", ds->total,
                         count);
    ds->part_index = index;
    ds->part_count = count;
    ds->part_begin = base * (uint64_t)index;
    ds->part_len = index == count - 1 ? ds->total - ds->part_begin : base;
    ds->cursor = 0;
    return 0;
}

uint64_t spes_dataset_part_len(const spes_dataset *ds)
{
    return ds->part_len;
}

int spes_dataset_check_batch(const spes_dataset *ds, int B, int T)
{
    if (B < 1 || T < 1)
        return spes_errf(SPES_EINVAL, "dataset: batch %d x %d is not positive", B, T);
    uint64_t need = (uint64_t)B * (uint64_t)T + 1;
    if (ds->part_len < need)
        return spes_errf(SPES_ERANGE,
                         "dataset: part %d of %d has %" PRIu64 " tokens, fewer than B*T+1 = %" PRIu64
                         " for one batch",
                         ds->part_index, ds->part_count, ds->part_len, need);
    return 0;
}

/* file_of returns the file holding stream index idx (< total): the last file starting at or before it. */
static int file_of(const spes_dataset *ds, uint64_t idx)
{
    int lo = 0, hi = ds->nfiles - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (ds->starts[mid] <= idx)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

int spes_dataset_read(const spes_dataset *ds, uint64_t pos, size_t n, int32_t *out)
{
    if (ds->part_len == 0)
        return spes_errf(SPES_ESTATE, "dataset: not open");
    pos %= ds->part_len;
    while (n > 0) {
        uint64_t idx = ds->part_begin + pos;
        int fi = file_of(ds, idx);
        const spes_tokfile *f = &ds->files[fi];
        uint64_t k = ds->starts[fi + 1] - idx;      /* left in this file */
        uint64_t left_in_part = ds->part_len - pos; /* before wrapping */
        k = k < left_in_part ? k : left_in_part;
        k = k < n ? k : n;
        /* ids are below vocab_size <= INT32_MAX (checked at open): uint32 reads as int32 */
        int rc = spes_tokfile_read_ids(f, idx - ds->starts[fi], k, (uint32_t *)out);
        if (rc)
            return rc;
        out += k;
        n -= (size_t)k;
        pos = (pos + k) % ds->part_len;
    }
    return 0;
}

int spes_dataset_batch_at(const spes_dataset *ds, uint64_t step, int B, int T, int32_t *inputs,
                          int32_t *targets)
{
    int rc = spes_dataset_check_batch(ds, B, T);
    if (rc)
        return rc;
    uint64_t bt = (uint64_t)B * (uint64_t)T, len = ds->part_len;
    uint64_t start = (uint64_t)((unsigned __int128)(step % len) * (bt % len) % len);
    if ((rc = spes_dataset_read(ds, start, (size_t)bt, inputs)) != 0)
        return rc;
    memcpy(targets, inputs + 1, (size_t)(bt - 1) * sizeof *targets);
    return spes_dataset_read(ds, (start + bt) % len, 1, targets + bt - 1);
}

int spes_dataset_next(spes_dataset *ds, int B, int T, int32_t *inputs, int32_t *targets)
{
    int rc = spes_dataset_check_batch(ds, B, T);
    if (rc)
        return rc;
    uint64_t bt = (uint64_t)B * (uint64_t)T, len = ds->part_len;
    if ((rc = spes_dataset_read(ds, ds->cursor, (size_t)bt, inputs)) != 0)
        return rc;
    memcpy(targets, inputs + 1, (size_t)(bt - 1) * sizeof *targets);
    if ((rc = spes_dataset_read(ds, (ds->cursor + bt) % len, 1, targets + bt - 1)) != 0)
        return rc;
    ds->cursor = (ds->cursor + bt % len) % len;
    return 0;
}

uint64_t spes_dataset_tell(const spes_dataset *ds)
{
    return ds->cursor;
}

int spes_dataset_seek(spes_dataset *ds, uint64_t cursor)
{
    if (cursor >= ds->part_len)
        return spes_errf(SPES_ERANGE,
                         "dataset: cursor %" PRIu64 " is outside part %d of %d (%" PRIu64 " tokens)", cursor,
                         ds->part_index, ds->part_count, ds->part_len);
    ds->cursor = cursor;
    return 0;
}
