/* outer_file.c: the outer momentum and residual files of a checkpoint directory (one format, two magics). */
#include "checkpoint/outer_file.h"
#include "core/error.h"
#include "core/fileio.h"
#include "core/sha256.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OUTER_MAGIC "SPESOUTR"
#define RESID_MAGIC "SPESRESD"
#define VEC_HDR 32

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

/* prev_name writes file.prev, where the generation before the last one stays, to out. */
static const char *prev_name(const char *file, char out[64])
{
    snprintf(out, 64, "%s.prev", file);
    return out;
}

/* vec_save writes magic | 1 | nextra | round | numel | extra | values | SHA-256 to DIR/file atomically,
 * the file it replaces kept as file.prev: the caller writes this before the trainer state of the same
 * round, so a kill between the two leaves the older state with its own file in file.prev. */
static int vec_save(const char *dir, const char *file, const char *magic, const uint8_t *extra,
                    uint32_t nextra, const float *vals, size_t numel, int64_t round)
{
    size_t len = VEC_HDR + nextra + numel * 4 + 32;
    uint8_t *buf = malloc(len);
    char name[64], *path = spes_path_join(dir, file), *prev = spes_path_join(dir, prev_name(file, name));
    int rc = buf && path && prev ? 0 : SPES_ENOMEM;
    if (!rc && rename(path, prev) != 0 && errno != ENOENT)
        rc = spes_errf_errno(SPES_EIO, "%s: cannot keep it as %s", path, prev);
    if (!rc) {
        uint32_t ver = 1;
        uint64_t r = (uint64_t)round, n = numel;
        memcpy(buf, magic, 8);
        memcpy(buf + 8, &ver, 4);
        memcpy(buf + 12, &nextra, 4);
        memcpy(buf + 16, &r, 8);
        memcpy(buf + 24, &n, 8);
        if (nextra)
            memcpy(buf + VEC_HDR, extra, nextra);
        memcpy(buf + VEC_HDR + nextra, vals, numel * 4);
        rc = digest(buf, len - 32, buf + len - 32);
    }
    if (!rc)
        rc = spes_write_file_atomic(path, buf, len);
    free(buf);
    free(path);
    free(prev);
    return rc;
}

/* vec_read_one reads and checks DIR/file (magic, version, sizes, digest, round) into *buf; *nextra
 * and *numel say what it holds. SPES_ENOENT when the file does not exist. */
static int vec_read_one(const char *dir, const char *file, const char *magic, const char *what, size_t max,
                        int64_t round, char **buf, uint32_t *nextra, size_t *numel)
{
    char *path = spes_path_join(dir, file);
    if (!path)
        return SPES_ENOMEM;
    size_t len = 0;
    *buf = NULL;
    int rc = spes_read_file(path, max, buf, &len);
    if (rc)
        goto done;
    uint8_t dg[32];
    uint32_t ver, ne;
    uint64_t r, n;
    if (len < VEC_HDR + 32 || memcmp(*buf, magic, 8)) {
        rc = spes_errf(SPES_EFORMAT, "%s: not %s file", path, what);
        goto done;
    }
    memcpy(&ver, *buf + 8, 4);
    memcpy(&ne, *buf + 12, 4);
    memcpy(&r, *buf + 16, 8);
    memcpy(&n, *buf + 24, 8);
    if (ver != 1 || ne > len || n > len / 4 || len != VEC_HDR + ne + n * 4 + 32) {
        rc = spes_errf(SPES_EFORMAT, "%s: version %u with %llu values in %zu bytes, expected version 1", path,
                       ver, (unsigned long long)n, len);
        goto done;
    }
    if ((rc = digest((const uint8_t *)*buf, len - 32, dg)) != 0)
        goto done;
    if (memcmp(dg, *buf + len - 32, 32)) {
        rc = spes_errf(SPES_EFORMAT, "%s: corrupt (digest mismatch)", path);
        goto done;
    }
    if ((int64_t)r != round) {
        rc = spes_errf(SPES_ESTATE, "%s: of round %lld, expected %lld", path, (long long)r, (long long)round);
        goto done;
    }
    *nextra = ne;
    *numel = n;
done:
    if (rc) {
        free(*buf);
        *buf = NULL;
    }
    free(path);
    return rc;
}

