/* fuzz_sync_group.c: a peer's group blob (one shard of the shared block: a node's contribution or an
 * aggregator's aggregate) through spes_group_decode, against a fixed `want` per codec and kind: shard 2
 * of 4 at offset 768 of 300 values, round 7, node 3, any count of contributors for an aggregate. An
 * accepted input must re-encode in its codec (a residual for q8ef and topk) to bytes that decode, fp32
 * to the same values bit for bit, and leave the residual (a fixed small one before) finite. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sync/shard.h"

enum { N = 300 };

static void recode(const spes_group_hdr *h, const float *val, const float *base)
{
    static float ef[N], again[N];
    spes_group_hdr got;
    uint8_t *buf;
    size_t len;
    for (size_t i = 0; i < N; i++)
        ef[i] = 0.001f * (float)(i % 7) - 0.003f;
    if (spes_group_encode(h, val, base, ef, &buf, &len) != 0)
        return;
    if (spes_group_decode(&got, again, buf, len, h, base, 1e7f, "fuzz") != 0)
        abort();
    if (h->codec == SPES_CODEC_FP32 && memcmp(again, val, sizeof again))
        abort();
    if (got.contributors != h->contributors)
        abort();
    for (size_t i = 0; i < N; i++)
        if (!isfinite(ef[i]))
            abort();
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static float base[N], val[N];
    for (size_t i = 0; i < N; i++)
        base[i] = 0.25f + 0.001f * (float)(i % 13);
    for (uint32_t kind = SPES_GROUP_CONTRIB; kind <= SPES_GROUP_AGGREGATE; kind++)
        for (uint32_t codec = SPES_CODEC_FP32; codec <= SPES_CODEC_TOPK; codec++) {
            spes_group_hdr want = {.kind = kind,
                                   .codec = codec,
                                   .round = 7,
                                   .node = 3,
                                   .shard = 2,
                                   .shards = 4,
                                   .offset = 768,
                                   .count = N},
                           h;
            if (spes_group_decode(&h, val, data, size, &want, base, 1e6f, "fuzz") == 0)
                recode(&h, val, base);
        }
    return 0;
}
