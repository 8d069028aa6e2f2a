/* adamw.c: the optimizer step and schedules. The arithmetic order follows
 * torch.optim.AdamW's single-tensor path so that results match it in fp32. */
#include "optim/adamw.h"
#include "core/error.h"
#include "core/simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int spes_adamw_init(spes_adamw *o, size_t n, const spes_train_config *tc)
{
    memset(o, 0, sizeof *o);
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof(float));
    o->v = calloc(n ? n : 1, sizeof(float));
    if (!o->m || !o->v) {
        spes_adamw_fini(o);
        return spes_errf(SPES_ENOMEM, "cannot allocate AdamW moments for %zu parameters", n);
    }
    o->beta1 = tc->beta1;
    o->beta2 = tc->beta2;
    o->eps = tc->eps;
    o->weight_decay = tc->weight_decay;
    return 0;
}

void spes_adamw_fini(spes_adamw *o)
{
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

typedef struct {
    spes_adamw *o;
    float *params;
    const float *grads;
    const spes_segment *seg;
    int nseg;
    float decay, b1, b2, omb1, omb2, step_size, bc2_sqrt, eps, gscale;
} step_ctx;

/* step_run updates n elements; the arithmetic is torch's, element by element
 * (g scaled first, as clip_grad_norm_ does in place), so vectorising it
 * changes no bits. */
SPES_CLONES static void step_run(float *restrict p, float *restrict m, float *restrict v,
                                 const float *restrict grad, size_t n, const step_ctx *c)
{
    const float decay = c->decay, b1 = c->b1, b2 = c->b2, omb1 = c->omb1, omb2 = c->omb2,
                step_size = c->step_size, bc2_sqrt = c->bc2_sqrt, eps = c->eps, gs = c->gscale;
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * gs;
        float pi = p[i] * decay;
        float mi = m[i] * b1 + g * omb1;
        float vi = v[i] * b2 + g * g * omb2;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi + -step_size * (mi / denom);
    }
}

/* Items are global gradient indices; map each chunk back onto segments. */
static void step_range(void *arg, size_t b, size_t e, int tid)
{
    (void)tid;
    step_ctx *c = arg;
    for (int s = 0; s < c->nseg; s++) {
        const spes_segment *sg = &c->seg[s];
        size_t lo = sg->grad_off > b ? sg->grad_off : b;
        size_t hi = sg->grad_off + sg->len < e ? sg->grad_off + sg->len : e;
        if (lo >= hi)
            continue;
        float *p = c->params + sg->param_off - sg->grad_off;
        step_run(p + lo, c->o->m + lo, c->o->v + lo, c->grads + lo, hi - lo, c);
    }
}

void spes_adamw_step(spes_adamw *o, float *params, const float *grads, const spes_segment *seg, int nseg,
                     double lr, float grad_scale, spes_pool *pool)
{
    o->t++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->t);
    double bc2 = 1.0 - pow(o->beta2, (double)o->t);
    step_ctx c = {
        .o = o,
        .params = params,
        .grads = grads,
        .seg = seg,
        .nseg = nseg,
        .decay = (float)(1.0 - lr * o->weight_decay),
        .b1 = (float)o->beta1,
        .b2 = (float)o->beta2,
        .omb1 = (float)(1.0 - o->beta1),
        .omb2 = (float)(1.0 - o->beta2),
        .step_size = (float)(lr / bc1),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)o->eps,
        .gscale = grad_scale,
    };
    spes_parallel_for(pool, o->n, step_range, &c);
}

double spes_lr_at(const spes_train_config *tc, int64_t s)
{
    double W = tc->warmup_steps;
    if (s < tc->warmup_steps)
        return tc->lr * (double)(s + 1) / W;
    double min = tc->min_lr_ratio * tc->lr;
    double span = tc->max_steps - W;
    if (span < 1)
        span = 1;
    double frac = ((double)s - W) / span;
    if (frac > 1)
        frac = 1;
    return min + (tc->lr - min) * 0.5 * (1.0 + cos(M_PI * frac));
}

double spes_lb_factor_at(const spes_spes_config *sc, int max_steps, int64_t s)
{
    double ramp = sc->lb_factor_ramp * max_steps;
    double frac = ramp > 0 ? (double)s / ramp : 1.0;
    if (frac > 1)
        frac = 1;
    return sc->lb_factor_start + (1.0 - sc->lb_factor_start) * frac;
}

#define NORM_MAXT 64
#define NORM_LANES 8

typedef struct {
    const float *g;
    double part[NORM_MAXT];
} norm_ctx;

/* sumsq_run: NORM_LANES double accumulators, lane k takes elements i = k mod
 * NORM_LANES of the range, summed in lane order: fixed order, vectorisable. */
SPES_CLONES static double sumsq_run(const float *restrict g, size_t n)
{
    double acc[NORM_LANES] = {0};
    size_t i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int k = 0; k < NORM_LANES; k++)
            acc[k] += (double)g[i + k] * (double)g[i + k];
    for (int k = 0; i + (size_t)k < n; k++)
        acc[k] += (double)g[i + k] * (double)g[i + k];
    double s = 0;
    for (int k = 0; k < NORM_LANES; k++)
        s += acc[k];
    return s;
}

static void norm_range(void *arg, size_t b, size_t e, int tid)
{
    norm_ctx *c = arg;
    c->part[tid] = sumsq_run(c->g + b, e - b);
}

double spes_grad_norm(const float *g, size_t n, spes_pool *pool)
{
    norm_ctx c = {.g = g};
    if (spes_pool_threads(pool) > NORM_MAXT)
        pool = NULL;
    spes_parallel_for(pool, n, norm_range, &c);
    double s = 0;
    for (int t = 0; t < NORM_MAXT; t++)
        s += c.part[t];
    return sqrt(s);
}

float spes_clip_coef(double norm, double clip)
{
    /* torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1 */
    double coef = clip > 0 ? clip / (norm + 1e-6) : 1.0;
    return coef < 1.0 ? (float)coef : 1.0f;
}

typedef struct {
    float *g;
    float scale;
} scale_ctx;

static void scale_range(void *arg, size_t b, size_t e, int tid)
{
    (void)tid;
    scale_ctx *c = arg;
    for (size_t i = b; i < e; i++)
        c->g[i] *= c->scale;
}

double spes_clip_grads(float *g, size_t n, double clip, spes_pool *pool)
{
    double norm = spes_grad_norm(g, n, pool);
    float coef = spes_clip_coef(norm, clip);
    if (coef < 1.0f) {
        scale_ctx c = {g, coef};
        spes_parallel_for(pool, n, scale_range, &c);
    }
    return norm;
}
