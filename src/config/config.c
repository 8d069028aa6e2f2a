/* config.c: the run-config table, read and written by the table engine (cfgtab.h).
 * Every field is one row of `fields`; data.files, a list, is the one custom row.
 * Never exits: errors name the origin (file or flag) and the field. */
#include "config/config.h"
#include "config/cfgtab.h"
#include "core/error.h"

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define M(f) offsetof(spes_run_config, model.f)
#define TR(f) offsetof(spes_run_config, train.f)
#define S(f) offsetof(spes_run_config, spes.f)
#define D(f) offsetof(spes_run_config, data.f)
#define NUM(sec, name, type, off, lo, hi, def)                                                               \
    {                                                                                                        \
        sec, name, SPES_CFG_##type, off, 0, lo, hi, def, NULL, NULL, NULL, NULL, NULL                        \
    }

static int read_files(void *obj, json_t *v, const char *origin);
static json_t *write_files(const void *obj);
static const char *const dtypes[] = {"uint16", "uint32", NULL};
static const char *const formats[] = {"auto", "raw", "npy", "llmc", NULL};
static const char *const aggregations[] = {"mean", "trimmed_mean", "clipped_mean", NULL};
static const char *const codecs[] = {"fp32", "bf16", "q8ef", "topk", NULL};

/* Defaults: a small byte-level model that trains on the fortunes corpus in
 * minutes; optimisation defaults follow the SPES configs (docs/design.md). */
