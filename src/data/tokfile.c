/* tokfile.c: token file header codec (raw, .npy, llm.c) and the read-only mapped file.
 * Everything here reads outside bytes: it never asserts or aborts on them, and it
 * never maps or touches a token before the header is proven to fit the file. */
#include "data/tokfile.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const uint8_t npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

int spes_tok_dtype_parse(const char *s, spes_tok_dtype *out)
{
    if (!strcmp(s, "uint16") || !strcmp(s, "u16"))
        *out = SPES_TOK_U16;
    else if (!strcmp(s, "uint32") || !strcmp(s, "u32"))
        *out = SPES_TOK_U32;
    else
        return spes_errf(SPES_EINVAL, "token dtype '%s' is not uint16 or uint32", s);
    return 0;
}

int spes_tok_format_parse(const char *s, spes_tok_format *out)
{
    static const char *names[] = {"auto", "raw", "npy", "llmc"};
    for (int i = 0; i < 4; i++) {
        if (!strcmp(s, names[i])) {
            *out = (spes_tok_format)i;
            return 0;
        }
    }
    return spes_errf(SPES_EINVAL, "token format '%s' is not auto, raw, npy or llmc", s);
}

const char *spes_tok_dtype_name(spes_tok_dtype d)
{
    return d == SPES_TOK_U16 ? "uint16" : d == SPES_TOK_U32 ? "uint32" : "none";
}

const char *spes_tok_format_name(spes_tok_format f)
{
    switch (f) {
    case SPES_TOK_RAW: return "raw";
    case SPES_TOK_NPY: return "npy";
    case SPES_TOK_LLMC: return "llmc";
    default: return "auto";
    }
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lf = strlen(suffix);
    return ls >= lf && !strcmp(s + ls - lf, suffix);
}

/* check_region: the token region [offset, offset + n*width) must be exactly the rest of the file. */
static int check_region(const char *name, const char *what, uint64_t offset, uint64_t n, unsigned width,
                        uint64_t file_size)
{
    uint64_t avail = file_size - offset; /* caller ensured offset <= file_size */
    int overflow = n > UINT64_MAX / width;
    uint64_t want = overflow ? UINT64_MAX : n * width;
    if (want != avail)
        return spes_errf(SPES_EFORMAT,
                         "%s: %s says %" PRIu64 " tokens (%" PRIu64 " bytes) but %" PRIu64
                         " bytes of token data follow the header%s",
                         name, what, n, want, avail, want > avail ? " (truncated file)" : "");
    return 0;
}

static int parse_llmc(spes_tok_header *h, const char *name, const uint8_t *head, size_t head_len,
                      uint64_t file_size)
{
    if (file_size < SPES_LLMC_HEADER_BYTES || head_len < SPES_LLMC_HEADER_BYTES)
        return spes_errf(SPES_EFORMAT,
                         "%s: truncated llm.c header: %" PRIu64 " bytes, the header alone is %d", name,
                         file_size, SPES_LLMC_HEADER_BYTES);
    uint32_t magic = rd32(head), version = rd32(head + 4);
    int32_t count = (int32_t)rd32(head + 8);
    if (magic == SPES_LLMC_MAGIC_U16 && version == SPES_LLMC_VERSION_U16)
        h->dtype = SPES_TOK_U16;
    else if (magic == SPES_LLMC_MAGIC_U32 && version == SPES_LLMC_VERSION_U32)
        h->dtype = SPES_TOK_U32;
    else if (magic == SPES_LLMC_MAGIC_U16 || magic == SPES_LLMC_MAGIC_U32)
        return spes_errf(SPES_EFORMAT,
                         "%s: llm.c magic %" PRIu32 " with unsupported version %" PRIu32
                         " (want %d for %d, %d for %d)",
                         name, magic, version, SPES_LLMC_VERSION_U16, SPES_LLMC_MAGIC_U16,
                         SPES_LLMC_VERSION_U32, SPES_LLMC_MAGIC_U32);
    else
        return spes_errf(SPES_EFORMAT, "%s: unknown llm.c magic %" PRIu32 " (want %d or %d)", name, magic,
                         SPES_LLMC_MAGIC_U16, SPES_LLMC_MAGIC_U32);
    if (count < 0)
        return spes_errf(SPES_EFORMAT, "%s: llm.c header has a negative token count %" PRId32, name, count);
    h->format = SPES_TOK_LLMC;
    h->offset = SPES_LLMC_HEADER_BYTES;
    h->ntokens = (uint64_t)count;
    return check_region(name, "llm.c header", h->offset, h->ntokens, h->dtype, file_size);
}

