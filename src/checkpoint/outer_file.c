/* outer_file.c: the outer momentum and residual files of a checkpoint directory (one format, two magics). */
#include "checkpoint/outer_file.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/sha256.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OUTER_MAGIC "SPESOUTR"
#define RESID_MAGIC "SPESRESD"
#define OUTER_HDR 32

static int digest(const uint8_t *buf, size_t len, uint8_t out[32])
{
    spes_sha256_ctx c;
    int rc = spes_sha256_init(&c);
    if (rc)
        return rc;
    spes_sha256_update(&c, buf, len);
    spes_sha256_final(&c, out);
    return 0;
}

static int vec_save(const char *dir, const char *file, const char *magic, const float *mom, size_t numel,
                    int64_t round)
{
    size_t len = OUTER_HDR + numel * 4 + 32;
    uint8_t *buf = malloc(len);
    char *path = spes_path_join(dir, file);
    int rc = buf && path ? 0 : SPES_ENOMEM;
    if (!rc) {
        uint32_t ver = 1, zero = 0;
        uint64_t r = (uint64_t)round, n = numel;
        memcpy(buf, magic, 8);
        memcpy(buf + 8, &ver, 4);
        memcpy(buf + 12, &zero, 4);
        memcpy(buf + 16, &r, 8);
        memcpy(buf + 24, &n, 8);
        memcpy(buf + OUTER_HDR, mom, numel * 4);
        rc = digest(buf, len - 32, buf + len - 32);
    }
    if (!rc)
        rc = spes_write_file_atomic(path, buf, len);
    free(buf);
    free(path);
    return rc;
}

static int vec_load(const char *dir, const char *file, const char *magic, const char *what, float *mom,
                    size_t numel, int64_t round)
{
    char *path = spes_path_join(dir, file);
    if (!path)
        return SPES_ENOMEM;
    char *buf = NULL;
    size_t len = 0;
    int rc = spes_read_file(path, OUTER_HDR + numel * 4 + 32, &buf, &len);
    if (rc)
        goto done;
    uint8_t dg[32];
    uint32_t ver;
    uint64_t r, n;
    if (len < OUTER_HDR + 32 || memcmp(buf, magic, 8)) {
        rc = spes_errf(SPES_EFORMAT, "%s: not %s file", path, what);
        goto done;
    }
    memcpy(&ver, buf + 8, 4);
    memcpy(&r, buf + 16, 8);
    memcpy(&n, buf + 24, 8);
    if (ver != 1 || n != numel || len != OUTER_HDR + numel * 4 + 32) {
        rc = spes_errf(SPES_EFORMAT,
                       "%s: version %u with %llu values in %zu bytes, expected version 1 with %zu", path, ver,
                       (unsigned long long)n, len, numel);
        goto done;
    }
    if ((rc = digest((const uint8_t *)buf, len - 32, dg)) != 0)
        goto done;
    if (memcmp(dg, buf + len - 32, 32)) {
        rc = spes_errf(SPES_EFORMAT, "%s: corrupt (digest mismatch)", path);
        goto done;
    }
    if ((int64_t)r != round) {
        rc = spes_errf(SPES_ESTATE, "%s: of round %lld, expected %lld", path, (long long)r, (long long)round);
        goto done;
    }
    memcpy(mom, buf + OUTER_HDR, numel * 4);
done:
    free(buf);
    free(path);
    return rc;
}

static int vec_remove(const char *dir, const char *file)
{
    char *path = spes_path_join(dir, file);
    if (!path)
        return SPES_ENOMEM;
    int rc = unlink(path) == 0 || errno == ENOENT ? 0 : spes_errf_errno(SPES_EIO, "%s: cannot remove", path);
    free(path);
    return rc;
}

int spes_outer_save(const char *dir, const float *mom, size_t numel, int64_t round)
{
    return vec_save(dir, SPES_OUTER_FILE, OUTER_MAGIC, mom, numel, round);
}

int spes_outer_load(const char *dir, float *mom, size_t numel, int64_t round)
{
    return vec_load(dir, SPES_OUTER_FILE, OUTER_MAGIC, "an outer momentum", mom, numel, round);
}

int spes_outer_remove(const char *dir)
{
    return vec_remove(dir, SPES_OUTER_FILE);
}

int spes_resid_save(const char *dir, const float *resid, size_t numel, int64_t round)
{
    return vec_save(dir, SPES_RESID_FILE, RESID_MAGIC, resid, numel, round);
}

int spes_resid_load(const char *dir, float *resid, size_t numel, int64_t round)
{
    return vec_load(dir, SPES_RESID_FILE, RESID_MAGIC, "a residual", resid, numel, round);
}

int spes_resid_remove(const char *dir)
{
    return vec_remove(dir, SPES_RESID_FILE);
}
