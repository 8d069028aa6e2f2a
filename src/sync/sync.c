/* sync.c: contribution codec, aggregation and digest.
 * Wire format of a contribution (little-endian):
 *   "SPESCTB1" | u32 version=1 | u32 codec | i64 round | i32 node | u32 ncols |
 *   u64 tokens | f32 loss_mean | u64 shared_numel | u64 column_numel |
 *   i32 cols[ncols] | values for shared, then each column: fp32 values, bf16
 *   deltas, (q8ef) per group its blocks of 128, each an f32 scale then one
 *   int8 per value (the last block of a group may be shorter), or (topk) per
 *   group its chunks of 4096 (spes_topk_encode in sync.h).
 * Decoding never trusts a length: every size is checked against the layout
 * and the buffer before anything is read. */
#include "sync/sync.h"
#include "core/error.h"
#include "core/le.h"
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

const float *spes_contrib_group_base(const spes_contrib *c, const float *base, int g, size_t *n)
{
    *n = g < 0 ? c->shared_numel : c->column_numel;
    return g < 0 ? base : base + c->shared_numel + (size_t)c->cols[g] * c->column_numel;
}

spes_codec spes_codec_from_name(const char *name)
{
    if (!strcmp(name, "fp32"))
        return SPES_CODEC_FP32;
    if (!strcmp(name, "bf16"))
        return SPES_CODEC_BF16;
    if (!strcmp(name, "q8ef"))
        return SPES_CODEC_Q8EF;
    if (!strcmp(name, "topk"))
        return SPES_CODEC_TOPK;
    return 0;
}

size_t spes_q8_size(size_t n)
{
    return (n + SPES_Q8_BLOCK - 1) / SPES_Q8_BLOCK * 4 + n;
}

/* all_finite refuses a non-finite value among the n of u, naming the codec and the value. */
static int all_finite(const char *codec, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(u[i]))
            return spes_errf(SPES_ERANGE, "%s: value %zu to encode is %s", codec, i,
                             isnan(u[i]) ? "NaN" : "infinite");
    return 0;
}

int spes_q8_encode(const float *u, size_t n, uint8_t *dst, float *resid)
{
    int rc = all_finite("q8ef", u, n);
    if (rc)
        return rc;
    for (size_t at = 0; at < n; at += SPES_Q8_BLOCK) {
        size_t k = n - at < SPES_Q8_BLOCK ? n - at : SPES_Q8_BLOCK;
        float m = 0.0f;
        for (size_t i = 0; i < k; i++)
            m = fmaxf(m, fabsf(u[at + i]));
        float sc = m / 127.0f;
        memcpy(dst, &sc, 4);
        int8_t *q = (int8_t *)(dst + 4);
        for (size_t i = 0; i < k; i++) {
            float r = sc > 0.0f ? fminf(fmaxf(rintf(u[at + i] / sc), -127.0f), 127.0f) : 0.0f;
            q[i] = (int8_t)r;
            if (resid)
                resid[at + i] = u[at + i] - (float)q[i] * sc;
        }
        dst += 4 + k;
    }
    return 0;
}

/* topk_k is how many values a chunk of len values keeps. */
static size_t topk_k(size_t len)
{
    return len < SPES_TOPK_K ? len : SPES_TOPK_K;
}

/* topk_chunk_size is the encoded size of a chunk that keeps k values. */
static size_t topk_chunk_size(size_t k)
{
    return 16 + (12 * k + 7) / 8 + (2 * k + 7) / 8;
}

size_t spes_topk_size(size_t n)
{
    size_t full = n / SPES_TOPK_CHUNK, rest = n % SPES_TOPK_CHUNK;
    return full * topk_chunk_size(SPES_TOPK_K) + (rest ? topk_chunk_size(topk_k(rest)) : 0);
}

/* put_bits stores the w-bit field i of a little-endian bit stream (LSB first). */
static void put_bits(uint8_t *p, size_t i, unsigned w, unsigned v)
{
    for (unsigned b = 0; b < w; b++) {
        size_t at = i * w + b;
        if (v >> b & 1u)
            p[at / 8] |= (uint8_t)(1u << (at % 8));
    }
}

static unsigned get_bits(const uint8_t *p, size_t i, unsigned w)
{
    unsigned v = 0;
    for (unsigned b = 0; b < w; b++) {
        size_t at = i * w + b;
        v |= (unsigned)(p[at / 8] >> (at % 8) & 1u) << b;
    }
    return v;
}

