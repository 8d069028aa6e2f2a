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

SPES_CLONES void spes_swiglu_backward(float *restrict g, float *restrict u, const float *restrict dh,
                                      size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + spes__expf(-g[i]));
        float s = g[i] * sig;
        float dsilu = sig * (1.0f + g[i] * (1.0f - sig));
        float du = dh[i] * s;
        g[i] = dh[i] * u[i] * dsilu;
        u[i] = du;
    }
}

SPES_CLONES float spes__swiglu_row_backward(float *restrict h, float *restrict g, float *restrict u,
                                            const float *restrict dh, float wt, int n)
{
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            float gv = g[i + j], uv = u[i + j], d = dh[i + j];
            float e1 = 1.0f + spes__expf(-gv), sig = 1.0f / e1;
            float hv = gv / e1 * uv, s = gv * sig, dw = d * wt;
            lane[j] += d * hv;
            h[i + j] = hv * wt;
            g[i + j] = dw * uv * (sig * (1.0f + gv * (1.0f - sig)));
            u[i + j] = dw * s;
        }
    float dot = 0.0f;
    for (int j = 0; j < 16; j++)
        dot += lane[j];
    for (; i < n; i++) {
        float gv = g[i], uv = u[i], d = dh[i];
        float e1 = 1.0f + spes__expf(-gv), sig = 1.0f / e1;
        float hv = gv / e1 * uv, s = gv * sig, dw = d * wt;
        dot += d * hv;
        h[i] = hv * wt;
        g[i] = dw * uv * (sig * (1.0f + gv * (1.0f - sig)));
        u[i] = dw * s;
    }
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
