/* test_kernels.c: finite-difference checks of every kernel's backward, and
 * forward checks against naive double-precision references. Each check
 * defines a scalar loss = sum(out * R) for a fixed random R, perturbs inputs
 * by +-h (central differences, loss accumulated in double) and compares
 * with the analytic gradient: |a - n| <= 2e-3 + 2e-2 * |n|. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "core/rng.h"
#include "kernels/fastmath.h"
#include "kernels/kernels.h"

static spes_rng rng;

static void fill(float *x, size_t n, double sd)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(sd * spes_rng_normal(&rng));
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* fd_check compares grad (n) with central differences of f over x (n). */
static void fd_check(const char *what, loss_fn f, void *ctx, float *x, const float *grad, size_t n, float h)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        float keep = x[i];
        x[i] = keep + h;
        double lp = f(ctx);
        x[i] = keep - h;
        double lm = f(ctx);
        x[i] = keep;
        double num = (lp - lm) / (2.0 * (double)h);
        double err = fabs(grad[i] - num) - (2e-3 + 2e-2 * fabs(num));
        if (err > worst)
            worst = err;
        ck_assert_msg(err <= 0.0, "%s[%zu]: analytic %.6g numeric %.6g", what, i, grad[i], num);
    }
    (void)worst;
}

/* ---- rmsnorm ---- */
enum { RN = 5, RC = 12 };
typedef struct {
    float x[RN * RC], w[RC], out[RN * RC], rstd[RN], R[RN * RC];
    spes_pool *pool;
} rms_t;

static double rms_loss(void *v)
{
    rms_t *t = v;
    spes_rmsnorm_forward(t->out, t->rstd, t->x, t->w, RN, RC, 1e-5f, t->pool);
    return dot(t->out, t->R, RN * RC);
}

static void rms_case(int threads)
{
    rms_t t;
    spes_pool *pool = NULL;
    ck_assert_int_eq(spes_pool_alloc(&pool, threads), 0);
    t.pool = pool;
    fill(t.x, RN * RC, 1.0);
    fill(t.w, RC, 1.0);
    fill(t.R, RN * RC, 1.0);
    rms_loss(&t);
    /* forward against a double reference */
    for (int i = 0; i < RN; i++) {
        double ss = 0.0;
        for (int c = 0; c < RC; c++)
            ss += (double)t.x[i * RC + c] * t.x[i * RC + c];
        double rs = 1.0 / sqrt(ss / RC + 1e-5);
        for (int c = 0; c < RC; c++)
            ck_assert_double_eq_tol(t.out[i * RC + c], t.x[i * RC + c] * rs * t.w[c], 1e-5);
    }
    float dx[RN * RC], dw[RC], partial[8 * RC];
    memset(dx, 0, sizeof dx);
    memset(dw, 0, sizeof dw);
    spes_rmsnorm_backward(dx, dw, t.R, t.x, t.w, t.rstd, RN, RC, partial, pool);
    fd_check("rmsnorm dx", rms_loss, &t, t.x, dx, RN * RC, 1e-2f);
    fd_check("rmsnorm dw", rms_loss, &t, t.w, dw, RC, 1e-2f);
    /* in-place variant overwrites */
    float d2[RN * RC];
    memcpy(d2, t.R, sizeof d2);
    spes_rmsnorm_backward(d2, NULL, d2, t.x, t.w, t.rstd, RN, RC, partial, pool);
    for (int i = 0; i < RN * RC; i++)
        ck_assert_float_eq(d2[i], dx[i]);
    /* the _ld forms on the same rows inside wider rows (ld = RC + 7, a sentinel
     * around them) give the same bits in place and touch nothing else */
    enum { LD = RC + 7, OFF = 3 };
    rms_loss(&t); /* out and rstd of the unperturbed x again */
    float wide[RN * LD], rs2[RN], dw2[RC];
    for (int i = 0; i < RN * LD; i++)
        wide[i] = -99.0f;
    for (int i = 0; i < RN; i++)
        memcpy(wide + i * LD + OFF, t.x + i * RC, sizeof(float) * RC);
    spes_rmsnorm_forward_ld(wide + OFF, rs2, wide + OFF, LD, t.w, RN, RC, 1e-5f, pool);
    for (int i = 0; i < RN; i++) {
        ck_assert_float_eq(rs2[i], t.rstd[i]);
        for (int c = 0; c < LD; c++)
            if (c >= OFF && c < OFF + RC)
                ck_assert_float_eq(wide[i * LD + c], t.out[i * RC + c - OFF]);
            else
                ck_assert_float_eq(wide[i * LD + c], -99.0f);
    }
    float xw[RN * LD], dwide[RN * LD];
    for (int i = 0; i < RN * LD; i++)
        xw[i] = dwide[i] = -99.0f;
    for (int i = 0; i < RN; i++) {
        memcpy(xw + i * LD + OFF, t.x + i * RC, sizeof(float) * RC);
        memcpy(dwide + i * LD + OFF, t.R + i * RC, sizeof(float) * RC);
    }
    memset(dw2, 0, sizeof dw2);
    spes_rmsnorm_backward_ld(dwide + OFF, dw2, dwide + OFF, xw + OFF, LD, t.w, t.rstd, RN, RC, partial, pool);
    for (int c = 0; c < RC; c++)
        ck_assert_float_eq(dw2[c], dw[c]);
    for (int i = 0; i < RN; i++)
        for (int c = 0; c < LD; c++)
            if (c >= OFF && c < OFF + RC)
                ck_assert_float_eq(dwide[i * LD + c], dx[i * RC + c - OFF]);
            else
                ck_assert_float_eq(dwide[i * LD + c], -99.0f);
    spes_pool_free(pool);
}

