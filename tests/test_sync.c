/* test_sync.c: contribution codec, aggregation and digest. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "sync/sync.h"

/* A fake layout is enough here: sync only uses shared_numel and column_numel. */
static spes_layout lay(size_t shared, size_t col, int E)
{
    spes_layout lo = {0};
    lo.shared_numel = shared;
    lo.column_numel = col;
    lo.total_numel = shared + (size_t)E * col;
    return lo;
}

static void fill(float *p, size_t n, float base)
{
    for (size_t i = 0; i < n; i++)
        p[i] = base + 0.001f * (float)i;
}

START_TEST(test_contrib_round_trip)
{
    enum { S = 10, C = 6, E = 4 };
    spes_layout lo = lay(S, C, E);
    float base[S + E * C], cur[S + E * C];
    fill(base, lo.total_numel, 1.0f);
    fill(cur, lo.total_numel, 1.5f);
    uint8_t owned[E] = {0, 1, 0, 1};
    spes_contrib c, d;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, owned, cur, 7, 3, 1000, 2.5f), 0);
    ck_assert_int_eq(c.ncols, 2);
    ck_assert_int_eq(c.cols[1], 3);
    ck_assert_float_eq(c.val[S + C], cur[S + 3 * C]); /* column 3's first value */
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_FP32, base, &buf, &len), 0);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "peer"), 0);
    ck_assert_int_eq(d.round, 7);
    ck_assert_int_eq(d.node, 3);
    ck_assert_mem_eq(d.val, c.val, (S + 2 * C) * sizeof(float));
    spes_contrib_fini(&d);
    /* truncation anywhere is refused */
    for (size_t cut = 0; cut < len; cut += 7)
        ck_assert_int_ne(spes_contrib_decode(&d, buf, cut, &lo, E, base, 1e3f, "peer"), 0);
    /* NaN is refused, naming the peer */
    float nan = NAN;
    memcpy(buf + len - 4, &nan, 4);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "node-2"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "node-2"));
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "NaN"));
    free(buf);
    /* bf16 carries deltas: values come back within bf16 rounding of the delta (0.5) */
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_BF16, base, &buf, &len), 0);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 1e3f, "peer"), 0);
    for (int i = 0; i < S + 2 * C; i++)
        ck_assert_float_eq_tol(d.val[i], c.val[i], 0.5f / 256.0f + 1e-6f);
    spes_contrib_fini(&d);
    /* values moved beyond the bound are refused */
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &lo, E, base, 0.1f, "peer"), SPES_ERANGE);
    ck_assert_ptr_nonnull(strstr(spes_errmsg(), "bound"));
    /* wrong model size */
    spes_layout other = lay(S + 1, C, E);
    ck_assert_int_eq(spes_contrib_decode(&d, buf, len, &other, E, base, 1e3f, "peer"), SPES_EFORMAT);
    free(buf);
    spes_contrib_fini(&c);
}
END_TEST

START_TEST(test_bf16_rounding)
{
    ck_assert_uint_eq(spes_bf16_from_f32(1.0f), 0x3f80);
    /* 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even (1.0) */
    ck_assert_uint_eq(spes_bf16_from_f32(1.00390625f), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): rounds up */
    ck_assert_uint_eq(spes_bf16_from_f32(1.01171875f), 0x3f82);
    ck_assert(isnan(spes_f32_from_bf16(spes_bf16_from_f32(NAN))));
}
END_TEST