/* npy dict text scanner: a tiny subset of Python literals, enough for numpy's header. */
typedef struct npy_scan {
    const char *p, *end;
} npy_scan;

static void npy_ws(npy_scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int npy_eat(npy_scan *s, char c)
{
    npy_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* npy_str reads a quoted string (no escapes) into out[cap]; returns 0 on success. */
static int npy_str(npy_scan *s, char *out, size_t cap)
{
    npy_ws(s);
    if (s->p >= s->end || (*s->p != '\'' && *s->p != '"'))
        return -1;
    char q = *s->p++;
    size_t n = 0;
    while (s->p < s->end && *s->p != q) {
        if (*s->p == '\\' || n + 1 >= cap)
            return -1;
        out[n++] = *s->p++;
    }
    if (s->p >= s->end)
        return -1;
    s->p++;
    out[n] = '\0';
    return 0;
}

static int npy_word(npy_scan *s, const char *w)
{
    npy_ws(s);
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) >= n && !memcmp(s->p, w, n)) {
        s->p += n;
        return 1;
    }
    return 0;
}

/* npy_shape reads "(d0, d1, ...)" ; *ndim gets the dimension count (dims beyond 4 not stored). */
static int npy_shape(npy_scan *s, uint64_t dims[4], int *ndim)
{
    *ndim = 0;
    if (!npy_eat(s, '('))
        return -1;
    for (;;) {
        if (npy_eat(s, ')'))
            return 0;
        npy_ws(s);
        if (s->p >= s->end || *s->p < '0' || *s->p > '9')
            return -1;
        uint64_t v = 0;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
            unsigned d = (unsigned)(*s->p++ - '0');
            if (v > (UINT64_MAX - d) / 10)
                return -1;
            v = v * 10 + d;
        }
        if (*ndim < 4)
            dims[*ndim] = v;
        if (++*ndim > 64)
            return -1;
        if (!npy_eat(s, ',')) {
            return npy_eat(s, ')') ? 0 : -1;
        }
    }
}

typedef struct npy_dict {
    char descr[16];
    int fortran; /* -1 missing */
    int ndim;    /* -1 missing */
    uint64_t dims[4];
} npy_dict;

static int npy_entry(npy_scan *s, npy_dict *d, const char *name)
{
    char key[32];
    if (npy_str(s, key, sizeof key) != 0 || !npy_eat(s, ':'))
        return spes_errf(SPES_EFORMAT, "%s: npy header is not a {'key': value} dictionary", name);
    if (!strcmp(key, "descr") && !d->descr[0]) {
        if (npy_str(s, d->descr, sizeof d->descr) != 0 || !d->descr[0])
            return spes_errf(SPES_EFORMAT, "%s: npy header 'descr' is not a simple dtype string", name);
    } else if (!strcmp(key, "fortran_order") && d->fortran < 0) {
        if (npy_word(s, "True"))
            d->fortran = 1;
        else if (npy_word(s, "False"))
            d->fortran = 0;
        else
            return spes_errf(SPES_EFORMAT, "%s: npy header 'fortran_order' is not True/False", name);
    } else if (!strcmp(key, "shape") && d->ndim < 0) {
        if (npy_shape(s, d->dims, &d->ndim) != 0)
            return spes_errf(SPES_EFORMAT, "%s: npy header 'shape' is not a tuple of integers", name);
    } else {
        return spes_errf(SPES_EFORMAT, "%s: npy header has an unexpected or repeated key '%s'", name, key);
    }
    return 0;
}