START_TEST(test_rmsnorm)
{
    rms_case(1);
    rms_case(3);
}
END_TEST

/* ---- rope ---- */
START_TEST(test_rope)
{
    enum { T = 6, D = 8 };
    float cs[T * D / 2], sn[T * D / 2], x[T * D], y[T * D], R[T * D], g[T * D];
    spes_rope_table(cs, sn, T, D, 10000.0);
    fill(x, T * D, 1.0);
    fill(R, T * D, 1.0);
    memcpy(y, x, sizeof x);
    spes_rope_forward(y, D, cs, sn, T, D);
    for (int t = 0; t < T; t++)
        for (int j = 0; j < D / 2; j++) {
            double f = t * pow(10000.0, -2.0 * j / D);
            double a = x[t * D + j], b = x[t * D + j + D / 2];
            ck_assert_double_eq_tol(y[t * D + j], a * cos(f) - b * sin(f), 1e-5);
            ck_assert_double_eq_tol(y[t * D + j + D / 2], b * cos(f) + a * sin(f), 1e-5);
        }
    /* backward is the transpose: <R, rope(x)> == <rope^T(R), x> */
    memcpy(g, R, sizeof R);
    spes_rope_backward(g, D, cs, sn, T, D);
    ck_assert_double_eq_tol(dot(R, y, T * D), dot(g, x, T * D), 1e-4);
}
END_TEST

/* ---- attention ---- */
enum { AT = 70, AD = 8 }; /* T > SPES_ATTN_RB: two row blocks */
typedef struct {
    float q[AT * AD], k[AT * AD], v[AT * AD], out[AT * AD], lse[AT], R[AT * AD];
    float scr[2 * SPES_ATTN_RB * AT + SPES_ATTN_RB];
} att_t;

static double att_loss(void *vv)
{
    att_t *t = vv;
    spes_attn_head_forward(t->out, AD, t->lse, t->q, AD, t->k, AD, t->v, AD, AT, AD, t->scr);
    return dot(t->out, t->R, AT * AD);
}

START_TEST(test_attention)
{
    static att_t t;
    fill(t.q, AT * AD, 1.0);
    fill(t.k, AT * AD, 1.0);
    fill(t.v, AT * AD, 1.0);
    fill(t.R, AT * AD, 1.0);
    att_loss(&t);
    /* forward vs a naive double reference */
    for (int i = 0; i < AT; i++) {
        double s[AT], mx = -1e300, sum = 0.0;
        for (int j = 0; j <= i; j++) {
            s[j] = dot(t.q + i * AD, t.k + j * AD, AD) / sqrt((double)AD);
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int j = 0; j <= i; j++)
            sum += exp(s[j] - mx);
        ck_assert_double_eq_tol(t.lse[i], mx + log(sum), 1e-4);
        for (int c = 0; c < AD; c++) {
            double o = 0.0;
            for (int j = 0; j <= i; j++)
                o += exp(s[j] - mx) / sum * t.v[j * AD + c];
            ck_assert_double_eq_tol(t.out[i * AD + c], o, 1e-5);
        }
    }
    static float dq[AT * AD], dk[AT * AD], dv[AT * AD];
    memset(dk, 0, sizeof dk);
    memset(dv, 0, sizeof dv);
    spes_attn_head_backward(dq, AD, dk, AD, dv, AD, t.R, AD, t.q, AD, t.k, AD, t.v, AD, t.out, AD, t.lse, AT,
                            AD, t.scr);
    fd_check("attn dq", att_loss, &t, t.q, dq, AT * AD, 1e-2f);
    fd_check("attn dk", att_loss, &t, t.k, dk, AT * AD, 1e-2f);
    fd_check("attn dv", att_loss, &t, t.v, dv, AT * AD, 1e-2f);
}
END_TEST

