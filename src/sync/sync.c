/* sync.c: contribution codec, aggregation and digest.
 * Wire format of a contribution (little-endian):
 *   "SPESCTB1" | u32 version=1 | u32 codec | i64 round | i32 node | u32 ncols |
 *   u64 tokens | f32 loss_mean | u64 shared_numel | u64 column_numel |
 *   i32 cols[ncols] | values (fp32 or bf16) for shared, then each column.
 * Decoding never trusts a length: every size is checked against the layout
 * and the buffer before anything is read. */
#include "sync/sync.h"
#include "core/error.h"
#include "core/sha256.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CTB_MAGIC "SPESCTB1"
#define CTB_HEADER 64

uint16_t spes_bf16_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float spes_f32_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int spes_contrib_make(spes_contrib *c, const spes_layout *lo, int E, const uint8_t *owned, const float *cur,
                      int64_t round, int32_t node, uint64_t tokens, float loss_mean)
{
    memset(c, 0, sizeof *c);
    int n = 0;
    for (int e = 0; e < E; e++)
        n += owned[e] ? 1 : 0;
    c->cols = malloc((size_t)(n ? n : 1) * sizeof *c->cols);
    c->val = malloc((lo->shared_numel + (size_t)n * lo->column_numel) * sizeof *c->val);
    if (!c->cols || !c->val) {
        spes_contrib_fini(c);
        return SPES_ENOMEM;
    }
    c->round = round;
    c->node = node;
    c->tokens = tokens;
    c->loss_mean = loss_mean;
    c->shared_numel = lo->shared_numel;
    c->column_numel = lo->column_numel;
    memcpy(c->val, cur, lo->shared_numel * sizeof *cur);
    float *d = c->val + lo->shared_numel;
    for (int e = 0; e < E; e++) {
        if (!owned[e])
            continue;
        memcpy(d, cur + lo->shared_numel + (size_t)e * lo->column_numel, lo->column_numel * sizeof *cur);
        d += lo->column_numel;
        c->cols[c->ncols++] = e;
    }
    return 0;
}

