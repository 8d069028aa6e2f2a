/* fuzz_sync_contrib.c: a peer's contribution blob through spes_contrib_decode
 * (the bytes every node decodes before aggregating). A small fixed layout:
 * shared 10 floats, 4 experts of 6 floats each. An accepted input must
 * re-encode (fp32) to values that decode back identically, and re-encode in
 * q8ef and topk (with a residual) to bytes that decode, the residual finite. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sync/sync.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum { S = 10, C = 6, E = 4 };
    static float base[S + E * C];
    spes_layout lo = {.shared_numel = S, .column_numel = C, .total_numel = S + E * C};
    spes_contrib c, d;
    if (spes_contrib_decode(&c, data, size, &lo, E, base, 1e6f, "fuzz") != 0)
        return 0;
    uint8_t *buf;
    size_t len;
    if (spes_contrib_encode(&c, SPES_CODEC_FP32, base, NULL, &buf, &len) == 0) {
        if (spes_contrib_decode(&d, buf, len, &lo, E, base, 1e6f, "fuzz") != 0)
            abort();
        if (d.ncols != c.ncols || memcmp(d.val, c.val, (S + (size_t)c.ncols * C) * sizeof(float)))
            abort();
        spes_contrib_fini(&d);
        free(buf);
    }
    static float ef[S + E * C];
    for (spes_codec k = SPES_CODEC_Q8EF; k <= SPES_CODEC_TOPK; k++)
        if (spes_contrib_encode(&c, k, base, ef, &buf, &len) == 0) {
            if (spes_contrib_decode(&d, buf, len, &lo, E, base, 1e7f, "fuzz") != 0)
                abort();
            spes_contrib_fini(&d);
            free(buf);
        }
    for (size_t i = 0; i < S + E * C; i++)
        if (!isfinite(ef[i]))
            abort();
    spes_contrib_fini(&c);
    return 0;
}