/* the vectorised helpers attention's softmax rows use, against plain loops at
 * every length across the 16-float lanes and tails; all-negative rows too,
 * since a wrong max would hide inside softmax's shift invariance */
START_TEST(test_vec_helpers)
{
    float x[70], y[70], p[70];
    for (int n = 1; n <= 70; n++) {
        for (int rep = 0; rep < 3; rep++) {
            fill(x, (size_t)n, 3.0);
            fill(p, (size_t)n, 1.0);
            if (rep == 1)
                for (int i = 0; i < n; i++)
                    x[i] = -fabsf(x[i]) - 1.0f;
            float mx = x[0];
            for (int i = 1; i < n; i++)
                mx = x[i] > mx ? x[i] : mx;
            ck_assert_float_eq(spes__max(x, n), mx);
            memcpy(y, x, sizeof(float) * (size_t)n);
            spes__scale(y, 0.37f, n);
            for (int i = 0; i < n; i++)
                ck_assert_float_eq(y[i], x[i] * 0.37f);
            memcpy(y, x, sizeof(float) * (size_t)n);
            spes__softmax_grad(y, p, 0.25f, n);
            for (int i = 0; i < n; i++)
                ck_assert_float_eq(y[i], p[i] * (x[i] - 0.25f));
        }
    }
}
END_TEST

/* ---- swiglu ---- */
/* ref_swiglu_backward is the plain loop the fused backward replaced (in place,
 * from an already weighted dh). */
static void ref_swiglu_backward(float *g, float *u, const float *dh, int n)
{
    for (int i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + spes__expf(-g[i]));
        float s = g[i] * sig;
        float dsilu = sig * (1.0f + g[i] * (1.0f - sig));
        float du = dh[i] * s;
        g[i] = dh[i] * u[i] * dsilu;
        u[i] = du;
    }
}

/* The one-pass backward gives the bits of the separate passes it replaced:
 * swiglu forward, the fixed-lane dot, scaling by the routing weight, the plain
 * backward loop; lengths 1..70 cover the 16-lane body and the tail. */
START_TEST(test_swiglu_row_backward)
{
    float g[70], u[70], dh[70], h[70], g2[70], u2[70], h2[70], d2[70];
    for (int n = 1; n <= 70; n++) {
        fill(g, (size_t)n, 3.0);
        fill(u, (size_t)n, 1.0);
        fill(dh, (size_t)n, 1.0);
        memcpy(g2, g, sizeof(float) * (size_t)n);
        memcpy(u2, u, sizeof(float) * (size_t)n);
        memcpy(d2, dh, sizeof(float) * (size_t)n);
        float wt = 0.3f + 0.01f * (float)n;
        spes_swiglu_forward(h2, g2, u2, (size_t)n);
        float dot2 = spes__dot(d2, h2, n);
        spes__scale(h2, wt, n);
        spes__scale(d2, wt, n);
        ref_swiglu_backward(g2, u2, d2, n);
        float dot1 = spes_swiglu_backward(h, g, u, dh, wt, (size_t)n);
        ck_assert_mem_eq(&dot1, &dot2, sizeof dot1);
        ck_assert_mem_eq(h, h2, sizeof(float) * (size_t)n);
        ck_assert_mem_eq(g, g2, sizeof(float) * (size_t)n);
        ck_assert_mem_eq(u, u2, sizeof(float) * (size_t)n);
    }
}
END_TEST

enum { SN = 40 };
typedef struct {
    float g[SN], u[SN], h[SN], R[SN], wt[1];
} sw_t;

/* sw_loss = wt * <silu(g) * u, R> */
static double sw_loss(void *v)
{
    sw_t *t = v;
    spes_swiglu_forward(t->h, t->g, t->u, SN);
    return t->wt[0] * dot(t->h, t->R, SN);
}

