/* fuzz_sync_state.c: a peer's state blob through spes_state_blob_parse (what a
 * joining node decodes before it trusts the digest), with and without outer
 * momentum. An accepted input must re-serialise to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sync/outer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum { N = 12 };
    float p[N], m[N];
    uint64_t round = size >= 18 ? (uint64_t)data[10] : 0;
    for (int with = 0; with < 2; with++) {
        if (spes_state_blob_parse(data, size, N, round, p, with ? m : NULL, "fuzz") != 0)
            continue;
        uint8_t *buf;
        size_t len;
        if (spes_state_blob_make(p, with ? m : NULL, N, round, &buf, &len) != 0)
            continue;
        if (len != size || memcmp(buf, data, len))
            abort();
        free(buf);
    }
    return 0;
}
