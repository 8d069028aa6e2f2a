/* config.c: the run-config table and its JSON reader/writer (jansson).
 * Every scalar field is one row of `fields`; the data section is handled
 * separately because it holds a list. Never exits: errors name the origin
 * (file or flag) and the field. */
#include "config/config.h"
#include "core/error.h"
#include "core/fileio.h"

#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum ftype { F_INT, F_I64, F_DBL, F_BOOL };

typedef struct field {
    const char *section, *name;
    enum ftype type;
    size_t off;
    double lo, hi;
    double def;
} field;

#define M(f) offsetof(spes_run_config, model.f)
#define TR(f) offsetof(spes_run_config, train.f)
#define S(f) offsetof(spes_run_config, spes.f)

/* Defaults: a small byte-level model that trains on the fortunes corpus in
 * minutes; optimisation defaults follow the SPES configs (DESIGN.md). */
static const field fields[] = {
    {"model", "vocab_size", F_INT, M(vocab_size), 2, 1 << 24, 256},
    {"model", "hidden_size", F_INT, M(hidden_size), 1, 1 << 16, 128},
    {"model", "intermediate_size", F_INT, M(intermediate_size), 1, 1 << 18, 256},
    {"model", "num_hidden_layers", F_INT, M(num_hidden_layers), 1, 1024, 2},
    {"model", "num_attention_heads", F_INT, M(num_attention_heads), 1, 1024, 4},
    {"model", "num_key_value_heads", F_INT, M(num_key_value_heads), 1, 1024, 4},
    {"model", "num_experts", F_INT, M(num_experts), 1, 1024, 8},
    {"model", "num_experts_per_tok", F_INT, M(num_experts_per_tok), 1, 1024, 2},
    {"model", "rms_norm_eps", F_DBL, M(rms_norm_eps), 1e-12, 1.0, 1e-5},
    {"model", "rope_theta", F_DBL, M(rope_theta), 1.0, 1e12, 10000.0},
    {"model", "norm_topk_prob", F_BOOL, M(norm_topk_prob), 0, 1, 0},
    {"model", "tie_word_embeddings", F_BOOL, M(tie_word_embeddings), 0, 1, 0},
    {"model", "max_position_embeddings", F_INT, M(max_position_embeddings), 1, 1 << 24, 4096},
    {"train", "seq_len", F_INT, TR(seq_len), 1, 1 << 20, 128},
    {"train", "batch_size", F_INT, TR(batch_size), 1, 1 << 16, 8},
    {"train", "lr", F_DBL, TR(lr), 0, 10, 3e-3},
    {"train", "min_lr_ratio", F_DBL, TR(min_lr_ratio), 0, 1, 0.1},
    {"train", "warmup_steps", F_INT, TR(warmup_steps), 0, INT_MAX, 20},
    {"train", "max_steps", F_INT, TR(max_steps), 1, INT_MAX, 500},
    {"train", "weight_decay", F_DBL, TR(weight_decay), 0, 10, 0.1},
    {"train", "beta1", F_DBL, TR(beta1), 0, 0.999999, 0.9},
    {"train", "beta2", F_DBL, TR(beta2), 0, 0.999999, 0.95},
    {"train", "eps", F_DBL, TR(eps), 0, 1, 1e-8},
    {"train", "grad_clip", F_DBL, TR(grad_clip), 0, 1e9, 1.0},
    {"train", "lb_loss_weight", F_DBL, TR(lb_loss_weight), 0, 1e3, 0.01},
    {"train", "z_loss_weight", F_DBL, TR(z_loss_weight), 0, 1e3, 0.001},
    {"train", "seed", F_I64, TR(seed), 0, 9.0e15, 1337},
    {"spes", "sync_interval", F_INT, S(sync_interval), 1, INT_MAX, 50},
    {"spes", "merge_interval", F_INT, S(merge_interval), 1, INT_MAX, 50},
    {"spes", "merge_alpha", F_DBL, S(merge_alpha), 0, 1, 0.1},
    {"spes", "merge_decay_steps", F_INT, S(merge_decay_steps), 1, INT_MAX, 200},
    {"spes", "merge_topk", F_INT, S(merge_topk), 1, 1024, 1},
    {"spes", "lb_factor_start", F_DBL, S(lb_factor_start), 0, 1, 0.7},
    {"spes", "lb_factor_ramp", F_DBL, S(lb_factor_ramp), 0, 1, 0.2},
    {"spes", "outer_lr", F_DBL, S(outer_lr), 1e-6, 10, 1.0},
    {"spes", "outer_momentum", F_DBL, S(outer_momentum), 0, 0.999999, 0.0},
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static void *fptr(spes_run_config *c, const field *f)
{
    return (char *)c + f->off;
}

static double fget(const spes_run_config *c, const field *f)
{
    const void *p = (const char *)c + f->off;
    switch (f->type) {
    case F_INT:
    case F_BOOL: return *(const int *)p;
    case F_I64: return (double)*(const int64_t *)p;
    default: return *(const double *)p;
    }
}

void spes_config_defaults(spes_run_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NFIELDS; i++) {
        const field *f = &fields[i];
        void *p = fptr(c, f);
        switch (f->type) {
        case F_INT:
        case F_BOOL: *(int *)p = (int)f->def; break;
        case F_I64: *(int64_t *)p = (int64_t)f->def; break;
        case F_DBL: *(double *)p = f->def; break;
        }
    }
    strcpy(c->data.dtype, "uint16");
    strcpy(c->data.format, "auto");
}