START_TEST(test_swiglu)
{
    sw_t t;
    fill(t.g, SN, 2.0);
    fill(t.u, SN, 1.0);
    fill(t.R, SN, 1.0);
    t.wt[0] = 0.7f;
    sw_loss(&t);
    for (int i = 0; i < SN; i++)
        ck_assert_double_eq_tol(t.h[i], t.g[i] / (1.0 + exp(-(double)t.g[i])) * t.u[i], 1e-5);
    float dg[SN], du[SN], h[SN], dwt[1];
    memcpy(dg, t.g, sizeof dg);
    memcpy(du, t.u, sizeof du);
    dwt[0] = spes_swiglu_backward(h, dg, du, t.R, t.wt[0], SN);
    for (int i = 0; i < SN; i++)
        ck_assert_double_eq_tol(h[i], t.wt[0] * t.h[i], 1e-6);
    fd_check("swiglu dg", sw_loss, &t, t.g, dg, SN, 1e-2f);
    fd_check("swiglu du", sw_loss, &t, t.u, du, SN, 1e-2f);
    fd_check("swiglu d(routing weight)", sw_loss, &t, t.wt, dwt, 1, 1e-2f);
}
END_TEST

/* ---- cross-entropy ---- */
enum { CN = 4, CV = 11 };
typedef struct {
    float x[CN * CV], l[CN];
    int32_t y[CN];
} ce_t;

static double ce_loss(void *v)
{
    ce_t *t = v;
    spes_crossentropy_forward(t->l, t->x, t->y, CN, CV, NULL);
    double s = 0.0;
    for (int i = 0; i < CN; i++)
        s += t->l[i];
    return s / CN;
}

START_TEST(test_crossentropy)
{
    ce_t t;
    fill(t.x, CN * CV, 2.0);
    for (int i = 0; i < CN; i++)
        t.y[i] = (i * 7 + 3) % CV;
    ce_loss(&t);
    for (int i = 0; i < CN; i++) {
        double s = 0.0;
        for (int v = 0; v < CV; v++)
            s += exp((double)t.x[i * CV + v]);
        ck_assert_double_eq_tol(t.l[i], log(s) - t.x[i * CV + t.y[i]], 1e-5);
    }
    float d[CN * CV];
    spes_crossentropy_backward(d, t.x, t.y, 1.0f / CN, CN, CV, NULL);
    fd_check("ce dlogits", ce_loss, &t, t.x, d, CN * CV, 1e-2f);
}
END_TEST

/* ---- router ---- */
enum { QN = 6, QE = 7, QK = 3 };
typedef struct {
    float x[QN * QE], p[QN * QE], lse[QN], w[QN * QK], R[QN * QK], lbc[QE];
    int32_t ti[QN * QK], ti0[QN * QK];
    float zc;
    int norm;
} rt_t;

static double rt_loss(void *v)
{
    rt_t *t = v;
    spes_router_forward(t->p, t->lse, t->ti, t->w, t->x, QN, QE, QK, t->norm, NULL);
    ck_assert_mem_eq(t->ti, t->ti0, sizeof t->ti); /* routing did not flip */
    double s = dot(t->w, t->R, QN * QK);
    for (int i = 0; i < QN; i++) {
        s += 0.5 * t->zc * (double)t->lse[i] * t->lse[i];
        for (int e = 0; e < QE; e++)
            s += (double)t->lbc[e] * t->p[i * QE + e];
    }
    return s;
}

static void router_case(int norm)
{
    rt_t t;
    for (int i = 0; i < QN * QE; i++) /* well separated logits: no flips under +-h */
        t.x[i] = (float)(0.3 * ((i * 5 + 3) % QE) + 0.05 * spes_rng_normal(&rng));
    fill(t.R, QN * QK, 1.0);
    fill(t.lbc, QE, 1.0);
    t.zc = 0.7f;
    t.norm = norm;
    spes_router_forward(t.p, t.lse, t.ti0, t.w, t.x, QN, QE, QK, norm, NULL);
    rt_loss(&t);
    for (int i = 0; i < QN; i++) {
        double s = 0.0;
        for (int k = 0; k < QK; k++) {
            s += t.w[i * QK + k];
            if (k)
                ck_assert(t.p[i * QE + t.ti[i * QK + k]] <= t.p[i * QE + t.ti[i * QK + k - 1]]);
        }
        if (norm)
            ck_assert_double_eq_tol(s, 1.0, 1e-6);
    }
    float d[QN * QE];
    spes_router_backward(d, t.R, t.p, t.lse, t.ti, t.lbc, t.zc, QN, QE, QK, norm, NULL);
    fd_check(norm ? "router dlogits (norm)" : "router dlogits", rt_loss, &t, t.x, d, QN * QE, 1e-3f);
}

