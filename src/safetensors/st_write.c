/* st_write.c: dtype conversions and the streaming safetensors writer.
 * The writer builds the JSON header with jansson (names are escaped there,
 * never by hand), pads it with spaces to a multiple of 8, and then converts
 * caller floats chunk by chunk into the temp file of a spes_atomic_file.
 * It must never hold a whole tensor's converted copy in memory, and never
 * make a partial file visible: only a fully written file is committed. */
#include "safetensors/safetensors.h"

#include "core/error.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors I/O assumes a little-endian host (float arrays are written as-is)"
#endif

static const struct {
    const char *name;
    size_t size;
} dtypes[SPES_ST_NDTYPES] = {
    [SPES_ST_BOOL] = {"BOOL", 1},       [SPES_ST_U8] = {"U8", 1},           [SPES_ST_I8] = {"I8", 1},
    [SPES_ST_F8_E5M2] = {"F8_E5M2", 1}, [SPES_ST_F8_E4M3] = {"F8_E4M3", 1}, [SPES_ST_I16] = {"I16", 2},
    [SPES_ST_U16] = {"U16", 2},         [SPES_ST_F16] = {"F16", 2},         [SPES_ST_BF16] = {"BF16", 2},
    [SPES_ST_I32] = {"I32", 4},         [SPES_ST_U32] = {"U32", 4},         [SPES_ST_F32] = {"F32", 4},
    [SPES_ST_F64] = {"F64", 8},         [SPES_ST_I64] = {"I64", 8},         [SPES_ST_U64] = {"U64", 8},
};

const char *spes_st_dtype_name(int dtype)
{
    return dtype >= 0 && dtype < SPES_ST_NDTYPES ? dtypes[dtype].name : NULL;
}

size_t spes_st_dtype_size(int dtype)
{
    return dtype >= 0 && dtype < SPES_ST_NDTYPES ? dtypes[dtype].size : 0;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t spes_st_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign, force a quiet NaN */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u); /* ties go to the even upper half */
    return (uint16_t)(u >> 16);
}

float spes_st_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

float spes_st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) /* inf or NaN */
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return bits_f32(sign);
        /* subnormal: man * 2^-24, exact in float */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* numel_of multiplies a shape out, refusing negative sizes and overflow. */
static int numel_of(const spes_st_desc *d, uint64_t *out)
{
    uint64_t n = 1;
    if (d->ndim < 0 || d->ndim > SPES_ST_MAX_DIMS)
        return -1;
    for (int i = 0; i < d->ndim; i++) {
        if (d->shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)d->shape[i], &n))
            return -1;
    }
    *out = n;
    return 0;
}

static json_t *header_entry(const spes_st_desc *d, uint64_t begin, uint64_t end)
{
    json_t *shape = json_array();
    for (int i = 0; i < d->ndim; i++)
        json_array_append_new(shape, json_integer(d->shape[i]));
    json_t *offs = json_array();
    json_array_append_new(offs, json_integer((json_int_t)begin));
    json_array_append_new(offs, json_integer((json_int_t)end));
    return json_pack("{s:s, s:o, s:o}", "dtype", spes_st_dtype_name(d->dtype), "shape", shape, "data_offsets",
                     offs);
}

/* header_json builds the header text (unpadded) for the described tensors. */
static int header_json(char **out, const spes_st_desc *descs, int n, const char *const *metadata,
                       const char *path)
{
    json_t *root = json_object(), *meta = json_object();
    int rc = SPES_ENOMEM;
    if (!root || !meta)
        goto fail;
    json_object_set_new(meta, "format", json_string("pt"));
    for (int i = 0; metadata && metadata[i] && metadata[i + 1]; i += 2)
        json_object_set_new(meta, metadata[i], json_string(metadata[i + 1]));
    json_object_set(root, "__metadata__", meta);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const spes_st_desc *d = &descs[i];
        uint64_t numel, bytes;
        if (!d->name || !strcmp(d->name, "__metadata__") ||
            (d->dtype != SPES_ST_F32 && d->dtype != SPES_ST_BF16)) {
            rc =
                spes_errf(SPES_EINVAL, "%s: tensor %d ('%s'): bad name or dtype (only F32, BF16 are written)",
                          path, i, d->name ? d->name : "(null)");
            goto fail;
        }
        if (numel_of(d, &numel) || __builtin_mul_overflow(numel, spes_st_dtype_size(d->dtype), &bytes) ||
            __builtin_add_overflow(off, bytes, &off) || off > (uint64_t)INT64_MAX) {
            rc = spes_errf(SPES_EINVAL, "%s: tensor '%s': bad shape (negative, rank > %d, or too large)",
                           path, d->name, SPES_ST_MAX_DIMS);
            goto fail;
        }
        if (json_object_get(root, d->name)) {
            rc = spes_errf(SPES_EINVAL, "%s: tensor '%s' is described twice", path, d->name);
            goto fail;
        }
        json_t *e = header_entry(d, off - bytes, off);
        if (!e || json_object_set_new(root, d->name, e))
            goto fail;
    }
    *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    rc = *out ? 0 : SPES_ENOMEM;