static int npy_dict_parse(npy_dict *d, const char *text, size_t len, const char *name)
{
    npy_scan s = {text, text + len};
    memset(d, 0, sizeof *d);
    d->fortran = d->ndim = -1;
    if (!npy_eat(&s, '{'))
        return spes_errf(SPES_EFORMAT, "%s: npy header does not start with '{'", name);
    for (;;) {
        if (npy_eat(&s, '}'))
            break;
        int rc = npy_entry(&s, d, name);
        if (rc)
            return rc;
        if (npy_eat(&s, ','))
            continue;
        if (npy_eat(&s, '}'))
            break;
        return spes_errf(SPES_EFORMAT, "%s: npy header dictionary is malformed", name);
    }
    npy_ws(&s);
    if (s.p != s.end)
        return spes_errf(SPES_EFORMAT, "%s: npy header has bytes after its dictionary", name);
    if (!d->descr[0] || d->fortran < 0 || d->ndim < 0)
        return spes_errf(SPES_EFORMAT, "%s: npy header lacks %s", name,
                         !d->descr[0]     ? "'descr'"
                         : d->fortran < 0 ? "'fortran_order'"
                                          : "'shape'");
    return 0;
}

static int npy_dtype(spes_tok_header *h, const char *descr, const char *name)
{
    static const struct {
        const char *s;
        spes_tok_dtype d;
        int sgn;
    } ok[] = {{"<u2", SPES_TOK_U16, 0},
              {"<u4", SPES_TOK_U32, 0},
              {"<i2", SPES_TOK_U16, 1},
              {"<i4", SPES_TOK_U32, 1}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (!strcmp(descr, ok[i].s)) {
            h->dtype = ok[i].d;
            h->is_signed = ok[i].sgn;
            return 0;
        }
    }
    return spes_errf(SPES_EFORMAT, "%s: npy dtype '%s' is not a token dtype (want <u2, <u4, <i2 or <i4)",
                     name, descr);
}

static int parse_npy(spes_tok_header *h, const char *name, const uint8_t *head, size_t head_len,
                     uint64_t file_size)
{
    if (head_len < 10 || memcmp(head, npy_magic, 6) != 0)
        return spes_errf(SPES_EFORMAT, "%s: %s", name,
                         head_len < 10 ? "truncated npy header" : "no NumPy magic (\\x93NUMPY)");
    unsigned major = head[6], minor = head[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0)
        return spes_errf(SPES_EFORMAT, "%s: unsupported npy version %u.%u (want 1.0, 2.0 or 3.0)", name,
                         major, minor);
    size_t pre = major == 1 ? 10 : 12;
    if (head_len < pre)
        return spes_errf(SPES_EFORMAT, "%s: truncated npy header", name);
    uint64_t hlen = major == 1 ? (uint64_t)(head[8] | head[9] << 8) : rd32(head + 8);
    if (hlen > SPES_NPY_HEADER_MAX)
        return spes_errf(SPES_EFORMAT, "%s: npy header length %" PRIu64 " exceeds the limit of %d", name,
                         hlen, SPES_NPY_HEADER_MAX);
    if (pre + hlen > file_size || pre + hlen > head_len)
        return spes_errf(SPES_EFORMAT,
                         "%s: npy header length %" PRIu64 " runs past the end of the file (%" PRIu64
                         " bytes; truncated file)",
                         name, hlen, file_size);
    npy_dict d;
    int rc = npy_dict_parse(&d, (const char *)head + pre, (size_t)hlen, name);
    if (rc)
        return rc;
    if ((rc = npy_dtype(h, d.descr, name)) != 0)
        return rc;
    if (d.fortran)
        return spes_errf(SPES_EFORMAT, "%s: npy fortran_order True is not supported", name);
    if (d.ndim != 1)
        return spes_errf(SPES_EFORMAT, "%s: npy shape is %d-D, want a 1-D token array", name, d.ndim);
    h->format = SPES_TOK_NPY;
    h->offset = pre + hlen;
    h->ntokens = d.dims[0];
    return check_region(name, "npy header", h->offset, h->ntokens, h->dtype, file_size);
}

