/* vecmath.c: the vectorised elementwise loops (SwiGLU, exp, fixed-lane sum).
 * Built with -O3 -ffinite-math-only (see CMakeLists.txt): never feed it
 * infinities or NaNs on purpose, and never allocate here. */
#include "kernels/fastmath.h"
#include "kernels/kernels.h"

SPES_CLONES void spes_swiglu_forward(float *h, const float *g, const float *restrict u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float s = g[i] / (1.0f + spes__expf(-g[i]));
        h[i] = s * u[i];
    }
}

/* swiglu_back_elem is one element of spes_swiglu_backward; returns dh * h. */
static inline float swiglu_back_elem(float *h, float *g, float *u, float d, float wt)
{
    float gv = *g, uv = *u;
    float e1 = 1.0f + spes__expf(-gv), sig = 1.0f / e1;
    float hv = gv / e1 * uv, s = gv * sig, dw = d * wt;
    *h = hv * wt;
    *g = dw * uv * (sig * (1.0f + gv * (1.0f - sig)));
    *u = dw * s;
    return d * hv;
}

SPES_CLONES float spes_swiglu_backward(float *restrict h, float *restrict g, float *restrict u,
                                       const float *restrict dh, float wt, size_t n)
{
    float lane[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += swiglu_back_elem(h + i + j, g + i + j, u + i + j, dh[i + j], wt);
    float dot = 0.0f;
    for (int j = 0; j < 16; j++)
        dot += lane[j];
    for (; i < n; i++)
        dot += swiglu_back_elem(h + i, g + i, u + i, dh[i], wt);
    return dot;
}

SPES_CLONES void spes__exp_shift(float *out, const float *x, float shift, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = spes__expf(x[i] - shift);
}

SPES_CLONES float spes__sum(const float *x, int n)
{
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += x[i + j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++)
        s += lane[j];
    for (; i < n; i++)
        s += x[i];
    return s;
}

SPES_CLONES float spes__dot(const float *a, const float *b, int n)
{
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++)
        s += lane[j];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

SPES_CLONES float spes__sum_exp(const float *x, float shift, int n)
{
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] += spes__expf(x[i + j] - shift);
    float s = 0.0f;
    for (int j = 0; j < 16; j++)
        s += lane[j];
    for (; i < n; i++)
        s += spes__expf(x[i] - shift);
    return s;
}

SPES_CLONES float spes__max(const float *x, int n)
{
    float lane[16];
    for (int j = 0; j < 16; j++)
        lane[j] = x[0];
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float m = lane[0];
    for (int j = 1; j < 16; j++)
        m = lane[j] > m ? lane[j] : m;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

SPES_CLONES void spes__scale(float *x, float a, int n)
{
    for (int i = 0; i < n; i++)
        x[i] *= a;
}

SPES_CLONES void spes__softmax_grad(float *restrict dp, const float *restrict p, float d, int n)
{
    for (int i = 0; i < n; i++)
        dp[i] = p[i] * (dp[i] - d);
}
