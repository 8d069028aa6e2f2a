/* hf.c: Hugging Face export and import (config.json + model.safetensors).
 * Export walks the layout in memory order, so the safetensors file is the
 * parameter array tiled tensor by tensor (converted to BF16 on request).
 * Import is strict: every tensor of the layout must be present with its
 * exact shape, and a tensor the layout does not know is refused by name.
 * This file must never guess a missing tensor or reshape a mismatched one. */
#include "checkpoint/checkpoint.h"
#include "checkpoint/ckpt_priv.h"

#include "core/error.h"
#include "core/fileio.h"
#include "safetensors/safetensors.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HF_CONFIG (1u << 20)

/* hf_config_text returns the config.json text, with torch_dtype saying what the tensors hold. */
static char *hf_config_text(const spes_model_config *mc, int bf16)
{
    char *s = spes_config_hf_json(mc);
    if (!s)
        return NULL;
    json_t *o = json_loads(s, 0, NULL);
    free(s);
    if (!o)
        return NULL;
    json_object_set_new(o, "torch_dtype", json_string(bf16 ? "bfloat16" : "float32"));
    s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

static int write_tensors(const char *path, const spes_layout *lo, const float *params, int bf16)
{
    spes_st_desc *d = calloc((size_t)lo->ntensors + 1, sizeof *d);
    if (!d)
        return SPES_ENOMEM;
    for (int i = 0; i < lo->ntensors; i++) {
        const spes_tensor *t = &lo->tensors[i];
        d[i].name = t->name;
        d[i].dtype = bf16 ? SPES_ST_BF16 : SPES_ST_F32;
        d[i].ndim = t->ndim;
        d[i].shape[0] = t->shape[0];
        d[i].shape[1] = t->ndim > 1 ? t->shape[1] : 0;
    }
    spes_st_writer w;
    int rc = spes_st_writer_open(&w, path, d, lo->ntensors, NULL);
    free(d);
    if (rc)
        return rc;
    for (int i = 0; i < lo->ntensors && !rc; i++)
        rc = spes_st_writer_put(&w, params + lo->tensors[i].offset, lo->tensors[i].numel);
    if (rc) {
        spes_st_writer_abort(&w);
        return rc;
    }
    return spes_st_writer_commit(&w);
}

int spes_hf_export(const char *dir, const spes_model_config *mc, const spes_layout *lo, const float *params,
                   int bf16)
{
    int rc = spes__ckpt_make_dir(dir);
    if (rc)
        return rc;
    char *cfg = hf_config_text(mc, bf16);
    char *cpath = spes_path_join(dir, "config.json"), *spath = spes_path_join(dir, "model.safetensors");
    if (!cfg || !cpath || !spath)
        rc = spes_errf(SPES_ENOMEM, "%s: cannot build config.json", dir);
    if (!rc)
        rc = write_tensors(spath, lo, params, bf16);
    if (!rc)
        rc = spes_write_file_atomic(cpath, cfg, strlen(cfg));
    free(cfg);
    free(cpath);
    free(spath);
    return rc;
}

int spes_hf_export_ckpt(const char *ckpt_dir, const char *out_dir, int bf16)
{
    spes_ckpt meta;
    spes_ckpt_reader *r;
    spes_run_config rc;
    spes_layout lo = {0};
    float *params = NULL;
    int err = spes_ckpt_reader_open(&r, ckpt_dir, &meta);
    if (err)
        return err;
    spes_config_defaults(&rc);
    if ((err = spes_config_parse_json(&rc, meta.config_json, ckpt_dir)) == 0 &&
        (err = spes_layout_build(&lo, &rc.model)) == 0) {
        params = malloc(meta.nparams * sizeof(float));
        err = params ? spes_ckpt_reader_read(r, params, NULL, NULL) : SPES_ENOMEM;
    }
    spes_ckpt_reader_close(r);
    if (!err)
        err = spes_hf_export(out_dir, &rc.model, &lo, params, bf16);
    free(params);
    spes_layout_fini(&lo);
    spes_config_fini(&rc);
    spes_ckpt_fini(&meta);
    return err;
}

int spes_hf_read_config(const char *dir, spes_model_config *mc)
{
    char *path = spes_path_join(dir, "config.json"), *text = NULL;
    size_t len;
    if (!path)
        return SPES_ENOMEM;
    int rc = spes_read_file(path, MAX_HF_CONFIG, &text, &len);
    if (!rc && strlen(text) != len)
        rc = spes_errf(SPES_EFORMAT, "%s: contains a NUL byte", path);
    if (!rc)
        rc = spes_config_from_hf_json(mc, text, path);
    free(text);
    free(path);
    return rc;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* check_tensor compares one layout tensor with the file's tensor of the same name. */
static int check_tensor(const spes_st_file *f, const spes_tensor *t, const spes_st_tensor **out)
{
    const spes_st_tensor *s = spes_st_find(f, t->name);
    if (!s)
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s' is missing", f->origin, t->name);
    int same = s->ndim == t->ndim;
    for (int i = 0; same && i < t->ndim; i++)
        same = s->shape[i] == t->shape[i];
    if (!same) {
        char a[128], b[128];
        shape_str(a, sizeof a, s->ndim, s->shape);
        shape_str(b, sizeof b, t->ndim, t->shape);
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s' has shape %s, the config needs %s", f->origin,
                         t->name, a, b);
    }
    if (s->dtype != SPES_ST_F32 && s->dtype != SPES_ST_BF16 && s->dtype != SPES_ST_F16)
        return spes_errf(SPES_EFORMAT, "%s: tensor '%s' has dtype %s, expected F32, BF16 or F16", f->origin,
                         t->name, spes_st_dtype_name(s->dtype));
    *out = s;
    return 0;
}

int spes_hf_import(const char *dir, const spes_layout *lo, float *params)
{
    char *path = spes_path_join(dir, "model.safetensors");
    if (!path)
        return SPES_ENOMEM;
    spes_st_file *f;
    int rc = spes_st_open(&f, path);
    free(path);
    if (rc)
        return rc;
    for (int i = 0; i < f->ntensors && !rc; i++)
        if (!spes_layout_find(lo, f->tensors[i].name))
            rc = spes_errf(SPES_EFORMAT, "%s: unexpected tensor '%s' (not in this configuration)", f->origin,
                           f->tensors[i].name);
    for (int i = 0; i < lo->ntensors && !rc; i++) {
        const spes_st_tensor *s;
        const spes_tensor *t = &lo->tensors[i];
        if ((rc = check_tensor(f, t, &s)) == 0)
            rc = spes_st_read_f32(f, s, params + t->offset, t->numel);
    }
    spes_st_close(f);
    return rc;
}

int spes_hf_load(const char *dir, spes_model_config *mc, spes_layout *lo, float **params)
{
    *params = NULL;
    memset(lo, 0, sizeof *lo);
    int rc = spes_hf_read_config(dir, mc);
    if (rc || (rc = spes_layout_build(lo, mc)) != 0)
        return rc;
    float *p = malloc(lo->total_numel * sizeof(float));
    if (!p)
        rc = spes_errf(SPES_ENOMEM, "%s: cannot allocate %zu parameters", dir, lo->total_numel);
    else
        rc = spes_hf_import(dir, lo, p);
    if (rc) {
        free(p);
        spes_layout_fini(lo);
        return rc;
    }
    *params = p;
    return 0;
}
