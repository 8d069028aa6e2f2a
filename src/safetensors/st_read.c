/* st_read.c: the strict safetensors reader.
 * Every byte of the file is outside input: the header size, the JSON, every
 * shape and offset are checked before anything is used, and a refusal is one
 * message naming the file and the tensor or field. This file must never
 * trust a length it has not compared with the file size, never assert on
 * input, and never read outside the mapping (the fuzz target checks it). */
#include "safetensors/safetensors.h"

#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int dtype_parse(const char *s)
{
    for (int i = 0; i < SPES_ST_NDTYPES; i++)
        if (!strcmp(s, spes_st_dtype_name(i)))
            return i;
    return -1;
}

/* get_u64 reads a non-negative JSON integer (jansson already refused overflowing literals). */
static int get_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_shape(spes_st_tensor *t, const json_t *shape, const char *origin)
{
    if (!json_is_array(shape))
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s': shape is not an array", origin, t->name);
    size_t nd = json_array_size(shape);
    if (nd > SPES_ST_MAX_DIMS)
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s': shape has %zu dimensions, more than %d", origin,
                         t->name, nd, SPES_ST_MAX_DIMS);
    t->ndim = (int)nd;
    t->numel = 1;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (get_u64(json_array_get(shape, i), &d))
            return spes_errf(SPES_EFORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                             origin, t->name, i);
        if (__builtin_mul_overflow(t->numel, d, &t->numel))
            return spes_errf(SPES_EFORMAT, "%s: tensor '%s': shape product overflows 64 bits", origin,
                             t->name);
        t->shape[i] = (int64_t)d;
    }
    return 0;
}

static int parse_offsets(spes_st_tensor *t, const json_t *offs, const char *origin)
{
    if (!json_is_array(offs) || json_array_size(offs) != 2 || get_u64(json_array_get(offs, 0), &t->begin) ||
        get_u64(json_array_get(offs, 1), &t->end))
        return spes_errf(SPES_EFORMAT,
                         "%s: tensor '%s': data_offsets is not [begin, end] with two "
                         "non-negative integers",
                         origin, t->name);
    if (t->end < t->begin)
        return spes_errf(SPES_EFORMAT,
                         "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                         origin, t->name, t->begin, t->end);
    return 0;
}

static int parse_entry(spes_st_tensor *t, const json_t *e, const char *origin)
{
    if (!json_is_object(e))
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s': entry is not an object", origin, t->name);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)e, key, v)
    {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return spes_errf(SPES_EFORMAT, "%s: tensor '%s': unexpected field '%s'", origin, t->name, key);
    }
    static const char *need[] = {"dtype", "shape", "data_offsets"};
    for (int i = 0; i < 3; i++)
        if (!json_object_get(e, need[i]))
            return spes_errf(SPES_EFORMAT, "%s: tensor '%s': missing field '%s'", origin, t->name, need[i]);
    const json_t *dt = json_object_get(e, "dtype");
    if (!json_is_string(dt))
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s': dtype is not a string", origin, t->name);
    if ((t->dtype = dtype_parse(json_string_value(dt))) < 0)
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", origin, t->name,
                         json_string_value(dt));
    int rc = parse_shape(t, json_object_get(e, "shape"), origin);
    return rc ? rc : parse_offsets(t, json_object_get(e, "data_offsets"), origin);
}

static int parse_metadata(spes_st_file *f, const json_t *m)
{
    if (!json_is_object(m))
        return spes_errf(SPES_EFORMAT, "%s: __metadata__ is not an object", f->origin);
    size_t n = json_object_size(m);
    f->meta_keys = calloc(n + 1, sizeof(char *));
    f->meta_vals = calloc(n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals)
        return SPES_ENOMEM;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)m, key, v)
    {
        if (!json_is_string(v))
            return spes_errf(SPES_EFORMAT, "%s: __metadata__ '%s' is not a string", f->origin, key);
        f->meta_keys[f->nmeta] = strdup(key);
        f->meta_vals[f->nmeta] = strdup(json_string_value(v));
        f->nmeta++;
        if (!f->meta_keys[f->nmeta - 1] || !f->meta_vals[f->nmeta - 1])
            return SPES_ENOMEM;
    }
    return 0;
}

static int parse_root(spes_st_file *f, const json_t *root)
{
    if (!json_is_object(root))
        return spes_errf(SPES_EFORMAT, "%s: header is not a JSON object", f->origin);
    f->tensors = calloc(json_object_size(root) + 1, sizeof *f->tensors);
    if (!f->tensors)
        return SPES_ENOMEM;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)root, key, v)
    {
        if (!strcmp(key, "__metadata__")) {
            int rc = parse_metadata(f, v);
            if (rc)
                return rc;
            continue;
        }
        spes_st_tensor *t = &f->tensors[f->ntensors++];
        if (!(t->name = strdup(key)))
            return SPES_ENOMEM;
        int rc = parse_entry(t, v, f->origin);
        if (rc)
            return rc;
    }
    return 0;
}