static const spes_cfg_field fields[] = {
    NUM("model", "vocab_size", INT, M(vocab_size), 2, 1 << 24, 256),
    NUM("model", "hidden_size", INT, M(hidden_size), 1, 1 << 16, 128),
    NUM("model", "intermediate_size", INT, M(intermediate_size), 1, 1 << 18, 256),
    NUM("model", "num_hidden_layers", INT, M(num_hidden_layers), 1, 1024, 2),
    NUM("model", "num_attention_heads", INT, M(num_attention_heads), 1, 1024, 4),
    NUM("model", "num_key_value_heads", INT, M(num_key_value_heads), 1, 1024, 4),
    NUM("model", "num_experts", INT, M(num_experts), 1, 1024, 8),
    NUM("model", "num_experts_per_tok", INT, M(num_experts_per_tok), 1, 1024, 2),
    NUM("model", "rms_norm_eps", DBL, M(rms_norm_eps), 1e-12, 1.0, 1e-5),
    NUM("model", "rope_theta", DBL, M(rope_theta), 1.0, 1e12, 10000.0),
    NUM("model", "norm_topk_prob", BOOL, M(norm_topk_prob), 0, 1, 0),
    NUM("model", "tie_word_embeddings", BOOL, M(tie_word_embeddings), 0, 1, 0),
    NUM("model", "max_position_embeddings", INT, M(max_position_embeddings), 1, 1 << 24, 4096),
    NUM("train", "seq_len", INT, TR(seq_len), 1, 1 << 20, 128),
    NUM("train", "batch_size", INT, TR(batch_size), 1, 1 << 16, 8),
    NUM("train", "lr", DBL, TR(lr), 0, 10, 3e-3),
    NUM("train", "min_lr_ratio", DBL, TR(min_lr_ratio), 0, 1, 0.1),
    NUM("train", "warmup_steps", INT, TR(warmup_steps), 0, INT_MAX, 20),
    NUM("train", "max_steps", INT, TR(max_steps), 1, INT_MAX, 500),
    NUM("train", "weight_decay", DBL, TR(weight_decay), 0, 10, 0.1),
    NUM("train", "beta1", DBL, TR(beta1), 0, 0.999999, 0.9),
    NUM("train", "beta2", DBL, TR(beta2), 0, 0.999999, 0.95),
    NUM("train", "eps", DBL, TR(eps), 0, 1, 1e-8),
    NUM("train", "grad_clip", DBL, TR(grad_clip), 0, 1e9, 1.0),
    NUM("train", "lb_loss_weight", DBL, TR(lb_loss_weight), 0, 1e3, 0.01),
    NUM("train", "z_loss_weight", DBL, TR(z_loss_weight), 0, 1e3, 0.001),
    NUM("train", "seed", I64, TR(seed), 0, 9.0e15, 1337),
    NUM("spes", "sync_interval", INT, S(sync_interval), 1, INT_MAX, 50),
    NUM("spes", "merge_interval", INT, S(merge_interval), 1, INT_MAX, 50),
    NUM("spes", "merge_alpha", DBL, S(merge_alpha), 0, 1, 0.1),
    NUM("spes", "merge_decay_steps", INT, S(merge_decay_steps), 0, INT_MAX, 200),
    NUM("spes", "merge_topk", INT, S(merge_topk), 1, 1024, 1),
    NUM("spes", "lb_factor_start", DBL, S(lb_factor_start), 0, 1, 0.7),
    NUM("spes", "lb_factor_ramp", DBL, S(lb_factor_ramp), 0, 1, 0.2),
    NUM("spes", "outer_lr", DBL, S(outer_lr), 1e-6, 10, 1.0),
    NUM("spes", "outer_momentum", DBL, S(outer_momentum), 0, 0.999999, 0.0),
    NUM("spes", "norm_bound", DBL, S(norm_bound), 0, 1e9, 10.0),
    {"spes", "aggregation", SPES_CFG_STR, S(aggregation), sizeof(((spes_spes_config *)0)->aggregation), 0, 0,
     0, "mean", aggregations, NULL, NULL, NULL},
    NUM("spes", "trim", DBL, S(trim), 0, 0.499, 0.25),
    NUM("spes", "clip", DBL, S(clip), 1e-3, 1e6, 2.0),
    {"spes", "codec", SPES_CFG_STR, S(codec), sizeof(((spes_spes_config *)0)->codec), 0, 0, 0, "fp32", codecs,
     NULL, NULL, NULL},
    NUM("spes", "overlap", INT, S(overlap), 0, 1, 0),
    NUM("spes", "overlap_carry", DBL, S(overlap_carry), 0, 1, 0.5),
    NUM("spes", "rotate_interval", INT, S(rotate_interval), 0, INT_MAX, 0),
    NUM("spes", "column_owners", INT, S(column_owners), 1, SPES_MAX_MEMBERS, 1),
    NUM("spes", "sharded", INT, S(sharded), 0, 1, 0),
    NUM("spes", "audit_fraction", DBL, S(audit_fraction), 0, 1, 0),
    {"data", "files", SPES_CFG_CUSTOM, 0, 0, 0, 0, 0, NULL, NULL, NULL, read_files, write_files},
    {"data", "dtype", SPES_CFG_STR, D(dtype), sizeof(((spes_data_config *)0)->dtype), 0, 0, 0, "uint16",
     dtypes, NULL, NULL, NULL},
    {"data", "format", SPES_CFG_STR, D(format), sizeof(((spes_data_config *)0)->format), 0, 0, 0, "auto",
     formats, NULL, NULL, NULL},
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static const spes_cfg_table table = {fields, NFIELDS};

void spes_config_defaults(spes_run_config *c)
{
    memset(c, 0, sizeof *c);
    spes_cfg_defaults(&table, c);
}

static void free_data(spes_data_config *d)
{
    for (int i = 0; i < d->nfiles; i++) {
        free(d->files[i].path);
        free(d->files[i].sha256);
    }
    d->nfiles = 0;
}

static int add_data_file(spes_data_config *d, const char *path, const char *sha, int64_t size,
                         const char *origin)
{
    if (d->nfiles >= SPES_MAX_DATA_FILES)
        return spes_errf(SPES_ERANGE, "%s: more than %d data files", origin, SPES_MAX_DATA_FILES);
    spes_data_file *f = &d->files[d->nfiles];
    f->path = strdup(path);
    f->sha256 = sha ? strdup(sha) : NULL;
    f->size = size;
    if (!f->path || (sha && !f->sha256)) {
        free(f->path);
        free(f->sha256);
        return SPES_ENOMEM;
    }
    d->nfiles++;
    return 0;
}

static int parse_data_entry(spes_data_config *d, json_t *e, size_t i, const char *origin)
{
    if (json_is_string(e))
        return add_data_file(d, json_string_value(e), NULL, -1, origin);
    if (!json_is_object(e))
        return spes_errf(SPES_EINVAL, "%s: data.files[%zu] must be a string or an object", origin, i);
    json_t *p = json_object_get(e, "url");
    if (!p)
        p = json_object_get(e, "path");
    json_t *h = json_object_get(e, "sha256"), *s = json_object_get(e, "size");
    if (!json_is_string(p))
        return spes_errf(SPES_EINVAL, "%s: data.files[%zu] needs a \"url\" or \"path\" string", origin, i);
    if (h && (!json_is_string(h) || strlen(json_string_value(h)) != 64))
        return spes_errf(SPES_EINVAL, "%s: data.files[%zu].sha256 must be 64 hex digits", origin, i);
    if (s && (!json_is_integer(s) || json_integer_value(s) < 0))
        return spes_errf(SPES_EINVAL, "%s: data.files[%zu].size must be a non-negative integer", origin, i);
    const char *key;
    json_t *val;
    json_object_foreach(e, key, val)
    {
        if (strcmp(key, "url") && strcmp(key, "path") && strcmp(key, "sha256") && strcmp(key, "size"))
            return spes_errf(SPES_EINVAL, "%s: data.files[%zu]: unknown key \"%s\"", origin, i, key);
    }
    return add_data_file(d, json_string_value(p), h ? json_string_value(h) : NULL,
                         s ? (int64_t)json_integer_value(s) : -1, origin);
}

/* read_files replaces the data file list with the JSON array v */
static int read_files(void *obj, json_t *v, const char *origin)
{
    spes_data_config *d = &((spes_run_config *)obj)->data;
    int rc = 0;
    if (!json_is_array(v))
        return spes_errf(SPES_EINVAL, "%s: data.files must be an array", origin);
    free_data(d);
    for (size_t i = 0; i < json_array_size(v) && !rc; i++)
        rc = parse_data_entry(d, json_array_get(v, i), i, origin);
    return rc;
}

/* write_files is the data file list as JSON: a bare path, or an object when it has checks */
static json_t *write_files(const void *obj)
{
    const spes_data_config *d = &((const spes_run_config *)obj)->data;
    json_t *files = json_array();
    for (int i = 0; i < d->nfiles; i++) {
        const spes_data_file *f = &d->files[i];
        if (!f->sha256 && f->size < 0) {
            json_array_append_new(files, json_string(f->path));
            continue;
        }
        json_t *o = json_object();
        json_object_set_new(o, strstr(f->path, "://") ? "url" : "path", json_string(f->path));
        if (f->sha256)
            json_object_set_new(o, "sha256", json_string(f->sha256));
        if (f->size >= 0)
            json_object_set_new(o, "size", json_integer(f->size));
        json_array_append_new(files, o);
    }
    return files;
}

int spes_config_parse_json(spes_run_config *c, const char *text, const char *origin)
{
    return spes_cfg_parse(&table, c, text, origin);
}

int spes_config_load(spes_run_config *c, const char *path)
{
    return spes_cfg_load(&table, c, path);
}

int spes_config_set(spes_run_config *c, const char *assignment)
{
    return spes_cfg_set(&table, c, assignment);
}

int spes_config_set_data(spes_run_config *c, const char *path)
{
    free_data(&c->data);
    return add_data_file(&c->data, path, NULL, -1, "--data");
}

int spes_config_validate(const spes_run_config *c)
{
    const spes_model_config *m = &c->model;
    if (m->hidden_size % m->num_attention_heads)
        return spes_errf(SPES_EINVAL, "model.hidden_size %d is not divisible by num_attention_heads %d",
                         m->hidden_size, m->num_attention_heads);
    if ((m->hidden_size / m->num_attention_heads) % 2)
        return spes_errf(SPES_EINVAL, "model: head dimension %d must be even for RoPE",
                         m->hidden_size / m->num_attention_heads);
    if (m->num_attention_heads % m->num_key_value_heads)
        return spes_errf(SPES_EINVAL,
                         "model.num_attention_heads %d is not divisible by num_key_value_heads %d",
                         m->num_attention_heads, m->num_key_value_heads);
    if (m->num_experts_per_tok > m->num_experts)
        return spes_errf(SPES_EINVAL, "model.num_experts_per_tok %d exceeds num_experts %d",
                         m->num_experts_per_tok, m->num_experts);
    if (c->train.seq_len > m->max_position_embeddings)
        return spes_errf(SPES_EINVAL, "train.seq_len %d exceeds model.max_position_embeddings %d",
                         c->train.seq_len, m->max_position_embeddings);
    if (c->spes.merge_topk >= m->num_experts && m->num_experts > 1)
        return spes_errf(SPES_EINVAL, "spes.merge_topk %d must be below model.num_experts %d",
                         c->spes.merge_topk, m->num_experts);
    if (c->train.warmup_steps > c->train.max_steps)
        return spes_errf(SPES_EINVAL, "train.warmup_steps %d exceeds train.max_steps %d",
                         c->train.warmup_steps, c->train.max_steps);
    if (c->spes.sharded && strcmp(c->spes.aggregation, "mean"))
        return spes_errf(SPES_EINVAL,
                         "spes.sharded rounds average shards: spes.aggregation must be \"mean\", "
                         "not \"%s\"",
                         c->spes.aggregation);
    if (c->spes.sharded && (c->spes.outer_lr != 1.0 || c->spes.outer_momentum != 0.0))
        return spes_errf(SPES_EINVAL, "spes.sharded rounds do not run the outer optimizer yet: spes.outer_lr "
                                      "must be 1 and spes.outer_momentum 0");
    return 0;
}

char *spes_config_to_json(const spes_run_config *c)
{
    json_t *root = spes_cfg_to_json(&table, c);
    /* A run that keeps plain averaging writes no outer-optimizer fields: the coordinator hands this
     * JSON to every node, and nodes built before the outer optimizer refuse fields they do not
     * know, though they compute such a run exactly (docs/convergence.md). */
    json_t *spes = json_object_get(root, "spes");
    if (spes && c->spes.outer_lr == 1.0 && c->spes.outer_momentum == 0.0) {
        json_object_del(spes, "outer_lr");
        json_object_del(spes, "outer_momentum");
    }
    /* likewise the poisoning defences at their defaults (docs/design.md, "Robust aggregation") */
    if (spes && c->spes.norm_bound == 10.0)
        json_object_del(spes, "norm_bound");
    if (spes && !strcmp(c->spes.aggregation, "mean"))
        json_object_del(spes, "aggregation");
    if (spes && c->spes.trim == 0.25)
        json_object_del(spes, "trim");
    if (spes && c->spes.clip == 2.0)
        json_object_del(spes, "clip");
    if (spes && !strcmp(c->spes.codec, "fp32")) /* and the codec (docs/design.md, "Codecs") */
        json_object_del(spes, "codec");
    if (spes && !c->spes.overlap) /* and overlap (docs/design.md, "Overlap") */
        json_object_del(spes, "overlap");
    if (spes && c->spes.overlap_carry == 0.5)
        json_object_del(spes, "overlap_carry");
    if (spes && !c->spes.rotate_interval) /* and column rotation (docs/convergence.md) */
        json_object_del(spes, "rotate_interval");
    if (spes && c->spes.column_owners == 1) /* and column replicas (docs/design.md, "Columns") */
        json_object_del(spes, "column_owners");
    if (spes && !c->spes.sharded) /* and the sharded round (docs/design.md, "The sharded round") */
        json_object_del(spes, "sharded");
    if (spes && c->spes.audit_fraction == 0)
        json_object_del(spes, "audit_fraction");
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(root);
    return s;
}

char *spes_config_hf_json(const spes_model_config *m)
{
    spes_run_config tmp;
    spes_config_defaults(&tmp);
    tmp.model = *m;
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", "OlmoeForCausalLM"));
    json_object_set_new(o, "model_type", json_string("olmoe"));
    for (size_t i = 0; i < NFIELDS; i++)
        if (!strcmp(fields[i].section, "model"))
            json_object_set_new(o, fields[i].name, spes_cfg_write_json(&fields[i], &tmp));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "attention_bias", json_false());
    json_object_set_new(o, "attention_dropout", json_real(0.0));
    json_object_set_new(o, "clip_qkv", json_null());
    json_object_set_new(o, "initializer_range", json_real(0.02));
    json_object_set_new(o, "output_router_logits", json_false());
    json_object_set_new(o, "rope_scaling", json_null());
    json_object_set_new(o, "use_cache", json_true());
    json_object_set_new(o, "torch_dtype", json_string("float32"));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

int spes_config_from_hf_json(spes_model_config *m, const char *text, const char *origin)
{
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root)
        return spes_errf(SPES_EFORMAT, "%s:%d:%d: invalid JSON: %s", origin, jerr.line, jerr.column,
                         jerr.text);
    spes_run_config tmp;
    spes_config_defaults(&tmp);
    int rc = 0;
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt) || strcmp(json_string_value(mt), "olmoe")) {
        rc = spes_errf(SPES_EFORMAT, "%s: model_type is not \"olmoe\"", origin);
        goto out;
    }
    for (size_t i = 0; i < NFIELDS && !rc; i++) {
        const spes_cfg_field *f = &fields[i];
        if (strcmp(f->section, "model"))
            continue;
        json_t *v = json_object_get(root, f->name);
        if (!v) {
            if (strcmp(f->name, "norm_topk_prob") && strcmp(f->name, "tie_word_embeddings") &&
                strcmp(f->name, "max_position_embeddings") && strcmp(f->name, "rope_theta"))
                rc = spes_errf(SPES_EFORMAT, "%s: missing field %s", origin, f->name);
            continue;
        }
        rc = spes_cfg_read_json(f, &tmp, v, origin);
    }
    if (!rc)
        *m = tmp.model;
out:
    json_decref(root);
    return rc;
}

void spes_config_fini(spes_run_config *c)
{
    free_data(&c->data);
}

int spes_config_copy(spes_run_config *dst, const spes_run_config *src)
{
    *dst = *src;
    dst->data.nfiles = 0;
    for (int i = 0; i < src->data.nfiles; i++) {
        const spes_data_file *f = &src->data.files[i];
        int rc = add_data_file(&dst->data, f->path, f->sha256, f->size, "copy");
        if (rc) {
            free_data(&dst->data);
            return rc;
        }
    }
    return 0;
}
