/* backward.c: the model's backward pass. Memory-lean by design: it recomputes
 * from the kept residual stream, rstd values and attention outputs the norm
 * outputs, the mid-layer residual (same sgemm, same bits), q/k/v, the
 * attention probabilities (row blocks, from the kept log-sum-exp) and (in
 * moe.c) the frozen experts' gate/up projections, instead of storing them
 * (trained experts' ones are kept, see moe.c). Allocates
 * nothing. Frozen columns pass input gradients through but get no weight
 * gradients. */
#include "model/model_priv.h"

#include "kernels/fastmath.h"
#include "kernels/kernels.h"

#include <string.h>

#define CFG (&m->cfg)

typedef struct {
    spes_model *m;
    int l, T;
} bctx;

static void moe_backward(spes_model *m, int l)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, E = CFG->num_experts, K = CFG->num_experts_per_tok, L = CFG->num_hidden_layers,
        N = p->B * p->T;
    const spes_layer_w *w = &p->lp[l], *gw = &p->lg[l];
    float *xmid = p->xmid, *dn2 = p->dbuf;
    spes__model_moe_backward(m, l, dn2);
    double scale = (double)E / ((double)L * N * K) / N;
    for (int e = 0; e < E; e++) {
        double f = m->trained[e] ? p->opts.lb_factor : 1.0;
        p->lbc[e] = (float)(p->opts.lb_weight * scale * p->counts[(size_t)l * E + e] * f);
    }
    float zc = (float)(p->opts.z_weight * 2.0 / N);
    spes_router_backward(p->rlog, p->dtopw, p->probs + (size_t)l * N * E, p->rlse + (size_t)l * N,
                         p->topi + (size_t)l * N * K, p->lbc, zc, N, E, K, CFG->norm_topk_prob, p->pool);
    MM(dn2, H, p->rlog, E, 0, w->wr, H, 0, N, H, E, 1.0f, 1.0f);
    MM(gw->wr, H, p->rlog, E, 1, p->norm, H, 0, E, H, N, 1.0f, 1.0f);
    spes_rmsnorm_backward(p->dresid, gw->ln2, dn2, xmid, w->ln2, p->rstd2 + (size_t)l * N, N, H, p->partial,
                          p->pool);
}

/* normed_rows writes (x * rstd) * w for T rows of one head (D of the row). */
static void normed_rows(float *dst, const float *x, int ldx, const float *rstd, const float *w, int T, int D)
{
    for (int t = 0; t < T; t++)
        for (int c = 0; c < D; c++)
            dst[(size_t)t * D + c] = (x[(size_t)t * ldx + c] * rstd[t]) * w[c];
}

static void attn_bwd_range(void *vctx, size_t b, size_t e, int tid)
{
    bctx *f = vctx;
    spes_model *m = f->m;
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, NH = CFG->num_attention_heads, NKV = CFG->num_key_value_heads;
    int D = H / NH, KVD = NKV * D, T = f->T, N = p->B * T, G = NH / NKV, l = f->l, ld = p->ldqkv;
    float *scr = p->tscr + (size_t)tid * p->tscr_numel;
    float *Qh = scr + 2 * SPES_ATTN_RB * T + SPES_ATTN_RB, *Kh = Qh + (size_t)T * D,
          *dKh = Kh + (size_t)T * D;
    float *dq = p->dqkv, *dk = p->dqkv + H, *dv = p->dqkv + H + KVD;
    const float *datt = p->dbuf, *att = p->att + (size_t)l * N * H;
    const spes_layer_w *w = &p->lp[l];
    for (size_t task = b; task < e; task++) {
        int bi = (int)(task / (size_t)NKV), kh = (int)(task % (size_t)NKV);
        size_t r0 = (size_t)bi * T;
        normed_rows(Kh, p->k + r0 * ld + (size_t)kh * D, ld, p->krstd + (size_t)l * N + r0,
                    w->kn + (size_t)kh * D, T, D);
        spes_rope_forward(Kh, D, p->rope_cos, p->rope_sin, T, D);
        memset(dKh, 0, sizeof(float) * T * D);
        float *dvs = dv + r0 * ld + (size_t)kh * D;
        for (int t = 0; t < T; t++)
            memset(dvs + (size_t)t * ld, 0, sizeof(float) * D);
        for (int h = kh * G; h < kh * G + G; h++) {
            normed_rows(Qh, p->q + r0 * ld + (size_t)h * D, ld, p->qrstd + (size_t)l * N + r0,
                        w->qn + (size_t)h * D, T, D);
            spes_rope_forward(Qh, D, p->rope_cos, p->rope_sin, T, D);
            float *dqs = dq + r0 * ld + (size_t)h * D;
            const float *lse = p->lse + (size_t)l * N * NH + ((size_t)bi * NH + h) * T;
            spes_attn_head_backward(dqs, ld, dKh, D, dvs, ld, datt + r0 * H + (size_t)h * D, H, Qh, D, Kh, D,
                                    p->v + r0 * ld + (size_t)kh * D, ld, att + r0 * H + (size_t)h * D, H, lse,
                                    T, D, scr);
            spes_rope_backward(dqs, ld, p->rope_cos, p->rope_sin, T, D);
        }
        spes_rope_backward(dKh, D, p->rope_cos, p->rope_sin, T, D);
        for (int t = 0; t < T; t++)
            memcpy(dk + (r0 + t) * ld + (size_t)kh * D, dKh + (size_t)t * D, sizeof(float) * D);
    }
}