START_TEST(test_router)
{
    router_case(0);
    router_case(1);
    /* ties go to the lower index */
    float x[4] = {1.0f, 2.0f, 2.0f, 0.5f}, p[4], lse, w[2];
    int32_t ti[2];
    spes_router_forward(p, &lse, ti, w, x, 1, 4, 2, 0, NULL);
    ck_assert_int_eq(ti[0], 1);
    ck_assert_int_eq(ti[1], 2);
}
END_TEST

/* ---- embedding and matmul ---- */
START_TEST(test_embedding_matmul)
{
    enum { V = 5, C = 6, N = 7 };
    float wte[V * C], out[N * C], dw[V * C], R[N * C];
    int32_t tok[N] = {4, 0, 4, 2, 1, 4, 0};
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, 2), 0);
    fill(wte, V * C, 1.0);
    fill(R, N * C, 1.0);
    spes_embedding_forward(out, tok, wte, N, C, pool);
    ck_assert_mem_eq(out + 3 * C, wte + 2 * C, sizeof(float) * C);
    memset(dw, 0, sizeof dw);
    spes_embedding_backward(dw, R, tok, N, C, pool);
    for (int c = 0; c < C; c++) /* exact: row 4 gets rows 0, 2, 5 in order */
        ck_assert_float_eq(dw[4 * C + c], (R[c] + R[2 * C + c]) + R[5 * C + c]);
    spes_pool_free(pool);
    /* C = A^T B^T with leading dimensions */
    float A[3 * 4], B[5 * 3], Cm[4 * 5];
    fill(A, 12, 1.0);
    fill(B, 15, 1.0);
    spes_matmul(Cm, 5, A, 4, 1, B, 3, 1, 4, 5, 3, 2.0f, 0.0f);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 5; j++) {
            double s = 0.0;
            for (int k = 0; k < 3; k++)
                s += (double)A[k * 4 + i] * B[j * 3 + k];
            ck_assert_double_eq_tol(Cm[i * 5 + j], 2.0 * s, 1e-5);
        }
}
END_TEST

/* the pool-split product equals the plain one (row split and column split) */
START_TEST(test_matmul_pool)
{
    enum { M = 150, N = 70, K = 33 };
    static float A[M * K], Bm[N * K], C0[M * N], C1[M * N], At[K * M], D0[N * M], D1[N * M];
    fill(A, M * K, 1.0);
    fill(Bm, N * K, 1.0);
    fill(C0, M * N, 1.0);
    memcpy(C1, C0, sizeof C0);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++)
            At[k * M + i] = A[i * K + k];
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, 3), 0);
    int saved = spes_blas_threads_push();
    spes_matmul(C0, N, A, K, 0, Bm, K, 1, M, N, K, 0.5f, 1.0f);
    spes_matmul_pool(pool, C1, N, At, M, 1, Bm, K, 1, M, N, K, 0.5f, 1.0f); /* rows */
    for (int i = 0; i < M * N; i++)
        ck_assert_double_eq_tol(C0[i], C1[i], 1e-5);
    spes_matmul(D0, M, Bm, K, 0, A, K, 1, N, M, K, 1.0f, 0.0f);
    spes_matmul_pool(pool, D1, M, Bm, K, 0, At, M, 0, N, M, K, 1.0f, 0.0f); /* columns */
    for (int i = 0; i < M * N; i++)
        ck_assert_double_eq_tol(D0[i], D1[i], 1e-5);
    spes_blas_threads_pop(saved);
    spes_pool_free(pool);
    ck_assert_ptr_nonnull(spes_blas_corename());
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("fd");
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_vec_helpers);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_swiglu_row_backward);
    tcase_add_test(tc, test_crossentropy);
    tcase_add_test(tc, test_router);
    tcase_add_test(tc, test_embedding_matmul);
    tcase_add_test(tc, test_matmul_pool);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    spes_blas_reexec_if_generic(argv); /* fast OpenBLAS kernels on CPUs it misdetects */
    spes_rng_seed(&rng, 1234);
    SRunner *sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