/* topk_better: value a is kept before value b (larger |u|, ties to the lower index). */
static int topk_better(const float *u, uint16_t a, uint16_t b)
{
    float x = fabsf(u[a]), y = fabsf(u[b]);
    return x > y || (x == y && a < b);
}

/* topk_sift restores the heap (root: the worst kept) below position i. */
static void topk_sift(const float *u, uint16_t *h, size_t k, size_t i)
{
    for (;;) {
        size_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < k && topk_better(u, h[w], h[l]))
            w = l;
        if (r < k && topk_better(u, h[w], h[r]))
            w = r;
        if (w == i)
            return;
        uint16_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* topk_chunk encodes one chunk of len values (see spes_topk_encode). */
static void topk_chunk(const float *u, size_t len, uint8_t *dst, float *resid)
{
    size_t k = topk_k(len);
    uint16_t h[SPES_TOPK_K], byval[SPES_TOPK_K];
    for (size_t i = 0; i < k; i++)
        h[i] = (uint16_t)i;
    for (size_t i = k / 2; i-- > 0;)
        topk_sift(u, h, k, i);
    for (size_t i = k; i < len; i++)
        if (topk_better(u, (uint16_t)i, h[0])) {
            h[0] = (uint16_t)i;
            topk_sift(u, h, k, 0);
        }
    /* wire order: by index; levels: rank groups by value (ties by index) */
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && h[j] < h[j - 1]; j--) {
            uint16_t t = h[j];
            h[j] = h[j - 1];
            h[j - 1] = t;
        }
    memcpy(byval, h, k * sizeof *h);
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && (u[byval[j]] < u[byval[j - 1]] ||
                                     (u[byval[j]] == u[byval[j - 1]] && byval[j] < byval[j - 1]));
             j--) {
            uint16_t t = byval[j];
            byval[j] = byval[j - 1];
            byval[j - 1] = t;
        }
    float level[4];
    uint8_t code[SPES_TOPK_CHUNK]; /* by index within the chunk, for the kept ones */
    for (unsigned c = 0; c < 4; c++) {
        size_t lo = k * c / 4, hi = k * (c + 1) / 4;
        float sum = 0.0f;
        for (size_t r = lo; r < hi; r++) {
            sum += u[byval[r]];
            code[byval[r]] = (uint8_t)c;
        }
        level[c] = hi > lo ? sum / (float)(hi - lo) : 0.0f;
    }
    memset(dst, 0, topk_chunk_size(k));
    memcpy(dst, level, 16);
    uint8_t *idx = dst + 16, *codes = idx + (12 * k + 7) / 8;
    if (resid)
        memcpy(resid, u, len * sizeof *u);
    for (size_t i = 0; i < k; i++) {
        put_bits(idx, i, 12, h[i]);
        put_bits(codes, i, 2, code[h[i]]);
        if (resid)
            resid[h[i]] = u[h[i]] - level[code[h[i]]];
    }
}

int spes_topk_encode(const float *u, size_t n, uint8_t *dst, float *resid)
{
    int rc = all_finite("topk", u, n);
    if (rc)
        return rc;
    for (size_t at = 0; at < n; at += SPES_TOPK_CHUNK) {
        size_t len = n - at < SPES_TOPK_CHUNK ? n - at : SPES_TOPK_CHUNK;
        topk_chunk(u + at, len, dst, resid ? resid + at : NULL);
        dst += topk_chunk_size(topk_k(len));
    }
    return 0;
}

size_t spes__values_size(uint32_t codec, size_t n)
{
    switch (codec) {
    case SPES_CODEC_FP32: return 4 * n;
    case SPES_CODEC_BF16: return 2 * n;
    case SPES_CODEC_Q8EF: return spes_q8_size(n);
    case SPES_CODEC_TOPK: return spes_topk_size(n);
    default: return 0;
    }
}

int spes__values_encode(uint8_t *dst, uint32_t codec, const float *val, const float *base, const float *ef,
                        size_t n, float *u)
{
    if (codec == SPES_CODEC_FP32) {
        memcpy(dst, val, n * sizeof *val);
        return 0;
    }
    if (codec == SPES_CODEC_BF16) {
        for (size_t k = 0; k < n; k++) {
            uint16_t h = spes_bf16_from_f32(val[k] - base[k]);
            memcpy(dst + 2 * k, &h, 2);
        }
        return 0;
    }
    for (size_t k = 0; k < n; k++)
        u[k] = (val[k] - base[k]) + (ef ? ef[k] : 0.0f);
    /* u becomes the residual in place */
    return codec == SPES_CODEC_Q8EF ? spes_q8_encode(u, n, dst, u) : spes_topk_encode(u, n, dst, u);
}