static const field *find_field(const char *section, const char *name)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (!strcmp(fields[i].section, section) && !strcmp(fields[i].name, name))
            return &fields[i];
    return NULL;
}

/* is_whole tells whether d is an integer value; the range test comes first because
 * converting a double outside long long's range (or NaN) is undefined behaviour. */
static int is_whole(double d)
{
    return d >= -9.0e18 && d <= 9.0e18 && d == (double)(long long)d;
}

static int set_number(spes_run_config *c, const field *f, double v, int is_int, const char *origin)
{
    if (f->type != F_DBL && !is_int)
        return spes_errf(SPES_EINVAL, "%s: %s.%s must be an integer", origin, f->section, f->name);
    if (!(v >= f->lo && v <= f->hi))
        return spes_errf(SPES_ERANGE, "%s: %s.%s = %g is outside [%g, %g]", origin, f->section,
                         f->name, v, f->lo, f->hi);
    void *p = fptr(c, f);
    switch (f->type) {
    case F_INT:
    case F_BOOL: *(int *)p = (int)v; break;
    case F_I64: *(int64_t *)p = (int64_t)v; break;
    case F_DBL: *(double *)p = v; break;
    }
    return 0;
}

static int set_json(spes_run_config *c, const field *f, json_t *v, const char *origin)
{
    if (f->type == F_BOOL) {
        if (!json_is_boolean(v))
            return spes_errf(SPES_EINVAL, "%s: %s.%s must be true or false", origin, f->section, f->name);
        *(int *)fptr(c, f) = json_is_true(v);
        return 0;
    }
    if (json_is_integer(v))
        return set_number(c, f, (double)json_integer_value(v), 1, origin);
    if (json_is_real(v)) {
        double d = json_real_value(v);
        return set_number(c, f, d, is_whole(d) && f->type != F_DBL, origin);
    }
    return spes_errf(SPES_EINVAL, "%s: %s.%s must be a number", origin, f->section, f->name);
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
    json_object_foreach(e, key, val) {
        if (strcmp(key, "url") && strcmp(key, "path") && strcmp(key, "sha256") && strcmp(key, "size"))
            return spes_errf(SPES_EINVAL, "%s: data.files[%zu]: unknown key \"%s\"", origin, i, key);
    }
    return add_data_file(d, json_string_value(p), h ? json_string_value(h) : NULL,
                         s ? (int64_t)json_integer_value(s) : -1, origin);
}