static int parse_raw(spes_tok_header *h, const char *name, uint64_t file_size, spes_tok_dtype dt)
{
    if (dt != SPES_TOK_U16 && dt != SPES_TOK_U32)
        return spes_errf(SPES_EINVAL, "%s: a raw token file needs a dtype (uint16 or uint32)", name);
    if (file_size % (unsigned)dt != 0)
        return spes_errf(SPES_EFORMAT,
                         "%s: raw %s file size %" PRIu64 " is not a multiple of %d bytes (truncated file?)",
                         name, spes_tok_dtype_name(dt), file_size, (int)dt);
    h->format = SPES_TOK_RAW;
    h->dtype = dt;
    h->offset = 0;
    h->ntokens = file_size / (unsigned)dt;
    return 0;
}

int spes_tok_header_parse(spes_tok_header *h, const char *name, const uint8_t *head, size_t head_len,
                          uint64_t file_size, spes_tok_format format, spes_tok_dtype raw_dtype)
{
    memset(h, 0, sizeof *h);
    if (head_len > file_size)
        head_len = (size_t)file_size;
    if (format == SPES_TOK_AUTO) {
        uint32_t m = head_len >= 4 ? rd32(head) : 0;
        if (m == SPES_LLMC_MAGIC_U16 || m == SPES_LLMC_MAGIC_U32)
            format = SPES_TOK_LLMC;
        else if (head_len >= 6 && !memcmp(head, npy_magic, 6))
            format = SPES_TOK_NPY;
        else if (ends_with(name, ".npy"))
            return spes_errf(SPES_EFORMAT, "%s: named .npy but has no NumPy magic (\\x93NUMPY)", name);
        else
            format = SPES_TOK_RAW;
    }
    switch (format) {
    case SPES_TOK_LLMC: return parse_llmc(h, name, head, head_len, file_size);
    case SPES_TOK_NPY: return parse_npy(h, name, head, head_len, file_size);
    case SPES_TOK_RAW: return parse_raw(h, name, file_size, raw_dtype);
    default: return spes_errf(SPES_EINVAL, "%s: unknown token format %d", name, (int)format);
    }
}

static int build_npy(uint8_t *out, size_t cap, size_t *len, spes_tok_dtype dtype, uint64_t n)
{
    const size_t total = SPES_NPY_WRITE_HEADER_BYTES;
    if (cap < total)
        return spes_errf(SPES_EINVAL, "npy header buffer too small");
    char dict[SPES_NPY_WRITE_HEADER_BYTES];
    int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%" PRIu64 ",), }",
                      dtype == SPES_TOK_U16 ? "<u2" : "<u4", n);
    /* 10 bytes of preamble + dict + spaces + '\n' == 128 for any 64-bit count (dl <= 80) */
    if (dl < 0 || (size_t)dl + 11 > total)
        return spes_errf(SPES_ERANGE, "npy header does not fit");
    memcpy(out, npy_magic, 6);
    out[6] = 1;
    out[7] = 0;
    out[8] = (uint8_t)((total - 10) & 0xff);
    out[9] = (uint8_t)((total - 10) >> 8);
    memcpy(out + 10, dict, (size_t)dl);
    memset(out + 10 + dl, ' ', total - 11 - (size_t)dl);
    out[total - 1] = '\n';
    *len = total;
    return 0;
}

int spes_tok_header_build(uint8_t *out, size_t cap, size_t *len, spes_tok_format format, spes_tok_dtype dtype,
                          uint64_t ntokens)
{
    *len = 0;
    if (dtype != SPES_TOK_U16 && dtype != SPES_TOK_U32)
        return spes_errf(SPES_EINVAL, "token dtype must be uint16 or uint32");
    switch (format) {
    case SPES_TOK_RAW: return 0;
    case SPES_TOK_NPY: return build_npy(out, cap, len, dtype, ntokens);
    case SPES_TOK_LLMC:
        if (cap < SPES_LLMC_HEADER_BYTES)
            return spes_errf(SPES_EINVAL, "llm.c header buffer too small");
        if (ntokens > INT32_MAX)
            return spes_errf(SPES_ERANGE, "llm.c shards hold at most %d tokens, not %" PRIu64, INT32_MAX,
                             ntokens);
        memset(out, 0, SPES_LLMC_HEADER_BYTES);
        wr32(out, dtype == SPES_TOK_U16 ? SPES_LLMC_MAGIC_U16 : SPES_LLMC_MAGIC_U32);
        wr32(out + 4, dtype == SPES_TOK_U16 ? SPES_LLMC_VERSION_U16 : SPES_LLMC_VERSION_U32);
        wr32(out + 8, (uint32_t)ntokens);
        *len = SPES_LLMC_HEADER_BYTES;
        return 0;
    default: return spes_errf(SPES_EINVAL, "cannot build a header for format %d", (int)format);
    }
}

