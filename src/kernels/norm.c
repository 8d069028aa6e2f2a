/* norm.c: RMSNorm and rotary position embedding kernels, forward and backward.
 * Never allocates; weight-gradient reductions use per-thread partial rows
 * combined in thread order (deterministic for a fixed thread count). */
#include "kernels/kernels.h"
#include "kernels/fastmath.h"

#include <math.h>
#include <string.h>

typedef struct {
    float *out, *rstd, *dw, *partial;
    const float *x, *w, *dout, *rstd_in;
    int C, ld, nt;
    float eps;
} rms_ctx;

static void rms_fwd_range(void *vctx, size_t b, size_t e, int tid)
{
    rms_ctx *r = vctx;
    (void)tid;
    int C = r->C;
    for (size_t i = b; i < e; i++) {
        const float *x = r->x + i * r->ld;
        float *o = r->out + i * r->ld;
        float ss = spes__dot(x, x, C);
        float rs = 1.0f / sqrtf(ss / (float)C + r->eps);
        r->rstd[i] = rs;
        for (int c = 0; c < C; c++)
            o[c] = (x[c] * rs) * r->w[c];
    }
}

void spes_rmsnorm_forward_ld(float *out, float *rstd, const float *x, int ld, const float *w, int N, int C,
                             float eps, spes_pool *pool)
{
    rms_ctx r = {.out = out, .rstd = rstd, .x = x, .w = w, .C = C, .ld = ld, .eps = eps};
    spes_parallel_for(pool, (size_t)N, rms_fwd_range, &r);
}

void spes_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps,
                          spes_pool *pool)
{
    spes_rmsnorm_forward_ld(out, rstd, x, C, w, N, C, eps, pool);
}

static void rms_apply_range(void *vctx, size_t b, size_t e, int tid)
{
    rms_ctx *r = vctx;
    (void)tid;
    int C = r->C;
    for (size_t i = b; i < e; i++) {
        const float *x = r->x + i * C;
        float *o = r->out + i * C;
        float rs = r->rstd_in[i];
        for (int c = 0; c < C; c++)
            o[c] = (x[c] * rs) * r->w[c];
    }
}

void spes_rmsnorm_apply(float *out, const float *x, const float *rstd, const float *w, int N, int C,
                        spes_pool *pool)
{
    rms_ctx r = {.out = out, .x = x, .rstd_in = rstd, .w = w, .C = C};
    spes_parallel_for(pool, (size_t)N, rms_apply_range, &r);
}

static void rms_bwd_range(void *vctx, size_t b, size_t e, int tid)
{
    rms_ctx *r = vctx;
    int C = r->C;
    float *pw = r->dw ? r->partial + (size_t)tid * C : NULL;
    for (size_t i = b; i < e; i++) {
        const float *x = r->x + i * r->ld;
        const float *dy = r->dout + i * r->ld;
        float *dx = r->out + i * r->ld;
        float rs = r->rstd_in[i];
        float *tmp = r->partial + (size_t)(r->nt + tid) * C;
        for (int c = 0; c < C; c++)
            tmp[c] = dy[c] * r->w[c];
        float k = spes__dot(tmp, x, C) / (float)C * rs * rs * rs;
        if (pw)
            for (int c = 0; c < C; c++)
                pw[c] += dy[c] * (x[c] * rs);
        if (dx == dy)
            for (int c = 0; c < C; c++)
                dx[c] = rs * dy[c] * r->w[c] - k * x[c];
        else
            for (int c = 0; c < C; c++)
                dx[c] += rs * dy[c] * r->w[c] - k * x[c];
    }
}

void spes_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int N, int C, float *partial, spes_pool *pool)
{
    spes_rmsnorm_backward_ld(dx, dw, dout, x, C, w, rstd, N, C, partial, pool);
}

void spes_rmsnorm_backward_ld(float *dx, float *dw, const float *dout, const float *x, int ld, const float *w,
                              const float *rstd, int N, int C, float *partial, spes_pool *pool)
{
    int nt = spes_pool_threads(pool);
    if (dw)
        memset(partial, 0, sizeof(float) * (size_t)nt * C);
    rms_ctx r = {.out = dx,
                 .dw = dw,
                 .partial = partial,
                 .x = x,
                 .w = w,
                 .dout = dout,
                 .rstd_in = rstd,
                 .C = C,
                 .ld = ld,
                 .nt = nt};
    spes_parallel_for(pool, (size_t)N, rms_bwd_range, &r);
    if (dw)
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < C; c++)
                dw[c] += partial[(size_t)t * C + c];
}

void spes_rope_table(float *cosv, float *sinv, int T, int D, double theta)
{
    int h = D / 2;
    for (int j = 0; j < h; j++) {
        /* float32 like Hugging Face: inv_freq = 1 / theta^(2j/D), freq = t * inv_freq */
        float inv = 1.0f / powf((float)theta, (float)(2 * j) / (float)D);
        for (int t = 0; t < T; t++) {
            float f = (float)t * inv;
            cosv[(size_t)t * h + j] = cosf(f);
            sinv[(size_t)t * h + j] = sinf(f);
        }
    }
}

void spes_rope_forward(float *x, int ld, const float *cosv, const float *sinv, int T, int D)
{
    int h = D / 2;
    for (int t = 0; t < T; t++) {
        float *r = x + (size_t)t * ld;
        const float *c = cosv + (size_t)t * h, *s = sinv + (size_t)t * h;
        for (int j = 0; j < h; j++) {
            float a = r[j], b = r[j + h];
            r[j] = a * c[j] - b * s[j];
            r[j + h] = b * c[j] + a * s[j];
        }
    }
}

void spes_rope_backward(float *dx, int ld, const float *cosv, const float *sinv, int T, int D)
{
    int h = D / 2;
    for (int t = 0; t < T; t++) {
        float *r = dx + (size_t)t * ld;
        const float *c = cosv + (size_t)t * h, *s = sinv + (size_t)t * h;
        for (int j = 0; j < h; j++) {
            float a = r[j], b = r[j + h];
            r[j] = a * c[j] + b * s[j];
            r[j + h] = b * c[j] - a * s[j];
        }
    }
}