static int cmp_offsets(const void *a, const void *b)
{
    const spes_st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* check_tiling verifies the sorted tensors cover the data region exactly, each with its dtype's size. */
static int check_tiling(spes_st_file *f)
{
    qsort(f->tensors, (size_t)f->ntensors, sizeof *f->tensors, cmp_offsets);
    uint64_t pos = 0;
    for (int i = 0; i < f->ntensors; i++) {
        const spes_st_tensor *t = &f->tensors[i];
        if (t->begin < pos)
            return spes_errf(SPES_EFORMAT,
                             "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                             "] overlap the previous tensor ending at %" PRIu64,
                             f->origin, t->name, t->begin, t->end, pos);
        if (t->begin > pos && i == 0)
            return spes_errf(SPES_EFORMAT,
                             "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                             "] leave a gap: the first tensor must start at 0",
                             f->origin, t->name, t->begin, t->end);
        if (t->begin > pos)
            return spes_errf(SPES_EFORMAT,
                             "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                             "] leave a gap after the previous tensor ending at %" PRIu64,
                             f->origin, t->name, t->begin, t->end, pos);
        uint64_t need;
        if (__builtin_mul_overflow(t->numel, spes_st_dtype_size(t->dtype), &need))
            return spes_errf(SPES_EFORMAT,
                             "%s: tensor '%s': %" PRIu64 " elements of %s overflow a 64-bit byte size",
                             f->origin, t->name, t->numel, spes_st_dtype_name(t->dtype));
        if (need != t->end - t->begin)
            return spes_errf(SPES_EFORMAT,
                             "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                             " bytes but %" PRIu64 " elements of %s need %" PRIu64,
                             f->origin, t->name, t->begin, t->end, t->end - t->begin, t->numel,
                             spes_st_dtype_name(t->dtype), need);
        pos = t->end;
    }
    if (pos != f->data_len)
        return spes_errf(SPES_EFORMAT,
                         "%s: the tensors cover %" PRIu64 " bytes of data but the data region is %" PRIu64
                         " bytes",
                         f->origin, pos, f->data_len);
    return 0;
}

static int parse_header(spes_st_file *f, const uint8_t *buf, size_t len)
{
    if (len < 8)
        return spes_errf(SPES_EFORMAT,
                         "%s: file is %zu bytes, too short for the 8-byte header size (truncated?)",
                         f->origin, len);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)buf[i] << (8 * i);
    if (n > SPES_ST_MAX_HEADER)
        return spes_errf(SPES_EFORMAT, "%s: header size %" PRIu64 " exceeds the limit of %llu bytes",
                         f->origin, n, SPES_ST_MAX_HEADER);
    if (n > len - 8)
        return spes_errf(SPES_EFORMAT,
                         "%s: header size %" PRIu64 " is larger than the %zu bytes after it (truncated?)",
                         f->origin, n, len - 8);
    if (n == 0 || buf[8] != '{')
        return spes_errf(SPES_EFORMAT, "%s: header does not start with '{'", f->origin);
    json_error_t err;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return spes_errf(SPES_EFORMAT, "%s: header is not valid JSON: %s (byte %d)", f->origin, err.text,
                         err.position);
    f->data = buf + 8 + n;
    f->data_len = len - 8 - n;
    int rc = parse_root(f, root);
    json_decref(root);
    return rc ? rc : check_tiling(f);
}

int spes_st_parse(spes_st_file **out, const uint8_t *buf, size_t len, const char *origin)
{
    *out = NULL;
    spes_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->origin = strdup(origin ? origin : "safetensors"))) {
        free(f);
        return SPES_ENOMEM;
    }
    int rc = parse_header(f, buf, len);
    if (rc) {
        spes_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int spes_st_open(spes_st_file **out, const char *path)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return spes_errf_errno(errno == ENOENT ? SPES_ENOENT : SPES_EIO, "%s: cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return spes_errf(SPES_EIO, "%s: not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len >= 8) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int rc = spes_errf_errno(SPES_EIO, "%s: cannot map %zu bytes", path, len);
            close(fd);
            return rc;
        }
    }
    close(fd);
    int rc = spes_st_parse(out, map ? map : (const uint8_t *)"", map ? len : (size_t)st.st_size, path);
    if (rc) {
        if (map)
            munmap(map, len);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_len = len;
    return 0;
}

void spes_st_close(spes_st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->ntensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->origin);
    free(f);
}

const spes_st_tensor *spes_st_find(const spes_st_file *f, const char *name)
{
    for (int i = 0; i < f->ntensors; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

const char *spes_st_meta(const spes_st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta_keys[i], key))
            return f->meta_vals[i];
    return NULL;
}

int spes_st_read_f32(const spes_st_file *f, const spes_st_tensor *t, float *out, size_t n)
{
    if (n != t->numel)
        return spes_errf(SPES_EINVAL, "%s: tensor '%s' has %" PRIu64 " elements, the caller expects %zu",
                         f->origin, t->name, t->numel, n);
    const uint8_t *p = f->data + t->begin;
    switch (t->dtype) {
    case SPES_ST_F32: memcpy(out, p, n * sizeof(float)); return 0;
    case SPES_ST_F16:
    case SPES_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
            out[i] = t->dtype == SPES_ST_F16 ? spes_st_f16_to_f32(h) : spes_st_bf16_to_f32(h);
        }
        return 0;
    default:
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s': dtype %s cannot be read as float32", f->origin,
                         t->name, spes_st_dtype_name(t->dtype));
    }
}
