/* sha256.h: SHA-256 through OpenSSL's EVP interface, plus hex helpers. */
#ifndef SPES_CORE_SHA256_H
#define SPES_CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SPES_SHA256_LEN 32

/* spes_sha256_ctx is an incremental SHA-256 computation. */
typedef struct spes_sha256_ctx {
    void *md; /* EVP_MD_CTX */
} spes_sha256_ctx;

/* spes_sha256_init starts a hash; returns SPES_ENOMEM on failure. */
int spes_sha256_init(spes_sha256_ctx *c);
/* spes_sha256_update adds len bytes. */
void spes_sha256_update(spes_sha256_ctx *c, const void *data, size_t len);
/* spes_sha256_final writes the digest and frees the context. */
void spes_sha256_final(spes_sha256_ctx *c, uint8_t out[SPES_SHA256_LEN]);
/* spes_sha256 hashes one buffer. */
int spes_sha256(const void *data, size_t len, uint8_t out[SPES_SHA256_LEN]);
/* spes_sha256_file hashes a whole file. */
int spes_sha256_file(const char *path, uint8_t out[SPES_SHA256_LEN]);
/* spes_hex_encode writes 2*len lowercase hex digits and a NUL into out. */
void spes_hex_encode(const uint8_t *in, size_t len, char *out);
/* spes_hex_decode parses exactly 2*len hex digits; SPES_EFORMAT otherwise. */
int spes_hex_decode(const char *in, uint8_t *out, size_t len);

#endif
