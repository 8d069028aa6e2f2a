/* bulk.h: the binary framing of bulk data (blob chunks) and blob manifests.
 * A blob is immutable and named by the SHA-256 of its bytes. It is cut into
 * chunks of chunk_size bytes (the last one shorter); its manifest lists every
 * chunk's SHA-256 and is itself named by its SHA-256 (the manifest_hash that
 * Announce/Commit carry), so a manifest is verified before it is used and each
 * chunk on arrival. All integers big-endian.
 *
 * Chunk header (96 bytes), followed by exactly `length` raw bytes:
 *   0 magic "SPCK" | 4 version u16 | 6 flags u16 (0) | 8 blob hash [32]
 *   40 chunk index u32 | 44 chunk count u32 | 48 chunk size u32 | 52 length u32
 *   56 offset u64 | 64 chunk sha256 [32]
 * Manifest (56 + 32 * chunk_count bytes):
 *   0 magic "SPMF" | 4 version u16 | 6 flags u16 (0) | 8 blob hash [32]
 *   40 total size u64 | 48 chunk size u32 | 52 chunk count u32 | 56 chunk hashes [32 each]
 * Pure code: only spes_proto_manifest_build_file() reads a file. */
#ifndef SPES_PROTO_BULK_H
#define SPES_PROTO_BULK_H

#include <stddef.h>
#include <stdint.h>

#include "core/sha256.h"

#define SPES_CHUNK_MAGIC "SPCK"
#define SPES_MANIFEST_MAGIC "SPMF"
#define SPES_BULK_VERSION 1
#define SPES_CHUNK_HEADER_LEN 96
#define SPES_MANIFEST_HEADER_LEN 56
#define SPES_CHUNK_SIZE_MIN 4096u
#define SPES_CHUNK_SIZE_MAX (16u << 20)
#define SPES_CHUNK_SIZE_DEFAULT (1u << 20)
/* SPES_MANIFEST_MAX_CHUNKS bounds a manifest to 56 + 8 MiB. */
#define SPES_MANIFEST_MAX_CHUNKS (1u << 18)

/* spes_chunk_header describes one chunk of a blob. */
typedef struct spes_chunk_header {
    uint8_t blob_hash[32];
    uint32_t index;      /* 0 .. count-1 */
    uint32_t count;      /* chunks in the blob */
    uint32_t chunk_size; /* size of every chunk but the last */
    uint32_t length;     /* bytes of this chunk, 1 .. chunk_size */
    uint64_t offset;     /* index * chunk_size */
    uint8_t chunk_hash[32];
} spes_chunk_header;

/* spes_manifest lists a blob's chunk hashes. */
typedef struct spes_manifest {
    uint8_t blob_hash[32];
    uint64_t total_size;
    uint32_t chunk_size;
    uint32_t chunk_count;        /* ceil(total_size / chunk_size); 0 for an empty blob */
    uint8_t (*chunk_hashes)[32]; /* (chunk_count, 32), malloc'd */
} spes_manifest;

/* spes_chunk_header_check checks one header's fields against each other. */
int spes_chunk_header_check(const spes_chunk_header *h);

/* spes_chunk_header_encode checks h and writes its 96 bytes into out. */
int spes_chunk_header_encode(const spes_chunk_header *h, uint8_t out[SPES_CHUNK_HEADER_LEN]);

/* spes_chunk_header_decode parses and checks the first 96 bytes of buf. */
int spes_chunk_header_decode(const uint8_t *buf, size_t len, spes_chunk_header *h);

/* spes_chunk_decode parses a whole chunk message (header + data): checks the
 * header, that exactly h->length bytes follow, and that their SHA-256 equals
 * the header's chunk hash; *data points into buf. */
int spes_chunk_decode(const uint8_t *buf, size_t len, spes_chunk_header *h, const uint8_t **data);

/* spes_chunk_header_for fills the header of chunk index of a blob from its
 * manifest (the caller sends it followed by the chunk's raw bytes). */
int spes_chunk_header_for(const spes_manifest *m, uint32_t index, spes_chunk_header *h);

/* spes_chunk_matches_manifest checks that a decoded header belongs to m:
 * same blob, count, chunk size, expected length and chunk hash. */
int spes_chunk_matches_manifest(const spes_chunk_header *h, const spes_manifest *m);

/* spes_manifest_fini frees a manifest's chunk hashes (the struct stays). */
void spes_manifest_fini(spes_manifest *m);

/* spes_manifest_encode returns a malloc'd encoding of m; the caller frees it. */
int spes_manifest_encode(const spes_manifest *m, uint8_t **out, size_t *len);

/* spes_manifest_decode parses and checks an encoded manifest of exactly len
 * bytes; on success the caller owns m (spes_manifest_fini). */
int spes_manifest_decode(const uint8_t *buf, size_t len, spes_manifest *m);

/* spes_manifest_builder hashes a blob as it streams by. */
typedef struct spes_manifest_builder {
    spes_manifest m;
    spes_sha256_ctx whole; /* over the whole blob */
    spes_sha256_ctx chunk; /* over the current chunk */
    uint32_t filled;       /* bytes in the current chunk */
    uint32_t cap;          /* allocated chunk hash slots */
} spes_manifest_builder;

/* spes_manifest_builder_init starts a manifest with the given chunk size. */
int spes_manifest_builder_init(spes_manifest_builder *b, uint32_t chunk_size);

/* spes_manifest_builder_update adds the next len bytes of the blob. */
int spes_manifest_builder_update(spes_manifest_builder *b, const void *data, size_t len);

/* spes_manifest_builder_finish completes the manifest into *m (caller owns it)
 * and releases the builder. */
int spes_manifest_builder_finish(spes_manifest_builder *b, spes_manifest *m);

/* spes_manifest_builder_abort releases a builder without a result. */
void spes_manifest_builder_abort(spes_manifest_builder *b);

/* spes_manifest_build builds the manifest of a buffer. */
int spes_manifest_build(const void *data, size_t len, uint32_t chunk_size, spes_manifest *m);

/* spes_manifest_build_file builds the manifest of a file, streaming it. */
int spes_manifest_build_file(const char *path, uint32_t chunk_size, spes_manifest *m);

/* spes_manifest_hash returns the SHA-256 of m's encoding (its manifest_hash). */
int spes_manifest_hash(const spes_manifest *m, uint8_t out[32]);

#endif
