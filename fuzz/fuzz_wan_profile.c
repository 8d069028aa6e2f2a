/* fuzz_wan_profile.c: libFuzzer target for the WAN lab's profile reader (an operator's JSON
 * file, deploy/wan/). The first byte picks the number of nodes (1..64), the rest is the JSON
 * text. Reading must succeed or fail with a message; a profile read must hold only finite,
 * non-negative rates, delays and buffers and losses within [0, 1]. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/error.h"
#include "tests/wan/wanprofile.h"

static int sane(double v, double max)
{
    return isfinite(v) && v >= 0 && v <= max;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int n = 1 + data[0] % WAN_MAX_NODES;
    static wan_profile p; /* about 33 KiB */
    if (wan_profile_parse(&p, (const char *)data + 1, size - 1, "fuzz.json", n) != 0) {
        if (!spes_errmsg()[0])
            abort();
        return 0;
    }
    for (int i = 0; i < n; i++) {
        const wan_link *l = &p.node[i];
        if (!sane(l->up_mbit, INFINITY) || !sane(l->down_mbit, INFINITY) || !sane(l->delay_ms, INFINITY) ||
            !sane(l->loss, 1) || !sane(l->buffer_ms, INFINITY) || !sane(l->burst_len, INFINITY) ||
            !sane(l->burst_loss, 1))
            abort();
        for (int j = 0; j < n; j++)
            if (!sane(p.delay_ms[i][j], INFINITY))
                abort();
    }
    return 0;
}
