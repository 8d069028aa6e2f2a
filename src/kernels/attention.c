/* attention.c: causal softmax attention of one head, flash-attention style:
 * query rows in blocks of SPES_ATTN_RB, scores through sgemm, only a per-row
 * log-sum-exp kept; backward recomputes the probabilities. Never stores the
 * (T,T) matrix and never allocates. */
#include "kernels/kernels.h"
#include "kernels/fastmath.h"

#include <math.h>

void spes_attn_head_forward(float *out, int ldo, float *lse, const float *q, int ldq, const float *k, int ldk,
                            const float *v, int ldv, int T, int D, float *scratch)
{
    float scale = 1.0f / sqrtf((float)D);
    for (int r0 = 0; r0 < T; r0 += SPES_ATTN_RB) {
        int r1 = r0 + SPES_ATTN_RB < T ? r0 + SPES_ATTN_RB : T;
        int nr = r1 - r0, nk = r1;
        float *S = scratch;
        spes_matmul(S, nk, q + (size_t)r0 * ldq, ldq, 0, k, ldk, 1, nr, nk, D, scale, 0.0f);
        for (int ii = 0; ii < nr; ii++) {
            int i = r0 + ii;
            float *s = S + (size_t)ii * nk;
            float mx = -INFINITY;
            for (int j = 0; j <= i; j++)
                mx = s[j] > mx ? s[j] : mx;
            spes__exp_shift(s, s, mx, i + 1);
            float sum = spes__sum(s, i + 1);
            float inv = 1.0f / sum;
            for (int j = 0; j <= i; j++)
                s[j] *= inv;
            for (int j = i + 1; j < nk; j++)
                s[j] = 0.0f;
            lse[i] = mx + logf(sum);
        }
        spes_matmul(out + (size_t)r0 * ldo, ldo, S, nk, 0, v, ldv, 0, nr, D, nk, 1.0f, 0.0f);
    }
}

void spes_attn_head_backward(float *dq, int lddq, float *dk, int lddk, float *dv, int lddv, const float *dout,
                             int lddo, const float *q, int ldq, const float *k, int ldk, const float *v,
                             int ldv, const float *out, int ldo, const float *lse, int T, int D,
                             float *scratch)
{
    float scale = 1.0f / sqrtf((float)D);
    float *P = scratch, *dP = scratch + (size_t)SPES_ATTN_RB * T, *Di = dP + (size_t)SPES_ATTN_RB * T;
    for (int r0 = 0; r0 < T; r0 += SPES_ATTN_RB) {
        int r1 = r0 + SPES_ATTN_RB < T ? r0 + SPES_ATTN_RB : T;
        int nr = r1 - r0, nk = r1;
        const float *qb = q + (size_t)r0 * ldq, *dob = dout + (size_t)r0 * lddo;
        spes_matmul(P, nk, qb, ldq, 0, k, ldk, 1, nr, nk, D, scale, 0.0f);
        spes_matmul(dP, nk, dob, lddo, 0, v, ldv, 1, nr, nk, D, 1.0f, 0.0f);
        for (int ii = 0; ii < nr; ii++) {
            int i = r0 + ii;
            const float *o = out + (size_t)i * ldo, *g = dob + (size_t)ii * lddo;
            float d = 0.0f;
            for (int c = 0; c < D; c++)
                d += o[c] * g[c];
            Di[ii] = d;
            float *p = P + (size_t)ii * nk, *dp = dP + (size_t)ii * nk;
            spes__exp_shift(p, p, lse[i], i + 1);
            for (int j = 0; j <= i; j++)
                dp[j] = p[j] * (dp[j] - d);
            for (int j = i + 1; j < nk; j++)
                p[j] = dp[j] = 0.0f;
        }
        spes_matmul(dq + (size_t)r0 * lddq, lddq, dP, nk, 0, k, ldk, 0, nr, D, nk, scale, 0.0f);
        spes_matmul(dk, lddk, dP, nk, 1, qb, ldq, 0, nk, D, nr, scale, 1.0f);
        spes_matmul(dv, lddv, P, nk, 1, dob, lddo, 0, nk, D, nr, 1.0f, 1.0f);
    }
}
