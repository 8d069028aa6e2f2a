/* fuzz_node_state_blob.c: libFuzzer target for the state blob reader (a blob
 * fetched from a peer). The first byte picks the model size and the round the
 * reader expects; what it accepts must write back to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "node/state_blob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t total = data[0] & 15;
    uint64_t round = data[0] >> 4;
    float params[16];
    uint8_t back[SPES_STATE_BLOB_HDR + sizeof params];
    if (spes_state_blob_read(data + 1, size - 1, total, round, params, "fuzz") == 0) {
        spes_state_blob_write(back, params, total, round);
        if (size - 1 != spes_state_blob_size(total) || memcmp(back, data + 1, size - 1) != 0)
            abort();
    }
    return 0;
}
