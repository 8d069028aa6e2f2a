/* shard.c: the shard plan, the group blob and a shard's aggregate (shard.h).
 * Wire format of a group blob (little-endian):
 *   "SPESGRP1" | u32 version=1 | u32 kind | u32 codec | i64 round | i32 node | u32 shard |
 *   u32 shards | u64 offset | u64 count | u32 contributors | count values in the codec, as one group
 *   of a contribution (sync.c): fp32 values, bf16 deltas, q8ef blocks or topk chunks.
 * The values are encoded and decoded by sync.c's group codec, never by a copy of it here. Decoding
 * never trusts a length: the header must match what the caller asked for, and the size must be exact,
 * before a value is read. */
#include "sync/shard.h"
#include "core/error.h"
#include "core/le.h"

#include <stdlib.h>
#include <string.h>

#define GRP_MAGIC "SPESGRP1"

int spes_shard_plan(size_t shared_numel, int capable, size_t *off)
{
    size_t k0 = capable > 0 ? (size_t)capable : 1, most = shared_numel / SPES_SHARD_MIN;
    if (k0 > most)
        k0 = most;
    if (k0 > SPES_SHARD_MAX)
        k0 = SPES_SHARD_MAX;
    off[0] = 0;
    if (k0 <= 1) {
        off[1] = shared_numel;
        return 1;
    }
    /* k0 >= 2, so neither the division nor the rounding below can overflow */
    size_t len = shared_numel / k0 + (shared_numel % k0 != 0);
    len = (len + SPES_Q8_BLOCK - 1) / SPES_Q8_BLOCK * SPES_Q8_BLOCK;
    int k = 0;
    while (off[k] < shared_numel) {
        off[k + 1] = shared_numel - off[k] > len ? off[k] + len : shared_numel;
        k++;
    }
    return k;
}

size_t spes_group_size(uint32_t codec, size_t count)
{
    /* no codec takes more than 4 bytes a value, so this bound keeps the sum in range */
    if (count > (SIZE_MAX - SPES_GROUP_HEADER) / 4 || !spes__values_size(codec, 1))
        return 0;
    return SPES_GROUP_HEADER + spes__values_size(codec, count);
}

/* hdr_size is the size of the group blob that h describes (0: an unknown codec or too many values). */
static size_t hdr_size(const spes_group_hdr *h)
{
    if (h->count > (uint64_t)((SIZE_MAX - SPES_GROUP_HEADER) / 4))
        return 0;
    return spes_group_size(h->codec, (size_t)h->count);
}

/* hdr_invalid names what makes h a header no group blob may carry (NULL: none). */
static const char *hdr_invalid(const spes_group_hdr *h)
{
    if (h->kind != SPES_GROUP_CONTRIB && h->kind != SPES_GROUP_AGGREGATE)
        return "kind";
    if (!hdr_size(h))
        return "codec or count";
    if ((h->kind == SPES_GROUP_CONTRIB) != (h->contributors == 0))
        return "contributors";
    return NULL;
}

static void put_hdr(uint8_t *b, const spes_group_hdr *h)
{
    memcpy(b, GRP_MAGIC, 8);
    spes_le_put32(b + 8, 1);
    spes_le_put32(b + 12, h->kind);
    spes_le_put32(b + 16, h->codec);
    spes_le_put64(b + 20, (uint64_t)h->round);
    spes_le_put32(b + 28, (uint32_t)h->node);
    spes_le_put32(b + 32, h->shard);
    spes_le_put32(b + 36, h->shards);
    spes_le_put64(b + 40, h->offset);
    spes_le_put64(b + 48, h->count);
    spes_le_put32(b + 56, h->contributors);
}

int spes_group_encode(const spes_group_hdr *h, const float *val, const float *base, float *ef, uint8_t **out,
                      size_t *len)
{
    const char *bad = hdr_invalid(h);
    if (bad)
        return spes_errf(SPES_EINVAL, "group encode: the header's %s is not valid", bad);
    size_t n = (size_t)h->count, size = hdr_size(h);
    int ef_codec = h->codec == SPES_CODEC_Q8EF || h->codec == SPES_CODEC_TOPK;
    uint8_t *b = malloc(size);
    float *u = ef_codec ? malloc((n ? n : 1) * sizeof *u) : NULL;
    if (!b || (ef_codec && !u)) {
        free(b);
        free(u);
        return SPES_ENOMEM;
    }
    put_hdr(b, h);
    int rc = spes__values_encode(b + SPES_GROUP_HEADER, h->codec, val, base, ef, n, u);
    if (!rc && ef && ef_codec)
        memcpy(ef, u, n * sizeof *u);
    free(u);
    if (rc) {
        free(b);
        return rc;
    }
    *out = b;
    *len = size;
    return 0;
}

/* check_fields compares the header fields of buf with want's, in wire order, naming the first that
 * differs. */
