/* fuzz_proto_manifest.c: libFuzzer target for spes_manifest_decode. An
 * accepted manifest re-encodes to exactly the input bytes, and every chunk
 * header derived from it passes the chunk header checks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/bulk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    spes_manifest m;
    uint8_t *enc;
    size_t len;
    if (spes_manifest_decode(data, size, &m) != 0)
        return 0;
    if (spes_manifest_encode(&m, &enc, &len) != 0 || len != size || memcmp(enc, data, len) != 0)
        abort();
    for (uint32_t i = 0; i < m.chunk_count; i++) {
        spes_chunk_header h;
        if (spes_chunk_header_for(&m, i, &h) != 0 || spes_chunk_matches_manifest(&h, &m) != 0)
            abort();
    }
    free(enc);
    spes_manifest_fini(&m);
    return 0;
}
