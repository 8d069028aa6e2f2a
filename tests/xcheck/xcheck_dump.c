/* xcheck_dump.c: dumps the C model's parameters, gradients, logits and losses
 * for one batch, so that tests/ref/xcheck_grads.py can compare them with the
 * independent PyTorch reference (tests/ref/olmoe_ref.py), llm.c-style.
 * It builds the model only through model.h and never computes any model math
 * itself; the dump goes to a scratch directory with plain stdio (test output,
 * not durable state, so no fsync).
 *
 * usage: xcheck_dump --out DIR [--seed S] [--tokens FILE] [--columns 0,2]
 *   [--V n --H n --I n --L n --NH n --NKV n --E n --K n --B n --T n]
 *   [--eps x] [--theta x] [--norm-topk 0|1] [--tie 0|1] [--lb-weight x]
 *   [--z-weight x] [--lb-factor x] [--threads n] [--accumulate n] [--init-only]
 *   [--scale-matrices x] [--perturb-norms x] [--cap-B n --cap-T n]
 * --cap-B/--cap-T allocate for a larger batch than the one run (B, T below capacity).
 * The last two edit the initial weights (matrices times x; RMSNorm weights
 * 1 + x*sin(0.7*i + offset)) so that the comparison also covers sharp routing
 * and norm weights other than 1, which the plain init never exercises.
 * FILE holds B*T+1 little-endian int32 tokens (inputs, then targets shifted by one).
 * Writes DIR/params/<name>.npy, DIR/grads/<name>.npy (trained tensors only),
 * DIR/logits.npy (B,T,V) and DIR/result.json (losses and the tensor table). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileio.h"
#include "core/parallel.h"
#include "model/model.h"

typedef struct opts {
    const char *out, *tokens, *columns;
    uint64_t seed;
    spes_model_config c;
    int B, T, cap_B, cap_T, threads, accumulate, init_only;
    spes_loss_opts loss;
    double scale_matrices, perturb_norms;
} opts;

/* npy_write writes an array (NumPy dtype descr, e.g. <f4) of shape dims[0..ndim) as .npy v1.0. */
static int npy_write(const char *path, const char *descr, const void *data, size_t elsize, int ndim,
                     const int64_t *dims)
{
    char shape[96] = "", hdr[256];
    size_t n = 1, l = 0;
    for (int i = 0; i < ndim; i++) {
        l += (size_t)snprintf(shape + l, sizeof shape - l, "%s%lld", i ? ", " : "", (long long)dims[i]);
        n *= (size_t)dims[i];
    }
    if (ndim == 1) /* a 1-tuple needs its comma: (n,) */
        snprintf(shape + l, sizeof shape - l, ",");
    int hl =
        snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape);
    while ((10 + hl + 1) % 64) /* pad so that the data starts 64-byte aligned; header ends in \n */
        hdr[hl++] = ' ';
    hdr[hl++] = '\n';
    unsigned char pre[10] = {
        0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return spes_errf_errno(SPES_EIO, "%s: cannot create", path);
    int ok = fwrite(pre, 1, 10, fp) == 10 && fwrite(hdr, 1, (size_t)hl, fp) == (size_t)hl &&
             fwrite(data, elsize, n, fp) == n;
    if (fclose(fp) || !ok)
        return spes_errf_errno(SPES_EIO, "%s: write failed", path);
    return 0;
}

static int dump_tensor(const char *dir, const char *sub, const spes_tensor *t, const float *data)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s.npy", dir, sub, t->name);
    return npy_write(path, "<f4", data, sizeof(float), t->ndim, t->shape);
}

static int parse_columns(const char *s, int E, uint8_t *trained)
{
    memset(trained, 0, (size_t)E);
    while (*s) {
        char *end;
        long e = strtol(s, &end, 10);
        if (end == s || e < 0 || e >= E)
            return spes_errf(SPES_EINVAL, "--columns: bad column list \"%s\"", s);
        trained[e] = 1;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return spes_errf(SPES_EINVAL, "--columns: bad column list");
    }
    return 0;
}

