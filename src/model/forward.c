/* forward.c: the model's forward pass and losses. Allocates nothing: every
 * buffer was carved in spes_model_alloc. Attention runs on our pool over
 * (batch, head); all big products are sgemm; the expert block is in moe.c. */
#include "model/model_priv.h"

#include "core/error.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

#define CFG (&m->cfg)

typedef struct {
    spes_model *m;
    float *a, *b;
    const float *c;
    int s, B, T, n;
} fctx;

static void rope_range(void *vctx, size_t b, size_t e, int tid)
{
    fctx *f = vctx;
    spes_model *m = f->m;
    struct spes_model_priv *p = m->priv;
    (void)tid;
    int H = CFG->hidden_size, NH = CFG->num_attention_heads, NKV = CFG->num_key_value_heads;
    int D = H / NH, h2 = D / 2, ld = p->ldqkv;
    for (size_t i = b; i < e; i++) {
        int t = (int)(i % (size_t)f->T);
        const float *cs = p->rope_cos + (size_t)t * h2, *sn = p->rope_sin + (size_t)t * h2;
        for (int h = 0; h < NH; h++)
            spes_rope_forward(p->q + i * ld + (size_t)h * D, D, cs, sn, 1, D);
        for (int h = 0; h < NKV; h++)
            spes_rope_forward(p->k + i * ld + (size_t)h * D, D, cs, sn, 1, D);
    }
}

static void attn_range(void *vctx, size_t b, size_t e, int tid)
{
    fctx *f = vctx;
    spes_model *m = f->m;
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, NH = CFG->num_attention_heads, NKV = CFG->num_key_value_heads;
    int D = H / NH, T = f->T, N = f->B * T, ld = p->ldqkv;
    float *scr = p->tscr + (size_t)tid * p->tscr_numel;
    for (size_t task = b; task < e; task++) {
        int bi = (int)(task / (size_t)NH), h = (int)(task % (size_t)NH), kh = h / (NH / NKV);
        size_t r0 = (size_t)bi * T;
        float *out = p->att + (size_t)f->s * N * H + r0 * H + (size_t)h * D;
        float *lse = p->lse + (size_t)f->s * N * NH + ((size_t)bi * NH + h) * T;
        spes_attn_head_forward(out, H, lse, p->q + r0 * ld + (size_t)h * D, ld,
                               p->k + r0 * ld + (size_t)kh * D, ld, p->v + r0 * ld + (size_t)kh * D, ld, T, D,
                               scr);
    }
}

void spes__model_attn_forward(spes_model *m, int l, int s, int B, int T)
{
    struct spes_model_priv *p = m->priv;
    const spes_layer_w *w = &p->lp[l];
    int H = CFG->hidden_size, NH = CFG->num_attention_heads, NKV = CFG->num_key_value_heads;
    int D = H / NH, KVD = NKV * D, N = B * T, ld = p->ldqkv;
    /* q_proj, k_proj, v_proj are adjacent in the layout: one (QD + 2 KVD, H) product */
    MM(p->q, ld, p->norm, H, 0, w->wq, H, 1, N, ld, H, 1.0f, 0.0f);
    float eps = (float)CFG->rms_norm_eps;
    spes_rmsnorm_forward_ld(p->q, p->qrstd + (size_t)s * N, p->q, ld, w->qn, N, H, eps, p->pool);
    spes_rmsnorm_forward_ld(p->k, p->krstd + (size_t)s * N, p->k, ld, w->kn, N, KVD, eps, p->pool);
    fctx f = {.m = m, .s = s, .B = B, .T = T};
    spes_parallel_for(p->pool, (size_t)N, rope_range, &f);
    spes_parallel_for(p->pool, (size_t)B * NH, attn_range, &f);
}

/* router_losses adds layer s's load-balance and z-loss terms (unweighted). */
static void router_losses(spes_model *m, int s, int N, double *lb, double *z)
{
    struct spes_model_priv *p = m->priv;
    int E = CFG->num_experts, K = CFG->num_experts_per_tok, L = CFG->num_hidden_layers;
    const float *pr = p->probs + (size_t)s * N * E, *rl = p->rlse + (size_t)s * N;
    double psum[SPES_KERNEL_MAX_E] = {0}, zs = 0.0;
    for (int t = 0; t < N; t++) {
        for (int e = 0; e < E; e++)
            psum[e] += pr[(size_t)t * E + e];
        zs += (double)rl[t] * rl[t];
    }
    double acc = 0.0;
    for (int e = 0; e < E; e++) {
        double f = m->trained[e] ? p->opts.lb_factor : 1.0;
        acc += p->counts[(size_t)s * E + e] * f * (psum[e] / N);
    }
    *lb += (double)E / ((double)L * N * K) * acc;
    *z += zs / N;
}

