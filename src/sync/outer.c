/* outer.c: the outer optimizer (Nesterov momentum on the round's mean delta)
 * and the digest of a state that carries momentum. Pure computation. */
#include "sync/outer.h"
#include "core/error.h"
#include "core/sha256.h"

#include <stdlib.h>
#include <string.h>

int spes_outer_plain(const spes_outer *o)
{
    return !o || (o->lr == 1.0f && o->mu == 0.0f);
}

int spes_outer_has_state(const spes_outer *o)
{
    return o && o->mu != 0.0f;
}

void spes__outer_step(float *params, const float *d, size_t n, float *m, float lr, float mu)
{
    if (!m) {
        for (size_t i = 0; i < n; i++)
            params[i] = params[i] + lr * d[i];
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float di = d[i];
        float t = mu * m[i];
        m[i] = t + di;
        float u = mu * m[i];
        u = di + u;
        params[i] = params[i] + lr * u;
    }
}

/* outer_segment applies the outer step to n values of params (S_r on entry)
 * from the k contributions' values vs, with momentum m (NULL when mu is 0).
 * The mean delta is formed as spes_aggregate forms it: the single delta for
 * k = 1, else the fp32 sum of deltas in order divided by k. */
static void outer_segment(float *params, const float *const *vs, int k, size_t n, float *acc, float *m,
                          float lr, float mu)
{
    if (k == 1) {
        for (size_t i = 0; i < n; i++)
            acc[i] = vs[0][i] - params[i];
    } else {
        memset(acc, 0, n * sizeof *acc);
        for (int j = 0; j < k; j++)
            for (size_t i = 0; i < n; i++)
                acc[i] += vs[j][i] - params[i];
        for (size_t i = 0; i < n; i++)
            acc[i] = acc[i] / (float)k;
    }
    spes__outer_step(params, acc, n, m, lr, mu);
}

void spes__outer_seg(void *ctx, float *params, size_t off, const float *const *vs, int k, size_t n,
                     float *acc)
{
    const spes_outer *o = ctx;
    float *m = o->mu != 0.0f ? o->mom + off : NULL;
    outer_segment(params, vs, k, n, acc, m, o->lr, o->mu);
}

int spes_aggregate_outer(float *params, const spes_layout *lo, int E, const spes_contrib *const *cs, int n,
                         const spes_outer *o)
{
    if (spes_outer_plain(o))
        return spes_aggregate(params, lo, E, cs, n);
    if (o->mu != 0.0f && !o->mom)
        return spes_errf(SPES_EINVAL, "aggregate: outer momentum %g without a momentum buffer",
                         (double)o->mu);
    return spes__aggregate_walk(params, lo, E, cs, n, spes__outer_seg, (void *)o);
}

int spes_state_digest2(const float *params, const float *mom, size_t numel, int64_t round, uint8_t out[32])
{
    if (!mom)
        return spes_state_digest(params, numel, round, out);
    spes_sha256_ctx c;
    int rc = spes_sha256_init(&c);
    if (rc)
        return rc;
    uint8_t hdr[26];
    uint64_t r = (uint64_t)round, nn = numel;
    memcpy(hdr, "SPESSTATE2", 10);
    memcpy(hdr + 10, &r, 8);
    memcpy(hdr + 18, &nn, 8);
    spes_sha256_update(&c, hdr, sizeof hdr);
    spes_sha256_update(&c, params, numel * sizeof(float));
    spes_sha256_update(&c, mom, numel * sizeof(float));
    spes_sha256_final(&c, out);
    return 0;
}

int spes_outer_init(spes_outer *o, double lr, double mu, size_t numel)
{
    o->lr = (float)lr;
    o->mu = (float)mu;
    if (o->mu == 0.0f || o->mom)
        return 0;
    o->mom = calloc(numel ? numel : 1, sizeof *o->mom);
    return o->mom ? 0 : SPES_ENOMEM;
}

void spes_outer_fini(spes_outer *o)
{
    free(o->mom);
    o->mom = NULL;
}

#define STATE_HDR 26 /* magic (10) + round (8) + numel (8) */

size_t spes_state_blob_size(size_t numel, int with_momentum)
{
    return STATE_HDR + numel * 4 * (with_momentum ? 2 : 1);
}

int spes_state_blob_make(const float *params, const float *mom, size_t numel, uint64_t round, uint8_t **out,
                         size_t *len)
{
    size_t n = spes_state_blob_size(numel, mom != NULL);
    uint8_t *b = malloc(n);
    if (!b)
        return SPES_ENOMEM;
    uint64_t nn = numel;
    memcpy(b, mom ? "SPESSTATE2" : "SPESSTATE1", 10);
    memcpy(b + 10, &round, 8);
    memcpy(b + 18, &nn, 8);
    memcpy(b + STATE_HDR, params, numel * 4);
    if (mom)
        memcpy(b + STATE_HDR + numel * 4, mom, numel * 4);
    *out = b;
    *len = n;
    return 0;
}

int spes_state_blob_parse(const uint8_t *buf, size_t len, size_t numel, uint64_t round, float *params,
                          float *mom, const char *origin)
{
    const char *magic = mom ? "SPESSTATE2" : "SPESSTATE1";
    size_t want = spes_state_blob_size(numel, mom != NULL);
    if (len < STATE_HDR || memcmp(buf, magic, 10))
        return spes_errf(
            SPES_EFORMAT, "%s: not a %s state blob (%s)", origin, mom ? "momentum-carrying" : "plain",
            len >= 10 && !memcmp(buf, "SPESSTATE", 9) ? "the run's outer_momentum differs?" : "bad magic");
    uint64_t r, nn;
    memcpy(&r, buf + 10, 8);
    memcpy(&nn, buf + 18, 8);
    if (nn != numel || len != want)
        return spes_errf(SPES_EFORMAT,
                         "%s: state of %llu values in %zu bytes, expected %zu values in %zu bytes", origin,
                         (unsigned long long)nn, len, numel, want);
    if (r != round)
        return spes_errf(SPES_EFORMAT, "%s: state of round %llu, expected %llu", origin,
                         (unsigned long long)r, (unsigned long long)round);
    memcpy(params, buf + STATE_HDR, numel * 4);
    if (mom)
        memcpy(mom, buf + STATE_HDR + numel * 4, numel * 4);
    return 0;
}
