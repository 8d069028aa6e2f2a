/* loss.c: softmax, cross-entropy and MoE router kernels (row-parallel, no
 * cross-row reductions: callers sum per-row values in a fixed order). */
#include "kernels/kernels.h"
#include "kernels/fastmath.h"

#include <math.h>

float spes_softmax_row(float *p, const float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        p[i] = expf(x[i] - mx);
        sum += p[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        p[i] *= inv;
    return mx + (float)log(sum);
}

static float lse_row(const float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx + logf(spes__sum_exp(x, mx, n));
}

typedef struct {
    float *out;
    const float *logits;
    const int32_t *targets;
    float scale;
    int V;
} ce_ctx;

static void ce_fwd_range(void *vctx, size_t b, size_t e, int tid)
{
    ce_ctx *c = vctx;
    (void)tid;
    for (size_t i = b; i < e; i++) {
        const float *x = c->logits + i * c->V;
        c->out[i] = lse_row(x, c->V) - x[c->targets[i]];
    }
}

void spes_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V,
                               spes_pool *pool)
{
    ce_ctx c = {losses, logits, targets, 1.0f, V};
    spes_parallel_for(pool, (size_t)N, ce_fwd_range, &c);
}

static void ce_bwd_range(void *vctx, size_t b, size_t e, int tid)
{
    ce_ctx *c = vctx;
    (void)tid;
    for (size_t i = b; i < e; i++) {
        const float *x = c->logits + i * c->V;
        float *d = c->out + i * c->V;
        float l = lse_row(x, c->V);
        spes__exp_shift(d, x, l, c->V);
        for (int v = 0; v < c->V; v++)
            d[v] *= c->scale;
        d[c->targets[i]] -= c->scale;
    }
}

void spes_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale,
                                int N, int V, spes_pool *pool)
{
    ce_ctx c = {dlogits, logits, targets, scale, V};
    spes_parallel_for(pool, (size_t)N, ce_bwd_range, &c);
}

typedef struct {
    float *probs, *rlse, *topw, *dlogits;
    int32_t *topi;
    const float *logits, *dtopw, *lbc, *probs_in, *rlse_in;
    const int32_t *topi_in;
    float zc;
    int E, K, norm;
} router_ctx;

static void router_fwd_range(void *vctx, size_t b, size_t e, int tid)
{
    router_ctx *r = vctx;
    (void)tid;
    int E = r->E, K = r->K;
    for (size_t t = b; t < e; t++) {
        float *p = r->probs + t * E;
        r->rlse[t] = spes_softmax_row(p, r->logits + t * E, E);
        int32_t *ti = r->topi + t * K;
        float *tw = r->topw + t * K;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int x = 0; x < E; x++) {
                int used = 0;
                for (int j = 0; j < k; j++)
                    used |= ti[j] == x;
                if (!used && (best < 0 || p[x] > p[best]))
                    best = x;
            }
            ti[k] = best;
            tw[k] = p[best];
            sum += p[best];
        }
        if (r->norm)
            for (int k = 0; k < K; k++)
                tw[k] /= sum;
    }
}

void spes_router_forward(float *probs, float *rlse, int32_t *topi, float *topw, const float *logits, int N,
                         int E, int K, int norm, spes_pool *pool)
{
    router_ctx r = {.probs = probs,
                    .rlse = rlse,
                    .topw = topw,
                    .topi = topi,
                    .logits = logits,
                    .E = E,
                    .K = K,
                    .norm = norm};
    spes_parallel_for(pool, (size_t)N, router_fwd_range, &r);
}

static void router_bwd_range(void *vctx, size_t b, size_t e, int tid)
{
    router_ctx *r = vctx;
    (void)tid;
    int E = r->E, K = r->K;
    float dp[SPES_KERNEL_MAX_E];
    for (size_t t = b; t < e; t++) {
        const float *p = r->probs_in + t * E;
        const int32_t *ti = r->topi_in + t * K;
        const float *dw = r->dtopw + t * K;
        for (int x = 0; x < E; x++)
            dp[x] = r->lbc ? r->lbc[x] : 0.0f;
        if (r->norm) {
            float s = 0.0f, dws = 0.0f;
            for (int k = 0; k < K; k++)
                s += p[ti[k]];
            for (int k = 0; k < K; k++)
                dws += dw[k] * (p[ti[k]] / s);
            for (int k = 0; k < K; k++)
                dp[ti[k]] += (dw[k] - dws) / s;
        } else {
            for (int k = 0; k < K; k++)
                dp[ti[k]] += dw[k];
        }
        float dot = 0.0f;
        for (int x = 0; x < E; x++)
            dot += p[x] * dp[x];
        float z = r->zc * r->rlse_in[t];
        float *d = r->dlogits + t * E;
        for (int x = 0; x < E; x++)
            d[x] = p[x] * (dp[x] - dot) + z * p[x];
    }
}

void spes_router_backward(float *dlogits, const float *dtopw, const float *probs, const float *rlse,
                          const int32_t *topi, const float *lbc, float zc, int N, int E, int K, int norm,
                          spes_pool *pool)
{
    router_ctx r = {.dlogits = dlogits,
                    .dtopw = dtopw,
                    .probs_in = probs,
                    .rlse_in = rlse,
                    .topi_in = topi,
                    .lbc = lbc,
                    .zc = zc,
                    .E = E,
                    .K = K,
                    .norm = norm};
    spes_parallel_for(pool, (size_t)N, router_bwd_range, &r);
}