static int check_ids(const int32_t *ids, int N, int V, const char *what)
{
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return spes_errf(SPES_ERANGE, "model: %s id %d at position %d is outside [0, %d)", what,
                             (int)ids[i], i, V);
    return 0;
}

static int forward_run(spes_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                       const spes_loss_opts *opts)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, E = CFG->num_experts, K = CFG->num_experts_per_tok, V = CFG->vocab_size,
        L = CFG->num_hidden_layers;
    if (B <= 0 || T <= 0 || B * T > p->N || T > m->T)
        return spes_errf(SPES_EINVAL, "model: batch %d x %d exceeds capacity %d x %d", B, T, m->B, m->T);
    int N = B * T, rc;
    p->have_targets = 0;
    if ((rc = check_ids(tokens, N, V, "token")) || (targets && (rc = check_ids(targets, N, V, "target"))))
        return rc;
    p->B = B;
    p->T = T;
    p->opts = opts ? *opts : (spes_loss_opts){0.0, 0.0, 1.0};
    memcpy(p->tokens, tokens, sizeof(int32_t) * N);
    float eps = (float)CFG->rms_norm_eps;
    spes_embedding_forward(p->xres, tokens, p->embed, N, H, p->pool);
    double lb = 0.0, z = 0.0;
    for (int l = 0; l < L; l++) {
        int s = p->training ? l : 0;
        float *x = p->xres + (size_t)s * N * H;
        float *xn = p->training ? x + (size_t)N * H : x;
        const spes_layer_w *w = &p->lp[l];
        spes_rmsnorm_forward(p->norm, p->rstd1 + (size_t)s * N, x, w->ln1, N, H, eps, p->pool);
        spes__model_attn_forward(m, l, s, B, T);
        if (xn != x)
            spes_copy_pool(p->pool, xn, x, (size_t)N * H);
        MM(xn, H, p->att + (size_t)s * N * H, H, 0, w->wo, H, 1, N, H, H, 1.0f, 1.0f);
        spes_rmsnorm_forward(p->norm, p->rstd2 + (size_t)s * N, xn, w->ln2, N, H, eps, p->pool);
        MM(p->rlog, E, p->norm, H, 0, w->wr, H, 1, N, E, H, 1.0f, 0.0f);
        spes_router_forward(p->probs + (size_t)s * N * E, p->rlse + (size_t)s * N,
                            p->topi + (size_t)s * N * K, p->topw + (size_t)s * N * K, p->rlog, N, E, K,
                            CFG->norm_topk_prob, p->pool);
        spes__model_moe_forward(m, l, s, xn, N);
        if (targets)
            router_losses(m, s, N, &lb, &z);
    }
    float *xf = p->xres + (p->training ? (size_t)L * N * H : 0);
    spes_rmsnorm_forward(p->norm, p->rstdf, xf, p->normf, N, H, eps, p->pool);
    MM(p->logits, V, p->norm, H, 0, p->lm, H, 1, N, V, H, 1.0f, 0.0f);
    if (!targets)
        return 0;
    memcpy(p->targets, targets, sizeof(int32_t) * N);
    spes_crossentropy_forward(p->losses, p->logits, targets, N, V, p->pool);
    double ce = 0.0;
    for (int i = 0; i < N; i++)
        ce += p->losses[i];
    m->ce_loss = (float)(ce / N);
    m->lb_loss = (float)lb;
    m->z_loss = (float)z;
    m->loss = (float)(ce / N + p->opts.lb_weight * lb + p->opts.z_weight * z);
    p->have_targets = 1;
    return 0;
}

int spes_model_forward(spes_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                       const spes_loss_opts *opts)
{
    /* our pool splits every product; OpenBLAS's own threads would only spin */
    int saved = m->priv->nthreads > 1 ? spes_blas_threads_push() : 1;
    int rc = forward_run(m, tokens, targets, B, T, opts);
    if (m->priv->nthreads > 1)
        spes_blas_threads_pop(saved);
    return rc;
}
