/* state_blob.c: the state blob's byte format (state_blob.h). */
#include "node/state_blob.h"

#include "core/error.h"

#include <string.h>

size_t spes_state_blob_size(size_t total)
{
    return SPES_STATE_BLOB_HDR + total * sizeof(float);
}

void spes_state_blob_write(uint8_t *out, const float *params, size_t total, uint64_t round)
{
    uint64_t numel = total;
    memcpy(out, SPES_STATE_BLOB_MAGIC, 10);
    memcpy(out + 10, &round, 8);
    memcpy(out + 18, &numel, 8);
    memcpy(out + SPES_STATE_BLOB_HDR, params, total * sizeof(float));
}

int spes_state_blob_read(const uint8_t *buf, size_t len, size_t total, uint64_t round, float *params,
                         const char *origin)
{
    if (len != spes_state_blob_size(total) || memcmp(buf, SPES_STATE_BLOB_MAGIC, 10))
        return spes_errf(SPES_EFORMAT, "%s: not a state blob of this model (%zu bytes)", origin, len);
    uint64_t r, numel;
    memcpy(&r, buf + 10, 8);
    memcpy(&numel, buf + 18, 8);
    if (r != round || numel != total)
        return spes_errf(SPES_EFORMAT, "%s: state of round %llu, expected %llu", origin, (unsigned long long)r,
                         (unsigned long long)round);
    memcpy(params, buf + SPES_STATE_BLOB_HDR, total * sizeof(float));
    return 0;
}
