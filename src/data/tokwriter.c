/* tokwriter.c: streaming token file writer over spes_atomic_file.
 * It must never leave a torn or half-headed file at the final path: headers are
 * rewritten in the temp file before the atomic commit. */
#include "data/tokwriter.h"
#include "core/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPES_TOKWRITER_CHUNK 16384 /* tokens converted per write */

static int ends_with_npy(const char *s)
{
    size_t n = strlen(s);
    return n >= 4 && !strcmp(s + n - 4, ".npy");
}

int spes_tokwriter_open(spes_tokwriter *w, const char *path, spes_tok_format format, spes_tok_dtype dtype)
{
    memset(w, 0, sizeof *w);
    if (format == SPES_TOK_AUTO)
        format = ends_with_npy(path) ? SPES_TOK_NPY : SPES_TOK_RAW;
    if (format != SPES_TOK_RAW && format != SPES_TOK_NPY && format != SPES_TOK_LLMC)
        return spes_errf(SPES_EINVAL, "%s: unknown token format %d", path, (int)format);
    if (dtype != SPES_TOK_U16 && dtype != SPES_TOK_U32)
        return spes_errf(SPES_EINVAL, "%s: token dtype must be uint16 or uint32", path);
    w->format = format;
    w->dtype = dtype;
    if (!(w->buf = malloc((size_t)SPES_TOKWRITER_CHUNK * 4)))
        return SPES_ENOMEM;
    uint8_t hdr[SPES_LLMC_HEADER_BYTES];
    size_t hl = 0;
    int rc = spes_tok_header_build(hdr, sizeof hdr, &hl, format, dtype, 0);
    if (!rc)
        rc = spes_atomic_open(&w->af, path);
    if (rc) {
        free(w->buf);
        memset(w, 0, sizeof *w);
        return rc;
    }
    w->open = 1;
    if ((rc = spes_atomic_write(&w->af, hdr, hl)) != 0) {
        spes_tokwriter_abort(w);
        return rc;
    }
    return 0;
}

static int check_ids(const spes_tokwriter *w, const uint32_t *ids, size_t n)
{
    if (w->format == SPES_TOK_LLMC && (uint64_t)n > (uint64_t)INT32_MAX - w->ntokens)
        return spes_errf(SPES_ERANGE,
                         "%s: an llm.c shard holds at most %d tokens; writing %zu more"
                         " after %" PRIu64 " exceeds it",
                         w->af.path, INT32_MAX, n, w->ntokens);
    if (w->dtype == SPES_TOK_U32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] > UINT16_MAX)
            return spes_errf(SPES_ERANGE,
                             "%s: token id %" PRIu32 " at position %" PRIu64 " does not fit uint16",
                             w->af.path, ids[i], w->ntokens + i);
    }
    return 0;
}

int spes_tokwriter_write(spes_tokwriter *w, const uint32_t *ids, size_t n)
{
    if (!w->open)
        return spes_errf(SPES_ESTATE, "token writer is not open");
    int rc = check_ids(w, ids, n);
    if (rc)
        return rc;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < SPES_TOKWRITER_CHUNK ? n - done : SPES_TOKWRITER_CHUNK;
        if (w->dtype == SPES_TOK_U16) {
            for (size_t i = 0; i < k; i++) {
                uint16_t v = (uint16_t)ids[done + i];
                memcpy(w->buf + 2 * i, &v, 2);
            }
        } else {
            memcpy(w->buf, ids + done, k * 4);
        }
        if ((rc = spes_atomic_write(&w->af, w->buf, k * (size_t)w->dtype)) != 0) {
            /* a short write leaves the temp file in an unknown state: refuse further use */
            spes_tokwriter_abort(w);
            return rc;
        }
        done += k;
        w->ntokens += k;
    }
    return 0;
}

uint64_t spes_tokwriter_count(const spes_tokwriter *w)
{
    return w->ntokens;
}

int spes_tokwriter_close(spes_tokwriter *w)
{
    if (!w->open)
        return spes_errf(SPES_ESTATE, "token writer is not open");
    uint8_t hdr[SPES_LLMC_HEADER_BYTES];
    size_t hl = 0;
    int rc = spes_tok_header_build(hdr, sizeof hdr, &hl, w->format, w->dtype, w->ntokens);
    if (!rc && hl > 0) {
        if (fseeko(w->af.fp, 0, SEEK_SET) != 0)
            rc = spes_errf_errno(SPES_EIO, "%s: seek to rewrite the header failed", w->af.tmp);
        else
            rc = spes_atomic_write(&w->af, hdr, hl);
    }
    if (rc) {
        spes_tokwriter_abort(w);
        return rc;
    }
    rc = spes_atomic_commit(&w->af);
    free(w->buf);
    memset(w, 0, sizeof *w);
    return rc;
}

void spes_tokwriter_abort(spes_tokwriter *w)
{
    if (w->open)
        spes_atomic_abort(&w->af);
    free(w->buf);
    memset(w, 0, sizeof *w);
}
