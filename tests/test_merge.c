/* test_merge.c: the merge warm-up against a hand-computed known state. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge/merge.h"

START_TEST(test_merge_alpha)
{
    spes_spes_config sc = {.merge_interval = 10, .merge_alpha = 0.5, .merge_decay_steps = 100};
    ck_assert_double_eq(spes_merge_alpha(&sc, 1000, 0), 0);
    ck_assert_double_eq(spes_merge_alpha(&sc, 1000, 15), 0);
    ck_assert_double_eq_tol(spes_merge_alpha(&sc, 1000, 20), 0.4, 1e-12);
    ck_assert_double_eq(spes_merge_alpha(&sc, 1000, 100), 0);
    ck_assert_double_eq(spes_merge_alpha(&sc, 1000, 200), 0);
    sc.merge_decay_steps = 0; /* over the whole run: 0 at its last step */
    ck_assert_double_eq_tol(spes_merge_alpha(&sc, 400, 100), 0.375, 1e-12);
    ck_assert_double_eq_tol(spes_merge_alpha(&sc, 400, 390), 0.0125, 1e-12);
    ck_assert_double_eq(spes_merge_alpha(&sc, 400, 400), 0);
    ck_assert_double_eq(spes_merge_alpha(&sc, 0, 100), 0);
}
END_TEST

/* One layer, H = 2, I = 1, E = 3: each expert is gate (1x2), up (1x2), down (2x1). */
START_TEST(test_merge_known_state)
{
    spes_model_config mc = {.vocab_size = 4,
                            .hidden_size = 2,
                            .intermediate_size = 1,
                            .num_hidden_layers = 1,
                            .num_attention_heads = 1,
                            .num_key_value_heads = 1,
                            .num_experts = 3,
                            .num_experts_per_tok = 1,
                            .rms_norm_eps = 1e-5,
                            .rope_theta = 10000,
                            .max_position_embeddings = 16};
    spes_layout lo;
    ck_assert_int_eq(spes_layout_build(&lo, &mc), 0);
    ck_assert_uint_eq(lo.column_numel, 6);
    float *p = calloc(lo.total_numel, sizeof *p);
    /* gate_proj of e0 = (1,0), e1 = (1,0.1) (close to e0), e2 = (0,1) */
    float experts[3][6] = {{1, 0, 1, 1, 1, 1}, {1, 0.1f, 2, 2, 2, 2}, {0, 1, 4, 4, 4, 4}};
    for (int e = 0; e < 3; e++)
        memcpy(p + lo.shared_numel + (size_t)e * 6, experts[e], sizeof experts[e]);
    ck_assert_int_eq(spes_merge_apply(p, &lo, &mc, 1, 0.5), 0);
    /* donors: e0 <- e1, e1 <- e0, e2 <- e1 (cos(e2,e1) = 0.0995 > cos(e2,e0) = 0) */
    int donor[3] = {1, 0, 1};
    for (int e = 0; e < 3; e++)
        for (int x = 0; x < 6; x++) {
            float want = experts[e][x] + 0.5f * (experts[donor[e]][x] - experts[e][x]);
            ck_assert_float_eq_tol(p[lo.shared_numel + (size_t)e * 6 + x], want, 1e-6);
        }
    /* shared weights untouched */
    for (size_t i = 0; i < lo.shared_numel; i++)
        ck_assert_float_eq(p[i], 0);
    free(p);
    spes_layout_fini(&lo);
}
END_TEST

Suite *merge_suite(void)
{
    Suite *s = suite_create("merge");
    TCase *tc = tcase_create("merge");
    tcase_add_test(tc, test_merge_alpha);
    tcase_add_test(tc, test_merge_known_state);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(merge_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