static int set_choice(char *dst, size_t n, const char *v, const char *const *ok, const char *what,
                      const char *origin)
{
    for (int i = 0; ok[i]; i++)
        if (!strcmp(v, ok[i])) {
            snprintf(dst, n, "%s", v);
            return 0;
        }
    return spes_errf(SPES_EINVAL, "%s: %s \"%s\" is not one of the supported values", origin, what, v);
}

static const char *const dtypes[] = {"uint16", "uint32", NULL};
static const char *const formats[] = {"auto", "raw", "npy", "llmc", NULL};

static int parse_data(spes_data_config *d, json_t *o, const char *origin)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int rc = 0;
        if (!strcmp(key, "files")) {
            if (!json_is_array(v))
                return spes_errf(SPES_EINVAL, "%s: data.files must be an array", origin);
            free_data(d);
            for (size_t i = 0; i < json_array_size(v) && !rc; i++)
                rc = parse_data_entry(d, json_array_get(v, i), i, origin);
        } else if (!strcmp(key, "dtype") || !strcmp(key, "format")) {
            if (!json_is_string(v))
                return spes_errf(SPES_EINVAL, "%s: data.%s must be a string", origin, key);
            rc = key[0] == 'd' ? set_choice(d->dtype, sizeof d->dtype, json_string_value(v), dtypes, "data.dtype", origin)
                               : set_choice(d->format, sizeof d->format, json_string_value(v), formats, "data.format", origin);
        } else {
            return spes_errf(SPES_EINVAL, "%s: unknown field data.%s", origin, key);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int spes_config_parse_json(spes_run_config *c, const char *text, const char *origin)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return spes_errf(SPES_EFORMAT, "%s:%d:%d: invalid JSON: %s", origin, jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = spes_errf(SPES_EFORMAT, "%s: the top level must be a JSON object", origin);
        goto out;
    }
    const char *sec;
    json_t *so;
    json_object_foreach(root, sec, so) {
        if (!strcmp(sec, "data")) {
            if (!json_is_object(so)) {
                rc = spes_errf(SPES_EINVAL, "%s: \"data\" must be an object", origin);
                goto out;
            }
            if ((rc = parse_data(&c->data, so, origin)) != 0)
                goto out;
            continue;
        }
        if (strcmp(sec, "model") && strcmp(sec, "train") && strcmp(sec, "spes")) {
            rc = spes_errf(SPES_EINVAL, "%s: unknown section \"%s\" (expected model, train, spes, data)", origin, sec);
            goto out;
        }
        if (!json_is_object(so)) {
            rc = spes_errf(SPES_EINVAL, "%s: \"%s\" must be an object", origin, sec);
            goto out;
        }
        const char *name;
        json_t *v;
        json_object_foreach(so, name, v) {
            const field *f = find_field(sec, name);
            if (!f) {
                rc = spes_errf(SPES_EINVAL, "%s: unknown field %s.%s", origin, sec, name);
                goto out;
            }
            if ((rc = set_json(c, f, v, origin)) != 0)
                goto out;
        }
    }
out:
    json_decref(root);
    return rc;
}

int spes_config_load(spes_run_config *c, const char *path)
{
    char *text;
    size_t len;
    int rc = spes_read_file(path, 16u << 20, &text, &len);
    if (rc)
        return rc;
    if (strlen(text) != len) {
        free(text);
        return spes_errf(SPES_EFORMAT, "%s: contains a NUL byte", path);
    }
    rc = spes_config_parse_json(c, text, path);
    free(text);
    return rc;
}

