/* chunk.c: the fixed binary header in front of every bulk chunk.
 * The raw bytes behind it are never copied or re-encoded here; decode only
 * points into the received buffer. Every header field is checked against the
 * others and against the limits in bulk.h; never trust an offset or length
 * from a peer, never abort on peer input, no I/O. */
#include "proto/bulk.h"

#include <string.h>

#include "core/error.h"
#include "core/sha256.h"
#include "proto/bytes.h"

int spes_chunk_header_check(const spes_chunk_header *h)
{
    if (h->chunk_size < SPES_CHUNK_SIZE_MIN || h->chunk_size > SPES_CHUNK_SIZE_MAX)
        return spes_errf(SPES_ERANGE, "chunk: chunk size %u not in %u..%u", h->chunk_size,
                         SPES_CHUNK_SIZE_MIN, SPES_CHUNK_SIZE_MAX);
    if (h->count == 0 || h->count > SPES_MANIFEST_MAX_CHUNKS)
        return spes_errf(SPES_ERANGE, "chunk: chunk count %u not in 1..%u", h->count,
                         SPES_MANIFEST_MAX_CHUNKS);
    if (h->index >= h->count)
        return spes_errf(SPES_ERANGE, "chunk: index %u not below the chunk count %u", h->index, h->count);
    if (h->length == 0 || h->length > h->chunk_size)
        return spes_errf(SPES_ERANGE, "chunk %u: length %u not in 1..%u (the chunk size)", h->index,
                         h->length, h->chunk_size);
    if (h->index + 1 < h->count && h->length != h->chunk_size)
        return spes_errf(SPES_EFORMAT,
                         "chunk %u: length %u but only the last chunk may be "
                         "shorter than %u",
                         h->index, h->length, h->chunk_size);
    if (h->offset != (uint64_t)h->index * h->chunk_size)
        return spes_errf(SPES_EFORMAT, "chunk %u: offset %llu, expected %llu (index * %u)", h->index,
                         (unsigned long long)h->offset, (unsigned long long)h->index * h->chunk_size,
                         h->chunk_size);
    return 0;
}

int spes_chunk_header_encode(const spes_chunk_header *h, uint8_t out[SPES_CHUNK_HEADER_LEN])
{
    int rc = spes_chunk_header_check(h);
    if (rc < 0)
        return rc;
    memcpy(out, SPES_CHUNK_MAGIC, 4);
    spes__put16(out + 4, SPES_BULK_VERSION);
    spes__put16(out + 6, 0);
    memcpy(out + 8, h->blob_hash, 32);
    spes__put32(out + 40, h->index);
    spes__put32(out + 44, h->count);
    spes__put32(out + 48, h->chunk_size);
    spes__put32(out + 52, h->length);
    spes__put64(out + 56, h->offset);
    memcpy(out + 64, h->chunk_hash, 32);
    return 0;
}

int spes_chunk_header_decode(const uint8_t *buf, size_t len, spes_chunk_header *h)
{
    if (len < SPES_CHUNK_HEADER_LEN)
        return spes_errf(SPES_EFORMAT, "chunk: truncated header (%zu of %d bytes)", len,
                         SPES_CHUNK_HEADER_LEN);
    if (memcmp(buf, SPES_CHUNK_MAGIC, 4) != 0)
        return spes_errf(SPES_EFORMAT, "chunk: bad magic 0x%02x%02x%02x%02x (expected \"SPCK\")", buf[0],
                         buf[1], buf[2], buf[3]);
    uint16_t version = spes__be16(buf + 4), flags = spes__be16(buf + 6);
    if (version != SPES_BULK_VERSION)
        return spes_errf(SPES_EFORMAT, "chunk: bulk version %u not supported (this node speaks %d)", version,
                         SPES_BULK_VERSION);
    if (flags != 0)
        return spes_errf(SPES_EFORMAT, "chunk: unknown flags 0x%04x", flags);
    memcpy(h->blob_hash, buf + 8, 32);
    h->index = spes__be32(buf + 40);
    h->count = spes__be32(buf + 44);
    h->chunk_size = spes__be32(buf + 48);
    h->length = spes__be32(buf + 52);
    h->offset = spes__be64(buf + 56);
    memcpy(h->chunk_hash, buf + 64, 32);
    return spes_chunk_header_check(h);
}

int spes_chunk_decode(const uint8_t *buf, size_t len, spes_chunk_header *h, const uint8_t **data)
{
    int rc = spes_chunk_header_decode(buf, len, h);
    if (rc < 0)
        return rc;
    if (len - SPES_CHUNK_HEADER_LEN != h->length)
        return spes_errf(SPES_EFORMAT, "chunk %u: header says %u bytes but %zu follow", h->index, h->length,
                         len - SPES_CHUNK_HEADER_LEN);
    uint8_t got[SPES_SHA256_LEN];
    rc = spes_sha256(buf + SPES_CHUNK_HEADER_LEN, h->length, got);
    if (rc < 0)
        return rc;
    if (memcmp(got, h->chunk_hash, SPES_SHA256_LEN) != 0)
        return spes_errf(SPES_EFORMAT, "chunk %u: data does not match its SHA-256", h->index);
    *data = buf + SPES_CHUNK_HEADER_LEN;
    return 0;
}

static uint32_t expected_length(const spes_manifest *m, uint32_t index)
{
    uint64_t rest = m->total_size - (uint64_t)index * m->chunk_size;
    return rest < m->chunk_size ? (uint32_t)rest : m->chunk_size;
}

int spes_chunk_header_for(const spes_manifest *m, uint32_t index, spes_chunk_header *h)
{
    if (index >= m->chunk_count)
        return spes_errf(SPES_EINVAL, "chunk: index %u not below the chunk count %u", index, m->chunk_count);
    memcpy(h->blob_hash, m->blob_hash, 32);
    h->index = index;
    h->count = m->chunk_count;
    h->chunk_size = m->chunk_size;
    h->length = expected_length(m, index);
    h->offset = (uint64_t)index * m->chunk_size;
    memcpy(h->chunk_hash, m->chunk_hashes[index], 32);
    return spes_chunk_header_check(h);
}

int spes_chunk_matches_manifest(const spes_chunk_header *h, const spes_manifest *m)
{
    char want[65];
    if (memcmp(h->blob_hash, m->blob_hash, 32) != 0) {
        spes_hex_encode(m->blob_hash, 32, want);
        return spes_errf(SPES_EFORMAT, "chunk %u: belongs to another blob than %s", h->index, want);
    }
    if (h->count != m->chunk_count || h->chunk_size != m->chunk_size)
        return spes_errf(SPES_EFORMAT, "chunk %u: %u chunks of %u bytes, but the manifest has %u of %u",
                         h->index, h->count, h->chunk_size, m->chunk_count, m->chunk_size);
    if (h->index >= m->chunk_count || h->length != expected_length(m, h->index))
        return spes_errf(SPES_EFORMAT, "chunk %u: length %u does not fit the manifest", h->index, h->length);
    if (memcmp(h->chunk_hash, m->chunk_hashes[h->index], 32) != 0)
        return spes_errf(SPES_EFORMAT, "chunk %u: hash differs from the manifest's", h->index);
    return 0;
}