static int read_tokens(const char *path, int32_t *buf, size_t n)
{
    char *data = NULL;
    size_t len = 0;
    int rc = spes_read_file(path, 1u << 30, &data, &len);
    if (rc)
        return rc;
    if (len != n * sizeof(int32_t)) {
        free(data);
        return spes_errf(SPES_EFORMAT, "%s: %zu bytes, expected %zu int32 tokens", path, len, n);
    }
    memcpy(buf, data, len);
    free(data);
    return 0;
}

static void usage_defaults(opts *o)
{
    memset(o, 0, sizeof *o);
    o->c = (spes_model_config){.vocab_size = 64,
                               .hidden_size = 32,
                               .intermediate_size = 48,
                               .num_hidden_layers = 2,
                               .num_attention_heads = 4,
                               .num_key_value_heads = 2,
                               .num_experts = 4,
                               .num_experts_per_tok = 2,
                               .rms_norm_eps = 1e-5,
                               .rope_theta = 10000.0,
                               .max_position_embeddings = 4096};
    o->scale_matrices = 1.0;
    o->B = 2, o->T = 16, o->threads = 1, o->accumulate = 1, o->seed = 1337;
    o->loss = (spes_loss_opts){.lb_weight = 0.01, .z_weight = 0.001, .lb_factor = 1.0};
}

static int parse_args(opts *o, int argc, char **argv)
{
    usage_defaults(o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--init-only")) {
            o->init_only = 1;
            continue;
        }
        if (!v)
            return spes_errf(SPES_EINVAL, "%s: missing value", a);
        i++;
        int *ip = NULL;
        double *dp = NULL;
        const struct {
            const char *flag;
            int *ip;
            double *dp;
        } nums[] = {{"--V", &o->c.vocab_size, NULL},
                    {"--H", &o->c.hidden_size, NULL},
                    {"--I", &o->c.intermediate_size, NULL},
                    {"--L", &o->c.num_hidden_layers, NULL},
                    {"--NH", &o->c.num_attention_heads, NULL},
                    {"--NKV", &o->c.num_key_value_heads, NULL},
                    {"--E", &o->c.num_experts, NULL},
                    {"--K", &o->c.num_experts_per_tok, NULL},
                    {"--B", &o->B, NULL},
                    {"--T", &o->T, NULL},
                    {"--cap-B", &o->cap_B, NULL},
                    {"--cap-T", &o->cap_T, NULL},
                    {"--threads", &o->threads, NULL},
                    {"--accumulate", &o->accumulate, NULL},
                    {"--norm-topk", &o->c.norm_topk_prob, NULL},
                    {"--tie", &o->c.tie_word_embeddings, NULL},
                    {"--eps", NULL, &o->c.rms_norm_eps},
                    {"--theta", NULL, &o->c.rope_theta},
                    {"--lb-weight", NULL, &o->loss.lb_weight},
                    {"--z-weight", NULL, &o->loss.z_weight},
                    {"--lb-factor", NULL, &o->loss.lb_factor},
                    {"--scale-matrices", NULL, &o->scale_matrices},
                    {"--perturb-norms", NULL, &o->perturb_norms}};
        for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++)
            if (!strcmp(a, nums[k].flag))
                ip = nums[k].ip, dp = nums[k].dp;
        if (ip)
            *ip = atoi(v);
        else if (dp)
            *dp = strtod(v, NULL);
        else if (!strcmp(a, "--out"))
            o->out = v;
        else if (!strcmp(a, "--tokens"))
            o->tokens = v;
        else if (!strcmp(a, "--columns"))
            o->columns = v;
        else if (!strcmp(a, "--seed"))
            o->seed = strtoull(v, NULL, 10);
        else
            return spes_errf(SPES_EINVAL, "%s: unknown option", a);
    }
    if (!o->out)
        return spes_errf(SPES_EINVAL, "--out DIR is required");
    if (!o->init_only && !o->tokens)
        return spes_errf(SPES_EINVAL, "--tokens FILE is required unless --init-only");
    o->cap_B = o->cap_B < o->B ? o->B : o->cap_B;
    o->cap_T = o->cap_T < o->T ? o->T : o->cap_T;
    if (o->c.max_position_embeddings < o->cap_T)
        o->c.max_position_embeddings = o->cap_T;
    return 0;
}