void spes_contrib_fini(spes_contrib *c)
{
    free(c->cols);
    free(c->val);
    memset(c, 0, sizeof *c);
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* seg_base returns the agreed values matching segment s of a contribution's
 * values (-1: the shared block, else its column cols[s]) and their count in *n. */
static const float *seg_base(const spes_contrib *c, const float *base, int s, size_t *n)
{
    *n = s < 0 ? c->shared_numel : c->column_numel;
    return s < 0 ? base : base + c->shared_numel + (size_t)c->cols[s] * c->column_numel;
}

int spes_contrib_encode(const spes_contrib *c, spes_codec codec, const float *base, uint8_t **out,
                        size_t *len)
{
    if (codec != SPES_CODEC_FP32 && codec != SPES_CODEC_BF16)
        return spes_errf(SPES_EINVAL, "unknown contribution codec %d", (int)codec);
    size_t nvals = c->shared_numel + (size_t)c->ncols * c->column_numel;
    size_t vsize = codec == SPES_CODEC_FP32 ? 4 : 2;
    size_t n = CTB_HEADER + (size_t)c->ncols * 4 + nvals * vsize;
    uint8_t *b = malloc(n);
    if (!b)
        return SPES_ENOMEM;
    memcpy(b, CTB_MAGIC, 8);
    put32(b + 8, 1);
    put32(b + 12, (uint32_t)codec);
    put64(b + 16, (uint64_t)c->round);
    put32(b + 24, (uint32_t)c->node);
    put32(b + 28, (uint32_t)c->ncols);
    put64(b + 32, c->tokens);
    memcpy(b + 40, &c->loss_mean, 4);
    put32(b + 44, 0);
    put64(b + 48, c->shared_numel);
    put64(b + 56, c->column_numel);
    uint8_t *p = b + CTB_HEADER;
    for (int i = 0; i < c->ncols; i++, p += 4)
        put32(p, (uint32_t)c->cols[i]);
    if (codec == SPES_CODEC_FP32) {
        memcpy(p, c->val, nvals * 4);
    } else {
        size_t i = 0, n;
        for (int s = -1; s < c->ncols; s++) {
            const float *b = seg_base(c, base, s, &n);
            for (size_t k = 0; k < n; k++, i++) {
                uint16_t h = spes_bf16_from_f32(c->val[i] - b[k]);
                memcpy(p + 2 * i, &h, 2);
            }
        }
    }
    *out = b;
    *len = n;
    return 0;
}

size_t spes_contrib_max_size(const spes_layout *lo, int E)
{
    return CTB_HEADER + (size_t)E * 4 + (lo->shared_numel + (size_t)E * lo->column_numel) * 4;
}

static int check_cols(spes_contrib *c, const uint8_t *p, int E, const char *origin)
{
    for (int i = 0; i < c->ncols; i++) {
        int32_t col = (int32_t)get32(p + 4 * (size_t)i);
        if (col < 0 || col >= E)
            return spes_errf(SPES_EFORMAT, "%s: contribution column %d is outside 0..%d", origin, col, E - 1);
        if (i > 0 && col <= c->cols[i - 1])
            return spes_errf(SPES_EFORMAT, "%s: contribution columns are not strictly increasing at %d",
                             origin, col);
        c->cols[i] = col;
    }
    return 0;
}

static int decode_values(spes_contrib *c, const uint8_t *p, uint32_t codec, const float *base,
                         float max_delta, const char *origin)
{
    size_t i = 0, n;
    for (int s = -1; s < c->ncols; s++) {
        const float *bs = seg_base(c, base, s, &n);
        for (size_t k = 0; k < n; k++, i++) {
            float v, b = bs[k], d;
            if (codec == SPES_CODEC_FP32) {
                memcpy(&v, p + 4 * i, 4);
                d = v - b;
            } else {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                d = spes_f32_from_bf16(h);
                v = b + d;
            }
            if (!isfinite(v) || !isfinite(d))
                return spes_errf(SPES_ERANGE, "%s: contribution value %zu is %s", origin, i,
                                 isnan(v) || isnan(d) ? "NaN" : "infinite");
            if (fabsf(d) > max_delta)
                return spes_errf(SPES_ERANGE, "%s: contribution value %zu moved by %g, beyond the bound %g",
                                 origin, i, (double)d, (double)max_delta);
            c->val[i] = v;
        }
    }
    return 0;
}

int spes_contrib_decode(spes_contrib *c, const uint8_t *buf, size_t len, const spes_layout *lo, int E,
                        const float *base, float max_delta, const char *origin)
{
    memset(c, 0, sizeof *c);
    if (len < CTB_HEADER || memcmp(buf, CTB_MAGIC, 8))
        return spes_errf(SPES_EFORMAT, "%s: not a contribution (bad magic or %zu bytes)", origin, len);
    if (get32(buf + 8) != 1)
        return spes_errf(SPES_EFORMAT, "%s: contribution version %u is not supported", origin,
                         get32(buf + 8));
    uint32_t codec = get32(buf + 12), ncols = get32(buf + 28);
    if (codec != SPES_CODEC_FP32 && codec != SPES_CODEC_BF16)
        return spes_errf(SPES_EFORMAT, "%s: unknown contribution codec %u", origin, codec);
    if (get64(buf + 48) != lo->shared_numel || get64(buf + 56) != lo->column_numel)
        return spes_errf(SPES_EFORMAT,
                         "%s: contribution sizes (%llu, %llu) do not match this model (%zu, %zu)", origin,
                         (unsigned long long)get64(buf + 48), (unsigned long long)get64(buf + 56),
                         lo->shared_numel, lo->column_numel);
    if (ncols > (uint32_t)E)
        return spes_errf(SPES_EFORMAT, "%s: contribution has %u columns, the model has %d", origin, ncols, E);
    size_t vsize = codec == SPES_CODEC_FP32 ? 4 : 2;
    size_t nvals = lo->shared_numel + (size_t)ncols * lo->column_numel;
    if (len != CTB_HEADER + (size_t)ncols * 4 + nvals * vsize)
        return spes_errf(SPES_EFORMAT, "%s: contribution is %zu bytes, expected %zu", origin, len,
                         CTB_HEADER + (size_t)ncols * 4 + nvals * vsize);
    c->round = (int64_t)get64(buf + 16);
    c->node = (int32_t)get32(buf + 24);
    c->ncols = (int)ncols;
    c->tokens = get64(buf + 32);
    memcpy(&c->loss_mean, buf + 40, 4);
    c->shared_numel = lo->shared_numel;
    c->column_numel = lo->column_numel;
    c->cols = malloc((size_t)(ncols ? ncols : 1) * sizeof *c->cols);
    c->val = malloc(nvals * sizeof *c->val);
    int rc = (!c->cols || !c->val) ? SPES_ENOMEM : 0;
    if (!rc)
        rc = check_cols(c, buf + CTB_HEADER, E, origin);
    if (!rc)
        rc = decode_values(c, buf + CTB_HEADER + (size_t)ncols * 4, codec, base, max_delta, origin);
    if (rc)
        spes_contrib_fini(c);
    return rc;
}

int spes_contrib_check_author(const spes_contrib *c, int64_t round, int32_t node, const uint8_t *cols, int E,
                              const char *origin)
{
    if (c->node != node)
        return spes_errf(SPES_EAUTH, "%s: the contribution names node %d, its announcer is node %d", origin,
                         c->node, node);
    if (c->round != round)
        return spes_errf(SPES_ESTATE, "%s: the contribution is of round %lld, not of round %lld", origin,
                         (long long)c->round, (long long)round);
    int k = 0;
    for (int e = 0; e < E; e++) {
        int has = k < c->ncols && c->cols[k] == e;
        if (has != (cols[e] != 0))
            return spes_errf(SPES_EAUTH, "%s: the contribution %s column %d, which its announcer %s", origin,
                             has ? "carries" : "lacks", e,
                             has ? "does not own this round" : "owns this round");
        k += has;
    }
    return 0;
}

void spes__mean_segment(float *params, const float *const *vs, int k, size_t n, float *acc)
{
    if (k == 1) {
        memcpy(params, vs[0], n * sizeof *params);
        return;
    }
    memset(acc, 0, n * sizeof *acc);
    for (int j = 0; j < k; j++)
        for (size_t i = 0; i < n; i++)
            acc[i] += vs[j][i] - params[i];
    for (size_t i = 0; i < n; i++)
        params[i] += acc[i] / (float)k;
}

int spes__aggregate_walk(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n,
                         spes__segment_fn seg, void *ctx)
{
    for (int i = 1; i < n; i++)
        if (cs[i]->node <= cs[i - 1]->node)
            return spes_errf(SPES_EINVAL, "aggregate: contributions not sorted by node id");
    if (n == 0)
        return 0;
    size_t width = lo->shared_numel > lo->column_numel ? lo->shared_numel : lo->column_numel;
    float *acc = malloc(width * sizeof *acc);
    const float **vs = malloc((size_t)n * sizeof *vs);
    if (!acc || !vs) {
        free(acc);
        free(vs);
        return SPES_ENOMEM;
    }
    for (int k = 0; k < n; k++)
        vs[k] = cs[k]->val;
    seg(ctx, params, 0, vs, n, lo->shared_numel, acc);
    for (int e = 0; e < E; e++) {
        int owners = 0;
        for (int k = 0; k < n; k++)
            for (int j = 0; j < cs[k]->ncols; j++)
                if (cs[k]->cols[j] == e)
                    vs[owners++] = cs[k]->val + lo->shared_numel + (size_t)j * lo->column_numel;
        size_t off = lo->shared_numel + (size_t)e * lo->column_numel;
        if (owners)
            seg(ctx, params + off, off, vs, owners, lo->column_numel, acc);
    }
    free(acc);
    free(vs);
    return 0;
}

static void plain_segment(void *ctx, float *params, size_t off, const float *const *vs, int k, size_t n,
                          float *acc)
{
    (void)ctx;
    (void)off;
    spes__mean_segment(params, vs, k, n, acc);
}

int spes_aggregate(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n)
{
    return spes__aggregate_walk(params, lo, E, cs, n, plain_segment, NULL);
}

int spes_state_digest(const float *params, size_t numel, int64_t round, uint8_t out[32])
{
    spes_sha256_ctx c;
    int rc = spes_sha256_init(&c);
    if (rc)
        return rc;
    uint8_t hdr[26];
    memcpy(hdr, "SPESSTATE1", 10);
    put64(hdr + 10, (uint64_t)round);
    put64(hdr + 18, (uint64_t)numel);
    spes_sha256_update(&c, hdr, sizeof hdr);
    spes_sha256_update(&c, params, numel * sizeof(float));
    spes_sha256_final(&c, out);
    return 0;
}