/* encode_ef writes the values of c in an error-feedback codec (q8ef, topk): per group u = (value -
 * base) + ef (ef in c's value order), encoded, and ef updated to the residual once every group
 * encoded (so a refusal leaves it as it was). */
static int encode_ef(const spes_contrib *c, spes_codec codec, const float *base, float *ef, uint8_t *p)
{
    size_t nvals = c->shared_numel + (size_t)c->ncols * c->column_numel;
    float *u = malloc((nvals ? nvals : 1) * sizeof *u);
    if (!u)
        return SPES_ENOMEM;
    size_t i = c->columns_only ? c->shared_numel : 0, from = i, n;
    int rc = 0;
    for (int s = c->columns_only ? 0 : -1; !rc && s < c->ncols; s++) {
        const float *b = spes_contrib_group_base(c, base, s, &n);
        rc = spes__values_encode(p, codec, c->val + i, b, ef ? ef + i : NULL, n, u + i);
        p += spes__values_size(codec, n);
        i += n;
    }
    if (!rc && ef)
        memcpy(ef + from, u + from, (nvals - from) * sizeof *u);
    free(u);
    return rc;
}

/* values_size is the encoded size of a contribution's values in the codec. */
static size_t values_size(uint32_t codec, size_t shared, size_t column, size_t ncols)
{
    return spes__values_size(codec, shared) + ncols * spes__values_size(codec, column);
}

int spes_contrib_encode(const spes_contrib *c, spes_codec codec, const float *base, float *ef, uint8_t **out,
                        size_t *len)
{
    if (codec < SPES_CODEC_FP32 || codec > SPES_CODEC_TOPK)
        return spes_errf(SPES_EINVAL, "unknown contribution codec %d", (int)codec);
    size_t sh = c->columns_only ? 0 : c->shared_numel; /* the shared values carried */
    size_t nvals = c->shared_numel + (size_t)c->ncols * c->column_numel;
    size_t n = CTB_HEADER + (size_t)c->ncols * 4 + values_size(codec, sh, c->column_numel, (size_t)c->ncols);
    uint8_t *b = malloc(n);
    if (!b)
        return SPES_ENOMEM;
    memcpy(b, CTB_MAGIC, 8);
    spes_le_put32(b + 8, 1);
    spes_le_put32(b + 12, (uint32_t)codec);
    spes_le_put64(b + 16, (uint64_t)c->round);
    spes_le_put32(b + 24, (uint32_t)c->node);
    spes_le_put32(b + 28, (uint32_t)c->ncols);
    spes_le_put64(b + 32, c->tokens);
    memcpy(b + 40, &c->loss_mean, 4);
    spes_le_put32(b + 44, 0);
    spes_le_put64(b + 48, sh);
    spes_le_put64(b + 56, c->column_numel);
    uint8_t *p = b + CTB_HEADER;
    for (int i = 0; i < c->ncols; i++, p += 4)
        spes_le_put32(p, (uint32_t)c->cols[i]);
    size_t skip = c->shared_numel - sh; /* values not carried */
    if (codec == SPES_CODEC_FP32) {
        memcpy(p, c->val + skip, (nvals - skip) * 4);
    } else if (codec == SPES_CODEC_BF16) {
        size_t i = skip, n;
        for (int s = c->columns_only ? 0 : -1; s < c->ncols; s++) {
            const float *b = spes_contrib_group_base(c, base, s, &n);
            spes__values_encode(p + 2 * (i - skip), codec, c->val + i, b, NULL, n, NULL);
            i += n;
        }
    } else {
        int rc = encode_ef(c, codec, base, ef, p);
        if (rc) {
            free(b);
            return rc;
        }
    }
    *out = b;
    *len = n;
    return 0;
}

size_t spes_contrib_max_size(const spes_layout *lo, int E)
{
    size_t f = values_size(SPES_CODEC_FP32, lo->shared_numel, lo->column_numel, (size_t)E);
    size_t q = values_size(SPES_CODEC_Q8EF, lo->shared_numel, lo->column_numel, (size_t)E);
    return CTB_HEADER + (size_t)E * 4 + (f > q ? f : q);
}