static int write_result(const opts *o, spes_model *m, const float *first_loss)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/result.json", o->out);
    FILE *fp = fopen(path, "w");
    if (!fp)
        return spes_errf_errno(SPES_EIO, "%s: cannot create", path);
    const spes_layout *lo = &m->layout;
    fprintf(fp, "{\"loss\": %.9g, \"ce_loss\": %.9g, \"lb_loss\": %.9g, \"z_loss\": %.9g,\n", m->loss,
            m->ce_loss, m->lb_loss, m->z_loss);
    fprintf(fp, " \"first_loss\": [%.9g, %.9g, %.9g, %.9g],\n", first_loss[0], first_loss[1], first_loss[2],
            first_loss[3]);
    fprintf(fp,
            " \"shared_numel\": %zu, \"column_numel\": %zu, \"total_numel\": %zu, \"grads_numel\": %zu,"
            " \"ntrained\": %d,\n \"grad_column\": [",
            lo->shared_numel, lo->column_numel, lo->total_numel, m->grads ? m->grads_numel : 0, m->ntrained);
    for (int e = 0; e < m->cfg.num_experts; e++) {
        /* 1: block present, 0: NULL, -1: present but not where grad_of puts the column's first tensor */
        float *g = m->grads ? spes_model_grad_column(m, e) : NULL;
        int st = g ? 1 : 0;
        for (int i = 0; g && i < lo->ntensors; i++)
            if (lo->tensors[i].column == e) {
                st = spes_model_grad_of(m, &lo->tensors[i]) == g ? 1 : -1;
                break;
            }
        fprintf(fp, "%s%d", e ? ", " : "", st);
    }
    fprintf(fp, "],\n \"tensors\": [\n");
    for (int i = 0; i < lo->ntensors; i++) {
        const spes_tensor *t = &lo->tensors[i];
        int has = m->grads && spes_model_grad_of(m, t) != NULL;
        char shape[64];
        if (t->ndim == 2)
            snprintf(shape, sizeof shape, "%lld, %lld", (long long)t->shape[0], (long long)t->shape[1]);
        else
            snprintf(shape, sizeof shape, "%lld", (long long)t->shape[0]);
        fprintf(fp,
                "  {\"name\": \"%s\", \"ndim\": %d, \"shape\": [%s], \"offset\": %zu, \"numel\": %zu, "
                "\"column\": %d, \"layer\": %d, \"has_grad\": %s}%s\n",
                t->name, t->ndim, shape, t->offset, t->numel, t->column, t->layer, has ? "true" : "false",
                i + 1 < lo->ntensors ? "," : "");
    }
    fprintf(fp, " ]}\n");
    if (fclose(fp))
        return spes_errf_errno(SPES_EIO, "%s: write failed", path);
    return 0;
}

static int dump_all(const opts *o, spes_model *m)
{
    char path[4096];
    const char *subs[] = {"params", "grads"};
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/%s", o->out, subs[s]);
        int rc = spes_mkdir_p(path, 0755);
        if (rc)
            return rc;
    }
    const spes_layout *lo = &m->layout;
    for (int i = 0; i < lo->ntensors; i++) {
        const spes_tensor *t = &lo->tensors[i];
        int rc = dump_tensor(o->out, "params", t, m->params + t->offset);
        const float *g = m->grads ? spes_model_grad_of(m, t) : NULL;
        if (!rc && g)
            rc = dump_tensor(o->out, "grads", t, g);
        if (rc)
            return rc;
    }
    return 0;
}