static int check_fields(const uint8_t *buf, const spes_group_hdr *want, const char *origin)
{
    const struct {
        const char *name;
        int64_t got, want;
        int err;
    } f[] = {
        {"kind", spes_le_get32(buf + 12), want->kind, SPES_EFORMAT},
        {"codec", spes_le_get32(buf + 16), want->codec, SPES_EFORMAT},
        {"round", (int64_t)spes_le_get64(buf + 20), want->round, SPES_ESTATE},
        {"node", (int32_t)spes_le_get32(buf + 28), want->node, SPES_EAUTH},
        {"shard", spes_le_get32(buf + 32), want->shard, SPES_EFORMAT},
        {"shards", spes_le_get32(buf + 36), want->shards, SPES_EFORMAT},
        {"offset", (int64_t)spes_le_get64(buf + 40), (int64_t)want->offset, SPES_EFORMAT},
        {"count", (int64_t)spes_le_get64(buf + 48), (int64_t)want->count, SPES_EFORMAT},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].got == f[i].want)
            continue;
        if (i >= 6) /* offset and count are unsigned */
            return spes_errf(f[i].err, "%s: group %s is %llu, expected %llu", origin, f[i].name,
                             (unsigned long long)f[i].got, (unsigned long long)f[i].want);
        return spes_errf(f[i].err, "%s: group %s is %lld, expected %lld", origin, f[i].name,
                         (long long)f[i].got, (long long)f[i].want);
    }
    return 0;
}

/* check_contributors checks an aggregate's count of contributions (a contribution's must be 0). */
static int check_contributors(uint32_t got, const spes_group_hdr *want, const char *origin)
{
    if (want->kind == SPES_GROUP_CONTRIB && got != 0)
        return spes_errf(SPES_EFORMAT, "%s: group contributors is %u, a contribution's must be 0", origin,
                         got);
    if (want->kind == SPES_GROUP_AGGREGATE && got == 0)
        return spes_errf(SPES_EFORMAT, "%s: group contributors is 0, an aggregate's must be at least 1",
                         origin);
    if (want->kind == SPES_GROUP_AGGREGATE && want->contributors && got != want->contributors)
        return spes_errf(SPES_EFORMAT, "%s: group contributors is %u, expected %u", origin, got,
                         want->contributors);
    return 0;
}

int spes_group_decode(spes_group_hdr *h, float *val, const uint8_t *buf, size_t len,
                      const spes_group_hdr *want, const float *base, float max_delta, const char *origin)
{
    memset(h, 0, sizeof *h);
    if (want->kind != SPES_GROUP_CONTRIB && want->kind != SPES_GROUP_AGGREGATE)
        return spes_errf(SPES_EINVAL, "%s: group kind %u asked for is not valid", origin, want->kind);
    size_t size = hdr_size(want);
    if (!size)
        return spes_errf(SPES_EINVAL, "%s: a group of %llu values in codec %u cannot be asked for", origin,
                         (unsigned long long)want->count, want->codec);
    if (len < SPES_GROUP_HEADER || memcmp(buf, GRP_MAGIC, 8))
        return spes_errf(SPES_EFORMAT, "%s: not a group blob (bad magic or %zu bytes)", origin, len);
    if (spes_le_get32(buf + 8) != 1)
        return spes_errf(SPES_EFORMAT, "%s: group version %u is not supported", origin,
                         spes_le_get32(buf + 8));
    int rc = check_fields(buf, want, origin);
    if (!rc)
        rc = check_contributors(spes_le_get32(buf + 56), want, origin);
    if (rc)
        return rc;
    if (len != size)
        return spes_errf(SPES_EFORMAT, "%s: group is %zu bytes, expected %zu", origin, len, size);
    rc = spes__values_decode(val, buf + SPES_GROUP_HEADER, want->codec, base, (size_t)want->count, 0,
                             max_delta, "group", origin);
    if (rc)
        return rc;
    *h = *want;
    h->contributors = spes_le_get32(buf + 56);
    return 0;
}

int spes_shard_mean(float *out, const float *base, const float *const *vs, int k, size_t n)
{
    if (k < 1)
        return spes_errf(SPES_EINVAL, "shard mean: %d contributions, at least 1 needed", k);
    float *acc = NULL;
    if (k > 1 && !(acc = malloc((n ? n : 1) * sizeof *acc)))
        return SPES_ENOMEM;
    if (out != base)
        memcpy(out, base, n * sizeof *out);
    spes__mean_segment(out, vs, k, n, acc);
    free(acc);
    return 0;
}

void spes_shard_acc_add(float *acc, const float *v, const float *base, size_t n)
{
    for (size_t i = 0; i < n; i++)
        acc[i] += v[i] - base[i]; /* as spes__mean_segment's sum, one contribution at a time */
}

void spes_shard_acc_mean(float *out, const float *base, const float *acc, int k, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = base[i] + acc[i] / (float)k;
}
