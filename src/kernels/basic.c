/* basic.c: sgemm wrapper, embedding and SwiGLU kernels. Never allocates. */
#include "kernels/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"

void spes_matmul(float *c, int ldc, const float *a, int lda, int ta, const float *b, int ldb, int tb, int m,
                 int n, int k, float alpha, float beta)
{
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(size_t)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha,
                a, lda, b, ldb, beta, c, ldc);
}

typedef struct {
    float *c;
    const float *a, *b;
    int ldc, lda, ldb, ta, tb, m, n, k, parts, by_rows;
    float alpha, beta;
} mm_ctx;

/* mm_range computes blocks [b, e) of the split; block i covers rows (or
 * columns) [i*len/parts, (i+1)*len/parts) rounded to multiples of 16. */
static void mm_range(void *vctx, size_t b, size_t e, int tid)
{
    mm_ctx *x = vctx;
    (void)tid;
    int len = x->by_rows ? x->m : x->n;
    for (size_t i = b; i < e; i++) {
        int s0 = (int)(((int64_t)len * (int64_t)i / x->parts) & ~15);
        int s1 = i + 1 == (size_t)x->parts ? len : (int)(((int64_t)len * (int64_t)(i + 1) / x->parts) & ~15);
        if (s1 <= s0)
            continue;
        if (x->by_rows) {
            const float *a = x->ta ? x->a + s0 : x->a + (size_t)s0 * x->lda;
            spes_matmul(x->c + (size_t)s0 * x->ldc, x->ldc, a, x->lda, x->ta, x->b, x->ldb, x->tb, s1 - s0,
                        x->n, x->k, x->alpha, x->beta);
        } else {
            const float *bb = x->tb ? x->b + (size_t)s0 * x->ldb : x->b + s0;
            spes_matmul(x->c + s0, x->ldc, x->a, x->lda, x->ta, bb, x->ldb, x->tb, x->m, s1 - s0, x->k,
                        x->alpha, x->beta);
        }
    }
}

void spes_matmul_pool(spes_pool *pool, float *c, int ldc, const float *a, int lda, int ta, const float *b,
                      int ldb, int tb, int m, int n, int k, float alpha, float beta)
{
    int nt = spes_pool_threads(pool);
    int by_rows = m >= n || m >= 64 * nt;
    if (nt <= 1 || (by_rows ? m : n) < 32 * nt) {
        spes_matmul(c, ldc, a, lda, ta, b, ldb, tb, m, n, k, alpha, beta);
        return;
    }
    mm_ctx x = {c, a, b, ldc, lda, ldb, ta, tb, m, n, k, nt, by_rows, alpha, beta};
    spes_parallel_for(pool, (size_t)nt, mm_range, &x);
}

typedef struct {
    float *dst;
    const float *src;
} copy_ctx;

static void copy_range(void *vctx, size_t b, size_t e, int tid)
{
    copy_ctx *x = vctx;
    (void)tid;
    if (x->src)
        memcpy(x->dst + b, x->src + b, (e - b) * sizeof(float));
    else
        memset(x->dst + b, 0, (e - b) * sizeof(float));
}

void spes_copy_pool(spes_pool *pool, float *dst, const float *src, size_t n)
{
    copy_ctx x = {dst, src};
    /* below 64 Ki floats a second thread costs more than it saves */
    spes_parallel_for(n < 65536 ? NULL : pool, n, copy_range, &x);
}

int spes_blas_threads_push(void)
{
    int saved = openblas_get_num_threads();
    if (saved != 1)
        openblas_set_num_threads(1);
    return saved;
}

void spes_blas_threads_pop(int saved)
{
    if (saved != 1)
        openblas_set_num_threads(saved);
}

const char *spes_blas_corename(void)
{
    return openblas_get_corename();
}

int spes_blas_reexec_if_generic(char **argv)
{
    const char *core = openblas_get_corename();
    if (getenv("OPENBLAS_CORETYPE") || !core ||
        (strcmp(core, "Prescott") != 0 && strcmp(core, "Core2") != 0 && strcmp(core, "Nehalem") != 0 &&
         strcmp(core, "Katmai") != 0))
        return 0;
    __builtin_cpu_init();
    const char *want = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                       : __builtin_cpu_supports("avx2")  ? "Haswell"
                                                         : NULL;
    if (!want)
        return 0;
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0)
        return spes_errf_errno(SPES_EIO, "cannot set OPENBLAS_CORETYPE");
    execv("/proc/self/exe", argv);
    return spes_errf_errno(SPES_EIO, "re-executing with OPENBLAS_CORETYPE=%s failed", want);
}

typedef struct {
    float *out;
    const float *in;
    const int32_t *tokens;
    int N, C;
} emb_ctx;

static void emb_fwd_range(void *vctx, size_t b, size_t e, int tid)
{
    emb_ctx *x = vctx;
    (void)tid;
    for (size_t i = b; i < e; i++)
        memcpy(x->out + i * x->C, x->in + (size_t)x->tokens[i] * x->C, sizeof(float) * x->C);
}

void spes_embedding_forward(float *out, const int32_t *tokens, const float *wte, int N, int C,
                            spes_pool *pool)
{
    emb_ctx x = {out, wte, tokens, N, C};
    spes_parallel_for(pool, (size_t)N, emb_fwd_range, &x);
}

/* Threads own disjoint column ranges and walk tokens in order: deterministic. */
static void emb_bwd_range(void *vctx, size_t b, size_t e, int tid)
{
    emb_ctx *x = vctx;
    (void)tid;
    for (int i = 0; i < x->N; i++) {
        float *dst = x->out + (size_t)x->tokens[i] * x->C;
        const float *src = x->in + (size_t)i * x->C;
        for (size_t c = b; c < e; c++)
            dst[c] += src[c];
    }
}

void spes_embedding_backward(float *dwte, const float *dout, const int32_t *tokens, int N, int C,
                             spes_pool *pool)
{
    emb_ctx x = {dwte, dout, tokens, N, C};
    spes_parallel_for(pool, (size_t)C, emb_bwd_range, &x);
}