static void edit_weights(const opts *o, spes_model *m)
{
    const spes_layout *lo = &m->layout;
    for (int i = 0; i < lo->ntensors; i++) {
        const spes_tensor *t = &lo->tensors[i];
        float *p = m->params + t->offset;
        for (size_t j = 0; j < t->numel; j++)
            p[j] = t->ndim == 2 ? (float)(p[j] * o->scale_matrices)
                                : (float)(p[j] + o->perturb_norms * sin(0.7 * (double)j + i));
    }
}

static int dump_batch(const opts *o, const float *logits, const float *dlogits, const int32_t *tok)
{
    char path[4096];
    int64_t dims[3] = {o->B, o->T, o->c.vocab_size};
    int64_t tdims[1] = {(int64_t)o->B * o->T + 1};
    snprintf(path, sizeof path, "%s/logits.npy", o->out);
    int rc = npy_write(path, "<f4", logits, sizeof(float), 3, dims);
    snprintf(path, sizeof path, "%s/dlogits.npy", o->out);
    if (!rc)
        rc = npy_write(path, "<f4", dlogits, sizeof(float), 3, dims);
    snprintf(path, sizeof path, "%s/tokens.npy", o->out);
    if (!rc)
        rc = npy_write(path, "<i4", tok, sizeof(int32_t), 1, tdims);
    return rc;
}

/* run_batch: forward (+ backward) `accumulate` times on one batch. The logits
 * are copied after forward because backward turns them into dloss/dlogits in
 * place (model.h), which is dumped as well. */
static int run_batch(const opts *o, spes_model *m, float *first_loss)
{
    size_t n = (size_t)o->B * (size_t)o->T, nv = n * (size_t)o->c.vocab_size;
    int32_t *tok = malloc((n + 1) * sizeof *tok);
    float *logits = malloc(nv * sizeof *logits);
    int rc =
        tok && logits ? read_tokens(o->tokens, tok, n + 1) : spes_errf(SPES_ENOMEM, "batch: out of memory");
    if (!rc)
        spes_model_zero_grad(m);
    for (int a = 0; !rc && a < o->accumulate; a++) {
        rc = spes_model_forward(m, tok, tok + 1, o->B, o->T, &o->loss);
        if (rc)
            break;
        if (a == 0) {
            first_loss[0] = m->loss, first_loss[1] = m->ce_loss;
            first_loss[2] = m->lb_loss, first_loss[3] = m->z_loss;
        }
        memcpy(logits, spes_model_logits(m), nv * sizeof *logits);
        spes_model_backward(m);
    }
    if (!rc)
        rc = dump_batch(o, logits, spes_model_logits(m), tok);
    free(logits);
    free(tok);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;
    spes_pool *pool = NULL;
    spes_model *m = NULL;
    uint8_t trained[1024];
    float first_loss[4] = {0, 0, 0, 0};
    int rc = parse_args(&o, argc, argv);
    if (!rc && o.columns && o.c.num_experts > 1024)
        rc = spes_errf(SPES_EINVAL, "--E: at most 1024 experts here");
    if (!rc && o.columns)
        rc = parse_columns(o.columns, o.c.num_experts, trained);
    if (!rc)
        rc = spes_mkdir_p(o.out, 0755);
    if (!rc && o.threads > 1)
        rc = spes_pool_alloc(&pool, o.threads);
    if (!rc)
        rc = spes_model_alloc(&m, &o.c, o.columns ? trained : NULL, o.cap_B, o.cap_T, !o.init_only, pool);
    if (!rc) {
        spes_model_init_weights(m, o.seed);
        if (o.scale_matrices != 1.0 || o.perturb_norms != 0.0)
            edit_weights(&o, m);
        if (!o.init_only)
            rc = run_batch(&o, m, first_loss);
    }
    if (!rc)
        rc = dump_all(&o, m);
    if (!rc)
        rc = write_result(&o, m, first_loss);
    if (rc)
        fprintf(stderr, "xcheck_dump: %s (%s)\n", spes_errmsg(), spes_strerror(rc));
    if (m)
        spes_model_free(m);
    if (pool)
        spes_pool_free(pool);
    return rc ? 1 : 0;
}
