/* attention.c: causal softmax attention of one head, flash-attention style:
 * query rows in blocks of SPES_ATTN_RB, scores through sgemm, only a per-row
 * log-sum-exp kept; backward recomputes the probabilities. Never stores the
 * (T,T) matrix and never allocates. */
#include "kernels/kernels.h"
#include "kernels/fastmath.h"

#include <math.h>
#include <string.h>

/* vec_len rounds a row's n causal entries up to whole 16-float vectors (at
 * most nk, the row's width): exp over the few masked scores past the diagonal
 * (finite, clamped, overwritten with zeros afterwards) costs less than the
 * scalar tail loop would. */
static int vec_len(int n, int nk)
{
    int r = (n + 15) & ~15;
    return r < nk ? r : nk;
}

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
            float mx = spes__max(s, i + 1);
            spes__exp_shift(s, s, mx, vec_len(i + 1, nk));
            float sum = spes__sum(s, i + 1);
            spes__scale(s, 1.0f / sum, i + 1);
            memset(s + i + 1, 0, sizeof(float) * (size_t)(nk - i - 1));
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
            spes__exp_shift(p, p, lse[i], vec_len(i + 1, nk));
            spes__softmax_grad(dp, p, d, i + 1);
            memset(p + i + 1, 0, sizeof(float) * (size_t)(nk - i - 1));
            memset(dp + i + 1, 0, sizeof(float) * (size_t)(nk - i - 1));
        }
        spes_matmul(dq + (size_t)r0 * lddq, lddq, dP, nk, 0, k, ldk, 0, nr, D, nk, scale, 0.0f);
        spes_matmul(dk, lddk, dP, nk, 1, qb, ldq, 0, nk, D, nr, scale, 1.0f);
        spes_matmul(dv, lddv, P, nk, 1, dob, lddo, 0, nk, D, nr, 1.0f, 1.0f);
    }
}
