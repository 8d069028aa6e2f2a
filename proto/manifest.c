/* manifest.c: blob manifests (chunk hash lists): binary codec and builder.
 * The decoder checks the exact length and every field before allocating;
 * the builder hashes each chunk and the whole blob in one streaming pass, so
 * memory does not grow with the blob beyond 32 bytes per chunk. Never trust a
 * count or size from a peer, never abort on peer input. The only I/O is
 * spes_manifest_build_file, which reads the blob it is asked to describe. */
#include "proto/bulk.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "proto/bytes.h"

static int check_shape(uint64_t total, uint32_t chunk_size, uint32_t count)
{
    if (chunk_size < SPES_CHUNK_SIZE_MIN || chunk_size > SPES_CHUNK_SIZE_MAX)
        return spes_errf(SPES_ERANGE, "manifest: chunk size %u not in %u..%u", chunk_size,
                         SPES_CHUNK_SIZE_MIN, SPES_CHUNK_SIZE_MAX);
    if (total > (uint64_t)SPES_MANIFEST_MAX_CHUNKS * chunk_size)
        return spes_errf(SPES_ERANGE, "manifest: blob of %llu bytes needs more than %u chunks",
                         (unsigned long long)total, SPES_MANIFEST_MAX_CHUNKS);
    uint64_t want = (total + chunk_size - 1) / chunk_size;
    if (count != want)
        return spes_errf(SPES_EFORMAT,
                         "manifest: %u chunks, but %llu bytes in chunks of %u "
                         "make %llu",
                         count, (unsigned long long)total, chunk_size, (unsigned long long)want);
    return 0;
}

void spes_manifest_fini(spes_manifest *m)
{
    free(m->chunk_hashes);
    m->chunk_hashes = NULL;
    m->chunk_count = 0;
}

int spes_manifest_encode(const spes_manifest *m, uint8_t **out, size_t *len)
{
    int rc = check_shape(m->total_size, m->chunk_size, m->chunk_count);
    if (rc < 0)
        return rc;
    size_t n = SPES_MANIFEST_HEADER_LEN + (size_t)m->chunk_count * 32;
    uint8_t *buf = malloc(n);
    if (buf == NULL)
        return spes_errf(SPES_ENOMEM, "manifest: out of memory for %zu bytes", n);
    memcpy(buf, SPES_MANIFEST_MAGIC, 4);
    spes__put16(buf + 4, SPES_BULK_VERSION);
    spes__put16(buf + 6, 0);
    memcpy(buf + 8, m->blob_hash, 32);
    spes__put64(buf + 40, m->total_size);
    spes__put32(buf + 48, m->chunk_size);
    spes__put32(buf + 52, m->chunk_count);
    if (m->chunk_count > 0)
        memcpy(buf + SPES_MANIFEST_HEADER_LEN, m->chunk_hashes, (size_t)m->chunk_count * 32);
    *out = buf;
    *len = n;
    return 0;
}

int spes_manifest_decode(const uint8_t *buf, size_t len, spes_manifest *m)
{
    memset(m, 0, sizeof *m);
    if (len < SPES_MANIFEST_HEADER_LEN)
        return spes_errf(SPES_EFORMAT, "manifest: truncated header (%zu of %d bytes)", len,
                         SPES_MANIFEST_HEADER_LEN);
    if (memcmp(buf, SPES_MANIFEST_MAGIC, 4) != 0)
        return spes_errf(SPES_EFORMAT, "manifest: bad magic 0x%02x%02x%02x%02x (expected \"SPMF\")", buf[0],
                         buf[1], buf[2], buf[3]);
    uint16_t version = spes__be16(buf + 4), flags = spes__be16(buf + 6);
    if (version != SPES_BULK_VERSION)
        return spes_errf(SPES_EFORMAT, "manifest: bulk version %u not supported (this node speaks %d)",
                         version, SPES_BULK_VERSION);
    if (flags != 0)
        return spes_errf(SPES_EFORMAT, "manifest: unknown flags 0x%04x", flags);
    uint64_t total = spes__be64(buf + 40);
    uint32_t chunk_size = spes__be32(buf + 48), count = spes__be32(buf + 52);
    int rc = check_shape(total, chunk_size, count);
    if (rc < 0)
        return rc;
    size_t want = SPES_MANIFEST_HEADER_LEN + (size_t)count * 32;
    if (len != want)
        return spes_errf(SPES_EFORMAT, "manifest: %zu bytes, expected %zu for %u chunks", len, want, count);
    if (count > 0) {
        m->chunk_hashes = malloc((size_t)count * 32);
        if (m->chunk_hashes == NULL)
            return spes_errf(SPES_ENOMEM, "manifest: out of memory for %u chunk hashes", count);
        memcpy(m->chunk_hashes, buf + SPES_MANIFEST_HEADER_LEN, (size_t)count * 32);
    }
    memcpy(m->blob_hash, buf + 8, 32);
    m->total_size = total;
    m->chunk_size = chunk_size;
    m->chunk_count = count;
    return 0;
}

