/* fuzz_proto_chunk.c: libFuzzer target for spes_chunk_decode. An accepted
 * chunk re-encodes to exactly its input header, and its data is the input's tail. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/bulk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    spes_chunk_header h;
    const uint8_t *payload;
    uint8_t hdr[SPES_CHUNK_HEADER_LEN];
    if (spes_chunk_header_decode(data, size, &h) == 0) {
        if (spes_chunk_header_encode(&h, hdr) != 0 || memcmp(hdr, data, sizeof hdr) != 0)
            abort();
    }
    if (spes_chunk_decode(data, size, &h, &payload) != 0)
        return 0;
    if (payload != data + SPES_CHUNK_HEADER_LEN || size != SPES_CHUNK_HEADER_LEN + h.length)
        abort();
    return 0;
}