/* vec_read is vec_read_one of DIR/file, or of the generation before it (file.prev) when file is of
 * another round (or missing): the error is file's when neither is of this round. */
static int vec_read(const char *dir, const char *file, const char *magic, const char *what, size_t max,
                    int64_t round, char **buf, uint32_t *nextra, size_t *numel)
{
    int rc = vec_read_one(dir, file, magic, what, max, round, buf, nextra, numel);
    if (rc != SPES_ESTATE && rc != SPES_ENOENT)
        return rc;
    char *why = strdup(spes_errmsg()), name[64];
    int rc2 = vec_read_one(dir, prev_name(file, name), magic, what, max, round, buf, nextra, numel);
    if (rc2 && why)
        spes_errf(rc, "%s", why); /* the newer file's reason, which the caller reports */
    free(why);
    return rc2 ? rc : 0;
}

static int vec_remove(const char *dir, const char *file)
{
    char name[64], *path = spes_path_join(dir, file), *prev = spes_path_join(dir, prev_name(file, name));
    int rc = path && prev ? 0 : SPES_ENOMEM;
    if (!rc && unlink(path) != 0 && errno != ENOENT)
        rc = spes_errf_errno(SPES_EIO, "%s: cannot remove", path);
    if (!rc && unlink(prev) != 0 && errno != ENOENT)
        rc = spes_errf_errno(SPES_EIO, "%s: cannot remove", prev);
    free(path);
    free(prev);
    return rc;
}

int spes_outer_save(const char *dir, const float *mom, size_t numel, int64_t round)
{
    return vec_save(dir, SPES_OUTER_FILE, OUTER_MAGIC, NULL, 0, mom, numel, round);
}

int spes_outer_load(const char *dir, float *mom, size_t numel, int64_t round)
{
    char *buf = NULL;
    uint32_t ne = 0;
    size_t n = 0;
    int rc = vec_read(dir, SPES_OUTER_FILE, OUTER_MAGIC, "an outer momentum", VEC_HDR + numel * 4 + 32, round,
                      &buf, &ne, &n);
    if (!rc && (ne != 0 || n != numel))
        rc = spes_errf(SPES_EFORMAT, "%s/%s: %zu values, expected %zu", dir, SPES_OUTER_FILE, n, numel);
    if (!rc)
        memcpy(mom, buf + VEC_HDR, numel * 4);
    free(buf);
    return rc;
}

int spes_outer_remove(const char *dir)
{
    return vec_remove(dir, SPES_OUTER_FILE);
}

int spes_resid_save(const char *dir, const uint8_t *cols, int E, const float *vals, size_t numel,
                    int64_t round)
{
    return vec_save(dir, SPES_RESID_FILE, RESID_MAGIC, cols, (uint32_t)E, vals, numel, round);
}

int spes_resid_load(const char *dir, int E, size_t shared, size_t column, int64_t round, uint8_t *cols,
                    float **vals, size_t *numel)
{
    char *buf = NULL;
    uint32_t ne = 0;
    size_t n = 0, max = VEC_HDR + (size_t)E + (shared + (size_t)E * column) * 4 + 32;
    int rc = vec_read(dir, SPES_RESID_FILE, RESID_MAGIC, "a residual", max, round, &buf, &ne, &n);
    if (rc)
        return rc;
    size_t want = shared;
    for (uint32_t e = 0; e < ne && ne == (uint32_t)E; e++)
        want += buf[VEC_HDR + e] ? column : 0;
    if (ne != (uint32_t)E || n != want)
        rc = spes_errf(SPES_EFORMAT, "%s/%s: %u columns and %zu values, expected %d columns and %zu values",
                       dir, SPES_RESID_FILE, ne, n, E, want);
    if (!rc && !(*vals = malloc((n ? n : 1) * sizeof **vals)))
        rc = SPES_ENOMEM;
    if (!rc) {
        for (int e = 0; e < E; e++)
            cols[e] = buf[VEC_HDR + e] != 0;
        memcpy(*vals, buf + VEC_HDR + ne, n * 4);
        *numel = n;
    }
    free(buf);
    return rc;
}

int spes_resid_remove(const char *dir)
{
    return vec_remove(dir, SPES_RESID_FILE);
}