int spes_manifest_builder_init(spes_manifest_builder *b, uint32_t chunk_size)
{
    memset(b, 0, sizeof *b);
    if (chunk_size < SPES_CHUNK_SIZE_MIN || chunk_size > SPES_CHUNK_SIZE_MAX)
        return spes_errf(SPES_EINVAL, "manifest: chunk size %u not in %u..%u", chunk_size,
                         SPES_CHUNK_SIZE_MIN, SPES_CHUNK_SIZE_MAX);
    b->m.chunk_size = chunk_size;
    int rc = spes_sha256_init(&b->whole);
    if (rc < 0)
        return rc;
    rc = spes_sha256_init(&b->chunk);
    if (rc < 0) {
        uint8_t scratch[32];
        spes_sha256_final(&b->whole, scratch);
    }
    return rc;
}

/* end_chunk stores the current chunk's hash and starts the next one. */
static int end_chunk(spes_manifest_builder *b)
{
    if (b->m.chunk_count == SPES_MANIFEST_MAX_CHUNKS)
        return spes_errf(SPES_ERANGE, "manifest: blob needs more than %u chunks of %u bytes",
                         SPES_MANIFEST_MAX_CHUNKS, b->m.chunk_size);
    if (b->m.chunk_count == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 64;
        void *p = realloc(b->m.chunk_hashes, (size_t)cap * 32);
        if (p == NULL)
            return spes_errf(SPES_ENOMEM, "manifest: out of memory for %u chunk hashes", cap);
        b->m.chunk_hashes = p;
        b->cap = cap;
    }
    spes_sha256_final(&b->chunk, b->m.chunk_hashes[b->m.chunk_count++]);
    b->filled = 0;
    return spes_sha256_init(&b->chunk);
}

int spes_manifest_builder_update(spes_manifest_builder *b, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        if (b->filled == b->m.chunk_size) {
            int rc = end_chunk(b);
            if (rc < 0)
                return rc;
        }
        size_t take = b->m.chunk_size - b->filled;
        take = take < len ? take : len;
        spes_sha256_update(&b->chunk, p, take);
        spes_sha256_update(&b->whole, p, take);
        b->filled += (uint32_t)take;
        b->m.total_size += take;
        p += take;
        len -= take;
    }
    return 0;
}

int spes_manifest_builder_finish(spes_manifest_builder *b, spes_manifest *m)
{
    int rc = 0;
    if (b->filled > 0)
        rc = end_chunk(b);
    uint8_t scratch[32];
    if (b->chunk.md != NULL)
        spes_sha256_final(&b->chunk, scratch);
    spes_sha256_final(&b->whole, b->m.blob_hash);
    if (rc < 0) {
        spes_manifest_fini(&b->m);
        return rc;
    }
    *m = b->m;
    memset(b, 0, sizeof *b);
    return 0;
}

void spes_manifest_builder_abort(spes_manifest_builder *b)
{
    spes_manifest m;
    if (spes_manifest_builder_finish(b, &m) == 0)
        spes_manifest_fini(&m);
}

int spes_manifest_build(const void *data, size_t len, uint32_t chunk_size, spes_manifest *m)
{
    spes_manifest_builder b;
    int rc = spes_manifest_builder_init(&b, chunk_size);
    if (rc < 0)
        return rc;
    rc = spes_manifest_builder_update(&b, data, len);
    if (rc < 0) {
        spes_manifest_builder_abort(&b);
        return rc;
    }
    return spes_manifest_builder_finish(&b, m);
}

int spes_manifest_build_file(const char *path, uint32_t chunk_size, spes_manifest *m)
{
    enum { BUF = 1 << 16 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return spes_errf_errno(SPES_EIO, "%s: cannot open", path);
    uint8_t *buf = malloc(BUF);
    spes_manifest_builder b;
    int rc =
        buf ? spes_manifest_builder_init(&b, chunk_size) : spes_errf(SPES_ENOMEM, "%s: out of memory", path);
    if (rc < 0)
        goto fail;
    for (;;) {
        ssize_t n = read(fd, buf, BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = spes_errf_errno(SPES_EIO, "%s: read failed", path);
            spes_manifest_builder_abort(&b);
            goto fail;
        }
        if (n == 0)
            break;
        rc = spes_manifest_builder_update(&b, buf, (size_t)n);
        if (rc < 0) {
            spes_manifest_builder_abort(&b);
            goto fail;
        }
    }
    rc = spes_manifest_builder_finish(&b, m);
fail:
    free(buf);
    close(fd);
    return rc;
}

int spes_manifest_hash(const spes_manifest *m, uint8_t out[32])
{
    uint8_t *buf;
    size_t len;
    int rc = spes_manifest_encode(m, &buf, &len);
    if (rc < 0)
        return rc;
    rc = spes_sha256(buf, len, out);
    free(buf);
    return rc;
}
