/* test_optim.c: AdamW against a double-precision transcription of
 * torch.optim.AdamW, the LR schedule, the SPES lb factor and clipping. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim/adamw.h"

static spes_train_config tc(void)
{
    spes_run_config c;
    spes_config_defaults(&c);
    c.train.lr = 1e-2;
    c.train.warmup_steps = 10;
    c.train.max_steps = 110;
    c.train.min_lr_ratio = 0.1;
    return c.train;
}

START_TEST(test_adamw_matches_reference)
{
    spes_train_config t = tc();
    enum { N = 37 };
    float p[N + 5], g[N];
    double rp[N], rm[N] = {0}, rv[N] = {0};
    for (int i = 0; i < N + 5; i++)
        p[i] = (float)sin(i * 0.7);
    spes_adamw o;
    ck_assert_int_eq(spes_adamw_init(&o, N, &t), 0);
    /* two segments, the second one offset in params: [0,20) -> p[0..20), [20,37) -> p[25..42) */
    spes_segment seg[2] = {{0, 0, 20}, {25, 20, 17}};
    for (int i = 0; i < N; i++)
        rp[i] = p[i < 20 ? i : i + 5];
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, 2), 0);
    for (int step = 1; step <= 5; step++) {
        double lr = spes_lr_at(&t, step - 1);
        for (int i = 0; i < N; i++)
            g[i] = (float)cos(i * 1.3 + step);
        spes_adamw_step(&o, p, g, seg, 2, lr, 1.0f, pool);
        double bc1 = 1 - pow(t.beta1, step), bc2 = 1 - pow(t.beta2, step);
        for (int i = 0; i < N; i++) {
            rp[i] *= 1 - lr * t.weight_decay;
            rm[i] = rm[i] * t.beta1 + (1 - t.beta1) * g[i];
            rv[i] = rv[i] * t.beta2 + (1 - t.beta2) * (double)g[i] * g[i];
            rp[i] -= lr / bc1 * rm[i] / (sqrt(rv[i]) / sqrt(bc2) + t.eps);
        }
    }
    double maxd = 0;
    for (int i = 0; i < N; i++)
        maxd = fmax(maxd, fabs(rp[i] - p[i < 20 ? i : i + 5]));
    ck_assert_double_lt(maxd, 1e-6);
    /* the gap p[20..25) is untouched */
    for (int i = 20; i < 25; i++)
        ck_assert_float_eq(p[i], (float)sin(i * 0.7));
    ck_assert_int_eq(o.t, 5);
    spes_adamw_fini(&o);
    spes_pool_free(pool);
}
END_TEST

START_TEST(test_lr_schedule)
{
    spes_train_config t = tc();
    ck_assert_double_eq_tol(spes_lr_at(&t, 0), 1e-3, 1e-15);
    ck_assert_double_eq_tol(spes_lr_at(&t, 9), 1e-2, 1e-15);
    ck_assert_double_eq_tol(spes_lr_at(&t, 10), 1e-2, 1e-15);
    ck_assert_double_eq_tol(spes_lr_at(&t, 60), 1e-3 + 9e-3 * 0.5, 1e-12);
    ck_assert_double_eq_tol(spes_lr_at(&t, 110), 1e-3, 1e-15);
    ck_assert_double_eq_tol(spes_lr_at(&t, 500), 1e-3, 1e-15);
}
END_TEST

START_TEST(test_lb_factor)
{
    spes_run_config c;
    spes_config_defaults(&c);
    ck_assert_double_eq_tol(spes_lb_factor_at(&c.spes, 100, 0), 0.7, 1e-12);
    ck_assert_double_eq_tol(spes_lb_factor_at(&c.spes, 100, 10), 0.85, 1e-12);
    ck_assert_double_eq_tol(spes_lb_factor_at(&c.spes, 100, 20), 1.0, 1e-12);
    ck_assert_double_eq_tol(spes_lb_factor_at(&c.spes, 100, 90), 1.0, 1e-12);
}
END_TEST

START_TEST(test_clip)
{
    float g[4] = {3, 4, 0, 0};
    double n = spes_clip_grads(g, 4, 1.0, NULL);
    ck_assert_double_eq_tol(n, 5.0, 1e-12);
    ck_assert_float_eq_tol(g[0], 3 * (1.0 / (5 + 1e-6)), 1e-7);
    float h[2] = {0.3f, 0.4f};
    spes_clip_grads(h, 2, 1.0, NULL);
    ck_assert_float_eq(h[0], 0.3f);
}
END_TEST

/* The fused path (grad_scale inside the update) equals clipping in place and
 * stepping, bit for bit, on a range long enough to exercise the vector loop
 * and its tail, with two threads; and the norm matches a double sum. */
START_TEST(test_fused_clip_step_bit_identical)
{
    spes_train_config t = tc();
    enum { N = 10007 };
    float *p1 = malloc(N * sizeof(float)), *p2 = malloc(N * sizeof(float)), *g = malloc(N * sizeof(float)),
          *gc = malloc(N * sizeof(float));
    double ref = 0;
    for (int i = 0; i < N; i++) {
        p1[i] = p2[i] = (float)sin(i * 0.37);
        g[i] = gc[i] = (float)(3.0 * cos(i * 0.11));
        ref += (double)g[i] * g[i];
    }
    spes_pool *pool;
    ck_assert_int_eq(spes_pool_alloc(&pool, 2), 0);
    double norm = spes_grad_norm(g, N, pool);
    ck_assert_double_le(fabs(norm - sqrt(ref)), 1e-9 * sqrt(ref));
    float coef = spes_clip_coef(norm, 1.0);
    ck_assert_float_lt(coef, 1.0f);
    ck_assert_float_eq(spes_clip_coef(norm, 0.0), 1.0f);
    ck_assert_float_eq(spes_clip_coef(0.5, 1.0), 1.0f);
    spes_segment seg[1] = {{0, 0, N}};
    spes_adamw a, b;
    ck_assert_int_eq(spes_adamw_init(&a, N, &t), 0);
    ck_assert_int_eq(spes_adamw_init(&b, N, &t), 0);
    for (int step = 0; step < 3; step++) {
        spes_adamw_step(&a, p1, g, seg, 1, 1e-2, coef, pool);
        double n2 = spes_clip_grads(gc, N, 1.0, pool);
        ck_assert_double_eq(n2, norm);
        spes_adamw_step(&b, p2, gc, seg, 1, 1e-2, 1.0f, pool);
        for (int i = 0; i < N; i++)
            gc[i] = g[i];
    }
    ck_assert_int_eq(memcmp(p1, p2, N * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(a.m, b.m, N * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(a.v, b.v, N * sizeof(float)), 0);
    spes_adamw_fini(&a);
    spes_adamw_fini(&b);
    spes_pool_free(pool);
    free(p1);
    free(p2);
    free(g);
    free(gc);
}
END_TEST

Suite *optim_suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc1 = tcase_create("optim");
    tcase_add_test(tc1, test_adamw_matches_reference);
    tcase_add_test(tc1, test_lr_schedule);
    tcase_add_test(tc1, test_lb_factor);
    tcase_add_test(tc1, test_clip);
    tcase_add_test(tc1, test_fused_clip_step_bit_identical);
    suite_add_tcase(s, tc1);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(optim_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