/* attn_backward: on entry the span holds the raw [q | k | v] rows; xmid and
 * norm are dead. [dq | dk | dv] rows go to p->dqkv (after [q | k | v], on into
 * norm and xmid), datt to dbuf (then normed1), dnormed1 to the span's start
 * once the raw rows are dead. */
static void attn_backward(spes_model *m, int l)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, NH = CFG->num_attention_heads, NKV = CFG->num_key_value_heads;
    int KVD = NKV * (H / NH), B = p->B, T = p->T, N = B * T, ld = p->ldqkv;
    const spes_layer_w *w = &p->lp[l], *gw = &p->lg[l];
    const float *x = p->xres + (size_t)l * N * H;
    float *dqkv = p->dqkv, *b1 = p->dbuf, *dn1 = p->span;
    MM(b1, H, p->dresid, H, 0, w->wo, H, 0, N, H, H, 1.0f, 0.0f);
    MM(gw->wo, H, p->dresid, H, 1, p->att + (size_t)l * N * H, H, 0, H, H, N, 1.0f, 1.0f);
    bctx f = {.m = m, .l = l, .T = T};
    spes_parallel_for(p->pool, (size_t)B * NKV, attn_bwd_range, &f);
    spes_rmsnorm_backward_ld(dqkv, gw->qn, dqkv, p->q, ld, w->qn, p->qrstd + (size_t)l * N, N, H, p->partial,
                             p->pool);
    spes_rmsnorm_backward_ld(dqkv + H, gw->kn, dqkv + H, p->k, ld, w->kn, p->krstd + (size_t)l * N, N, KVD,
                             p->partial, p->pool);
    spes_rmsnorm_apply(b1, x, p->rstd1 + (size_t)l * N, w->ln1, N, H, p->pool);
    /* [q | k | v] weights and their gradients are adjacent: one product each way */
    MM(gw->wq, H, dqkv, ld, 1, b1, H, 0, ld, H, N, 1.0f, 1.0f);
    MM(dn1, H, dqkv, ld, 0, w->wq, H, 0, N, H, ld, 1.0f, 0.0f);
    spes_rmsnorm_backward(p->dresid, gw->ln1, dn1, x, w->ln1, p->rstd1 + (size_t)l * N, N, H, p->partial,
                          p->pool);
}

/* recompute_mid rebuilds layer l's mid-layer residual (xmid) and normed2
 * (norm) from the kept residual and attention output (same operations, same
 * bits); recompute_qkv, after the expert block (which uses the span that holds
 * them), rebuilds normed1 (norm) and the raw [q | k | v] rows. */
static void recompute_mid(spes_model *m, int l)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, N = p->B * p->T;
    const spes_layer_w *w = &p->lp[l];
    const float *x = p->xres + (size_t)l * N * H;
    float *xmid = p->xmid;
    spes_copy_pool(p->pool, xmid, x, (size_t)N * H);
    MM(xmid, H, p->att + (size_t)l * N * H, H, 0, w->wo, H, 1, N, H, H, 1.0f, 1.0f);
    spes_rmsnorm_apply(p->norm, xmid, p->rstd2 + (size_t)l * N, w->ln2, N, H, p->pool);
}

static void recompute_qkv(spes_model *m, int l)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, N = p->B * p->T, ld = p->ldqkv;
    const spes_layer_w *w = &p->lp[l];
    const float *x = p->xres + (size_t)l * N * H;
    spes_rmsnorm_apply(p->norm, x, p->rstd1 + (size_t)l * N, w->ln1, N, H, p->pool);
    MM(p->q, ld, p->norm, H, 0, w->wq, H, 1, N, ld, H, 1.0f, 0.0f);
}

static void backward_run(spes_model *m)
{
    struct spes_model_priv *p = m->priv;
    int H = CFG->hidden_size, V = CFG->vocab_size, L = CFG->num_hidden_layers, N = p->B * p->T;
    float *dlog = p->logits; /* in place */
    const float *xf = p->xres + (size_t)L * N * H;
    spes_crossentropy_backward(dlog, p->logits, p->targets, 1.0f / N, N, V, p->pool);
    spes_rmsnorm_apply(p->norm, xf, p->rstdf, p->normf, N, H, p->pool);
    MM(p->glm, H, dlog, V, 1, p->norm, H, 0, V, H, N, 1.0f, 1.0f);
    MM(p->dresid, H, dlog, V, 0, p->lm, H, 0, N, H, V, 1.0f, 0.0f);
    spes_rmsnorm_backward(p->dresid, p->gnormf, p->dresid, xf, p->normf, p->rstdf, N, H, p->partial, p->pool);
    for (int l = L - 1; l >= 0; l--) {
        recompute_mid(m, l);
        moe_backward(m, l);
        recompute_qkv(m, l);
        attn_backward(m, l);
    }
    spes_embedding_backward(p->gembed, p->dresid, p->tokens, N, H, p->pool);
}

void spes_model_backward(spes_model *m)
{
    struct spes_model_priv *p = m->priv;
    if (!p->training || !p->have_targets)
        return;
    int saved = p->nthreads > 1 ? spes_blas_threads_push() : 1;
    backward_run(m);
    if (p->nthreads > 1)
        spes_blas_threads_pop(saved);
}