void spes_tokfile_close(spes_tokfile *f)
{
    if (f->has_fd)
        close(f->fd);
    free(f->path);
    memset(f, 0, sizeof *f);
}

static int read_head(int fd, const char *path, uint8_t *head, size_t want)
{
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(fd, head + got, want - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? spes_errf_errno(SPES_EIO, "%s: read failed", path)
                         : spes_errf(SPES_EIO, "%s: file shrank while being read", path);
        got += (size_t)r;
    }
    return 0;
}

int spes_tokfile_read(const spes_tokfile *f, uint64_t from, uint64_t n, void *buf)
{
    size_t dt = f->hdr.dtype == SPES_TOK_U16 ? 2 : 4, want = (size_t)n * dt, got = 0;
    uint64_t off = f->hdr.offset + from * dt;
    if (!f->has_fd || from > f->hdr.ntokens || n > f->hdr.ntokens - from)
        return spes_errf(SPES_ERANGE, "%s: tokens %" PRIu64 "..%" PRIu64 " are outside the file's %" PRIu64,
                         f->path ? f->path : "token file", from, from + n, f->hdr.ntokens);
    while (got < want) {
        ssize_t r = pread(f->fd, (uint8_t *)buf + got, want - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? spes_errf_errno(SPES_EIO, "%s: reading token %" PRIu64 " failed", f->path,
                                           from + got / dt)
                         : spes_errf(SPES_EIO,
                                     "%s: file ends at token %" PRIu64 ", not %" PRIu64
                                     " (it shrank after it was opened)",
                                     f->path, from + got / dt, f->hdr.ntokens);
        got += (size_t)r;
    }
    return 0;
}

/* uint16 tokens are read into the front of ids and widened in place, back to
 * front: ids[k] (bytes 4k..4k+3) is written after token k (bytes 2k, 2k+1) and
 * every later one were read. */
int spes_tokfile_read_ids(const spes_tokfile *f, uint64_t from, uint64_t n, uint32_t *ids)
{
    int rc = spes_tokfile_read(f, from, n, ids);
    if (!rc && f->hdr.dtype == SPES_TOK_U16)
        for (uint64_t k = n; k-- > 0;)
            ids[k] = ((const uint16_t *)ids)[k];
    return rc;
}

uint32_t spes_tokfile_get(const spes_tokfile *f, uint64_t i)
{
    uint32_t v;
    return spes_tokfile_read_ids(f, i, 1, &v) ? UINT32_MAX : v;
}

int spes_tokfile_open(spes_tokfile *f, const char *path, spes_tok_format format, spes_tok_dtype raw_dtype)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open token file", path);
    int rc = 0;
    uint8_t *head = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = spes_errf(SPES_EIO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    size_t hl = size < SPES_TOK_HEAD_MAX ? (size_t)size : SPES_TOK_HEAD_MAX;
    if (!(head = malloc(hl ? hl : 1)) || !(f->path = strdup(path))) {
        rc = SPES_ENOMEM;
        goto fail;
    }
    if ((rc = read_head(fd, path, head, hl)) != 0 ||
        (rc = spes_tok_header_parse(&f->hdr, path, head, hl, size, format, raw_dtype)) != 0)
        goto fail;
    free(head);
    f->fd = fd;
    f->has_fd = 1;
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL); /* batches and the scan read forward */
    return 0;
fail:
    free(head);
    close(fd);
    spes_tokfile_close(f);
    return rc;
}
