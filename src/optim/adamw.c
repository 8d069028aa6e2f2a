/* adamw.c: the optimizer step and schedules. The arithmetic order follows
 * torch.optim.AdamW's single-tensor path so that results match it in fp32. */
#include "optim/adamw.h"
#include "core/error.h"

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
    float decay, b1, b2, omb1, omb2, step_size, bc2_sqrt, eps;
} step_ctx;

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
        for (size_t i = lo; i < hi; i++) {
            float g = c->grads[i];
            p[i] *= c->decay;
            float m = c->o->m[i] * c->b1 + g * c->omb1;
            float v = c->o->v[i] * c->b2 + g * g * c->omb2;
            c->o->m[i] = m;
            c->o->v[i] = v;
            float denom = sqrtf(v) / c->bc2_sqrt + c->eps;
            p[i] += -c->step_size * (m / denom);
        }
    }
}

void spes_adamw_step(spes_adamw *o, float *params, const float *grads, const spes_segment *seg,
                     int nseg, double lr, spes_pool *pool)
{
    o->t++;
    double bc1 = 1.0 - pow(o->beta1, (double)o->t);
    double bc2 = 1.0 - pow(o->beta2, (double)o->t);
    step_ctx c = {
        .o = o, .params = params, .grads = grads, .seg = seg, .nseg = nseg,
        .decay = (float)(1.0 - lr * o->weight_decay),
        .b1 = (float)o->beta1, .b2 = (float)o->beta2,
        .omb1 = (float)(1.0 - o->beta1), .omb2 = (float)(1.0 - o->beta2),
        .step_size = (float)(lr / bc1), .bc2_sqrt = (float)sqrt(bc2), .eps = (float)o->eps,
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

typedef struct {
    const float *g;
    double part[NORM_MAXT];
} norm_ctx;

static void norm_range(void *arg, size_t b, size_t e, int tid)
{
    norm_ctx *c = arg;
    double s = 0;
    for (size_t i = b; i < e; i++)
        s += (double)c->g[i] * c->g[i];
    c->part[tid] = s;
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
    if (clip > 0) {
        /* torch: clip_coef = max_norm / (total_norm + 1e-6), applied when < 1 */
        double coef = clip / (norm + 1e-6);
        if (coef < 1.0) {
            scale_ctx c = {g, (float)coef};
            spes_parallel_for(pool, n, scale_range, &c);
        }
    }
    return norm;
}