static int check_cols(spes_contrib *c, const uint8_t *p, int E, const char *origin)
{
    for (int i = 0; i < c->ncols; i++) {
        int32_t col = (int32_t)spes_le_get32(p + 4 * (size_t)i);
        if (col < 0 || col >= E)
            return spes_errf(SPES_EFORMAT, "%s: contribution column %d is outside 0..%d", origin, col, E - 1);
        if (i > 0 && col <= c->cols[i - 1])
            return spes_errf(SPES_EFORMAT, "%s: contribution columns are not strictly increasing at %d",
                             origin, col);
        c->cols[i] = col;
    }
    return 0;
}

/* check_value stores the new value v (delta d; value i in errors) in val[j] after the checks every
 * codec shares. */
static int check_value(float *val, size_t j, size_t i, float v, float d, float max_delta, const char *what,
                       const char *origin)
{
    if (!isfinite(v) || !isfinite(d))
        return spes_errf(SPES_ERANGE, "%s: %s value %zu is %s", origin, what, i,
                         isnan(v) || isnan(d) ? "NaN" : "infinite");
    if (fabsf(d) > max_delta)
        return spes_errf(SPES_ERANGE, "%s: %s value %zu moved by %g, beyond the bound %g", origin, what, i,
                         (double)d, (double)max_delta);
    val[j] = v;
    return 0;
}

/* decode_q8 reads one group of n q8ef values (deltas against bs) into val, numbered from i. */
static int decode_q8(float *val, const uint8_t *p, size_t i, const float *bs, size_t n, float max_delta,
                     const char *what, const char *origin)
{
    for (size_t at = 0; at < n; at += SPES_Q8_BLOCK) {
        size_t k = n - at < SPES_Q8_BLOCK ? n - at : SPES_Q8_BLOCK;
        float sc;
        memcpy(&sc, p, 4);
        if (!isfinite(sc) || sc < 0.0f)
            return spes_errf(SPES_ERANGE, "%s: %s scale of the block at value %zu is %g", origin, what,
                             i + at, (double)sc);
        const int8_t *q = (const int8_t *)(p + 4);
        for (size_t j = 0; j < k; j++) {
            if (q[j] == -128)
                return spes_errf(SPES_EFORMAT, "%s: %s value %zu is -128, outside -127..127", origin, what,
                                 i + at + j);
            float d = (float)q[j] * sc;
            int rc = check_value(val, at + j, i + at + j, bs[at + j] + d, d, max_delta, what, origin);
            if (rc)
                return rc;
        }
        p += 4 + k;
    }
    return 0;
}

/* decode_topk reads one group of n topk values (deltas against bs) into val, numbered from i. */
static int decode_topk(float *val, const uint8_t *p, size_t i, const float *bs, size_t n, float max_delta,
                       const char *what, const char *origin)
{
    for (size_t at = 0; at < n; at += SPES_TOPK_CHUNK) {
        size_t len = n - at < SPES_TOPK_CHUNK ? n - at : SPES_TOPK_CHUNK, k = topk_k(len);
        float level[4];
        memcpy(level, p, 16);
        for (int l = 0; l < 4; l++)
            if (!isfinite(level[l]))
                return spes_errf(SPES_ERANGE, "%s: %s level %d of the chunk at value %zu is %g", origin, what,
                                 l, i + at, (double)level[l]);
        const uint8_t *idx = p + 16, *codes = idx + (12 * k + 7) / 8;
        float d[SPES_TOPK_CHUNK];
        memset(d, 0, len * sizeof *d);
        for (size_t j = 0, prev = 0; j < k; j++) {
            size_t x = get_bits(idx, j, 12);
            if (x >= len || (j > 0 && x <= prev))
                return spes_errf(SPES_EFORMAT,
                                 "%s: %s index %zu of the chunk at value %zu is out of order or range",
                                 origin, what, x, i + at);
            d[x] = level[get_bits(codes, j, 2)];
            prev = x;
        }
        for (size_t j = 0; j < len; j++) {
            int rc = check_value(val, at + j, i + at + j, bs[at + j] + d[j], d[j], max_delta, what, origin);
            if (rc)
                return rc;
        }
        p += topk_chunk_size(k);
    }
    return 0;
}

int spes__values_decode(float *val, const uint8_t *src, uint32_t codec, const float *base, size_t n,
                        size_t first, float max_delta, const char *what, const char *origin)
{
    if (codec == SPES_CODEC_Q8EF)
        return decode_q8(val, src, first, base, n, max_delta, what, origin);
    if (codec == SPES_CODEC_TOPK)
        return decode_topk(val, src, first, base, n, max_delta, what, origin);
    for (size_t k = 0; k < n; k++) {
        float v, b = base[k], d;
        if (codec == SPES_CODEC_FP32) {
            memcpy(&v, src + 4 * k, 4);
            d = v - b;
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * k, 2);
            d = spes_f32_from_bf16(h);
            v = b + d;
        }
        int rc = check_value(val, k, first + k, v, d, max_delta, what, origin);
        if (rc)
            return rc;
    }
    return 0;
}