START_TEST(test_aggregate)
{
    enum { S = 3, C = 2, E = 3 };
    spes_layout lo = lay(S, C, E);
    float p[S + E * C] = {1, 1, 1, 10, 10, 20, 20, 30, 30};
    /* node 0 owns {0,1}, node 1 owns {1}, node 4 owns {}; values = base + delta
     * with deltas 0: {1,2,3 | 0.5,0.5 | 1,1}, 1: {3,2,1 | 3,3}, 4: {2,2,2} */
    int32_t c0[] = {0, 1}, c1[] = {1};
    float d0[] = {2, 3, 4, 10.5f, 10.5f, 21, 21};
    float d1[] = {4, 3, 2, 23, 23};
    float d4[] = {3, 3, 3};
    spes_contrib a = {.node = 0, .ncols = 2, .cols = c0, .shared_numel = S, .column_numel = C, .val = d0};
    spes_contrib b = {.node = 1, .ncols = 1, .cols = c1, .shared_numel = S, .column_numel = C, .val = d1};
    spes_contrib z = {.node = 4, .ncols = 0, .cols = NULL, .shared_numel = S, .column_numel = C, .val = d4};
    const spes_contrib *cs[] = {&a, &b, &z};
    ck_assert_int_eq(spes_aggregate(p, &lo, E, cs, 3), 0);
    /* shared: 1 + mean(1,3,2)=3 ...; column 0: only node 0 -> its values exactly; column 1: 20 + mean(1,3) */
    float want[] = {3, 3, 3, 10.5f, 10.5f, 22, 22, 30, 30};
    for (int i = 0; i < S + E * C; i++)
        ck_assert_float_eq_tol(p[i], want[i], 1e-6);
    /* a single contributor's values arrive bit for bit, whatever the base */
    float q[S + E * C] = {1e-30f, 7, 1, 1, 1, 1, 1, 1, 1};
    float v[S] = {1e30f, 1e-30f, 3};
    spes_contrib one = {.node = 2, .ncols = 0, .shared_numel = S, .column_numel = C, .val = v};
    const spes_contrib *o1[] = {&one};
    ck_assert_int_eq(spes_aggregate(q, &lo, E, o1, 1), 0);
    ck_assert_mem_eq(q, v, sizeof v);
    const spes_contrib *bad[] = {&b, &a};
    ck_assert_int_eq(spes_aggregate(p, &lo, E, bad, 2), SPES_EINVAL);
}
END_TEST

START_TEST(test_digest)
{
    float p[16];
    fill(p, 16, 0);
    uint8_t d1[32], d2[32], d3[32];
    ck_assert_int_eq(spes_state_digest(p, 16, 1, d1), 0);
    ck_assert_int_eq(spes_state_digest(p, 16, 1, d2), 0);
    ck_assert_mem_eq(d1, d2, 32);
    ck_assert_int_eq(spes_state_digest(p, 16, 2, d3), 0);
    ck_assert_mem_ne(d1, d3, 32);
    uint32_t u;
    memcpy(&u, &p[5], 4);
    u ^= 1;
    memcpy(&p[5], &u, 4);
    ck_assert_int_eq(spes_state_digest(p, 16, 1, d3), 0);
    ck_assert_mem_ne(d1, d3, 32);
}
END_TEST

START_TEST(test_contrib_max_size)
{
    /* the bound a fetch of a contribution passes is the size of the largest
     * one the model allows (every column, fp32), and no smaller */
    enum { S = 10, C = 6, E = 4 };
    spes_layout lo = lay(S, C, E);
    float base[S + E * C];
    fill(base, lo.total_numel, 1.0f);
    uint8_t all[E] = {1, 1, 1, 1}, two[E] = {0, 1, 0, 1};
    spes_contrib c;
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, all, base, 1, 0, 1, 1.0f), 0);
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_FP32, base, &buf, &len), 0);
    ck_assert_uint_eq(len, spes_contrib_max_size(&lo, E));
    free(buf);
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_BF16, base, &buf, &len), 0);
    ck_assert_uint_lt(len, spes_contrib_max_size(&lo, E));
    free(buf);
    spes_contrib_fini(&c);
    ck_assert_int_eq(spes_contrib_make(&c, &lo, E, two, base, 1, 0, 1, 1.0f), 0);
    ck_assert_int_eq(spes_contrib_encode(&c, SPES_CODEC_FP32, base, &buf, &len), 0);
    ck_assert_uint_lt(len, spes_contrib_max_size(&lo, E));
    free(buf);
    spes_contrib_fini(&c);
}
END_TEST

Suite *sync_suite(void)
{
    Suite *s = suite_create("sync");
    TCase *tc = tcase_create("sync");
    tcase_add_test(tc, test_contrib_round_trip);
    tcase_add_test(tc, test_contrib_max_size);
    tcase_add_test(tc, test_bf16_rounding);
    tcase_add_test(tc, test_aggregate);
    tcase_add_test(tc, test_digest);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sync_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