int spes_config_set(spes_run_config *c, const char *assignment)
{
    const char *dot = strchr(assignment, '.'), *eq = strchr(assignment, '=');
    if (!dot || !eq || eq < dot)
        return spes_errf(SPES_EINVAL, "override \"%s\" is not of the form section.field=value", assignment);
    char sec[32], name[64];
    size_t ls = (size_t)(dot - assignment), ln = (size_t)(eq - dot - 1);
    if (ls >= sizeof sec || ln >= sizeof name)
        return spes_errf(SPES_EINVAL, "override \"%s\": name too long", assignment);
    memcpy(sec, assignment, ls);
    sec[ls] = '\0';
    memcpy(name, dot + 1, ln);
    name[ln] = '\0';
    const char *val = eq + 1;
    if (!strcmp(sec, "data")) {
        if (!strcmp(name, "dtype"))
            return set_choice(c->data.dtype, sizeof c->data.dtype, val, dtypes, "data.dtype", "override");
        if (!strcmp(name, "format"))
            return set_choice(c->data.format, sizeof c->data.format, val, formats, "data.format", "override");
        return spes_errf(SPES_EINVAL, "override: unknown field data.%s", name);
    }
    const field *f = find_field(sec, name);
    if (!f)
        return spes_errf(SPES_EINVAL, "override: unknown field %s.%s", sec, name);
    if (f->type == F_BOOL) {
        if (strcmp(val, "true") && strcmp(val, "false") && strcmp(val, "1") && strcmp(val, "0"))
            return spes_errf(SPES_EINVAL, "override: %s.%s must be true or false", sec, name);
        *(int *)fptr(c, f) = !strcmp(val, "true") || !strcmp(val, "1");
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end || errno)
        return spes_errf(SPES_EINVAL, "override: %s.%s: \"%s\" is not a number", sec, name, val);
    return set_number(c, f, v, is_whole(v), "override");
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
        return spes_errf(SPES_EINVAL, "model.num_attention_heads %d is not divisible by num_key_value_heads %d",
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
    return 0;
}

static json_t *field_json(const spes_run_config *c, const field *f)
{
    double v = fget(c, f);
    switch (f->type) {
    case F_BOOL: return json_boolean((int)v);
    case F_INT: return json_integer((json_int_t)v);
    case F_I64: return json_integer((json_int_t)*(const int64_t *)((const char *)c + f->off));
    default: return json_real(v);
    }
}

char *spes_config_to_json(const spes_run_config *c)
{
    json_t *root = json_object();
    const char *secs[] = {"model", "train", "spes"};
    for (int s = 0; s < 3; s++) {
        json_t *o = json_object();
        for (size_t i = 0; i < NFIELDS; i++)
            if (!strcmp(fields[i].section, secs[s]))
                json_object_set_new(o, fields[i].name, field_json(c, &fields[i]));
        json_object_set_new(root, secs[s], o);
    }
    json_t *d = json_object(), *files = json_array();
    for (int i = 0; i < c->data.nfiles; i++) {
        const spes_data_file *f = &c->data.files[i];
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
    json_object_set_new(d, "files", files);
    json_object_set_new(d, "dtype", json_string(c->data.dtype));
    json_object_set_new(d, "format", json_string(c->data.format));
    json_object_set_new(root, "data", d);
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
            json_object_set_new(o, fields[i].name, field_json(&tmp, &fields[i]));
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
        return spes_errf(SPES_EFORMAT, "%s:%d:%d: invalid JSON: %s", origin, jerr.line, jerr.column, jerr.text);
    spes_run_config tmp;
    spes_config_defaults(&tmp);
    int rc = 0;
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt) || strcmp(json_string_value(mt), "olmoe")) {
        rc = spes_errf(SPES_EFORMAT, "%s: model_type is not \"olmoe\"", origin);
        goto out;
    }
    for (size_t i = 0; i < NFIELDS && !rc; i++) {
        const field *f = &fields[i];
        if (strcmp(f->section, "model"))
            continue;
        json_t *v = json_object_get(root, f->name);
        if (!v) {
            if (strcmp(f->name, "norm_topk_prob") && strcmp(f->name, "tie_word_embeddings") &&
                strcmp(f->name, "max_position_embeddings") && strcmp(f->name, "rope_theta"))
                rc = spes_errf(SPES_EFORMAT, "%s: missing field %s", origin, f->name);
            continue;
        }
        rc = set_json(&tmp, f, v, origin);
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