static int decode_values(spes_contrib *c, const uint8_t *p, uint32_t codec, const float *base,
                         float max_delta, const char *origin)
{
    size_t i = 0, n;
    if (c->columns_only) { /* the agreed values stand in for the shared block it does not carry */
        memcpy(c->val, base, c->shared_numel * sizeof *c->val);
        i = c->shared_numel;
    }
    for (int s = c->columns_only ? 0 : -1; s < c->ncols; s++) {
        const float *bs = spes_contrib_group_base(c, base, s, &n);
        int rc = spes__values_decode(c->val + i, p, codec, bs, n, i, max_delta, "contribution", origin);
        if (rc)
            return rc;
        p += spes__values_size(codec, n);
        i += n;
    }
    return 0;
}

int spes_contrib_decode(spes_contrib *c, const uint8_t *buf, size_t len, const spes_layout *lo, int E,
                        const float *base, float max_delta, const char *origin)
{
    memset(c, 0, sizeof *c);
    if (len < CTB_HEADER || memcmp(buf, CTB_MAGIC, 8))
        return spes_errf(SPES_EFORMAT, "%s: not a contribution (bad magic or %zu bytes)", origin, len);
    if (spes_le_get32(buf + 8) != 1)
        return spes_errf(SPES_EFORMAT, "%s: contribution version %u is not supported", origin,
                         spes_le_get32(buf + 8));
    uint32_t codec = spes_le_get32(buf + 12), ncols = spes_le_get32(buf + 28);
    if (codec < SPES_CODEC_FP32 || codec > SPES_CODEC_TOPK)
        return spes_errf(SPES_EFORMAT, "%s: unknown contribution codec %u", origin, codec);
    int columns_only =
        spes_le_get64(buf + 48) == 0 && lo->shared_numel > 0; /* sharded rounds: columns only */
    if ((!columns_only && spes_le_get64(buf + 48) != lo->shared_numel) ||
        spes_le_get64(buf + 56) != lo->column_numel)
        return spes_errf(SPES_EFORMAT,
                         "%s: contribution sizes (%llu, %llu) do not match this model (%zu, %zu)", origin,
                         (unsigned long long)spes_le_get64(buf + 48),
                         (unsigned long long)spes_le_get64(buf + 56), lo->shared_numel, lo->column_numel);
    if (ncols > (uint32_t)E)
        return spes_errf(SPES_EFORMAT, "%s: contribution has %u columns, the model has %d", origin, ncols, E);
    size_t nvals = lo->shared_numel + (size_t)ncols * lo->column_numel;
    size_t want = CTB_HEADER + (size_t)ncols * 4 +
                  values_size(codec, columns_only ? 0 : lo->shared_numel, lo->column_numel, ncols);
    if (len != want)
        return spes_errf(SPES_EFORMAT, "%s: contribution is %zu bytes, expected %zu", origin, len, want);
    c->round = (int64_t)spes_le_get64(buf + 16);
    c->node = (int32_t)spes_le_get32(buf + 24);
    c->ncols = (int)ncols;
    c->codec = codec;
    c->tokens = spes_le_get64(buf + 32);
    memcpy(&c->loss_mean, buf + 40, 4);
    c->shared_numel = lo->shared_numel;
    c->column_numel = lo->column_numel;
    c->columns_only = columns_only;
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
    int columns_only = 0;
    for (int k = 0; k < n; k++) {
        vs[k] = cs[k]->val;
        columns_only += cs[k]->columns_only;
    }
    if (columns_only && columns_only != n) {
        free(acc);
        free(vs);
        return spes_errf(SPES_EINVAL, "aggregate: some contributions carry the shared block and some do not");
    }
    if (!columns_only) /* else the shared block is the aggregators' (sharded rounds) */
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
    spes_le_put64(hdr + 10, (uint64_t)round);
    spes_le_put64(hdr + 18, (uint64_t)numel);
    spes_sha256_update(&c, hdr, sizeof hdr);
    spes_sha256_update(&c, params, numel * sizeof(float));
    spes_sha256_final(&c, out);
    return 0;
}
