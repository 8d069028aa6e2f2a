/* fastmath.h: a vectorisable expf (Cephes polynomial, about 1 ulp) for the
 * elementwise kernels, and the target_clones attribute that builds their hot
 * loops for AVX-512, AVX2 and baseline x86-64 (chosen once at load time).
 * The loops live in vecmath.c, built with -O3 -ffinite-math-only so that GCC
 * vectorises them (inputs are finite activations; no infinities are used).
 * Only plain + and * (no FMA contraction in ISO C mode), so every clone
 * returns the same bits. Internal (spes__) to src/kernels and src/model. */
#ifndef SPES_KERNELS_FASTMATH_H
#define SPES_KERNELS_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/simd.h"

static inline float spes__expf(float x)
{
    x = fminf(x, 88.3762626647949f);
    x = fmaxf(x, -87.3365478515625f);
    float t = x * 1.44269504088896341f + 0.5f;
    int32_t ni = (int32_t)t;
    ni -= (int32_t)((float)ni > t);
    float n = (float)ni;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = (ni + 127) << 23};
    return p * scale.f;
}

/* spes__exp_shift writes out[i] = exp(x[i] - shift) for i < n (out may be x). */
void spes__exp_shift(float *out, const float *x, float shift, int n);
/* spes__sum adds x[0..n) in 16 fixed lanes, then the lanes in order (deterministic). */
float spes__sum(const float *x, int n);
/* spes__dot is the fixed-lane dot product of a and b (n). */
float spes__dot(const float *a, const float *b, int n);
/* spes__sum_exp is the fixed-lane sum of exp(x[i] - shift) (n). */
float spes__sum_exp(const float *x, float shift, int n);
/* spes__max is the largest of x[0..n), n >= 1 (exact in any order). */
float spes__max(const float *x, int n);
/* spes__scale multiplies x[0..n) by a. */
void spes__scale(float *x, float a, int n);
/* spes__softmax_grad writes dp[i] = p[i] * (dp[i] - d) for i < n. */
void spes__softmax_grad(float *restrict dp, const float *restrict p, float d, int n);
#endif
