/* sha256.c: OpenSSL EVP SHA-256; no hand-written hash code. */
#include "core/sha256.h"
#include "core/error.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

int spes_sha256_init(spes_sha256_ctx *c)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return SPES_ENOMEM;
    }
    c->md = md;
    return 0;
}

void spes_sha256_update(spes_sha256_ctx *c, const void *data, size_t len)
{
    EVP_DigestUpdate((EVP_MD_CTX *)c->md, data, len);
}

void spes_sha256_final(spes_sha256_ctx *c, uint8_t out[SPES_SHA256_LEN])
{
    unsigned n = 0;
    EVP_DigestFinal_ex((EVP_MD_CTX *)c->md, out, &n);
    EVP_MD_CTX_free((EVP_MD_CTX *)c->md);
    c->md = NULL;
}

int spes_sha256(const void *data, size_t len, uint8_t out[SPES_SHA256_LEN])
{
    spes_sha256_ctx c;
    int rc = spes_sha256_init(&c);
    if (rc)
        return rc;
    spes_sha256_update(&c, data, len);
    spes_sha256_final(&c, out);
    return 0;
}

int spes_sha256_file(const char *path, uint8_t out[SPES_SHA256_LEN])
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open", path);
    spes_sha256_ctx c;
    int rc = spes_sha256_init(&c);
    if (rc) {
        fclose(fp);
        return rc;
    }
    static _Thread_local unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
        spes_sha256_update(&c, buf, n);
    if (ferror(fp))
        rc = spes_errf_errno(SPES_EIO, "%s: read error", path);
    fclose(fp);
    spes_sha256_final(&c, out);
    return rc;
}

void spes_hex_encode(const uint8_t *in, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int spes_hex_decode(const char *in, uint8_t *out, size_t len)
{
    if (strlen(in) != 2 * len)
        return spes_errf(SPES_EFORMAT, "hex string has %zu digits, expected %zu", strlen(in), 2 * len);
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return spes_errf(SPES_EFORMAT, "invalid hex digit at position %zu", 2 * i);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