fail:
    json_decref(meta);
    json_decref(root);
    return rc;
}

static void free_descs(spes_st_writer *w)
{
    for (int i = 0; i < w->ndescs; i++)
        free((char *)w->descs[i].name);
    free(w->descs);
    w->descs = NULL;
    w->ndescs = 0;
}

static uint64_t desc_numel(const spes_st_desc *d)
{
    uint64_t n = 0;
    numel_of(d, &n);
    return n;
}

/* skip_full moves `next` past every tensor that is already complete (including empty ones). */
static void skip_full(spes_st_writer *w)
{
    while (w->next < w->ndescs && w->written == desc_numel(&w->descs[w->next])) {
        w->next++;
        w->written = 0;
    }
}

static int copy_descs(spes_st_writer *w, const spes_st_desc *descs, int n)
{
    w->descs = calloc(n > 0 ? (size_t)n : 1, sizeof *w->descs);
    if (!w->descs)
        return SPES_ENOMEM;
    for (int i = 0; i < n; i++) {
        w->descs[i] = descs[i];
        w->descs[i].name = strdup(descs[i].name);
        w->ndescs = i + 1;
        if (!w->descs[i].name)
            return SPES_ENOMEM;
    }
    return 0;
}

int spes_st_writer_open(spes_st_writer *w, const char *path, const spes_st_desc *descs, int n,
                        const char *const *metadata)
{
    memset(w, 0, sizeof *w);
    char *json = NULL;
    int rc = n < 0 ? spes_errf(SPES_EINVAL, "%s: negative tensor count", path)
                   : header_json(&json, descs, n, metadata, path);
    if (rc)
        return rc;
    if ((rc = copy_descs(w, descs, n)) != 0) {
        free(json);
        free_descs(w);
        return rc;
    }
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7;
    uint8_t size_le[8];
    for (int i = 0; i < 8; i++)
        size_le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    if ((rc = spes_atomic_open(&w->af, path)) != 0 || (rc = spes_atomic_write(&w->af, size_le, 8)) != 0 ||
        (rc = spes_atomic_write(&w->af, json, len)) != 0 ||
        (rc = spes_atomic_write(&w->af, spaces, padded - len)) != 0) {
        free(json);
        spes_st_writer_abort(w);
        return rc;
    }
    free(json);
    skip_full(w);
    return 0;
}

/* put_some writes up to n values into the current tensor; returns how many it took via *took. */
static int put_some(spes_st_writer *w, const float *data, size_t n, size_t *took)
{
    const spes_st_desc *d = &w->descs[w->next];
    uint64_t room = desc_numel(d) - w->written;
    size_t k = n < room ? n : (size_t)room;
    int rc = 0;
    if (d->dtype == SPES_ST_F32) {
        rc = spes_atomic_write(&w->af, data, k * sizeof(float));
    } else {
        uint16_t buf[4096];
        for (size_t i = 0; i < k && !rc; i += 4096) {
            size_t m = k - i < 4096 ? k - i : 4096;
            for (size_t j = 0; j < m; j++)
                buf[j] = spes_st_f32_to_bf16(data[i + j]);
            rc = spes_atomic_write(&w->af, buf, m * sizeof(uint16_t));
        }
    }
    w->written += k;
    *took = k;
    return rc;
}

int spes_st_writer_put(spes_st_writer *w, const float *data, size_t n)
{
    if (w->failed)
        return spes_errf(SPES_ESTATE, "%s: an earlier write failed", w->af.path ? w->af.path : "safetensors");
    while (n > 0) {
        if (w->next >= w->ndescs) {
            w->failed = 1;
            return spes_errf(SPES_EINVAL, "%s: %zu values more than the described tensors hold", w->af.path,
                             n);
        }
        size_t took;
        int rc = put_some(w, data, n, &took);
        if (rc) {
            w->failed = 1;
            return rc;
        }
        data += took;
        n -= took;
        skip_full(w);
    }
    return 0;
}

int spes_st_writer_commit(spes_st_writer *w)
{
    int rc;
    if (w->failed) {
        rc = spes_errf(SPES_ESTATE, "%s: an earlier write failed; nothing committed", w->af.path);
    } else if (w->next < w->ndescs) {
        rc = spes_errf(SPES_ESTATE, "%s: tensor '%s' has %llu of %llu values; nothing committed", w->af.path,
                       w->descs[w->next].name, (unsigned long long)w->written,
                       (unsigned long long)desc_numel(&w->descs[w->next]));
    } else {
        rc = spes_atomic_commit(&w->af);
        free_descs(w);
        return rc;
    }
    spes_st_writer_abort(w);
    return rc;
}

void spes_st_writer_abort(spes_st_writer *w)
{
    if (w->af.fp || w->af.tmp)
        spes_atomic_abort(&w->af);
    free_descs(w);
    memset(w, 0, sizeof *w);
}
